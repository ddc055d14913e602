"""The names a wide table may ask for: logged names and the runs' args. An arg whose name a
logged value (or loop, or run column) takes is the column `arg.<name>`, so both stay."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine

from flor_flows.errors import RequestError
from flor_flows.store import schema as s

ARG = "arg."  # the column of an arg whose name is taken: `arg.lr` beside the logged `lr`


def expand_args(runs: pd.DataFrame, taken: Iterable[str] = ()) -> pd.DataFrame:
    """The runs' args as columns; an arg whose name is `taken` (a logged name or loop of the
    table) or a run column is shown as `arg.<name>`, so that both stay."""
    args = pd.DataFrame.from_records(list(runs.pop("args")), index=runs.index)
    clash = set(runs.columns).union(taken)
    args = args.rename(columns={c: f"{ARG}{c}" for c in args.columns if c in clash})
    return pd.concat([runs, args], axis=1)


def arg_names(engine: Engine) -> set[str]:
    """The names of the args any run recorded."""
    with engine.connect() as conn:
        return {name for args in conn.scalars(select(s.Run.args)) for name in args or {}}


def known(engine: Engine, names: Sequence[str], runs: pd.DataFrame) -> tuple[list[str], set[str]]:
    """Those of `names` that some run logged, and the arg names they ask for (`lr` or
    `arg.lr` ask for the arg lr). A name that is neither, nor one a hindsight request
    computes, is a FlorError naming the logged ones."""
    with engine.connect() as conn:
        catalog = set(conn.scalars(select(s.LogName.name).distinct()))
        requested = {n for listed in conn.scalars(select(s.Backfill.names)) for n in listed}
    args = set().union(*(a or {} for a in runs["args"]))
    rest = [n for n in names if n not in catalog | requested and n.removeprefix(ARG) not in args]
    if rest:  # an arg of runs not shown here is known too
        args |= arg_names(engine)
        unknown = [n for n in rest if n.removeprefix(ARG) not in args]
        if unknown:
            listed = f"; logged names: {', '.join(sorted(catalog)) or 'none'}"
            listed += f"; args: {', '.join(sorted(args))}" if args else ""
            raise RequestError(f"unknown name(s) {', '.join(unknown)}{listed}")
    return [n for n in names if n in catalog], {n.removeprefix(ARG) for n in names} & args
