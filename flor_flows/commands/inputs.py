"""What a command reads from its command line: typed flow requests and source files, each
bad input a one-line FlorError."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, TypeVar

from flor_flows.errors import RequestError

T = TypeVar("T")


def typed_request(model: type[T], flags: dict[str, str] | None = None, **fields: object) -> T:
    """A flow's typed request from the command line; its validation errors as a FlorError
    naming the options (`flags`: field -> option where the two differ; else --field)."""
    from pydantic import ValidationError

    flags = flags or {}
    try:
        return model(**fields)
    except ValidationError as exc:
        why = "; ".join(
            f"{flags.get(str(e['loc'][0]), '--' + str(e['loc'][0]).replace('_', '-'))}: " + _said(e)
            for e in exc.errors()
        )
        raise RequestError(why) from exc


def _said(error: Any) -> str:  # noqa: ANN401 - a pydantic ErrorDetails
    """A validation error in words: a name pattern is explained, not shown."""
    from flor_flows.training.request import NAME_PATTERN

    if error["type"] == "string_pattern_mismatch" and error["ctx"]["pattern"] == NAME_PATTERN:
        return f"{error['input']!r} is not a name (letters, digits and _, not first a digit)"
    if error["type"] == "too_short" and not error["input"]:
        return "nothing given (at least one is needed)"
    return error["msg"].removeprefix("Value error, ")


# Source files larger than this are refused unread: no script is that long, and a log or data
# file given by mistake would otherwise be read whole.
MAX_SOURCE_BYTES = 10 * 1024 * 1024


NOT_REGULAR = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device"}


def read_text(path: Path) -> str:
    """A source file's text: a regular file of UTF-8 (a BOM is dropped), universal newlines
    as `Path.read_text`; anything else is a FlorError before it is read (never a hang)."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            kind = NOT_REGULAR.get(stat.S_IFMT(mode), "a special file")
            raise RequestError(f"cannot read {path}: it is {kind}, not a regular file")
        with path.open("rb") as file:
            data = file.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        raise RequestError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_SOURCE_BYTES:
        raise RequestError(
            f"cannot read {path}: larger than {MAX_SOURCE_BYTES // 2**20} MB, too large for "
            "a source file"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        hint = ": it looks like UTF-16; save it as UTF-8" if utf16 else ""
        raise RequestError(
            f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start}){hint}"
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")
