"""e4sync.state.db: the engine, its connection rules, schema upgrades, and account leases.

Owns how e4sync talks to its state database: the SQLite pragmas and transaction mode, the
PostgreSQL pool settings, running the shipped Alembic migrations at start (idempotent, safe
when several workers start at once), sessions, and the time-limited leases by which workers
divide the accounts among themselves (SPEC section 7).

Transactions on SQLite start with ``BEGIN IMMEDIATE``: a writer takes the lock up front and
waits (busy timeout) instead of failing half-way. So keep transactions short, never hold one
open across a download, and never call a function here while the same thread holds another
transaction open (it would wait for itself). Readers that may overlap a transaction use
``engine.execution_options(sqlite_begin="DEFERRED")``; other processes' readers are never
blocked (WAL).

A damaged SQLite file (garbage, truncated, a bad page) is turned into ``StateDamaged``
(exit 65) wherever SQLite reports it: at open, during the migrations, and in any later
query, through the engine's ``handle_error`` hook; the engine then remembers it
(``damage_found``), so a pass whose per-session error handling swallowed it still ends with
it. ``check_integrity`` looks for damage no query has met yet (``PRAGMA quick_check``).

Times are float unix seconds from the calling worker's clock: hosts sharing a PostgreSQL
database must keep their clocks in sync (NTP), or leases expire early or late.

Imports only ``e4sync.state.models``, ``e4sync.state.states``, ``e4sync.state.damage`` and
``e4sync.errors`` from e4sync; never the client, the archive or sync.
Must not import: e4sync.sources.e4connect, e4sync.archive, e4sync.sync.
"""

from __future__ import annotations

import importlib.resources
import os
import secrets
import socket
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, or_, select, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from e4sync.errors import StateDamaged, StorageError, TransientError
from e4sync.state import models
from e4sync.state.damage import damage_from, quick_check_problem, state_damaged
from e4sync.state.states import SCHEMA_HEAD

# Session-level advisory lock key that serialises migrations among workers on one PostgreSQL
# database: the bytes "E4SYNC" read as an integer (fits a bigint).
PG_MIGRATION_LOCK_KEY = 0x453453594E43

SQLITE_BUSY_TIMEOUT_MS = 10_000


# Execution option naming the BEGIN a SQLite transaction uses. Writes need IMMEDIATE (the
# default) so the write lock is taken up front, not half-way with SQLITE_BUSY; a pure reader
# may pass ``conn.execution_options(sqlite_begin="DEFERRED")`` to never wait for writers.
SQLITE_BEGIN_OPTION = "sqlite_begin"


def database_busy(exc: BaseException, url: str = "") -> TransientError | None:
    """The ``TransientError`` (exit 75) that a locked or unreachable state database means,
    or None if ``exc`` is something else. Another process holding a SQLite write lock past
    the busy timeout, or a PostgreSQL server that is down, is worth retrying later."""
    if not isinstance(exc, sa.exc.OperationalError):
        return None
    text = str(exc.orig or exc).lower()
    where = make_url(url).render_as_string(hide_password=True) if url else "the state database"
    if "locked" in text or "busy" in text:
        return TransientError(f"{where} is locked by another process; try again later")
    if "connection" in text or "could not connect" in text or "server closed" in text:
        return TransientError(f"{where} cannot be reached: {text.splitlines()[0][:200]}")
    return None


def sqlite_path(url: str | sa.URL) -> str | None:
    """The file of a SQLite URL, or None (an in-memory database, another backend)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def scratch_url_if_missing(url: str) -> str:
    """``url``, or for a SQLite file not created yet the URL of an empty database in a new
    temporary folder (removed when the process exits): what a dry run plans against, so
    that it creates no state database, no folder and no account row of its own."""
    path = sqlite_path(url)
    if path is None or os.path.lexists(Path(path).expanduser()):
        return url
    import atexit
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="e4sync-dry-run-")
    atexit.register(shutil.rmtree, scratch, True)
    return f"sqlite:///{Path(scratch, 'state.db').as_posix()}"


def database_damaged(exc: BaseException, url: str = "") -> StateDamaged | None:
    """The ``StateDamaged`` (exit 65) that ``exc`` means when it is SQLite saying the file
    at ``url`` is damaged (or is a ``StateDamaged`` already), else None. Never matches a
    PostgreSQL error: a server keeps its own files whole or says so in other words."""
    return damage_from(exc, sqlite_path(url) if url else None)


# The damage each SQLite engine has met, kept for the engine's life: code that catches
# errors per session (a pass's worker threads) may swallow the exception, not the fact.
_DAMAGE_FOUND: weakref.WeakKeyDictionary[Engine, StateDamaged] = weakref.WeakKeyDictionary()


def damage_found(engine: Engine) -> StateDamaged | None:
    """The ``StateDamaged`` this engine (as ``make_engine`` returned it) has met, if any."""
    return _DAMAGE_FOUND.get(engine)


def close_damaged_engines() -> None:
    """Close the connections of every engine that met damage, so SQLite removes the WAL and
    shared-memory files it can (before an ``mv`` naming what is left is printed)."""
    for engine in list(_DAMAGE_FOUND.keys()):
        engine.dispose()


def _found(engine: Engine, damage: StateDamaged) -> StateDamaged:
    return _DAMAGE_FOUND.setdefault(engine, damage)


def default_sqlite_url(state_dir: Path) -> str:
    """Return the URL of the default state database, ``<state_dir>/state.db``.

    Creates ``state_dir`` (mode 0700) when missing; an existing directory keeps its mode,
    as systemd's ``StateDirectory=`` sets it.
    """
    state_dir = Path(state_dir).expanduser()
    if not state_dir.is_dir():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
    return f"sqlite:///{(state_dir.resolve() / 'state.db').as_posix()}"


def _is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str) -> Engine:
    """Return an engine for ``url`` with e4sync's connection rules.

    SQLite: WAL, ``busy_timeout`` 10 s, foreign keys on, ``synchronous=FULL``, all set per
    connection by a listener on this engine only. FULL rather than GUIDE's NORMAL: under
    NORMAL a commit in WAL mode may roll back after a power cut, and the deletion ledger's
    entry must be on disk before its DELETE is sent (SPEC section 6); FULL costs one fsync
    of the WAL per commit, small beside the fsyncs of each archived file. Python 3.11's
    sqlite3 opens transactions on its own schedule (and has no ``autocommit`` attribute), so
    the driver is put in autocommit mode and the engine emits its own ``BEGIN IMMEDIATE``
    (the SQLAlchemy recipe).
    PostgreSQL: ``pool_pre_ping`` so a restarted server does not fail the next pass.
    """
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        kwargs: dict[str, Any] = {}
        if sa_url.get_backend_name() == "postgresql":
            kwargs["pool_pre_ping"] = True
        return sa.create_engine(sa_url, **kwargs)

    engine = sa.create_engine(
        sa_url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level: BEGIN comes only from the listener below.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
        finally:
            cur.close()

    path = sqlite_path(sa_url)
    engine_ref = weakref.ref(engine)

    @event.listens_for(engine, "handle_error")
    def _sqlite_on_error(context: Any) -> None:
        # Every error SQLAlchemy sees on this engine passes here: a connect (the PRAGMAs
        # above meet a file that is not a database), a migration, any query that reads a
        # bad page. Raising replaces SQLAlchemy's exception with e4sync's one-line error.
        damage = damage_from(context.original_exception, path)
        if damage is None:
            return
        engine = engine_ref()
        if engine is not None:
            damage = _found(engine, damage)
        raise damage from None

    @event.listens_for(engine, "begin")
    def _sqlite_on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        if mode not in ("IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
            raise ValueError(f"bad {SQLITE_BEGIN_OPTION} execution option: {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _script_location() -> str:
    """The folder of the shipped migrations: ``e4sync.migrations`` when installed (wheel or
    editable), else the source tree's top-level ``migrations/`` (a plain checkout)."""
    try:
        path = Path(str(importlib.resources.files("e4sync.migrations")))
    except ModuleNotFoundError:
        path = Path(__file__).resolve().parents[2] / "migrations"
    if not (path / "env.py").is_file():
        raise StorageError(f"the database migrations are missing (looked in {path})")
    return str(path)


def _alembic_config(connection: Connection | None = None):
    from alembic.config import Config

    cfg = Config()
    # Config values pass through ConfigParser interpolation: a '%' in the path must be doubled.
    cfg.set_main_option("script_location", _script_location().replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """Return the newest revision the shipped migrations know."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise StorageError("the shipped database migrations have no revision")
    return head


def _revision_on(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database is at, or None for a database never migrated."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
        try:
            return _revision_on(conn)
        finally:
            conn.rollback()


@contextmanager
def _sqlite_foreign_keys_off(conn: Connection) -> Iterator[None]:
    # PRAGMA foreign_keys is ignored inside a transaction, so it goes straight to the driver
    # connection before SQLAlchemy's BEGIN; batch "move and copy" migrations need it off.
    raw = conn.connection.dbapi_connection
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        if conn.in_transaction():
            conn.rollback()
        raw.execute("PRAGMA foreign_keys=ON")


def _upgrade_sqlite(engine: Engine) -> None:
    from alembic import command

    with engine.connect() as conn, _sqlite_foreign_keys_off(conn):
        with conn.begin():
            command.upgrade(_alembic_config(conn), "head")
            # With enforcement off, check by hand that the migration left no dangling key.
            bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if bad:
                raise StorageError(f"a migration left {len(bad)} broken foreign key(s): {bad[:3]}")


def _upgrade_postgresql(engine: Engine, head: str) -> None:
    from alembic import command

    # The advisory lock lives on its own connection, in autocommit, so that the migration's
    # transaction on the other connection can fail and roll back without losing the lock.
    with engine.connect() as lock_conn:
        lock_conn = lock_conn.execution_options(isolation_level="AUTOCOMMIT")
        lock_conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": PG_MIGRATION_LOCK_KEY})
        try:
            with engine.begin() as conn:
                # Another worker may have migrated while this one waited for the lock.
                if _revision_on(conn) != head:
                    command.upgrade(_alembic_config(conn), "head")
        finally:
            lock_conn.execute(
                sa.text("SELECT pg_advisory_unlock(:k)"), {"k": PG_MIGRATION_LOCK_KEY}
            )


def _stored_revision(engine: Engine) -> str | None:
    """The revision recorded in ``alembic_version``, read with plain SQL; None if the
    table is missing or holds something else than one row."""
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
            rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            conn.rollback()
    except sa.exc.DBAPIError:
        return None
    return rows[0][0] if len(rows) == 1 else None


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest shipped revision; a no-op when it is there already.

    SQLite: one transaction, foreign keys off while it runs. PostgreSQL: under a session-level
    advisory lock, so workers starting together migrate once (not safe behind PgBouncer in
    transaction pooling mode: migrate with ``e4sync db upgrade`` there).
    """
    if _stored_revision(engine) == SCHEMA_HEAD:
        return
    head = head_revision()
    if current_revision(engine) == head:
        return
    if _is_sqlite(engine):
        _upgrade_sqlite(engine)
    elif engine.dialect.name == "postgresql":
        _upgrade_postgresql(engine, head)
    else:
        from alembic import command

        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "head")


def check_integrity(engine: Engine) -> None:
    """Raise ``StateDamaged`` when SQLite's ``PRAGMA quick_check`` finds the file damaged,
    even where no query has looked yet (a bad page in a table this command does not read).
    It reads every page once (for 20,000 sessions, an 11 MB file, about 15 ms from the page
    cache), so the commands that trust the whole file or act on its word (``db upgrade``,
    ``verify``, ``reindex``, ``remove``, ``doctor``) run it; a pass does not. A no-op on
    other databases."""
    if not _is_sqlite(engine):
        return
    with engine.connect() as conn:
        conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
        try:
            rows = conn.exec_driver_sql("PRAGMA quick_check").all()
        finally:
            conn.rollback()
    problem = quick_check_problem(rows)
    if problem is not None:
        raise _found(engine, state_damaged(sqlite_path(engine.url), problem))


def open_db(url: str, check: bool = False) -> Engine:
    """Return an engine for ``url`` whose schema is at the newest revision. A SQLite file's
    folder is created (0700: it holds the state and the cookie-free lock file). ``check``
    runs ``check_integrity`` first, so a damaged file is never migrated. A damaged SQLite
    file raises ``StateDamaged``, whichever step meets it."""
    path = sqlite_path(url)
    if path is not None:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(url)
    try:
        if check:
            check_integrity(engine)
        upgrade(engine)
    except BaseException as exc:
        engine.dispose()
        # The migrations also speak to the driver connection directly (PRAGMA
        # foreign_keys), where the engine's hook does not see the error.
        damage = database_damaged(exc, url)
        if damage is None or damage is exc:
            raise
        raise damage from None
    return engine


def sessionmaker_for(engine: Engine) -> sessionmaker[Session]:
    """Return a Session factory for ``engine``; objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def ensure_account(db: Session, name: str, source: str = "", endpoint: str = "") -> models.Account:
    """Return the account row called ``name``, creating it if missing (safely when several
    workers do so at once) and bringing a non-empty ``source`` and ``endpoint`` up to
    date. Flushes; the caller commits."""
    query = select(models.Account).where(models.Account.name == name)
    account = db.scalars(query).one_or_none()
    if account is None:
        try:
            # Several workers starting together may all find no row and insert it: the
            # savepoint lets the losers roll back just the insert and read the winner's.
            with db.begin_nested():
                account = models.Account(name=name, source=source or "e4connect", endpoint=endpoint)
                db.add(account)
        except sa.exc.IntegrityError:
            account = db.scalars(query).one()
    # Empty values (reindex knows only the name) never blank what a pass recorded.
    if source and account.source != source:
        account.source = source
    if endpoint and account.endpoint != endpoint:
        account.endpoint = endpoint
    db.flush()
    return account


# --- leases -----------------------------------------------------------------------------------


def make_worker_id() -> str:
    """Return a new worker id, ``<hostname>:<pid>:<random>``: unique per process start, and
    readable in ``status`` so a person can tell which host holds a lease."""
    host = socket.gethostname()[:150] or "localhost"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


def claim_accounts(
    engine: Engine,
    worker_id: str,
    names: Sequence[str],
    lease_seconds: float,
    now: float | None = None,
    limit: int | None = None,
) -> list[str]:
    """Take or renew the lease on each named account that is free, and return the names
    taken (sorted, those this worker already held first when ``limit`` cuts).

    Free means: no owner, an expired lease, or this worker's own lease (a worker never counts
    its own lease as stale; claiming again renews it). Accounts without a row are skipped:
    create them with ``ensure_account`` first. Atomic: on PostgreSQL the rows are locked with
    ``FOR UPDATE SKIP LOCKED`` (a row another worker is claiming is skipped, not waited for);
    on SQLite ``BEGIN IMMEDIATE`` lets one writer at a time in.
    """
    if not names or (limit is not None and limit <= 0):
        return []
    now = time.time() if now is None else now
    acc = models.Account
    own_first = sa.case((acc.lease_owner == worker_id, 0), else_=1)
    stmt = (
        select(acc.id, acc.name)
        .where(
            acc.name.in_(list(names)),
            or_(
                acc.lease_owner.is_(None),
                acc.lease_until.is_(None),
                acc.lease_until < now,
                acc.lease_owner == worker_id,
            ),
        )
        .order_by(own_first, acc.name)
        .with_for_update(skip_locked=True)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    with engine.begin() as conn:
        rows = conn.execute(stmt).all()
        if rows:
            conn.execute(
                update(acc)
                .where(acc.id.in_([r.id for r in rows]))
                .values(lease_owner=worker_id, lease_until=now + lease_seconds)
            )
    return sorted(r.name for r in rows)


def renew_leases(
    engine: Engine,
    worker_id: str,
    names: Sequence[str],
    lease_seconds: float,
    now: float | None = None,
) -> list[str]:
    """Extend this worker's leases on ``names`` and return those it still holds.

    A name missing from the result is a lost lease (another worker took it after it expired):
    the caller must stop working on that account before its next remote delete. A lease that
    expired but was not taken by anyone is still this worker's and is renewed.
    """
    if not names:
        return []
    now = time.time() if now is None else now
    acc = models.Account
    mine = (acc.name.in_(list(names)), acc.lease_owner == worker_id)
    with engine.begin() as conn:
        conn.execute(update(acc).where(*mine).values(lease_until=now + lease_seconds))
        held = conn.execute(select(acc.name).where(*mine)).scalars().all()
    return sorted(held)


def release_leases(engine: Engine, worker_id: str, names: Sequence[str] | None = None) -> None:
    """Give up this worker's leases on ``names`` (all of them when None); other workers'
    leases are never touched."""
    acc = models.Account
    stmt = update(acc).where(acc.lease_owner == worker_id)
    if names is not None:
        if not names:
            return
        stmt = stmt.where(acc.name.in_(list(names)))
    with engine.begin() as conn:
        conn.execute(stmt.values(lease_owner=None, lease_until=None))


def heartbeat(engine: Engine, worker_id: str, current: str = "") -> None:
    """Record that this worker is alive and what it is doing (insert or update its row)."""
    now = time.time()
    w = models.Worker
    with engine.begin() as conn:
        done = conn.execute(
            update(w).where(w.id == worker_id).values(heartbeat_at=now, current=current)
        ).rowcount
        if not done:
            # Only this process writes its own row, so no other insert can race this one.
            conn.execute(
                sa.insert(w).values(
                    id=worker_id,
                    host=socket.gethostname()[:255],
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                    current=current,
                )
            )


def remove_worker(engine: Engine, worker_id: str) -> None:
    """Forget this worker at a clean stop: delete its heartbeat row and release every lease
    it still holds, so other workers need not wait for them to expire."""
    with engine.begin() as conn:
        conn.execute(sa.delete(models.Worker).where(models.Worker.id == worker_id))
        conn.execute(
            update(models.Account)
            .where(models.Account.lease_owner == worker_id)
            .values(lease_owner=None, lease_until=None)
        )
