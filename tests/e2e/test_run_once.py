"""`e4sync run-once` end to end: the real client against the real simulator on 127.0.0.1,
a real SQLite state file and a real archive folder in tmp_path."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import subprocess
import sys

import pytest

from e4sync.sources.e4connect.layout import device_serial
from tests.conftest import archived, write_config

# Remote deletion on, with no minimum age and no grace period: a verified copy qualifies at once.
DELETE_AT_ONCE = (
    '[account.remote]\ndelete_after_verify = true\ndelete_min_age = "0s"\ndelete_grace = "0s"\n'
)


def remove_remotely(
    sim, session_id: str, user: str = "demo@example.org", password: str = "demo"
) -> None:
    """Someone else deletes a session (a browser, E4 manager): the platform's own DELETE."""
    from e4sync.sources.e4connect.client import E4Connect

    with E4Connect(user, password, base_url=sim.base_url) as client:
        client.remove_session(session_id)


def downloads(sim) -> int:
    return sim.stats()["requests"].get("download", 0)


def expected_relpath(account: str, row: dict) -> str:
    start = dt.datetime.fromtimestamp(int(row["start_time"]), dt.UTC)
    return (
        f"{account}/{start:%Y}/{start:%m}/{start:%d}/"
        f"{row['start_time']}_{device_serial(row['label'])}.zip"
    )


def test_first_pass_archives_every_session_byte_for_byte(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    result = run_cli("run-once", "--config", str(config))
    rows = sim.sessions()
    assert f"{len(rows)} downloaded" in result.out
    zips = archived(setup.archive)
    assert set(zips) == {r["id"] for r in rows}
    for row in rows:
        path = zips[row["id"]]
        assert path.relative_to(setup.archive).as_posix() == expected_relpath("lab", row)
        assert path.read_bytes() == sim.zip_bytes(row["id"])
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert sidecar["size"] == path.stat().st_size
        assert sidecar["remote"]["id"] == row["id"] and sidecar["account"] == "lab"
    assert not list(setup.archive.rglob("*.part"))


def test_second_pass_downloads_nothing_and_status_counts(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    downloads_before = downloads(sim)
    second = run_cli("run-once", "--config", str(config), "--json")
    report = json.loads(second.out)
    assert report["accounts"][0]["downloaded"] == 0
    assert downloads(sim) == downloads_before
    status = json.loads(run_cli("status", "--config", str(config), "--json").out)
    assert status["schema"] == 1
    (account,) = status["accounts"]
    assert account["name"] == "lab" and account["user_id"]
    assert account["counts"]["verified"] == len(sim.sessions())
    assert set(account["counts"]) == {
        "new",
        "downloading",
        "verified",
        "remote_deleted",
        "failed",
        "remote_gone",
    }
    assert account["last_pass"]["downloaded"] == 0


def test_late_published_session_with_an_old_start_time_is_archived(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    late = sim.publish_late(days_ago=400)
    run_cli("run-once", "--config", str(config))
    zips = archived(setup.archive)
    assert zips[late["id"]].read_bytes() == sim.zip_bytes(late["id"])


def _dump(state_db) -> list[str]:
    """Every row of the state database, as SQL (the lease and worker tables included)."""
    db = sqlite3.connect(state_db)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def test_dry_run_changes_nothing_and_shows_the_plan(sim, setup, run_cli):
    config = setup.write(
        sim.base_url,
        account_extra=DELETE_AT_ONCE,
    )
    before = run_cli("status", "--json", "--config", str(config), exit_code=1).out
    result = run_cli("run-once", "--config", str(config), "--dry-run")
    # The plan: each would-be download with its target path, its size (the E4 listing has
    # none) and its recorded date; the counts say the same (5 listed, 5 new).
    assert "lab: 5 listed, 5 new, 0 downloaded" in result.out
    assert "would download 5 (sizes not listed):" in result.out
    for row in sim.sessions():
        start = dt.datetime.fromtimestamp(int(row["start_time"]), dt.UTC)
        target = setup.archive / "lab" / start.strftime("%Y/%m/%d")
        line = next(x for x in result.out.splitlines() if x.strip().startswith(row["id"]))
        assert start.isoformat().replace("+00:00", "Z") in line and "size unknown" in line
        assert f"-> {target}/{row['start_time']}_" in line and "(new on the platform)" in line
    assert "would delete: nothing" in result.out
    assert not setup.archive.exists() or not any(setup.archive.rglob("*.zip"))
    assert downloads(sim) == 0
    # Nothing written: no state folder, no database, no account row; status as before.
    assert not setup.state.exists()
    assert run_cli("status", "--json", "--config", str(config), exit_code=1).out == before
    as_json = json.loads(run_cli("run-once", "--json", "--dry-run", "--config", str(config)).out)
    (planned,) = as_json["accounts"]
    assert sorted(d["id"] for d in planned["planned_downloads"]) == sorted(
        r["id"] for r in sim.sessions()
    )
    assert all(d["size"] is None and d["recorded"] for d in planned["planned_downloads"])
    assert not setup.state.exists()

    # After a real pass (deletion off), a dry run with deletion on names the sessions it
    # would delete, each with its reason, deletes none and writes nothing to the database.
    plain = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(plain))
    setup.write(
        sim.base_url,
        account_extra=DELETE_AT_ONCE,
    )
    rows_before = _dump(setup.state / "state.db")
    again = run_cli("run-once", "--config", str(config), "--dry-run")
    assert "would download: nothing" in again.out
    plan = again.out.split("would delete 5 from the platform:")[1]
    for row in sim.sessions():
        line = next(x for x in plan.splitlines() if x.strip().startswith(row["id"]))
        assert str(archived(setup.archive)[row["id"]]) in line
        assert "(verified copy older than the grace period: verified 20" in line
    assert sim.deleted_ids() == set()
    assert _dump(setup.state / "state.db") == rows_before
    assert run_cli("status", "--config", str(config)).code == 0


def test_remote_deletion_removes_exactly_the_verified_sessions(sim, setup, run_cli):
    config = setup.write(
        sim.base_url,
        account_extra=DELETE_AT_ONCE,
    )
    before = {r["id"] for r in sim.sessions()}
    run_cli("run-once", "--config", str(config))
    zips = archived(setup.archive)
    assert set(zips) == before
    # Every deleted session has a whole local copy that hashes as recorded.
    assert sim.deleted_ids() == before
    for sid in before:
        assert zips[sid].read_bytes() == sim.zip_bytes(sid)
    db = sqlite3.connect(setup.state / "state.db")
    ledger = db.execute("select remote_id, result, confirmed_at from deletions").fetchall()
    assert {r[0] for r in ledger} == before
    assert all(r[1] == "confirmed" and r[2] for r in ledger)
    states = dict(db.execute("select remote_id, state from sessions").fetchall())
    assert set(states.values()) == {"remote_deleted"}


def test_the_ledger_entry_is_committed_before_each_delete_is_sent(sim, setup, run_cli, monkeypatch):
    """SPEC section 6. A spy, not a mock: the real DELETE still goes to the simulator, but
    first the state database is read from another connection, as a process started after a
    kill at that instant would read it."""
    from e4sync.sources.e4connect.client import E4Connect

    config = setup.write(sim.base_url, account_extra=DELETE_AT_ONCE)
    real_remove = E4Connect.remove_session
    seen: dict[str, list[list]] = {}

    def remove_after_checking_the_ledger(self, session_id, **kwargs):
        db = sqlite3.connect(setup.state / "state.db")
        try:
            # Every request is checked, not only the last one for a session.
            seen.setdefault(str(session_id), []).append(
                db.execute(
                    "select sha256, confirmed_at from deletions where remote_id = ?",
                    (str(session_id),),
                ).fetchall()
            )
        finally:
            db.close()
        return real_remove(self, session_id)

    monkeypatch.setattr(E4Connect, "remove_session", remove_after_checking_the_ledger)
    run_cli("run-once", "--config", str(config))
    assert seen and set(seen) == sim.deleted_ids()
    for sid, checks in seen.items():
        # Before every request: one open entry, naming the hash of the whole local copy.
        for rows in checks:
            assert len(rows) == 1 and rows[0][1] is None, (sid, rows)
            assert rows[0][0] == hashlib.sha256(sim.zip_bytes(sid)).hexdigest()


def test_grace_period_holds_deletions_back(sim, setup, run_cli):
    config = setup.write(
        sim.base_url,
        account_extra=(
            '[account.remote]\ndelete_after_verify = true\ndelete_min_age = "0s"\n'
            'delete_grace = "1d"\n'
        ),
    )
    run_cli("run-once", "--config", str(config))
    run_cli("run-once", "--config", str(config))
    assert sim.deleted_ids() == set()


def test_deletion_never_happens_when_the_local_copy_changed(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    everything = {r["id"] for r in sim.sessions()}
    victim = sorted(archived(setup.archive).items())[0]
    data = bytearray(victim[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim[1].write_bytes(bytes(data))
    setup.write(
        sim.base_url,
        account_extra=DELETE_AT_ONCE,
    )
    result = run_cli("run-once", "--config", str(config), exit_code=1)
    assert victim[0] not in sim.deleted_ids()
    assert "changed on disk" in result.out
    assert sim.deleted_ids() == everything - {victim[0]}


def test_verify_names_a_flipped_byte(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    assert "match" in run_cli("verify", "--config", str(config)).out
    path = sorted(archived(setup.archive).values())[-1]
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    result = run_cli("verify", "--config", str(config), "--json", exit_code=1)
    report = json.loads(result.out)
    assert report["changed"] == [str(path)] and not report["clean"]
    other = sorted(archived(setup.archive).values())[0]
    other.unlink()
    result = run_cli("verify", "--config", str(config), exit_code=1)
    assert f"missing: {other}" in result.out


def test_reindex_rebuilds_the_database_from_sidecars(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    for f in setup.state.glob("state.db*"):
        f.unlink()
    result = run_cli("reindex", "--config", str(config))
    assert f"{len(sim.sessions())} sessions added" in result.out
    # No pass is recorded yet: NOT OK (exit 1), and it says why.
    status = json.loads(run_cli("status", "--config", str(config), "--json", exit_code=1).out)
    assert status["accounts"][0]["counts"]["verified"] == len(sim.sessions())
    assert status["accounts"][0]["reasons"] == [
        "no pass has run yet for this account: run `e4sync run-once`"
    ]
    text = run_cli("status", "--config", str(config), exit_code=1).out
    assert "NOT OK\n  why: no pass has run yet for this account" in text
    before = downloads(sim)
    run_cli("run-once", "--config", str(config))
    assert downloads(sim) == before, "a reindexed archive is not downloaded again"
    assert ": ok" in run_cli("status", "--config", str(config)).out


def test_a_session_that_vanishes_is_remote_gone_and_its_copy_kept(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    victim = sim.sessions()[0]["id"]
    path = archived(setup.archive)[victim]
    remove_remotely(sim, victim)
    run_cli("run-once", "--config", str(config))
    status = json.loads(run_cli("status", "--config", str(config), "--json").out)
    assert status["accounts"][0]["counts"]["remote_gone"] == 1
    assert path.read_bytes() == sim.zip_bytes(victim)


def test_an_empty_listing_is_never_taken_as_everything_deleted(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    for row in sim.sessions():
        remove_remotely(sim, row["id"])
    result = run_cli("run-once", "--config", str(config), exit_code=1)
    assert "empty session list" in result.out
    status = json.loads(run_cli("status", "--config", str(config), "--json", exit_code=1).out)
    assert status["accounts"][0]["counts"]["remote_gone"] == 0
    assert status["accounts"][0]["reasons"] == [
        "the last pass failed: empty session list where sessions existed"
    ]


def test_wrong_password_exits_77_and_says_so(sim, setup, run_cli):
    config = setup.write(sim.base_url, accounts=[("lab", "demo@example.org", "not-it")])
    result = run_cli("run-once", "--config", str(config), exit_code=77)
    assert "wrong username or password" in result.out + result.err
    assert "not-it" not in result.out + result.err


def test_one_failing_account_does_not_stop_the_others(sim, setup, run_cli):
    sim.add_account("second@example.org", "pw2", sessions=3)
    config = setup.write(
        sim.base_url,
        accounts=[("bad", "demo@example.org", "wrong"), ("good", "second@example.org", "pw2")],
    )
    run_cli("run-once", "--config", str(config), exit_code=77)
    zips = archived(setup.archive)
    assert {r["id"] for r in sim.sessions("second@example.org")} == set(zips)


def test_hostile_labels_stay_inside_the_archive(sim, setup, run_cli, tmp_path):
    hostile = ["../../etc", "a/b\\c", "con", "x\x00y", "9" * 5000]
    for label in hostile:
        sim.add_session(label=label)
    # The label in the path itself (the default layout turns labels into a serial).
    layout = 'layout = "{account}/{label}/{session_id}.zip"'
    config = setup.write(sim.base_url, account_extra=layout)
    before = set(tmp_path.iterdir())
    run_cli("run-once", "--config", str(config))
    zips = archived(setup.archive)
    assert len(zips) == len(sim.sessions())
    for path in zips.values():
        assert path.resolve().is_relative_to(setup.archive.resolve())
    # Nothing new beside the archive and the state folder: no file escaped upwards.
    assert set(tmp_path.iterdir()) - before <= {setup.archive, setup.state}


def test_two_sessions_on_one_path_never_overwrite(sim, setup, run_cli, caplog):
    a = sim.add_session(start_time=1541950248, label="2588")
    b = sim.add_session(start_time=1541950248, label="2588")
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    zips = archived(setup.archive)
    assert zips[a["id"]] != zips[b["id"]]
    assert zips[a["id"]].read_bytes() == sim.zip_bytes(a["id"])
    assert zips[b["id"]].read_bytes() == sim.zip_bytes(b["id"])
    names = {zips[a["id"]].name, zips[b["id"]].name}
    assert "1541950248_A00A1C.zip" in names
    assert any(n.endswith(f"_{a['id']}.zip") or n.endswith(f"_{b['id']}.zip") for n in names)


def test_second_process_gets_the_lock_busy_code(sim, setup, run_cli):
    import fcntl
    import os

    config = setup.write(sim.base_url)
    setup.state.mkdir(parents=True, exist_ok=True)
    fd = os.open(setup.state / "state.db.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        result = run_cli("run-once", "--config", str(config), exit_code=75)
        assert "lock" in result.err
    finally:
        os.close(fd)


def test_two_configurations_with_separate_state_databases_run_at_once(sim, setup, tmp_path):
    """Two studies on one host share the default state folder but not a database: one
    pass over study A (holding its lock, as a running pass does) never stops a pass over
    study B, while a second pass over A waits its turn (exit 75)."""
    import fcntl
    import os

    configs = {}
    for study in ("a", "b"):
        (tmp_path / study).mkdir()
        configs[study] = write_config(
            tmp_path / study,
            sim.base_url,
            state={"dir": str(setup.state), "url": f"sqlite:///{tmp_path / study / 'state.db'}"},
        )
    holder = os.open(tmp_path / "a" / "state.db.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        b = subprocess.run(
            [sys.executable, "-m", "e4sync", "--config", str(configs["b"]), "run-once"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert b.returncode == 0, b.stderr
        assert len(archived(tmp_path / "b" / "archive")) == len(sim.sessions())
        a = subprocess.run(
            [sys.executable, "-m", "e4sync", "--config", str(configs["a"]), "run-once"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert a.returncode == 75 and "state.db.lock" in a.stderr, a.stderr
    finally:
        os.close(holder)
    assert not (setup.state / "e4sync.lock").exists()  # the folder holds no lock of its own


@pytest.mark.parametrize("bad_id", ["12a", "../1", "-5"])
def test_a_session_id_that_is_not_a_number_is_a_usage_error(sim, setup, run_cli, bad_id):
    config = setup.write(sim.base_url)
    result = run_cli("download", bad_id, "--config", str(config), exit_code=2)
    assert "must be a number" in result.err
    assert "Traceback" not in result.err


def test_a_pass_reports_bytes_as_they_arrive_not_only_whole_sessions(sim, setup):
    """The daemon's watchdog counts these: a big session on a slow line that takes longer
    than the stall limit must not look like a hung pass."""
    import threading

    from e4sync.config import load_config
    from e4sync.state.db import open_db
    from e4sync.sync import run_pass

    cfg = load_config(setup.write(sim.base_url, extra="concurrency = 1"))
    engine = open_db(cfg.state.url)
    events: list[tuple[str, int]] = []
    lock = threading.Lock()

    def record(kind: str):
        def add(value) -> None:
            with lock:
                events.append((kind, value))

        return add

    try:
        run_pass(cfg, engine, on_progress=record("session"), on_bytes=record("bytes"))
    finally:
        engine.dispose()
    total = sum(len(sim.zip_bytes(r["id"])) for r in sim.sessions())
    arrivals = [n for kind, n in events if kind == "bytes"]
    # Every byte is reported (as increments), in pieces: several per session, not one at
    # the end; and the first piece comes before the first session is done.
    assert sum(arrivals) == total
    assert len(arrivals) > 2 * len(sim.sessions())
    assert events[0][0] == "bytes"
