"""The fork server's program: import a script's libraries once, then fork a child per replay.

`flor_flows.replay.forkserver` runs it as `python forkserver_main.py SOCKET SCRIPT ROOTS
PIDFD IDLE` in the first replay's working directory, with the replays' environment less the
run context: what a fresh `python SCRIPT` starts from. It imports the installed libraries the
script imports at module level (not the project's own modules under ROOTS, which differ per
version and may have side effects; never flor_flows, whose run context is captured at import),
makes sure no thread survives a fork and that nothing it imported came from ROOTS, says so on
stdout, then serves. A request brings a replay's script (of any version that imports the same
libraries), working directory, argv, environment, project roots and stdout/stderr pipes: the
server refuses it when a module beside that script would shadow one it imported (a fresh
process would have imported that file instead) or it holds a module from those roots, retires
when a file it imported changed since, else forks, sends back the child's pid and a pidfd,
and later its exit status. The child becomes what `python SCRIPT ARGV` in that directory
would be and runs the script as `__main__`; it gets SIGTERM if the request's connection closes
first (its client died). The server keeps SPARES spare writer processes started ahead; the
next child gets the socket of the oldest and hands it its own pipes
(`flor_flows.record.spare`), and the server starts another. The server ends when the
process of PIDFD does, or once retired or IDLE seconds without a replay (0: never) when its
children have ended; its children end with it.

Only the standard library is imported here: this file runs as a script, before anything else.
"""

import ast
import atexit
import builtins
import contextlib
import ctypes
import importlib
import importlib.machinery
import importlib.util
import json
import os
import select
import selectors
import signal
import site
import socket
import sys
import time
import types
from typing import NamedTuple

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SPARE_WRITER = "FLOR_FLOWS_SPARE_WRITER"  # flor_flows.record.spare.ENV_VAR
# Spare writers kept started ahead: one for each of two replays forked at once (the
# command's default --max-parallel), each ready when its replay starts.
SPARES = 2
REQUEST_TIMEOUT = 10.0  # seconds a client has to send its request once connected


class Request(NamedTuple):
    """One replay, as the forked child receives it."""

    script: str
    cwd: str
    argv: list[str]
    env: dict[str, str]
    roots: list[str]  # the project's code: the server must hold none of it
    stdout: int
    stderr: int
    writer: str = ""  # the spare writer handed to this replay, as SPARE_WRITER names it


# Prefect settings read when used, not at import: a process that imported Prefect (the warm
# process, a fork server) may serve a caller whose own differ; they are applied in its child.
AT_USE = frozenset({
    "PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING",
    "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
})  # fmt: skip
# Modules a library imports lazily on first use, at a cost every replay would pay again
# (torch: its compiler stack, ~1.5 s, imported by the first optimizer a script creates).
LAZY = {"torch": ("torch._dynamo",)}
# What a script may change before its imports that changes what they do: the server, which
# imports them before the script runs, stops at the first module-level statement naming one.
BEFORE_IMPORTS = frozenset({"environ", "putenv", "unsetenv", "sys.path", "meta_path", "path_hooks"})


def libraries(script: str, roots: list[str]) -> list[str]:
    """The modules `script` imports at module level that are installed libraries: found on
    sys.path outside `roots` and the standard library, and not flor_flows. Only those before
    a statement that may change how they import (`BEFORE_IMPORTS`, e.g. `os.environ[...] =`)."""
    with open(script, "rb") as f:
        names = imported_names(f.read())
    return [name for name in dict.fromkeys(names) if _installed(name.partition(".")[0], roots)]


def imported_names(source: bytes) -> list[str]:
    """Every module a script of `source` imports at module level before a statement that
    may change how they import."""
    tree = ast.parse(source)
    names: list[str] = []
    todo = list(tree.body)
    while todo:  # module level in source order, into if/try/with blocks, not into functions
        node = todo.pop(0)
        if _changes_imports(node):
            break
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            fields = ("body", "handlers", "orelse", "finalbody")
            todo[:0] = [inner for field in fields for inner in getattr(node, field, [])]
        elif isinstance(node, ast.ExceptHandler):
            todo[:0] = node.body
    return names


def _changes_imports(node: ast.AST) -> bool:
    """Whether a module-level statement (not a definition) names something in BEFORE_IMPORTS."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return False
    if isinstance(node, ast.If | ast.Try | ast.With | ast.ExceptHandler):  # bodies: one by one
        heads = [getattr(node, "test", None), getattr(node, "type", None)]
        heads += getattr(node, "items", [])
        return any(_names(head) & BEFORE_IMPORTS for head in heads if head is not None)
    return bool(_names(node) & BEFORE_IMPORTS)


def _names(node: ast.AST) -> set[str]:
    """The names and attributes in `node` (`sys.path` as such: `os.path` is harmless)."""
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            found.add(n.id)
        elif isinstance(n, ast.Attribute):
            sys_path = n.attr == "path" and isinstance(n.value, ast.Name) and n.value.id == "sys"
            found.add("sys.path" if sys_path else n.attr)
    return found


def _installed(top: str, roots: list[str]) -> bool:
    """Whether top-level module `top` is a library: in site-packages (even a virtualenv's
    inside the project) or anywhere outside `roots`; not the standard library."""
    if top in sys.stdlib_module_names or top in ("flor_flows", "__main__"):
        return False
    spec = importlib.util.find_spec(top)  # a top-level name: found, not imported
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return False
    places = [spec.origin, *(spec.submodule_search_locations or [])]
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    return all(_under(place, sites) or not _under(place, roots) for place in places)


def _under(path: str, directories: list[str]) -> bool:
    """Whether `path` is in one of `directories`."""
    real = os.path.realpath(path)
    return any(real.startswith(os.path.join(os.path.realpath(d), "")) for d in directories)


def _project_modules(roots: list[str]) -> list[str]:
    """The modules imported here whose files are in one of `roots`."""
    inside = tuple(os.path.join(os.path.realpath(root), "") for root in roots)
    return sorted(name for name, real in _REAL.items() if real.startswith(inside))


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def prepare(script: str, roots: list[str]) -> dict:
    """Import the script's libraries; what was imported, or why this process must not fork."""
    started = time.perf_counter()
    before = set(sys.modules)
    try:
        modules = libraries(script, roots)
    except (SyntaxError, ValueError) as exc:
        return {"ready": False, "why": f"the script does not parse: {exc}"}
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return {"ready": False, "why": f"importing {name} failed: {exc}"}
    for library, lazy in LAZY.items():
        if library in sys.modules:
            for name in lazy:
                with contextlib.suppress(ImportError):  # then the replays import it, or fail
                    importlib.import_module(name)
    if "flor_flows" in sys.modules:
        return {"ready": False, "why": "its libraries import flor_flows"}
    imported = set(sys.modules) - before
    for name in imported:  # relative paths name no file (torch.ops: an object, '_ops.py')
        file = getattr(sys.modules[name], "__file__", None)
        if isinstance(file, str) and os.path.isabs(file):
            _REAL[name] = os.path.realpath(file)
    project = _project_modules(roots)
    if project:  # a file of the project shadows a module its libraries import
        return {"ready": False, "why": f"its libraries import the project's {', '.join(project)}"}
    for real in _REAL.values():
        with contextlib.suppress(OSError):
            found = os.stat(real)
            _FILES[real] = (found.st_mtime_ns, found.st_size)
    _IMPORTED.update(name.partition(".")[0] for name in imported)
    if _threads() > 1:  # libraries' pools (OpenBLAS) stop before a fork: see if all do
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    if _threads() > 1:
        return {
            "ready": False,
            "why": f"threads of its libraries outlive a fork ({_threads() - 1})",
        }
    return {"ready": True, "modules": modules, "seconds": time.perf_counter() - started}


def serve(argv: list[str]) -> Request:
    """Prepare, then fork a child per request; returns only in a child, as that child."""
    socket_path, script, roots = argv[0], argv[1], json.loads(argv[2])
    watch, idle = int(argv[3]), float(argv[4])  # the launcher's pidfd; 0: no idle timeout
    sys.path[0] = os.path.dirname(os.path.realpath(script))  # as `python SCRIPT` has it
    on_interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the replays
    # they import what a writer needs while we import the libraries
    spares = [spare for spare in (_spare() for _ in range(SPARES)) if spare is not None]
    state = prepare(script, roots)
    if not state["ready"]:
        print(json.dumps(state), flush=True)
        sys.exit(0)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    print(json.dumps(state), flush=True)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)  # nobody reads our stdout from now on

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the selector
    selector = selectors.DefaultSelector()
    for source in (listener, wake_r, watch):
        selector.register(source, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}  # each child's client, told its exit status
    used = time.monotonic()
    while listener.fileno() != -1 or children:  # retired: until its last replay ends
        timeout = None if children or not idle else max(0.0, used + idle - time.monotonic())
        events = selector.select(timeout)
        if not events and listener.fileno() != -1:  # idle for `idle` seconds
            _retire(selector, listener, socket_path)
        for key, _ in events:
            if key.fileobj == watch:
                sys.exit(0)  # the launcher ended: so do we, and our children with us
            if key.fileobj == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                _reap(children, selector)
                used = time.monotonic()
                continue
            if key.fileobj != listener:  # a client went before its replay ended: end that too
                with contextlib.suppress(ProcessLookupError):
                    os.kill(key.data, signal.SIGTERM)
                selector.unregister(key.fileobj)
                continue
            conn, _ = listener.accept()
            used = time.monotonic()
            request = _receive(conn)
            if request is None:
                conn.close()
                continue
            refusal = _refusal(request)
            if refusal is not None:
                for fd in (request.stdout, request.stderr):
                    os.close(fd)
                if refusal.startswith("retired "):  # no more replays: it would fork stale code
                    _retire(selector, listener, socket_path)
                with contextlib.suppress(OSError):
                    conn.sendall(f"{refusal}\n".encode())
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, on_interrupt)  # as `python SCRIPT` would have it
                for fd in (wake_r, wake_w, watch, null):
                    os.close(fd)
                selector.close()
                for sock in (listener, conn, *children.values()):
                    sock.close()
                for other in spares[1:]:  # the next replays'
                    _drop(other)
                if not spares:
                    return request
                sock, spare_pid, spare_pidfd = spares[0]
                named = f"{spare_pid}:{sock.detach()}:{spare_pidfd}:{os.getpid()}"
                return request._replace(writer=named)
            os.close(request.stdout)
            os.close(request.stderr)
            # the oldest is that replay's now, and one that died is of no use: others for
            # the next replays
            for gone in spares[:1] + [s for s in spares[1:] if select.select([s[2]], [], [], 0)[0]]:
                spares.remove(gone)
                _drop(gone)
            started = (_spare() for _ in range(SPARES - len(spares)))
            spares += [spare for spare in started if spare is not None]
            pidfd = os.pidfd_open(pid)
            with contextlib.suppress(OSError):  # else the client gave up; the child is reaped
                socket.send_fds(conn, [f"{pid}\n".encode()], [pidfd])
            os.close(pidfd)
            children[pid] = conn
            selector.register(conn, selectors.EVENT_READ, pid)  # readable: the client went
    sys.exit(0)


def _spare() -> tuple[socket.socket, int, int] | None:
    """A spare writer for the next replay (`flor_flows.record.spare`): its socket, pid and
    pidfd; None if it cannot start (then each replay starts its own)."""
    ours, theirs = socket.socketpair()
    command = [sys.executable, "-P", "-m", "flor_flows.record.writer", "--spare"]
    actions = [
        (os.POSIX_SPAWN_DUP2, theirs.fileno(), 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
    ]
    try:
        pid = os.posix_spawn(sys.executable, command, os.environ, file_actions=actions)
    except OSError:
        ours.close()
        return None
    finally:
        theirs.close()
    return ours, pid, os.pidfd_open(pid)


def _drop(spare: tuple[socket.socket, int, int]) -> None:
    """Let go of a spare writer (`_spare`): its socket and pidfd here; it ends when no
    process holds its socket."""
    spare[0].close()
    os.close(spare[2])


def _retire(selector: selectors.BaseSelector, listener: socket.socket, path: str) -> None:
    """Take no more requests: close the listener and remove its socket, so that the next
    replay starts a new server."""
    selector.unregister(listener)
    listener.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _reap(children: dict[int, socket.socket], selector: selectors.BaseSelector) -> None:
    """Collect every ended child; tell its client the exit status (as Popen would give it)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        with contextlib.suppress(KeyError):  # else unregistered when its client went
            selector.unregister(conn)
        with contextlib.suppress(OSError):  # else the client is gone
            conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
        conn.close()


def _refusal(request: Request) -> str | None:
    """Why this server must not fork `request`: `refused <why>` when a fresh `python SCRIPT`
    would not use every module it imported, `retired <why>` when one of those changed since
    (it then forks no more); None if it may."""
    for path, (mtime, size) in _FILES.items():
        try:
            found = os.stat(path)
        except OSError:
            found = None
        if found is None or (found.st_mtime_ns, found.st_size) != (mtime, size):
            return f"retired {path} changed since its fork server imported it"
    project = _project_modules(request.roots)
    if project:
        return f"refused its fork server imported {', '.join(project)} from the project"
    directory = os.path.dirname(os.path.realpath(request.script))
    try:
        entries = os.listdir(directory)
    except OSError as exc:
        return f"refused its directory cannot be read ({exc})"
    names = {entry.partition(".")[0] for entry in entries if entry.endswith(_MODULE_SUFFIXES)}
    names |= {entry for entry in entries if os.path.isdir(os.path.join(directory, entry))}
    clash = sorted(names & _IMPORTED)
    if clash:
        return f"refused {', '.join(clash)} beside the script shadows its fork server's"
    return None


def _receive(conn: socket.socket) -> Request | None:
    """A request: a byte with the child's stdout and stderr fds, then a JSON line."""
    conn.settimeout(REQUEST_TIMEOUT)
    try:
        _, fds, _, _ = socket.recv_fds(conn, 1, 2)
        with conn.makefile("rb") as lines:
            fields = json.loads(lines.readline())
    except (OSError, ValueError):
        return None
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return None
    return Request(
        str(fields["script"]),
        str(fields["cwd"]),
        list(fields["argv"]),
        dict(fields["env"]),
        list(fields["roots"]),
        fds[0],
        fds[1],
    )


def become(request: Request) -> None:
    """Turn this forked child into `python SCRIPT ARGV` with the request's stdio and env."""
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((null, 0), (request.stdout, 1), (request.stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != _SERVER:  # the server ended before prctl took hold
        os.kill(os.getpid(), signal.SIGTERM)
    apply_env(request.env)
    if request.writer:
        os.environ[SPARE_WRITER] = request.writer
    os.chdir(request.cwd)
    sys.path[0] = os.path.dirname(os.path.realpath(request.script))  # as `python SCRIPT` has it
    sys.argv = [request.script, *request.argv]
    sys.orig_argv = [sys.executable, *sys.argv]
    importlib.invalidate_caches()  # files may have appeared since the server started
    legacy = sys.modules.get("numpy.random")  # seeded at import; a fresh process reseeds
    if legacy is not None:
        legacy.seed()


def apply_env(env: dict[str, str]) -> None:
    """Make `env` this process's environment, and Prefect's settings read at use (`AT_USE`)
    its own where this process imported Prefect with others."""
    before = {k: os.environ.get(k) for k in AT_USE}
    os.environ.clear()
    os.environ.update(env)
    context = sys.modules.get("prefect.context")
    if context is not None and before != {k: os.environ.get(k) for k in AT_USE}:
        context.refresh_global_settings_context()


def run(script: str) -> None:
    """Run `script` as `__main__`, ending as the interpreter would: SystemExit as raised; an
    uncaught exception printed by `sys.excepthook` (from the script's frame on), then exit 1,
    or for KeyboardInterrupt, the exit handlers and death by SIGINT."""
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__cached__ = None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    try:
        with open(script, "rb") as f:
            code = compile(f.read(), script, "exec", dont_inherit=True)
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the interpreter's top level, for `python SCRIPT`
        exc.with_traceback(exc.__traceback__.tb_next if exc.__traceback__ else None)
        sys.excepthook(type(exc), exc, exc.__traceback__)
        if not isinstance(exc, KeyboardInterrupt):
            sys.exit(1)
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_SERVER = os.getpid()
_IMPORTED: set[str] = set()  # the top-level names of the modules `prepare` imported
_FILES: dict[str, tuple[int, int]] = {}  # their files: modification time (ns) and size
_REAL: dict[str, str] = {}  # module name: its file's real path
_MODULE_SUFFIXES = tuple(importlib.machinery.all_suffixes())

if __name__ == "__main__":
    child = serve(sys.argv[1:])
    become(child)
    run(child.script)
