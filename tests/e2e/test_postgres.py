"""e4sync.state.db against a real PostgreSQL server: migrations under concurrency, leases.

Needs ``E4SYNC_TEST_PG_URL`` (a superuser URL such as
``postgresql+psycopg://postgres@127.0.0.1:54329/postgres``; ``.ci/pg-start`` starts one).
Without it the tests skip, unless ``E4SYNC_REQUIRE_PG=1`` (CI), where they fail. Each test
gets a database of its own, created with a random name and dropped afterwards.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from e4sync.state import db, models

pytestmark = pytest.mark.postgres

TABLES = {"accounts", "sessions", "passes", "deletions", "workers"}


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    eng = db.open_db(pg_url)
    yield eng
    eng.dispose()


def add_accounts(engine: sa.Engine, *names: str) -> None:
    with db.sessionmaker_for(engine)() as s:
        for name in names:
            db.ensure_account(s, name, "e4connect", f"{name}@lab at http://127.0.0.1:1")
        s.commit()


def owners(engine: sa.Engine) -> dict[str, str | None]:
    acc = models.Account
    with engine.connect() as c:
        return dict(c.execute(sa.select(acc.name, acc.lease_owner)).all())


def _upgrade_in_child(url: str, barrier: threading.Barrier) -> None:
    barrier.wait(timeout=60)
    engine = db.open_db(url)
    engine.dispose()


def _claim_in_child(url: str, worker: str, names: list[str], barrier, queue) -> None:
    engine = db.make_engine(url)
    try:
        barrier.wait(timeout=60)
        got: list[str] = []
        for _ in range(5):
            got += db.claim_accounts(engine, worker, names, 300, limit=2)
        queue.put((worker, got))
    finally:
        engine.dispose()


def test_migrates_to_head(engine: sa.Engine) -> None:
    assert set(sa.inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
    assert db.current_revision(engine) == db.head_revision()
    assert engine.pool._pre_ping  # a restarted server must not fail the next pass
    db.upgrade(engine)  # a second time: nothing to do
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_schema_matches_models(engine: sa.Engine) -> None:
    with engine.connect() as c:
        mc = MigrationContext.configure(c, opts={"compare_type": True})
        assert compare_metadata(mc, models.Base.metadata) == []


def test_four_processes_upgrade_at_once(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_upgrade_in_child, args=(pg_url, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    engine = db.make_engine(pg_url)
    try:
        with engine.connect() as c:
            versions = c.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert versions == [(db.head_revision(),)]
        assert TABLES <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_waits_for_the_migration_lock(pg_url: str) -> None:
    """Deterministic half of the race above: while another session holds the advisory lock,
    upgrade() must wait for it, and finish once it is released."""
    engine = db.make_engine(pg_url)
    key = db.PG_MIGRATION_LOCK_KEY
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            db.upgrade(engine)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    try:
        with engine.connect() as holder:
            holder = holder.execution_options(isolation_level="AUTOCOMMIT")
            holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            t = threading.Thread(target=run, daemon=True)
            t.start()
            waiting = sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            deadline = time.monotonic() + 30
            while holder.execute(waiting).scalar() == 0:
                assert not done.is_set(), f"upgrade did not wait for the lock: {errors}"
                assert time.monotonic() < deadline, "upgrade never asked for the lock"
                time.sleep(0.02)  # polling pg_locks: the server offers no event to wait on
            assert db.current_revision(engine) is None  # nothing migrated while locked out
            holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            assert done.wait(timeout=60)
        assert errors == []
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_processes_never_share_an_account(pg_url: str, engine: sa.Engine) -> None:
    names = [f"acct{i}" for i in range(6)]
    add_accounts(engine, *names)
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_child, args=(pg_url, f"w{i}", names, barrier, queue))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    # Each worker re-claims (renews) its own accounts, so count each name once per worker.
    held = {w: set(got) for w, got in results.items()}
    all_claimed = [n for got in held.values() for n in got]
    assert len(all_claimed) == len(set(all_claimed)), held
    assert all(len(got) <= 2 for got in held.values())
    assert set(all_claimed) <= set(names)
    assert owners(engine) == {n: w for w, got in held.items() for n in got} | {
        n: None for n in names if n not in all_claimed
    }


def test_threads_never_share_an_account(pg_url: str, engine: sa.Engine) -> None:
    names = ["a", "b", "c"]
    add_accounts(engine, *names)
    holders: dict[str, str | None] = dict.fromkeys(names)
    guard = threading.Lock()
    conflicts: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def worker(n: int) -> None:
        me = f"w{n}"
        eng = db.make_engine(pg_url)
        try:
            start.wait()
            for _ in range(25):
                got = db.claim_accounts(eng, me, names, 30, limit=1)
                with guard:
                    for name in got:
                        if holders[name] is not None:
                            conflicts.append(f"{name}: {holders[name]} and {me}")
                        holders[name] = me
                if db.renew_leases(eng, me, got, 30) != got:
                    conflicts.append(f"{me} lost {got} while holding it")
                with guard:
                    for name in got:
                        holders[name] = None
                db.release_leases(eng, me, got)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            eng.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == [] and conflicts == []
    assert set(owners(engine).values()) == {None}


def test_claim_skips_rows_locked_by_another_claim(engine: sa.Engine) -> None:
    add_accounts(engine, "a", "b")
    done = threading.Event()
    result: list[list[str]] = []
    with engine.connect() as other, other.begin():
        # Another worker is in the middle of claiming "a" (its row is locked, not yet leased).
        other.execute(
            sa.select(models.Account.id).where(models.Account.name == "a").with_for_update()
        ).all()

        def claim() -> None:
            result.append(db.claim_accounts(engine, "w2", ["a", "b"], 60))
            done.set()

        t = threading.Thread(target=claim, daemon=True)
        t.start()
        # SKIP LOCKED: no waiting for the other transaction to end.
        assert done.wait(timeout=10), "claim_accounts waited on a locked row"
    t.join(timeout=10)
    assert result == [["b"]]


def test_expiry_hand_over(engine: sa.Engine) -> None:
    add_accounts(engine, "a")
    assert db.claim_accounts(engine, "w1", ["a"], 60, now=1000.0) == ["a"]
    assert db.claim_accounts(engine, "w2", ["a"], 60, now=1059.0) == []
    assert db.claim_accounts(engine, "w1", ["a"], 60, now=1059.0) == ["a"]  # own: renew
    assert db.claim_accounts(engine, "w2", ["a"], 60, now=1119.5) == ["a"]
    assert db.renew_leases(engine, "w1", ["a"], 60, now=1120.0) == []
    assert owners(engine) == {"a": "w2"}
    db.heartbeat(engine, "w2", "listing a")
    db.remove_worker(engine, "w2")
    assert owners(engine) == {"a": None}


def test_workers_creating_one_account_at_once_all_get_the_same_row(engine: sa.Engine) -> None:
    # Workers starting together all find no row for a new account and insert it; before the
    # savepoint in ensure_account every one but the first died on the unique constraint.
    threads = 6
    barrier = threading.Barrier(threads)
    ids: list[int] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            with db.sessionmaker_for(engine)() as s, s.begin():
                # Both transactions read "no row" before either inserts.
                s.execute(sa.select(models.Account).where(models.Account.name == "lab")).all()
                barrier.wait(timeout=10)
                ids.append(db.ensure_account(s, "lab", "lab@example.org", "http://127.0.0.1:1").id)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=create) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert errors == []
    assert len(ids) == threads and len(set(ids)) == 1
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM accounts")).scalar() == 1


def test_empty_values_never_blank_the_recorded_source_and_endpoint(engine: sa.Engine) -> None:
    add_accounts(engine, "lab")
    with db.sessionmaker_for(engine)() as s, s.begin():
        db.ensure_account(s, "lab", "", "")  # what reindex knows of an account
    with db.sessionmaker_for(engine)() as s:
        row = s.scalars(sa.select(models.Account)).one()
        assert row.source == "e4connect" and row.endpoint == "lab@lab at http://127.0.0.1:1"
