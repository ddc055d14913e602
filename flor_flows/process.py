"""Whether a process of this host still runs: for runs and spill files whose owner is gone."""

from __future__ import annotations

import os
import socket
from pathlib import Path

HOST = socket.gethostname()  # where a process runs: a pid means something only there
DIED = "process ended without finishing the run"  # a run's error when its process vanished


def alive(pid: int) -> bool:
    """True while process `pid` runs; a zombie (exited, not yet reaped) has gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: the signal test is all there is
    return state != "Z"
