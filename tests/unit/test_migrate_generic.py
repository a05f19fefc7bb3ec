"""Revision 0003 on a real database made by e4sync 0.2 (tests/data/make_state_0002.py says
how): every account, session and ledger entry survives, the E4 columns become generic ones
with the same values, and the upgraded database serves the new code (status reads it, a
reindex-style lookup finds rows by id)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import sqlalchemy as sa

from e4sync.state import db, models
from e4sync.state.states import SCHEMA_HEAD

DUMP = Path(__file__).resolve().parents[1] / "data" / "state-0.2-r0002.sql"


def old_database(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as c:
        c.executescript(DUMP.read_text())
    return path


def rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as c:
        return c.execute(sql).fetchall()


def test_a_0_2_database_upgrades_to_generic_items_keeping_every_row(tmp_path: Path) -> None:
    path = old_database(tmp_path)
    assert rows(path, "SELECT version_num FROM alembic_version") == [("0002",)]
    sessions_before = rows(
        path,
        "SELECT id, remote_id, state, start_time, duration, device_id, label, device,"
        " metadata_hash, downloaded_metadata_hash, local_path, sha256, remote_json"
        " FROM sessions ORDER BY id",
    )
    ledger_before = rows(path, "SELECT * FROM deletions ORDER BY id")
    accounts_before = rows(path, "SELECT id, name, username, base_url, user_id FROM accounts")
    passes_before = rows(path, "SELECT count(*) FROM passes")
    assert len(sessions_before) == 6 and len(ledger_before) == 4  # what the dump holds

    engine = db.open_db(f"sqlite:///{path}")
    try:
        db.upgrade(engine)
        assert db.current_revision(engine) == SCHEMA_HEAD == "0003"
    finally:
        engine.dispose()

    after = {
        r[0]: r
        for r in rows(
            path,
            "SELECT id, remote_id, state, recorded_at, duration, version, downloaded_version,"
            " local_path, sha256, remote_json, kind FROM sessions",
        )
    }
    assert len(after) == len(sessions_before)
    for old in sessions_before:
        pk, rid, state, start, duration, device_id, label, device, mhash, dmhash = old[:10]
        local_path, sha256, remote_json = old[10:]
        new = after[pk]
        assert new[:9] == (pk, rid, state, start, duration, mhash, dmhash, local_path, sha256)
        # The dropped E4 columns are all still in the row as listed.
        listed = json.loads(new[9])
        assert (listed["device_id"], listed["label"], listed["device"]) == (
            device_id,
            label,
            device,
        )
        assert new[10] == ""  # kind: unknown for rows made before it existed
    assert rows(path, "SELECT * FROM deletions ORDER BY id") == ledger_before
    assert rows(path, "SELECT count(*) FROM passes") == passes_before
    accounts = rows(path, "SELECT id, name, source, endpoint, user_id FROM accounts")
    assert accounts == [
        (pk, name, "e4connect", f"{user} at {url}", uid)
        for pk, name, user, url, uid in accounts_before
    ]
    columns = {
        c["name"] for c in sa.inspect(sa.create_engine(f"sqlite:///{path}")).get_columns("sessions")
    }
    assert not columns & {"start_time", "metadata_hash", "device_id", "label", "device"}


def test_the_upgraded_database_serves_the_new_models(tmp_path: Path) -> None:
    """The ORM of this release reads and writes the upgraded rows (and a 1024-character
    id, which revision 0002's String(64) was not made for, fits PostgreSQL's check too)."""
    path = old_database(tmp_path)
    engine = db.open_db(f"sqlite:///{path}")
    try:
        db.upgrade(engine)
        with db.sessionmaker_for(engine)() as s, s.begin():
            verified = s.scalars(
                sa.select(models.Session).where(models.Session.state == models.VERIFIED)
            ).all()
            assert len(verified) == 2
            assert all(r.version and r.downloaded_version == r.version for r in verified)
            account = db.ensure_account(s, "lab")
            assert account.source == "e4connect" and account.endpoint.startswith("demo@")
            s.add(
                models.Session(
                    account_id=account.id,
                    remote_id="v2/829/1/1/" + "k" * 1000,
                    recorded_at=1,
                    version="etag:1",
                )
            )
        with sqlite3.connect(path) as c:
            assert c.execute("SELECT count(*) FROM sessions").fetchone() == (7,)
    finally:
        engine.dispose()
