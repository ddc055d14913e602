"""Checkpoints of loop-carried state: serialisation, an fsspec object store, and when to write.

A checkpoint is one file holding every object given to `flor.checkpointing(...)` plus the
global RNG states, so that a replay started from it continues exactly as the run did.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import pickle
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import fsspec

from flor_flows.errors import CheckpointError

_TORCH_STATEFUL = ("state_dict", "load_state_dict")


def _is_torch_stateful(obj: Any) -> bool:
    return "torch" in sys.modules and all(callable(getattr(obj, a, None)) for a in _TORCH_STATEFUL)


def _state_of(obj: Any) -> tuple[str, Any]:
    """A copy of `obj`'s state that later training steps cannot change."""
    if _is_torch_stateful(obj):
        return "state_dict", copy.deepcopy(obj.state_dict())
    if "numpy" in sys.modules and isinstance(obj, sys.modules["numpy"].ndarray):
        return "ndarray", obj.copy()
    return "pickled", pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"random": random.getstate()}
    if "numpy" in sys.modules:
        states["numpy"] = sys.modules["numpy"].random.get_state()
    if "torch" in sys.modules:
        states["torch"] = sys.modules["torch"].get_rng_state()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["random"])
    if "numpy" in states:
        sys.modules["numpy"].random.set_state(states["numpy"])
    if "torch" in states:
        sys.modules["torch"].set_rng_state(states["torch"])


def snapshot(objects: dict[str, Any]) -> dict[str, Any]:
    """Copy the state of `objects` and the RNGs now; the slow part (`serialize`) can run later."""
    return {
        "objects": {name: _state_of(obj) for name, obj in objects.items()},
        "rng": _rng_states(),
    }


def serialize(payload: dict[str, Any]) -> bytes:
    """The bytes of a snapshot (torch tensors via torch.save, everything else pickled)."""
    if "torch" in sys.modules:
        buffer = io.BytesIO()
        sys.modules["torch"].save(payload, buffer)
        return b"T" + buffer.getvalue()
    return b"P" + pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


def _restore_into(target: Any, kind: str, state: Any) -> None:
    if kind == "pickled":
        state = pickle.loads(state)
    if kind == "state_dict":
        target.load_state_dict(state)
    elif kind == "ndarray":
        target[...] = state
    elif hasattr(target, "iloc") and hasattr(state, "iloc"):
        target.iloc[:] = state.iloc[:]
    elif isinstance(target, dict):
        target.clear()
        target.update(state)
    elif isinstance(target, list):
        target[:] = state
    elif isinstance(target, set):
        target.clear()
        target.update(state)
    elif hasattr(target, "__dict__"):
        target.__dict__.clear()
        target.__dict__.update(state.__dict__)
    else:
        raise CheckpointError(
            f"cannot restore an immutable {type(target).__name__} in place; checkpoint a "
            "container (dict, list, object) that holds it instead"
        )


def restore(data: bytes, objects: dict[str, Any]) -> None:
    """Load a checkpoint's state back into the live `objects`, in place, and the RNG states."""
    if data[:1] == b"T":
        import torch

        payload = torch.load(io.BytesIO(data[1:]), weights_only=False)
    else:
        payload = pickle.loads(data[1:])
    missing = set(objects) - set(payload["objects"])
    if missing:
        raise CheckpointError(f"checkpoint holds no state for {sorted(missing)}")
    for name, obj in objects.items():
        _restore_into(obj, *payload["objects"][name])
    _set_rng_states(payload["rng"])


@dataclass(frozen=True)
class Written:
    uri: str
    sha256: str
    bytes: int
    seconds: float


class CheckpointStore:
    """Content files under one fsspec URL: `<root>/<run uid>/<loop>-<iteration>.ckpt`."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.fs, self._path = fsspec.core.url_to_fs(self.root)

    def probe(self) -> None:
        """Fail early, with a clear message, when the location cannot be written."""
        try:
            self.fs.makedirs(self._path, exist_ok=True)
            probe = f"{self._path}/.probe"
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except OSError as exc:
            raise CheckpointError(
                f"checkpoint location {self.root!r} is not writable: {exc}"
            ) from exc

    def write(self, run_uid: str, loop: str, iteration: int, payload: dict[str, Any]) -> Written:
        """Serialise and store a `snapshot` (safe to call from a background thread)."""
        start = time.perf_counter()
        data = serialize(payload)
        uri = f"{self.root}/{run_uid}/{loop}-{iteration}.ckpt"
        try:
            self.fs.makedirs(f"{self._path}/{run_uid}", exist_ok=True)
            self.fs.pipe_file(f"{self._path}/{run_uid}/{loop}-{iteration}.ckpt", data)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {uri}: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        return Written(uri, digest, len(data), time.perf_counter() - start)

    @staticmethod
    def read(uri: str, sha256: str | None = None) -> bytes:
        try:
            with fsspec.open(uri, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {uri}: {exc}") from exc
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise CheckpointError(f"checkpoint {uri} does not match its recorded sha256")
        return data


class EveryIteration:
    """Checkpoint at the end of every outer iteration."""

    every_iteration = True

    def should_write(self, loop_seconds: float) -> bool:
        return True

    def wrote(self, seconds: float) -> None:
        pass


class Adaptive:
    """Flor's rule (VLDB 2021): keep checkpoint cost under `epsilon` of loop time.

    The first two iterations are checkpointed to measure the cost M (the first write pays
    one-off warm-up, so M is the cheaper of the two). After that a checkpoint is written
    once the loop time since the last one reaches M / epsilon: every iteration when M is
    cheap, a sparse period when it is not.
    """

    WARMUP = 2
    every_iteration = False

    def __init__(self, epsilon: float = 1 / 15) -> None:
        if not 0 < epsilon <= 1:
            raise CheckpointError(f"checkpoint epsilon must be in (0, 1], got {epsilon}")
        self.epsilon = epsilon
        self.cost = math.inf
        self.samples = 0
        self.since_last = 0.0

    def should_write(self, loop_seconds: float) -> bool:
        self.since_last += loop_seconds
        return self.samples < self.WARMUP or self.cost <= self.epsilon * self.since_last

    def wrote(self, seconds: float) -> None:
        self.cost = min(self.cost, seconds)
        self.samples += 1
        self.since_last = 0.0


def policy(spec: str) -> EveryIteration | Adaptive:
    """Parse a policy setting: "every", "adaptive" or "adaptive:<epsilon>"."""
    name, _, arg = spec.partition(":")
    if name == "every" and not arg:
        return EveryIteration()
    if name == "adaptive":
        try:
            return Adaptive(float(arg)) if arg else Adaptive()
        except ValueError as exc:
            raise CheckpointError(f"bad checkpoint policy {spec!r}: {exc}") from exc
    raise CheckpointError(f"unknown checkpoint policy {spec!r}; use 'every' or 'adaptive[:eps]'")
