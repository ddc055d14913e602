"""Hand a `flor-flows` command to the warm process (warm.py), the caller's side.

`flor-flows CMD` connects to the warm process's Unix socket in PREFECT_HOME, hands over its
arguments, directory, environment and its own stdin/stdout/stderr (as file descriptors), and
forwards Ctrl-C and other signals to the command's process group until it ends; its exit
code is the command's. A caller whose Python, Prefect settings read at import or flor-flows
sources differ from the warm process's (`fingerprint`) runs the command itself, as does
every caller when no warm process answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
from pathlib import Path

import flor_flows
from flor_flows.api import ephemeral_defaults
from flor_flows.background import prefect_mode, warm_socket
from flor_flows.errors import PrefectApiError
from flor_flows.replay.forkserver_main import AT_USE

# The commands worth a warm start: those that import Prefect, pandas or libcst.
COMMANDS = frozenset({
    "replay", "train", "runs", "dataframe", "query", "backfills", "propagate", "prepare",
})  # fmt: skip
MAX_REQUEST = 1 << 20  # argv, cwd and environment, as JSON
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
SOURCES = [Path(flor_flows.__file__).parent, *(Path(flor_flows.__file__).parents[1] / d for d in ("flows", "deployments"))]  # fmt: skip


def fingerprint() -> dict[str, str]:
    """What a caller and the warm process must share for a forked command to behave as a
    fresh one: the interpreter, Prefect's settings read at import and our sources."""
    stats = hashlib.sha256()
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            found = path.stat()
            stats.update(f"{path}:{found.st_mtime_ns}:{found.st_size}\n".encode())
    prefect = {
        k: v for k, v in sorted(os.environ.items()) if k.startswith("PREFECT_") and k not in AT_USE
    }
    return {
        "python": sys.executable,
        "prefect": json.dumps(prefect),
        "sources": stats.hexdigest(),
    }


def wanted() -> bool:
    """Whether commands run in the warm process here: FLOR_FLOWS_WARM is not 0 and they use
    the background Prefect server (a bad FLOR_FLOWS_PREFECT: no, the command says why)."""
    try:
        mode = prefect_mode()
    except PrefectApiError:
        return False
    return os.environ.get("FLOR_FLOWS_WARM") != "0" and mode == "background"


def forward(argv: list[str], home: Path) -> int | None:
    """Run `flor-flows argv` in the warm process of `home`: its exit code, or None when
    there is none to run it (then the caller runs the command itself)."""
    if not argv or argv[0] not in COMMANDS or not _std_fds_open():
        return None
    ephemeral_defaults()  # as the command would, and as the warm process did: same settings
    path = warm_socket(home)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(str(path))
    except OSError:  # none, or a stale socket file: the command runs here
        sock.close()
        return None
    with sock:
        request = {
            "argv": argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "umask": _umask(),
            "fingerprint": fingerprint(),
        }
        socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
        reply = receive(sock)
        if "pid" not in reply:
            return None  # stale: the warm process no longer matches this caller
        return _follow(sock, reply["pid"])


def _follow(sock: socket.socket, pid: int) -> int:
    """Forward signals to the command's process group until it ends; its exit code."""
    previous = {sig: signal.signal(sig, lambda sig, _: kill_group(pid, sig)) for sig in FORWARDED}
    try:
        reply = receive(sock)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "exit" not in reply:
        print("flor-flows: error: the warm process ended without the command's exit code", file=sys.stderr)  # fmt: skip
        return 1
    code = reply["exit"]
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


def kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _std_fds_open() -> bool:
    """Whether stdin, stdout and stderr are all open (a closed one cannot be handed over)."""
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def receive(sock: socket.socket) -> dict:
    """The next message on `sock`; {} when the other side closed it."""
    data = sock.recv(MAX_REQUEST)
    return json.loads(data) if data else {}


def send(sock: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):  # a caller gone has nothing left to read
        sock.send(json.dumps(message).encode())
