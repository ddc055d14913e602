"""A writer process started ahead of the replay that will use it.

A run's writer process (`writer.py`) imports SQLAlchemy and the store's schema before it
answers: ~0.4 s, and a forked replay waits for it before it restores its first checkpoint.
So a fork server (`replay.forkserver_main`) keeps one writer started as `python -P -m
flor_flows.record.writer --spare`, which imports all that and then waits on a socket. The
next replay it forks gets that socket, named in its environment (ENV_VAR: its pid, the
socket's fd and a pidfd of the spare, fds it inherited), and hands the spare what a writer
it started itself would have had (`hand_over`): its pipes, stderr, working directory and
environment. From then on the spare is that replay's writer; the server starts another.

A spare that is gone, or an environment naming another process (a subprocess of the
script inherited it), leaves the replay to start its own writer, as any run does.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
from typing import IO

ENV_VAR = "FLOR_FLOWS_SPARE_WRITER"


class Adopted:
    """A spare writer handed this process's pipes, as `buffer.WriterProcess` uses a Popen.

    It is not this process's child: `pidfd` tells when it ended, not how.
    """

    def __init__(self, pid: int, pidfd: int, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self.pid, self.stdin, self.stdout = pid, stdin, stdout
        self._pidfd = pidfd

    def poll(self) -> int | None:
        """None while it runs, else 0 (its exit status is its server's to collect)."""
        ended, _, _ = select.select([self._pidfd], [], [], 0)
        return 0 if ended else None

    def wait(self, timeout: float | None = None) -> int:
        """As subprocess.Popen.wait, with 0 for its exit status."""
        ended, _, _ = select.select([self._pidfd], [], [], timeout)
        if not ended:
            raise subprocess.TimeoutExpired(["flor_flows.record.writer"], timeout or 0.0)
        return 0


def hand_over() -> Adopted | None:
    """The spare writer named in this process's environment, given this process's pipes;
    None (the variable dropped) if there is none, it is another process's, or it is gone."""
    named = os.environ.pop(ENV_VAR, "")
    try:
        pid, sock_fd, pidfd, owner = (int(part) for part in named.split(":"))
    except ValueError:
        return None
    if owner != os.getpid():  # inherited from the replay that was handed it
        return None
    with socket.socket(fileno=sock_fd) as sock:
        if select.select([pidfd], [], [], 0)[0]:  # it ended already
            os.close(pidfd)
            return None
        to_writer, from_us = os.pipe()
        to_us, from_writer = os.pipe()
        state = json.dumps({"cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        try:
            socket.send_fds(sock, [b"%d\n" % len(state)], [to_writer, from_writer, 2])
            sock.sendall(state)
        except OSError:  # it went meanwhile
            for fd in (from_us, to_us, pidfd):
                os.close(fd)
            return None
        finally:
            os.close(to_writer)
            os.close(from_writer)
    return Adopted(pid, pidfd, open(from_us, "wb"), open(to_us, "rb"))  # noqa: SIM115


def adopt() -> bool:
    """In the spare, whose stdin is its socket: wait for a replay's pipes, stderr, working
    directory and environment (`hand_over`) and make them this process's stdin, stdout,
    stderr, directory and environment; False if its server ended first."""
    sock = socket.socket(fileno=0)
    head, fds, _, _ = socket.recv_fds(sock, 32, 3)
    size, _, data = head.partition(b"\n")
    if len(fds) != 3 or not size.isdigit():
        for fd in fds:
            os.close(fd)
        return False
    while len(data) < int(size) and (chunk := sock.recv(1 << 16)):
        data += chunk
    state = json.loads(data)
    sock.detach()  # fd 0 becomes the replay's pipe
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(state["cwd"])
    os.environ.clear()
    os.environ.update(state["env"])
    return True
