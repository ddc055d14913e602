"""SQLAlchemy models of the relational store.

One row per project, code version, run, data batch, loop context, logged value and
checkpoint. Loop paths are flattened into `logs` at write time (`i0`..`i7` under a loop
signature), so the wide table needs no recursive join.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flor_flows.values import MAX_DEPTH

SCHEMA_VERSION = 1


class Base(DeclarativeBase):
    """The declarative base of the store's models: their tables are its metadata."""

    pass


class Meta(Base):
    """Key/value facts about the store itself, such as its schema version."""

    __tablename__ = "flor_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Project(Base):
    """A project: the repository whose runs the store records."""

    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    root: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CodeVersion(Base):
    """A code version of a project: the commit a run's code was snapshotted as."""

    __tablename__ = "code_versions"
    __table_args__ = (UniqueConstraint("project_id", "commit"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    commit: Mapped[str] = mapped_column(String(40))
    tree: Mapped[str] = mapped_column(String(40))
    base: Mapped[str | None] = mapped_column(String(40))
    branch: Mapped[str | None] = mapped_column(String(255))
    dirty: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Run(Base):
    """A run: one execution of a training script, its status, args and invocation."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    code_version_id: Mapped[int | None] = mapped_column(ForeignKey("code_versions.id"))
    entry_script: Mapped[str | None] = mapped_column(Text)
    # running | completed | failed | incomplete (its writer stopped; some values may be missing)
    status: Mapped[str] = mapped_column(String(16), index=True)
    args: Mapped[dict] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    resumed_from_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    prefect_flow_run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    # {"argv": [...], "cwd": relative to the project root, "python": "3.11.7"}: what a replay
    # starts again. None for runs recorded before flor-flows kept it.
    invocation: Mapped[dict | None] = mapped_column(JSON)
    # The sequence number of the last batch of records written (see `record.spill`).
    batches_written: Mapped[int | None] = mapped_column(Integer)


class DataBatch(Base):
    """A data batch a run read: where from, its hash and size, and its stored copy."""

    __tablename__ = "data_batches"
    __table_args__ = (UniqueConstraint("run_id", "name"), Index("ix_data_batches_sha", "sha256"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    name: Mapped[str] = mapped_column(String(255))
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    stored_uri: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Arrival(Base):
    """A data batch seen at a watched location, claimed by exactly one retraining run.

    The unique key makes a claim atomic: of two overlapping runs, one inserts the row and
    the other finds it taken. A failed run deletes its unconsumed claims, so the next run
    takes those batches again.
    """

    __tablename__ = "arrivals"
    __table_args__ = (UniqueConstraint("project_id", "uri"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    uri: Mapped[str] = mapped_column(String(1024))
    claim: Mapped[str] = mapped_column(String(64), index=True)  # the claiming flow run
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    run_uid: Mapped[str | None] = mapped_column(String(64))  # set once a run trained on it


class Backfill(Base):
    """A hindsight request: which names, with which statements, over which selection.

    `key` hashes all of that, so running the same request again finds its record and
    redoes only what did not succeed.
    """

    __tablename__ = "backfills"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    names: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Its selection (where, iterations, only_missing, source_ref), so a retry repeats it.
    selection: Mapped[dict | None] = mapped_column(JSON)


class BackfillItem(Base):
    """One run of a backfill and where it stands (see `flor_flows.replay.backfill.STATUSES`).

    `holder` and `lease_until` are the lease of the backfill flow run replaying it now, so a
    second identical backfill started meanwhile leaves the run alone.
    """

    __tablename__ = "backfill_items"
    __table_args__ = (UniqueConstraint("backfill_id", "run_uid"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backfill_id: Mapped[int] = mapped_column(ForeignKey("backfills.id"))
    run_uid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    prefect_flow_run_id: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    holder: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LoopSignature(Base):
    """The loop names along a context path, e.g. ["epoch", "step"]."""

    __tablename__ = "loop_signatures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    names: Mapped[str] = mapped_column(Text, unique=True)  # JSON list


class Context(Base):
    """One iteration of one `flor.loop` (or `flor.iteration`) within a run."""

    __tablename__ = "contexts"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    ctx_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    parent_id: Mapped[int | None] = mapped_column(BigInteger)
    loop_name: Mapped[str] = mapped_column(String(255))
    iteration: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[str | None] = mapped_column(Text)  # the item, when it is not the index
    path_values: Mapped[str | None] = mapped_column(Text)  # JSON items along the path, if any
    depth: Mapped[int] = mapped_column(SmallInteger)
    started_at: Mapped[float] = mapped_column(Float)  # unix seconds
    seconds: Mapped[float | None] = mapped_column(Float)
    # Of an outer iteration: the time spent in the loops nested in it, which a replay may skip.
    inner_seconds: Mapped[float | None] = mapped_column(Float)


class LogName(Base):
    """Each kind of value ever logged under a name: its loop signature, type and source.

    A query reads this catalog first, so it fetches only the columns a name needs.
    """

    __tablename__ = "log_names"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    sig_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # 0: run
    vtype: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    source: Mapped[str] = mapped_column(String(8), primary_key=True)


class Replay(Base):
    """Provenance of replayed values: which code and statements produced them."""

    __tablename__ = "replays"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    code_commit: Mapped[str | None] = mapped_column(String(40))
    statements_sha256: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))  # running | completed | failed | diverged
    prefect_flow_run_id: Mapped[str | None] = mapped_column(String(64))
    # Verification: how many re-logged values of the run's own statements were compared with
    # the recorded ones, and why the replay diverged (the first difference), if it did.
    checked: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    batches_written: Mapped[int | None] = mapped_column(Integer)
    # The checkpoints it restored: their bytes, and the seconds reading and restoring them
    # took (the read rate later plans price restores of this run at, `replay.costs`).
    read_bytes: Mapped[int | None] = mapped_column(BigInteger)
    read_seconds: Mapped[float | None] = mapped_column(Float)
    # Its seconds in the outer loop, and whether it was forked from a fork server: the rest
    # of its span (started_at to ended_at) is what later replays of the script pay outside
    # their iterations (`replay.costs`).
    loop_seconds: Mapped[float | None] = mapped_column(Float)
    forked: Mapped[bool | None] = mapped_column(Boolean)


_COVERED = ("ctx_id", "sig_id", "vtype", "num", "ival", "i0", "i1", "i2")


class Log(Base):
    """One logged value, typed (see `flor_flows.values`)."""

    __tablename__ = "logs"
    # Reads go by name in (run, write) order. The index also covers the columns a typical
    # read needs, so reading a name walks one index instead of jumping around the table.
    __table_args__ = (
        Index("ix_logs_read", "name", "run_id", "id", *_COVERED).ddl_if(dialect="sqlite"),
        Index("ix_logs_read", "name", "run_id", "id", postgresql_include=list(_COVERED)).ddl_if(
            dialect="postgresql"
        ),
        Index("ix_logs_read", "name", "run_id", "id").ddl_if(
            callable_=lambda ddl, target, bind, **kw: (
                bind.dialect.name not in ("sqlite", "postgresql")
            )
        ),
    )
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    name: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(8))  # forward | replay
    ctx_id: Mapped[int | None] = mapped_column(BigInteger)
    sig_id: Mapped[int | None] = mapped_column(Integer)
    vtype: Mapped[int] = mapped_column(SmallInteger)
    num: Mapped[float | None] = mapped_column(Float)
    ival: Mapped[int | None] = mapped_column(BigInteger)
    txt: Mapped[str | None] = mapped_column(Text)
    replay_id: Mapped[int | None] = mapped_column(ForeignKey("replays.id"))
    i0: Mapped[int | None] = mapped_column(Integer)
    i1: Mapped[int | None] = mapped_column(Integer)
    i2: Mapped[int | None] = mapped_column(Integer)
    i3: Mapped[int | None] = mapped_column(Integer)
    i4: Mapped[int | None] = mapped_column(Integer)
    i5: Mapped[int | None] = mapped_column(Integer)
    i6: Mapped[int | None] = mapped_column(Integer)
    i7: Mapped[int | None] = mapped_column(Integer)


class Checkpoint(Base):
    """A checkpoint a run wrote at the end of an iteration of a loop: where, hash, cost."""

    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_run_loop", "run_id", "loop_name", "iteration"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    ctx_id: Mapped[int] = mapped_column(BigInteger)
    loop_name: Mapped[str] = mapped_column(String(255))
    iteration: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


CONTEXT_COLUMNS = (
    "run_id", "ctx_id", "parent_id", "loop_name", "iteration", "value", "path_values", "depth",
    "started_at", "seconds", "inner_seconds",
)  # fmt: skip
LOG_COLUMNS = (
    "run_id", "name", "source", "ctx_id", "sig_id", "vtype", "num", "ival", "txt", "replay_id",
    *(f"i{k}" for k in range(MAX_DEPTH)),
)  # fmt: skip
