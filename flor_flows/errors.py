"""Exceptions raised by flor-flows. Every error a user can cause derives from `FlorError`."""


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


class TrainingFailed(FlorError):
    """A training script exited with an error (the message ends with its stderr tail)."""


class DirtySubmodule(UserWarning):
    """A submodule has uncommitted edits, which a run's code version does not hold."""
