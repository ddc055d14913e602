"""A flor stand-in whose functions do nothing: the baseline for record overhead."""

import contextlib
import sys


def _kwargs() -> dict:
    argv = sys.argv[1:]
    if "--kwargs" not in argv:
        return {}
    pairs = argv[argv.index("--kwargs") + 1 :]
    return dict(p.split("=", 1) for p in pairs if "=" in p and not p.startswith("--"))


def arg(name, default=None):
    raw = _kwargs().get(name)
    if raw is None:
        return default
    return raw if default is None else type(default)(raw)


def log(name, value):
    return value


def loop(name, iterable):
    return iterable


def checkpointing(**objs):
    return contextlib.nullcontext()


def commit():
    pass


def dataframe(*names):
    raise NotImplementedError("noop_flor stores nothing")


def query(sql):
    raise NotImplementedError("noop_flor stores nothing")
