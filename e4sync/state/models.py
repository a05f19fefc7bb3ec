"""e4sync.state.models: the tables of the state database (the session states are named in
``states`` and re-exported here).

Times are stored as float unix seconds (UTC): the same on SQLite and PostgreSQL,
with no time-zone conversions to get wrong. This module imports only SQLAlchemy and ``states``;
the migrations in the top-level ``migrations/`` import it and nothing else.
Must not import: e4sync.state.db, e4sync.state.problems, e4sync.sync, e4sync.sources, alembic.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from e4sync.state.states import (  # noqa: F401  (re-exported: callers name states from here)
    ARCHIVED_STATES,
    DOWNLOADING,
    DUE_STATES,
    FAILED,
    NEW,
    REMOTE_DELETED,
    REMOTE_GONE,
    STATES,
    VERIFIED,
)

# Named constraints, so Alembic's batch mode on SQLite can drop and recreate them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Account(Base):
    """One account on one platform (``source``), named in the configuration. The lease
    columns say which worker serves it now: a platform may allow one live login per account."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(40), default="e4connect")
    # What the account pointed at when last served ("lab@example.org at https://..."), for
    # people reading the database; nothing decides by it.
    endpoint: Mapped[str] = mapped_column(Text, default="")
    user_id: Mapped[str | None] = mapped_column(String(64))  # who the source says we are
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[float | None] = mapped_column(Float)
    last_listed_at: Mapped[float | None] = mapped_column(Float)
    # When a listing last covered everything the account holds (a source listing recent
    # folders each pass lists all at most so often).
    last_complete_listing_at: Mapped[float | None] = mapped_column(Float)
    # Why the platform refused a deletion as not permitted: no pass asks again until
    # `e4sync retry` clears it.
    deletions_refused: Mapped[str | None] = mapped_column(Text)
    last_ok_at: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)


class Session(Base):
    """One item (a recording, a file) as its platform lists it, and where its local copy
    stands. The source-specific metadata is ``remote_json``; the columns are generic."""

    __tablename__ = "sessions"
    __table_args__ = (
        UniqueConstraint("account_id", "remote_id", name="uq_sessions_account_remote"),
        Index("ix_sessions_account_state", "account_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    remote_id: Mapped[str] = mapped_column(String(1024))  # any string: an S3 key too
    # When the recording began (unix seconds; 0 unknown), how long it is, what it is.
    recorded_at: Mapped[int] = mapped_column(Integer, default=0)
    duration: Mapped[float] = mapped_column(Float, default=0.0)
    kind: Mapped[str] = mapped_column(String(40), default="")
    # The item exactly as listed (JSON), and its version: what makes a changed item a new
    # download (E4: a digest of the listed metadata; S3: ETag and size).
    remote_json: Mapped[str] = mapped_column(Text, default="{}")
    version: Mapped[str] = mapped_column(String(200), default="")
    # What the archived file's content says of itself (JSON), found when it was verified.
    content_json: Mapped[str | None] = mapped_column(Text)
    # Where the local copy stands.
    state: Mapped[str] = mapped_column(String(20), default=NEW)
    local_path: Mapped[str | None] = mapped_column(Text)  # relative to the archive root
    size: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    # version at download time: a deletion needs it unchanged (SPEC section 6).
    downloaded_version: Mapped[str | None] = mapped_column(String(200))
    # The validators the platform sent with the download (issue: a remote copy whose bytes
    # changed under the same metadata must not be deleted). NULL when it sent none.
    remote_etag: Mapped[str | None] = mapped_column(String(200))
    remote_last_modified: Mapped[str | None] = mapped_column(String(100))
    # Why the archived copy cannot be trusted ("missing: ...", "changed: ..."), found by a
    # pass, ``verify`` or the scrub; NULL while the copy is whole. Makes the account not OK.
    local_problem: Mapped[str | None] = mapped_column(Text)
    first_seen_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_seen_at: Mapped[float | None] = mapped_column(Float)
    downloaded_at: Mapped[float | None] = mapped_column(Float)
    verified_at: Mapped[float | None] = mapped_column(Float)
    remote_deleted_at: Mapped[float | None] = mapped_column(Float)
    gone_at: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)


class Pass(Base):
    """The summary of one sync pass over one account."""

    __tablename__ = "passes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    worker: Mapped[str] = mapped_column(String(200), default="")
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    ok: Mapped[bool] = mapped_column(Boolean, default=False)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    listed: Mapped[int] = mapped_column(Integer, default=0)
    new: Mapped[int] = mapped_column(Integer, default=0)
    changed: Mapped[int] = mapped_column(Integer, default=0)
    downloaded: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[int] = mapped_column(Integer, default=0)
    gone: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[str] = mapped_column(Text, default="")  # one line per error
    paused: Mapped[str | None] = mapped_column(Text)  # why downloads paused (a full disk)


class Deletion(Base):
    """The append-only deletion ledger: written before a remote delete is sent, marked
    confirmed only once a fresh listing no longer shows the session."""

    __tablename__ = "deletions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    remote_id: Mapped[str] = mapped_column(String(1024))
    local_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[float] = mapped_column(Float)
    confirmed_at: Mapped[float | None] = mapped_column(Float)
    result: Mapped[str] = mapped_column(String(40), default="requested")
    e4sync_version: Mapped[str] = mapped_column(String(40))


class Worker(Base):
    """A running e4sync process and its heartbeat, so stale leases and dead workers show."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    current: Mapped[str] = mapped_column(Text, default="")  # what it is doing now
