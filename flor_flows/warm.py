"""A warm process that runs `flor-flows` commands without paying their imports each time.

A command's own work is often a second or two; importing Prefect, pandas, SQLAlchemy and
libcst costs 4-5 s before it starts. Next to the background Prefect server (background.py)
runs one process that has imported all of that and waits on a Unix socket in PREFECT_HOME.
`flor-flows CMD` connects (handover.py), hands over its arguments, directory, environment
and its own stdin/stdout/stderr (as file descriptors), and the warm process forks a child
that runs the command exactly as the command line would, in its own process group; the
caller forwards Ctrl-C and other signals to that group and exits with the child's code.

Forking is safe because the warm process only imports: it starts no thread (checked before
it listens) and opens no connection. Prefect reads most of its settings (logging above all)
when it is imported, so a caller whose Python, Prefect settings (PREFECT_* variables) or
flor-flows sources differ from the warm process's runs the command itself, as does every
caller when no warm process answers: the warm path only ever saves time. The settings Prefect
reads when it uses them (`AT_USE`: which API, its key, the ephemeral server's) may differ:
the child reads Prefect's settings again with the caller's.

The fork servers that replays fork from (`replay.forkserver`) are kept from one command to
the next: the first command's replays of a script start one (torch: ~3 s of imports), the
next commands' fork from it. They come to this process when their command ends (it is their
subreaper) and end with it.
"""

from __future__ import annotations

import ctypes
import gc
import io
import json
import os
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
from pathlib import Path

from flor_flows.api import ephemeral_defaults
from flor_flows.background import warm_socket
from flor_flows.handover import MAX_REQUEST, fingerprint, kill_group, send
from flor_flows.process import alive
from flor_flows.replay import forkserver
from flor_flows.replay.forkserver_main import apply_env

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
SERVER_CHECK = 2.0  # seconds between checks that the Prefect server it serves still runs


def serve(home: Path, server_pid: int) -> None:
    """Import what the commands need, then fork one child per caller until the server ends."""
    ephemeral_defaults()  # as every caller does before comparing
    shared = fingerprint()
    _preload()
    gc.freeze()  # the children share these objects: no copy of them when one collects or exits
    if threading.active_count() != 1:  # a thread would not survive a fork: no warm starts
        print(f"flor-flows warm: {threading.enumerate()} after imports; not serving", flush=True)
        return
    path = warm_socket(home)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old_mask = os.umask(0o177)  # the socket is the user's only: it runs commands as them
    listener.bind(str(path))
    os.umask(old_mask)
    listener.listen(16)
    listener.settimeout(SERVER_CHECK)
    # Sessions are reaped as they end, and so are the fork servers their commands leave
    # running (they come to us when their command ends): they live as long as we do.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    forks = Path(tempfile.mkdtemp(prefix="flor-flows-forks-"))
    forkserver.keep(forks, os.pidfd_open(os.getpid()))

    def leave() -> None:  # not a `finally`: a command's child leaves through this frame too
        path.unlink(missing_ok=True)
        shutil.rmtree(forks, ignore_errors=True)

    def stopped(signum: int, frame: object) -> None:
        leave()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stopped)
    print(f"flor-flows warm: serving on {path} (pid {os.getpid()})", flush=True)
    while alive(server_pid):
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            listener.close()
            _session(conn, shared)
            os._exit(0)
        conn.close()
    leave()


def _preload() -> None:
    """Import the modules the commands use (each import of them is what a warm start saves),
    those Prefect imports only once a flow runs included."""
    import anyio.streams.memory  # noqa: F401
    import fastapi.encoders  # noqa: F401 - Prefect serialises a flow's parameters with it
    import prefect.client.orchestration  # noqa: F401
    import prefect.flow_engine  # noqa: F401
    import prefect.task_engine  # noqa: F401
    import prefect.utilities.visualization  # noqa: F401
    import sqlalchemy.dialects.sqlite  # noqa: F401

    import flor_flows.cli  # noqa: F401
    import flor_flows.reconcile  # noqa: F401
    import flor_flows.replay.backfill  # noqa: F401
    import flor_flows.replay.plan  # noqa: F401
    import flor_flows.store  # noqa: F401
    import flor_flows.store.query  # noqa: F401
    import flor_flows.tables  # noqa: F401
    import flows.backfill  # noqa: F401
    import flows.training  # noqa: F401


def _session(conn: socket.socket, shared: dict[str, str]) -> None:
    """One caller: check it matches, fork the command's child, report how the child ended."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # waitpid, here and in the command's child
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
    data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
    request = json.loads(data)
    theirs = request.get("fingerprint", {})
    if uid != os.getuid() or len(fds) != 3 or theirs != shared:
        differ = [key for key in shared if theirs.get(key) != shared[key]]
        print(f"flor-flows warm: not serving uid {uid}: {len(fds)} fds, {differ} differ", flush=True)  # fmt: skip
        send(conn, {"stale": "another user, Python, Prefect settings or flor-flows version"})
        edited = theirs.get("python") == shared["python"] and theirs.get("sources") != shared["sources"]  # fmt: skip
        if (
            edited
        ):  # flor-flows' own sources changed: retire; the next train or replay starts a fresh one
            os.kill(os.getppid(), signal.SIGTERM)
        return
    pid = os.fork()
    if pid == 0:
        conn.close()
        _become(request, fds)  # runs the command and exits; never returns
    for fd in fds:
        os.close(fd)
    send(conn, {"pid": pid})
    print(f"flor-flows warm: pid {pid}: flor-flows {' '.join(request['argv'])}", flush=True)
    send(conn, {"exit": os.waitstatus_to_exitcode(_wait(pid, conn))})


def _wait(pid: int, conn: socket.socket) -> int:
    """The wait status of the command's child; its group is hung up on if the caller goes."""
    child = os.pidfd_open(pid)  # readable when the child ends
    watched = [child, conn]
    while child not in select.select(watched, [], [])[0]:
        if not conn.recv(1):  # the caller exited or was killed, as a closed terminal
            kill_group(pid, signal.SIGHUP)
            watched = [child]
    os.close(child)
    return os.waitpid(pid, 0)[1]


def _become(request: dict, fds: list[int]) -> None:
    """Turn this forked child into the caller's `flor-flows` process and run the command."""
    os.setpgid(0, 0)  # the caller forwards signals to this group, as a terminal would
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    apply_env(request["env"])
    os.umask(request["umask"])
    sys.argv = ["flor-flows", *request["argv"]]
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), line_buffering=os.isatty(1), write_through=False
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), line_buffering=True, errors="backslashreplace"
    )
    from flor_flows.cli import main

    sys.exit(main(request["argv"]))  # exits this child as the command line would


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))
