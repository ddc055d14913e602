"""Exceptions raised by flor-flows. Every error a user can cause derives from `FlorError`."""

from __future__ import annotations


class FlorError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class NotAGitRepository(FlorError):
    """The project is not inside a git working tree, so its code cannot be versioned."""


class ArgumentError(FlorError):
    """A `flor.arg` has no default and no value was given on the command line."""


class DataError(FlorError):
    """A declared data batch cannot be read or versioned."""


class CheckpointError(FlorError):
    """Checkpoints cannot be written to or read from their location."""


class StoreError(FlorError):
    """The relational store is unreachable or was written by an incompatible schema."""


class CorruptStore(StoreError):
    """A SQLite store file that is not a readable database (overwritten, truncated, damaged)."""

    SQLITE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
    SQLITE_MESSAGES = ("database disk image is malformed", "file is not a database")

    @classmethod
    def from_error(cls, path: str, exc: BaseException) -> CorruptStore | None:
        """The error for sqlite3's `exc` (bare, or SQLAlchemy's wrapper of it) on the store file
        at `path` when `exc` says the file is damaged; None for any other error."""
        orig = getattr(exc, "orig", exc)
        code = getattr(orig, "sqlite_errorcode", None)
        if code is None:  # another SQLite library (connectorx's): only its message tells
            if str(orig).strip() not in cls.SQLITE_MESSAGES:
                return None
        elif code & 0xFF not in cls.SQLITE_CODES:
            return None
        reason = (str(orig).strip().splitlines() or ["damaged"])[0]
        return cls(
            f"the store {path} is not a readable SQLite database ({reason}): restore it from "
            "a backup or point FLOR_FLOWS_STORE_URL at a new store"
        )


class TrainingFailed(FlorError):
    """A training script exited with an error (the message ends with its stderr tail)."""


class DirtySubmodule(UserWarning):
    """A submodule has uncommitted edits, which a run's code version does not hold."""


class StorageOptionsError(FlorError):
    """`storage_options` hold a literal credential, or name an environment variable not set."""


class CodeArchiveError(FlorError):
    """A code version's archive on the object store is missing, unreadable or not intact."""


class ConfigError(FlorError):
    """A setting (pyproject, environment) that is not valid, or an extra the request needs
    that is not installed."""


class RequestError(FlorError):
    """A request that cannot be carried out as given: an unknown name or run, a filter or
    selection that does not parse, a script or file that is not there, conflicting options."""


class UsageError(FlorError):
    """The record API called in a way it cannot record (a name it cannot store, a loop nested
    too deep, a run context that does not parse)."""


class CodeVersionError(FlorError):
    """git cannot snapshot, read or materialise a code version."""


class PrefectApiError(FlorError):
    """The Prefect API does not answer, or a Prefect server cannot be started or reached."""


class ArrivalsBlocked(FlorError):
    """Batches another retraining run claimed earlier are not consumed yet: this one waits."""


class Unparsable(FlorError):
    """A source file is not valid Python 3."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line, self.message = line, message


class ReplayFailed(FlorError):
    """A replay's child process exited with an error (the message ends with its stderr tail)."""


class ReplayDiverged(FlorError):
    """A replay ran, but the run's own values came out different: its new values are untrusted."""


class DemoStepFailed(FlorError):
    """A retraining flow run of the demo did not complete."""
