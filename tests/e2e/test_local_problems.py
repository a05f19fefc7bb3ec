"""A lost or damaged archived copy (issue 11, item 3): `verify` marks it on its row, `status`
says the account is NOT OK naming the file, the next pass downloads it again while the
platform holds it, and a copy the platform no longer holds is reported loudly (log, status,
health ping, metrics) until it is restored. The real simulator on 127.0.0.1, a real SQLite
state file, real `run-once`/`verify`/`status` in-process."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.conftest import archived
from tests.e2e.test_run_once import DELETE_AT_ONCE, downloads


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def rows(setup) -> dict[str, tuple]:
    """session id -> (state, local_problem, attempts), read with sqlite3."""
    with sqlite3.connect(setup.state / "state.db") as db:
        found = db.execute("SELECT remote_id, state, local_problem, attempts FROM sessions")
        return {rid: (state, problem, attempts) for rid, state, problem, attempts in found}


def lab_status(run_cli, config: Path) -> dict:
    """The account's `status --json`; its exit code says the same (1 when NOT OK)."""
    result = run_cli("status", "--json", "--config", str(config), exit_code=None)
    [lab] = json.loads(result.out)["accounts"]
    assert result.code == (0 if lab["healthy"] else 1), result
    return lab


def test_verify_marks_a_lost_and_a_changed_copy_until_the_next_pass_downloads_them(
    sim, setup, run_cli
):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    zips = archived(setup.archive)
    gone_id, flipped_id = sorted(zips)[:2]
    gone, flipped = zips[gone_id], zips[flipped_id]
    gone.unlink()
    flip_a_byte(flipped)

    result = run_cli("verify", "--config", str(config), exit_code=1)
    assert f"missing: {gone}" in result.out and f"changed: {flipped}" in result.out
    assert "2 of them will be downloaded again by the next pass" in result.out
    # Marked on their rows and due again: state new, attempts cleared.
    marked = rows(setup)
    assert marked[gone_id] == ("new", f"missing: {gone}", 0)
    assert marked[flipped_id] == ("new", f"changed: {flipped}", 0)
    # Idempotent: a second verify finds and records the same, and changes nothing more.
    again = json.loads(run_cli("verify", "--json", "--config", str(config), exit_code=1).out)
    assert again["missing"] == [str(gone)] and again["changed"] == [str(flipped)]
    assert sorted(again["requeued"]) == sorted([str(gone), str(flipped)])
    assert again["lost"] == [] and again["clean"] is False
    assert rows(setup) == marked

    # status: NOT OK (exit 1), naming both files and why, until they are whole again.
    text = run_cli("status", "--config", str(config), exit_code=1).out
    assert "lab (user" in text and "NOT OK" in text
    assert "  why: 2 archived copies missing or damaged (see docs/recovery.md)" in text
    assert str(gone) in text and str(flipped) in text
    lab = lab_status(run_cli, config)
    assert lab["healthy"] is False and lab["local_problems_total"] == 2
    assert lab["reasons"] == ["2 archived copies missing or damaged (see docs/recovery.md)"]
    assert sorted(lab["local_problems"], key=lambda p: p["session"]) == [
        {"session": gone_id, "state": "new", "problem": f"missing: {gone}"},
        {"session": flipped_id, "state": "new", "problem": f"changed: {flipped}"},
    ]

    # The next pass downloads exactly those two again; then all is whole and OK.
    before = downloads(sim)
    run_cli("run-once", "--config", str(config))
    assert downloads(sim) == before + 2
    for sid in (gone_id, flipped_id):
        assert zips[sid].read_bytes() == sim.zip_bytes(sid)
        assert rows(setup)[sid] == ("verified", None, 0)
    # The flipped file was not overwritten: it is kept aside, as found, beside the new copy.
    (aside,) = flipped.parent.glob(flipped.stem + ".damaged-*.zip")
    assert aside.read_bytes() != sim.zip_bytes(flipped_id)
    assert len(aside.read_bytes()) == len(sim.zip_bytes(flipped_id))
    lab = lab_status(run_cli, config)
    assert lab["healthy"] is True and lab["local_problems"] == []
    assert lab["local_problems_total"] == 0
    assert "NOT OK" not in run_cli("status", "--config", str(config)).out
    assert "5 match" in run_cli("verify", "--config", str(config)).out


def test_a_lost_copy_the_platform_no_longer_holds_is_reported_until_restored(
    sim, setup, run_cli, pings, caplog
):
    url, seen = pings
    prom = setup.dir / "e4sync.prom"
    monitor = f'[monitor]\nhealthcheck_url = "{url}"\nmetrics_textfile = "{prom}"\n'
    config = setup.write(sim.base_url, extra=monitor, account_extra=DELETE_AT_ONCE)
    run_cli("run-once", "--config", str(config))
    run_cli("run-once", "--config", str(config))  # a fresh listing confirms the deletions
    assert {state for state, _, _ in rows(setup).values()} == {"remote_deleted"}
    assert 'e4sync_local_problems{account="lab"} 0' in prom.read_text()
    victim_id, victim = sorted(archived(setup.archive).items())[0]
    saved = victim.read_bytes()
    victim.unlink()

    caplog.clear()
    result = run_cli("verify", "--config", str(config), exit_code=1)
    assert f"missing: {victim}" in result.out
    assert f"lost: {victim}: the platform no longer holds it" in result.out
    loud = [r for r in caplog.records if r.levelname == "ERROR" and str(victim) in r.message]
    assert loud and "cannot be downloaded again" in loud[0].message
    assert "restore the file from a backup" in loud[0].message
    # Nothing to download: it keeps its state, and the problem stays recorded.
    assert rows(setup)[victim_id] == ("remote_deleted", f"missing: {victim}", 0)

    # A pass cannot repair it: the account stays NOT OK, the ping says fail, naming it,
    # and the metrics count it.
    seen.clear()
    run_cli("run-once", "--config", str(config))
    assert not victim.exists()
    lab = lab_status(run_cli, config)
    assert lab["healthy"] is False and lab["local_problems_total"] == 1
    assert str(victim) in lab["local_problems"][0]["problem"]
    assert "NOT OK" in run_cli("status", "--config", str(config), exit_code=1).out
    assert [path for path, _ in seen] == ["/ping/abc123/start", "/ping/abc123/fail"]
    assert str(victim) in seen[-1][1]
    assert 'e4sync_local_problems{account="lab"} 1' in prom.read_text()
    assert 'e4sync_account_ok{account="lab"} 0' in prom.read_text()

    # Restored from a backup: verify clears it, and the next pass pings success again.
    victim.write_bytes(saved)
    result = run_cli("verify", "--config", str(config))
    assert f"restored: {victim}" in result.out
    assert rows(setup)[victim_id] == ("remote_deleted", None, 0)
    assert lab_status(run_cli, config)["healthy"] is True
    seen.clear()
    run_cli("run-once", "--config", str(config))
    assert [path for path, _ in seen] == ["/ping/abc123/start", "/ping/abc123"]
    assert 'e4sync_local_problems{account="lab"} 0' in prom.read_text()
    assert 'e4sync_account_ok{account="lab"} 1' in prom.read_text()


def test_verify_refuses_to_mark_anything_when_the_archive_root_is_gone(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    before = rows(setup)
    setup.archive.rename(setup.dir / "unmounted")
    result = run_cli("verify", "--config", str(config), exit_code=1)
    assert "is not there" in result.err and "nothing was checked or marked" in result.err
    # A disk that is not mounted must not queue the whole archive to be downloaded again.
    assert rows(setup) == before
