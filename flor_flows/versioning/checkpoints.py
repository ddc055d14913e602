"""Checkpoints of loop-carried state: serialisation, an fsspec object store, and when to write.

A checkpoint is one file holding every object given to `flor.checkpointing(...)` plus the
global RNG states, so that a replay started from it continues exactly as the run did.
"""

from __future__ import annotations

import copy
import hashlib
import math
import pickle
import random
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from flor_flows.errors import CheckpointError
from flor_flows.secrets import redact_url
from flor_flows.versioning import paths, storage

_TORCH_STATEFUL = ("state_dict", "load_state_dict")


def _is_torch_stateful(obj: Any) -> bool:
    return "torch" in sys.modules and all(callable(getattr(obj, a, None)) for a in _TORCH_STATEFUL)


class _Tensor(NamedTuple):
    """A torch tensor carried as a numpy copy, so it pickles out-of-band without the GIL."""

    array: Any
    device: str


def _detach(state: Any) -> Any:
    """A copy of a (nested) state dict with every tensor copied off the live model."""
    torch = sys.modules["torch"]
    if isinstance(state, torch.Tensor):
        tensor = state.detach()
        try:
            return _Tensor(tensor.cpu().numpy().copy(), str(tensor.device))
        except TypeError:  # a dtype numpy lacks (bfloat16, ...): keep it a tensor
            return tensor.clone()
    if isinstance(state, dict):
        return type(state)((key, _detach(value)) for key, value in state.items())
    if type(state) in (list, tuple):
        return type(state)(_detach(value) for value in state)
    return copy.deepcopy(state)


def _attach(state: Any) -> Any:
    """The inverse of `_detach`: numpy copies back to tensors on their devices."""
    if isinstance(state, _Tensor):
        torch = sys.modules["torch"]
        return torch.from_numpy(state.array.copy()).to(state.device)
    if isinstance(state, dict):
        return type(state)((key, _attach(value)) for key, value in state.items())
    if type(state) in (list, tuple):
        return type(state)(_attach(value) for value in state)
    return state


def _state_of(obj: Any) -> tuple[str, Any]:
    """A copy of `obj`'s state that later training steps cannot change."""
    if _is_torch_stateful(obj):
        return "state_dict", _detach(obj.state_dict())
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


_MAGIC = b"FLORCKP1"
_LENGTH = struct.Struct("<Q")


def serialize(payload: dict[str, Any]) -> list[bytes | memoryview]:
    """The pieces of a checkpoint file: a small pickle, then its arrays' raw bytes.

    Arrays go out-of-band (pickle protocol 5), so writing them is a plain copy of memory.
    """
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(payload, protocol=5, buffer_callback=buffers.append)
    pieces: list[bytes | memoryview] = [
        _MAGIC,
        _LENGTH.pack(len(buffers)),
        _LENGTH.pack(len(header)),
        header,
    ]
    for buffer in buffers:
        raw = buffer.raw()
        pieces += [_LENGTH.pack(raw.nbytes), raw]
    return pieces


def _deserialize(data: bytes) -> dict[str, Any]:
    if not data.startswith(_MAGIC):
        raise CheckpointError("not a flor-flows checkpoint file")
    view, offset = memoryview(data), len(_MAGIC)
    (count,) = _LENGTH.unpack_from(view, offset)
    (size,) = _LENGTH.unpack_from(view, offset + 8)
    header, offset = view[offset + 16 : offset + 16 + size], offset + 16 + size
    buffers = []
    for _ in range(count):
        (length,) = _LENGTH.unpack_from(view, offset)
        buffers.append(view[offset + 8 : offset + 8 + length])
        offset += 8 + length
    return pickle.loads(header, buffers=buffers)


def _restore_into(target: Any, kind: str, state: Any) -> None:
    if kind == "pickled":
        state = pickle.loads(state)
    if kind == "state_dict":
        target.load_state_dict(_attach(state))
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


def restore(data: bytes, objects: dict[str, Any], rng: bool = True) -> None:
    """Load a checkpoint's state back into the live `objects`, in place, and the RNG states.

    A warm start passes `rng=False`: the new run keeps the randomness its own seed gave it.
    """
    payload = _deserialize(data)
    missing = set(objects) - set(payload["objects"])
    if missing:
        raise CheckpointError(f"checkpoint holds no state for {sorted(missing)}")
    for name, obj in objects.items():
        try:
            _restore_into(obj, *payload["objects"][name])
        except (RuntimeError, ValueError, KeyError) as exc:  # e.g. a state_dict shape mismatch
            raise CheckpointError(f"cannot restore {name!r} from the checkpoint: {exc}") from exc
    if rng:
        _set_rng_states(payload["rng"])


@dataclass(frozen=True)
class Written:
    """A checkpoint file as written: where, its hash and size, and how long writing took."""

    uri: str
    sha256: str
    bytes: int
    seconds: float


class CheckpointStore:
    """Content files under one fsspec URL: `<root>/<run uid>/<loop>-<iteration>.ckpt`.

    The run uid and loop name are encoded into single path segments (`paths.segment`), so
    no name can place a file outside the root; each file appears whole or not at all. The
    filesystem is opened with the project's storage options (`storage.filesystem`).
    """

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = root.rstrip("/")
        what = "cannot open checkpoint location"
        self.fs, self._path = storage.filesystem(self.root, storage_options, CheckpointError, what)
        self._path = self._path.rstrip("/")
        self._tidied: set[str] = set()  # run directories cleaned of killed writes' leftovers

    def probe(self) -> None:
        """Fail early, with a clear message, when the location cannot be written."""
        try:
            self.fs.makedirs(self._path, exist_ok=True)
            probe = paths.temp_name(f"{self._path}/probe")
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except storage.STORE_ERRORS as exc:
            raise CheckpointError(
                f"checkpoint location {redact_url(self.root)!r} is not writable: "
                f"{storage.reason(exc)}"
            ) from exc

    def key(self, run_uid: str, loop: str, iteration: int) -> str:
        """The file's path relative to the root: always exactly one directory below it."""
        return f"{paths.segment(run_uid)}/{paths.segment(loop)}-{int(iteration)}.ckpt"

    def write(self, run_uid: str, loop: str, iteration: int, payload: dict[str, Any]) -> Written:
        """Serialise and store a `snapshot` (safe to call from a background thread)."""
        start = time.perf_counter()
        key = self.key(run_uid, loop, iteration)
        uri, path = f"{self.root}/{key}", f"{self._path}/{key}"
        digest, size = hashlib.sha256(), 0
        with storage.failures(CheckpointError, "cannot write checkpoint", uri):
            directory = path.rsplit("/", 1)[0]
            self.fs.makedirs(directory, exist_ok=True)
            tidy = directory not in self._tidied  # the first write of this store there
            self._tidied.add(directory)
            with paths.atomic(self.fs, path, tidy) as tmp, self.fs.open(tmp, "wb") as out:
                for piece in serialize(payload):
                    out.write(piece)
                    digest.update(piece)
                    size += len(piece) if isinstance(piece, bytes) else piece.nbytes
        return Written(uri, digest.hexdigest(), size, time.perf_counter() - start)

    @staticmethod
    def read(
        uri: str, sha256: str | None = None, storage_options: Mapping[str, Any] | None = None
    ) -> bytes:
        """The bytes of the checkpoint at `uri`, checked against its recorded `sha256`."""
        what = "cannot read checkpoint"
        fs, path = storage.filesystem(uri, storage_options, CheckpointError, what)
        with storage.failures(CheckpointError, what, uri):
            data = fs.cat_file(path)
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise CheckpointError(
                f"checkpoint {redact_url(uri)} does not match its recorded sha256"
            )
        return data


class EveryIteration:
    """Checkpoint at the end of every outer iteration."""

    every_iteration = True

    def should_write(self, loop_seconds: float) -> bool:
        """Always: every iteration ends with a checkpoint."""
        return True

    def wrote(self, seconds: float) -> None:
        """Nothing to learn from a checkpoint's cost."""
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
        """Whether to checkpoint now, `loop_seconds` after the previous iteration ended."""
        self.since_last += loop_seconds
        return self.samples < self.WARMUP or self.cost <= self.epsilon * self.since_last

    def wrote(self, seconds: float) -> None:
        """Learn a checkpoint's cost (copy and write), and start counting loop time anew."""
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
