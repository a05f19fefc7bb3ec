"""`e4sync status`: the report read with the standard library's sqlite3 (the fast way) is the
report read through SQLAlchemy (the way every other database takes), and the fast way is
taken only when it can be: an existing SQLite file at the current schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import sqlalchemy as sa

from e4sync.config import load_config
from e4sync.sources.e4connect.simulator.faults import DEFAULT_PASSWORD, DEFAULT_USER
from e4sync.state import db as statedb
from e4sync.state.models import Account, Worker
from e4sync.status import build_report, quick_report, sqlite_file, sqlite_rows, status_report


def _varied_state(sim, setup, run_cli) -> tuple[str, sa.Engine]:
    """A state database with something in every part of the report: archived sessions, a
    session failed for good, an archived copy lost from disk (marked by `verify`), an
    account whose password is wrong, a live lease, a worker."""
    sim.add_account("other@example.org", "Other-Password", sessions=1)
    config = setup.write(
        sim.base_url,
        accounts=[
            ("lab", DEFAULT_USER, DEFAULT_PASSWORD),
            ("wrong", "other@example.org", "Not-The-Password"),
        ],
        extra="max_attempts = 1",  # lands in setup's [download]: one attempt, then 'failed'
    )
    broken = sim.sessions()[0]["id"]
    sim.replace_zip(broken, b"PK\x03\x04 but not a ZIP at all")
    run_cli("run-once", "--config", str(config), exit_code=None)
    lost = sorted(setup.archive.rglob("*.zip"))[0]
    lost.unlink()
    run_cli("verify", "--config", str(config), exit_code=1)
    url = load_config(config).state.url
    engine = statedb.open_db(url)
    with statedb.sessionmaker_for(engine)() as db, db.begin():
        lab = db.scalars(sa.select(Account).where(Account.name == "lab")).one()
        lab.lease_owner, lab.lease_until = "host-a:1:abc", time.time() + 3600
        now = time.time()
        db.add(Worker(id="host-a:1:abc", host="host-a", pid=1, started_at=now, heartbeat_at=now))
    return url, engine


def test_sqlite3_and_sqlalchemy_give_the_same_report(sim, setup, run_cli):
    url, engine = _varied_state(sim, setup, run_cli)
    now = time.time()
    try:
        through_sqlalchemy = status_report(engine, now=now, stale_after=60)
    finally:
        engine.dispose()
    path = sqlite_file(url)
    assert path is not None
    with sqlite_rows(path) as rows:
        assert rows is not None
        through_sqlite3 = build_report(rows, now=now, stale_after=60)
    assert through_sqlite3 == through_sqlalchemy
    # The comparison is worth something only if every part of the report holds data.
    accounts = {a["name"]: a for a in through_sqlite3["accounts"]}
    lab, wrong = accounts["lab"], accounts["wrong"]
    assert lab["counts"]["verified"] == 3 and lab["counts"]["failed"] == 1
    assert lab["counts"]["new"] == 1 and lab["local_problems_total"] == 1
    [problem] = lab["local_problems"]
    assert problem["state"] == "new" and problem["problem"].startswith("missing: ")
    assert lab["archive_bytes"] > 0 and lab["healthy"] is False
    # A pass that gave up on a session is not ok; SQLite stores the flag as 0, JSON wants false.
    assert lab["last_pass"]["ok"] is False and lab["last_pass"]["downloaded"] == 4
    # The lost copy's session is queued again, with its problem as its error.
    assert sorted(f["state"] for f in lab["failures"]) == ["failed", "new"]
    assert lab["lease"]["owner"] == "host-a:1:abc"
    assert wrong["last_error"] and wrong["healthy"] is False
    assert [w["id"] for w in through_sqlite3["workers"]] == ["host-a:1:abc"]
    assert through_sqlite3["workers"][0]["stale"] is False


def test_status_command_reads_sqlite_without_sqlalchemy(sim, setup, run_cli):
    url, engine = _varied_state(sim, setup, run_cli)
    engine.dispose()
    code = (
        "import json, sys\n"
        "from e4sync.cli import main\n"
        f"code = main(['--config', {str(setup.config)!r}, 'status', '--json'])\n"
        "print(json.dumps({'code': code, 'sqlalchemy': 'sqlalchemy' in sys.modules}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    report_text, _, last = proc.stdout.rstrip().rpartition("\n")
    # Both accounts are NOT OK (a session given up on; a wrong password): exit 1.
    assert json.loads(last) == {"code": 1, "sqlalchemy": False}
    report = json.loads(report_text)
    assert {a["name"] for a in report["accounts"]} == {"lab", "wrong"}
    # The command's answer is the SQLAlchemy one (times aside: they were read apart).
    engine = statedb.open_db(url)
    try:
        expected = status_report(engine, now=time.time())
    finally:
        engine.dispose()
    assert report["accounts"] == expected["accounts"]


def test_fast_way_declines_what_it_cannot_read_as_sqlalchemy_would(tmp_path, setup, sim, run_cli):
    # No file: declined, and not created (the SQLAlchemy way creates and migrates it).
    missing = tmp_path / "nothing" / "state.db"
    assert quick_report(f"sqlite:///{missing}") is None
    assert not missing.exists() and not missing.parent.exists()
    # URLs with options or escapes, and other databases, are SQLAlchemy's to read.
    for url in ("sqlite:///x.db?timeout=3", "sqlite:///a%20b.db", "postgresql://h/db", "sqlite://"):
        assert sqlite_file(url) is None
    # A database at another schema revision: declined (SQLAlchemy's way migrates it).
    url, engine = _varied_state(sim, setup, run_cli)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0000'"))
    engine.dispose()
    assert quick_report(url) is None
    with sqlite_rows(sqlite_file(url)) as rows:
        assert rows is None


def test_sqlite_rows_opens_a_file_whose_path_looks_like_uri_syntax(sim, setup, run_cli):
    url, engine = _varied_state(sim, setup, run_cli)
    engine.dispose()
    odd = setup.dir / "a%20b?c=d#e" / "state.db"
    odd.parent.mkdir()
    shutil.copyfile(sqlite_file(url), odd)
    with sqlite_rows(odd) as rows:
        assert rows is not None
        names = {a["name"] for a in build_report(rows)["accounts"]}
    assert names == {"lab", "wrong"}
    # Nothing was created beside the path the URI syntax would have cut it at.
    assert sorted(p.name for p in setup.dir.iterdir() if p.name.startswith("a%20b")) == [
        "a%20b?c=d#e"
    ]


def test_status_of_one_account_names_only_it_both_ways(sim, setup, run_cli):
    url, engine = _varied_state(sim, setup, run_cli)
    try:
        through_sqlalchemy = status_report(engine, ["lab"])
    finally:
        engine.dispose()
    with sqlite_rows(sqlite_file(url)) as rows:
        through_sqlite3 = build_report(rows, ["lab"])
    for report in (through_sqlalchemy, through_sqlite3):
        assert [a["name"] for a in report["accounts"]] == ["lab"]
    command = json.loads(
        run_cli(
            "status", "--json", "--account", "lab", "--config", str(setup.config), exit_code=1
        ).out
    )
    assert [a["name"] for a in command["accounts"]] == ["lab"]
