"""Tests for e4sync.state.db on real SQLite files: migrations, pragmas, transactions, leases,
and a damaged file (``StateDamaged``, wherever SQLite reports it).

Nothing is mocked; time is moved with the ``now=`` argument the lease functions take.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from e4sync.errors import EXIT_DATAERR, StateDamaged
from e4sync.state import db, models
from e4sync.state.damage import move_aside_command

TABLES = {"accounts", "sessions", "passes", "deletions", "workers"}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return db.default_sqlite_url(tmp_path / "state")


@pytest.fixture
def engine(url: str):
    eng = db.open_db(url)
    yield eng
    eng.dispose()


def add_accounts(engine: sa.Engine, *names: str) -> None:
    with db.sessionmaker_for(engine)() as s:
        for name in names:
            db.ensure_account(s, name, f"{name}@lab", "http://127.0.0.1:1")
        s.commit()


def leases(engine: sa.Engine) -> dict[str, tuple[str | None, float | None]]:
    acc = models.Account
    with engine.connect() as c:
        rows = c.execute(sa.select(acc.name, acc.lease_owner, acc.lease_until)).all()
    return {r.name: (r.lease_owner, r.lease_until) for r in rows}


# --- engine and migrations --------------------------------------------------------------------


def test_default_sqlite_url_creates_private_dir(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b"
    url = db.default_sqlite_url(state)
    assert url == f"sqlite:///{state.resolve()}/state.db"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_default_sqlite_url_keeps_mode_of_existing_dir(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir(mode=0o750)
    os.chmod(state, 0o750)
    db.default_sqlite_url(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o750


def test_new_file_migrates_to_head(url: str, tmp_path: Path) -> None:
    engine = db.open_db(url)
    try:
        assert set(sa.inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
        assert db.current_revision(engine) == db.head_revision() == "0003"
        idx = {i["name"] for i in sa.inspect(engine).get_indexes("sessions")}
        assert "ix_sessions_account_state" in idx
    finally:
        engine.dispose()
    assert (tmp_path / "state" / "state.db").is_file()


def test_current_revision_of_empty_database(url: str) -> None:
    engine = db.make_engine(url)
    try:
        assert db.current_revision(engine) is None
    finally:
        engine.dispose()


def test_pragmas_on_every_connection(engine: sa.Engine) -> None:
    # Two connections at once: both must come out of the pool configured, including the one
    # that ran the migration with foreign keys switched off. The second reads with a deferred
    # BEGIN: two IMMEDIATE transactions in one thread would wait on each other.
    reader = engine.execution_options(sqlite_begin="DEFERRED")
    with engine.connect() as c1, reader.connect() as c2:
        for c in (c1, c2):
            get = c.exec_driver_sql
            assert get("PRAGMA journal_mode").scalar() == "wal"
            assert get("PRAGMA foreign_keys").scalar() == 1
            assert get("PRAGMA busy_timeout").scalar() == 10000
            assert get("PRAGMA synchronous").scalar() == 2  # FULL: the ledger survives a power cut


def test_foreign_keys_are_enforced(engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        with db.sessionmaker_for(engine)() as s:
            s.add(models.Session(account_id=999, remote_id="1"))
            s.commit()


def test_listeners_stay_on_their_engine(engine: sa.Engine, tmp_path: Path) -> None:
    # A plain engine made elsewhere must not inherit e4sync's pragmas (listener scope).
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        with other.connect() as c:
            assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
    finally:
        other.dispose()


def test_writes_take_the_lock_at_begin(engine: sa.Engine, url: str) -> None:
    db_file = sa.make_url(url).database
    with engine.begin() as conn:
        conn.execute(sa.select(1))  # no write yet: BEGIN IMMEDIATE already holds the lock
        other = sqlite3.connect(db_file, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            # WAL readers are not blocked by the writer.
            assert other.execute("SELECT count(*) FROM accounts").fetchone() == (0,)
        finally:
            other.close()


def test_deferred_reader_option(engine: sa.Engine, url: str) -> None:
    db_file = sa.make_url(url).database
    other = sqlite3.connect(db_file, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process is writing
        with engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="DEFERRED")
            with conn.begin():
                assert conn.execute(sa.text("SELECT count(*) FROM workers")).scalar() == 0
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_upgrade_twice_is_a_noop(engine: sa.Engine) -> None:
    add_accounts(engine, "a")
    db.upgrade(engine)
    db.upgrade(engine)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [("0003",)]
        assert c.execute(sa.text("SELECT name FROM accounts")).all() == [("a",)]


def test_schema_matches_models(engine: sa.Engine) -> None:
    with engine.connect() as c:
        mc = MigrationContext.configure(c, opts={"compare_type": True})
        assert compare_metadata(mc, models.Base.metadata) == []


def test_downgrade_to_base_and_back(engine: sa.Engine) -> None:
    with engine.connect() as c, c.begin():
        command.downgrade(db._alembic_config(c), "base")
    assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    assert TABLES <= set(sa.inspect(engine).get_table_names())


def test_a_0001_database_upgrades_to_0002_keeping_its_rows(engine: sa.Engine) -> None:
    """A lab's database from 0.1 (revision 0001) gains the validator and problem columns,
    empty, and keeps every session it had."""
    with engine.connect() as c, c.begin():
        command.downgrade(db._alembic_config(c), "0001")
    columns = {col["name"] for col in sa.inspect(engine).get_columns("sessions")}
    assert "remote_etag" not in columns and "local_problem" not in columns
    with engine.connect() as c, c.begin():
        c.execute(sa.text("INSERT INTO accounts (name, username, base_url) VALUES ('a','','')"))
        c.execute(
            sa.text(
                "INSERT INTO sessions (account_id, remote_id, start_time, duration, device_id,"
                " label, device, remote_json, metadata_hash, state, first_seen_at, attempts,"
                " sha256) VALUES (1, '77', 5, 1.0, '', '', '', '{}', 'h', 'verified', 0, 0, 'x')"
            )
        )
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    with engine.connect() as c:
        row = c.execute(
            sa.text(
                "SELECT remote_id, sha256, remote_etag, remote_last_modified, local_problem"
                " FROM sessions"
            )
        ).one()
        assert tuple(row) == ("77", "x", None, None, None)
        assert c.execute(sa.text("SELECT paused FROM passes")).all() == []


def test_ensure_account_creates_then_updates(engine: sa.Engine) -> None:
    make = db.sessionmaker_for(engine)
    with make() as s:
        a = db.ensure_account(s, "lab", "e4connect", "u1 at http://one")
        s.commit()
        first_id = a.id
    with make() as s:
        a = db.ensure_account(s, "lab", "other", "u2 at http://two")
        s.commit()
    assert a.id == first_id and (a.source, a.endpoint) == ("other", "u2 at http://two")  # no expiry
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM accounts")).scalar() == 1


# --- leases -----------------------------------------------------------------------------------


def test_make_worker_id() -> None:
    a, b = db.make_worker_id(), db.make_worker_id()
    host, pid, rnd = a.split(":")
    assert host and int(pid) == os.getpid() and len(rnd) == 6
    assert a != b


def test_claim_free_accounts(engine: sa.Engine) -> None:
    add_accounts(engine, "b", "a", "c")
    got = db.claim_accounts(engine, "w1", ["a", "b", "missing"], 60, now=1000.0)
    assert got == ["a", "b"]
    assert leases(engine) == {"a": ("w1", 1060.0), "b": ("w1", 1060.0), "c": (None, None)}


def test_claim_skips_other_workers_live_lease(engine: sa.Engine) -> None:
    add_accounts(engine, "a", "b")
    assert db.claim_accounts(engine, "w1", ["a"], 60, now=1000.0) == ["a"]
    assert db.claim_accounts(engine, "w2", ["a", "b"], 60, now=1059.0) == ["b"]
    assert leases(engine)["a"] == ("w1", 1060.0)


def test_expired_lease_is_handed_over(engine: sa.Engine) -> None:
    add_accounts(engine, "a")
    db.claim_accounts(engine, "w1", ["a"], 60, now=1000.0)
    assert db.claim_accounts(engine, "w2", ["a"], 60, now=1060.5) == ["a"]
    assert leases(engine)["a"] == ("w2", 1120.5)
    # The old owner finds out at its next renewal, and cannot take it back while it is live.
    assert db.renew_leases(engine, "w1", ["a"], 60, now=1061.0) == []
    assert db.claim_accounts(engine, "w1", ["a"], 60, now=1061.0) == []


def test_own_lease_is_never_stale(engine: sa.Engine) -> None:
    add_accounts(engine, "a")
    db.claim_accounts(engine, "w1", ["a"], 60, now=1000.0)
    # Long expired, nobody took it: re-claiming renews rather than refusing.
    assert db.claim_accounts(engine, "w1", ["a"], 60, now=5000.0) == ["a"]
    assert leases(engine)["a"] == ("w1", 5060.0)
    assert db.claim_accounts(engine, "w1", ["a"], 60, now=5001.0) == ["a"]
    assert leases(engine)["a"] == ("w1", 5061.0)


def test_claim_limit_prefers_own_leases(engine: sa.Engine) -> None:
    add_accounts(engine, "a", "b", "c")
    db.claim_accounts(engine, "w1", ["c"], 60, now=1000.0)
    assert db.claim_accounts(engine, "w1", ["a", "b", "c"], 60, now=1001.0, limit=2) == ["a", "c"]
    assert db.claim_accounts(engine, "w2", ["a", "b", "c"], 60, now=1001.0, limit=5) == ["b"]
    assert db.claim_accounts(engine, "w3", ["a", "b", "c"], 60, now=1001.0, limit=0) == []
    assert db.claim_accounts(engine, "w3", [], 60, now=1001.0) == []


def test_renew_extends_only_own(engine: sa.Engine) -> None:
    add_accounts(engine, "a", "b", "c")
    db.claim_accounts(engine, "w1", ["a", "b"], 60, now=1000.0)
    db.claim_accounts(engine, "w2", ["c"], 60, now=1000.0)
    assert db.renew_leases(engine, "w1", ["a", "b", "c"], 100, now=1030.0) == ["a", "b"]
    assert leases(engine) == {
        "a": ("w1", 1130.0),
        "b": ("w1", 1130.0),
        "c": ("w2", 1060.0),
    }
    # Expired but untaken is still ours.
    assert db.renew_leases(engine, "w2", ["c"], 60, now=2000.0) == ["c"]
    assert db.renew_leases(engine, "w2", [], 60) == []


def test_release(engine: sa.Engine) -> None:
    add_accounts(engine, "a", "b", "c")
    db.claim_accounts(engine, "w1", ["a", "b"], 60, now=1000.0)
    db.claim_accounts(engine, "w2", ["c"], 60, now=1000.0)
    db.release_leases(engine, "w1", ["a", "c"])  # c is not w1's: untouched
    assert leases(engine) == {"a": (None, None), "b": ("w1", 1060.0), "c": ("w2", 1060.0)}
    db.release_leases(engine, "w1", [])
    assert leases(engine)["b"] == ("w1", 1060.0)
    db.release_leases(engine, "w1")
    assert leases(engine) == {"a": (None, None), "b": (None, None), "c": ("w2", 1060.0)}
    assert db.claim_accounts(engine, "w3", ["a", "b", "c"], 60, now=1001.0) == ["a", "b"]


def test_heartbeat_upserts(engine: sa.Engine) -> None:
    w = models.Worker
    before = time.time()
    db.heartbeat(engine, "w1")
    with engine.connect() as c:
        first = c.execute(sa.select(w)).one()
    assert first.id == "w1" and first.pid == os.getpid() and first.current == ""
    assert first.host and before <= first.started_at == first.heartbeat_at <= time.time()
    db.heartbeat(engine, "w1", current="listing lab")
    db.heartbeat(engine, "w2")
    with engine.connect() as c:
        rows = {r.id: r for r in c.execute(sa.select(w))}
    assert set(rows) == {"w1", "w2"}
    assert rows["w1"].started_at == first.started_at
    assert rows["w1"].heartbeat_at >= first.heartbeat_at
    assert rows["w1"].current == "listing lab"


def test_remove_worker_releases_its_leases(engine: sa.Engine) -> None:
    add_accounts(engine, "a", "b")
    db.heartbeat(engine, "w1")
    db.heartbeat(engine, "w2")
    db.claim_accounts(engine, "w1", ["a"], 60, now=1000.0)
    db.claim_accounts(engine, "w2", ["b"], 60, now=1000.0)
    db.remove_worker(engine, "w1")
    with engine.connect() as c:
        assert c.execute(sa.select(models.Worker.id)).scalars().all() == ["w2"]
    assert leases(engine) == {"a": (None, None), "b": ("w2", 1060.0)}


def test_threads_never_share_an_account(url: str, engine: sa.Engine) -> None:
    """Workers in threads, each with its own engine as separate processes would have,
    hammer claim/release on one SQLite file; an account must never have two holders."""
    names = ["a", "b", "c"]
    add_accounts(engine, *names)
    holders: dict[str, str | None] = dict.fromkeys(names)
    guard = threading.Lock()
    conflicts: list[str] = []
    errors: list[BaseException] = []
    claims = [0]
    start = threading.Barrier(6)

    def worker(n: int) -> None:
        me = f"w{n}"
        eng = db.make_engine(url)
        try:
            start.wait()
            for _ in range(40):
                got = db.claim_accounts(eng, me, names, 30, limit=1)
                with guard:
                    for name in got:
                        if holders[name] is not None:
                            conflicts.append(f"{name}: {holders[name]} and {me}")
                        holders[name] = me
                        claims[0] += 1
                # "Work" while holding: a renewal, which must still find the lease ours.
                if db.renew_leases(eng, me, got, 30) != got:
                    conflicts.append(f"{me} lost {got} while holding it")
                with guard:
                    # Clear the mark before the release reaches the database, so a fair
                    # hand-over is never mistaken for a conflict.
                    for name in got:
                        holders[name] = None
                db.release_leases(eng, me, got)
        except BaseException as exc:  # reported below, with the thread's own traceback
            errors.append(exc)
        finally:
            eng.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert conflicts == []
    assert claims[0] >= 40  # the hammering really happened
    assert all(owner is None for owner, _ in leases(engine).values())


def test_schema_head_constant_matches_the_shipped_migrations():
    # open_db skips importing Alembic when the database is at SCHEMA_HEAD: a new migration
    # whose revision is not recorded there would never be applied.
    assert db.SCHEMA_HEAD == db.head_revision()


# --- a damaged file ---------------------------------------------------------------------------


def damage_sessions_root(url: str) -> Path:
    """Overwrite the first page of the ``sessions`` table with garbage: a damage no open
    meets (the migrations read only ``alembic_version``), only a query of that table."""
    path = Path(db.sqlite_path(url))
    with sqlite3.connect(path) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sessions'")
        root = root.fetchone()[0]
    conn.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
    return path


def test_a_bad_page_met_by_a_query_after_open_is_state_damaged(url: str) -> None:
    eng = db.open_db(url)
    add_accounts(eng, "lab")
    eng.dispose()
    path = damage_sessions_root(url)
    eng = db.open_db(url)  # opens: nothing it reads is damaged
    try:
        assert db.damage_found(eng) is None
        add_accounts(eng, "clinic")  # nor is the accounts table
        # A reader made with execution_options() shares the parent engine's hook.
        reader = eng.execution_options(sqlite_begin="DEFERRED")
        with pytest.raises(StateDamaged) as raised, reader.connect() as c:
            c.execute(sa.select(models.Session.remote_json)).all()  # in no index
        damage = raised.value
        assert damage.exit_code == EXIT_DATAERR == 65
        assert damage.path == str(path)
        assert "malformed" in damage.reason
        assert f"`mv {path} {path}.damaged" in str(damage)
        # Remembered by the engine, for code that caught it per session and carried on.
        assert db.damage_found(eng) is damage
    finally:
        eng.dispose()


def test_check_integrity_finds_a_bad_page_no_query_has_read(url: str) -> None:
    eng = db.open_db(url)
    add_accounts(eng, "lab")
    db.check_integrity(eng)  # a whole file passes
    eng.dispose()
    damage_sessions_root(url)
    eng = db.open_db(url)
    try:
        with pytest.raises(StateDamaged):
            db.check_integrity(eng)
        assert db.damage_found(eng) is not None
    finally:
        eng.dispose()
    with pytest.raises(StateDamaged):
        db.open_db(url, check=True)  # and open_db(check=True) refuses it before migrating


def test_garbage_fails_at_open_and_an_empty_file_is_a_new_database(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StateDamaged) as raised:
        db.open_db(f"sqlite:///{garbage}")
    assert raised.value.path == str(garbage)
    assert raised.value.reason == "file is not a database"
    # SQLite takes a zero-byte file for an empty database: that is not damage.
    empty = tmp_path / "empty.db"
    empty.touch()
    eng = db.open_db(f"sqlite:///{empty}")
    try:
        assert db.current_revision(eng) == db.SCHEMA_HEAD
    finally:
        eng.dispose()


def test_only_sqlite_saying_damaged_is_damage(tmp_path: Path) -> None:
    busy = sa.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))
    full = sa.exc.OperationalError(
        "INSERT", {}, sqlite3.OperationalError("database or disk is full")
    )
    # The same words from another driver (PostgreSQL's) are that server's business.
    other = sa.exc.DatabaseError("SELECT 1", {}, Exception("database disk image is malformed"))
    for exc in (busy, full, other, ValueError("file is not a database")):
        assert db.database_damaged(exc, "sqlite:////x/state.db") is None
    assert db.database_busy(busy) is not None
    malformed = sqlite3.DatabaseError("database disk image is malformed")
    wrapped = sa.exc.DatabaseError("SELECT 1", {}, malformed)
    damage = db.database_damaged(wrapped, "sqlite:////x/state.db")
    assert damage is not None and damage.path == "/x/state.db"
    assert db.database_damaged(damage) is damage


def test_the_mv_moves_the_wal_too_and_never_overwrites(tmp_path: Path) -> None:
    folder = tmp_path / "my state"  # a space: the command quotes it
    folder.mkdir()
    path = folder / "state.db"
    path.write_bytes(b"x")
    assert move_aside_command(str(path)) == f"mv '{path}' '{path}.damaged'"
    Path(f"{path}-wal").write_bytes(b"w")
    Path(f"{path}.damaged").write_bytes(b"an earlier damage")
    assert move_aside_command(str(path)) == (
        f"mv '{path}' '{path}.damaged.2' && mv '{path}-wal' '{path}.damaged.2-wal'"
    )
    os.system(move_aside_command(str(path)))  # noqa: S605 - the very command users paste
    assert sorted(p.name for p in folder.iterdir()) == [
        "state.db.damaged",
        "state.db.damaged.2",
        "state.db.damaged.2-wal",
    ]
