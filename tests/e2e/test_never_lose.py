"""Never lose a recording, round 2 (issue 11): a platform whose bytes change under the same
metadata, one that never says a ZIP's size, symbolic links inside the archive, archived
copies lost from disk, a dry run that must not promise what the pass would refuse.

The real client against the real simulator on 127.0.0.1, a real SQLite state file, real
folders and links. Each test fails without its fix: the comments say which.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from e4sync.sources.e4connect.simulator import Faults, Simulator

DELETE_AT_ONCE = (
    '[account.remote]\ndelete_after_verify = true\ndelete_min_age = "0s"\ndelete_grace = "0s"\n'
)


def rows(setup) -> dict[str, dict]:
    db = sqlite3.connect(setup.state / "state.db")
    db.row_factory = sqlite3.Row
    try:
        return {r["remote_id"]: dict(r) for r in db.execute("select * from sessions")}
    finally:
        db.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copies(archive: Path, session_id: str) -> dict[str, str]:
    """name -> sha256 of every whole copy of a session (current and kept aside)."""
    found = {}
    for side in archive.rglob("*.json"):
        meta = json.loads(side.read_text())
        if meta.get("session_id") == session_id:
            found[side.with_suffix(".zip").name] = sha(side.with_suffix(".zip"))
    return found


def test_bytes_changed_under_the_same_metadata_are_never_deleted_but_archived_beside(
    sim, setup, run_cli
):
    """Without the proof before DELETE the second pass deletes the platform's new version,
    of which the archive holds no copy."""
    run_cli("run-once", "--config", str(setup.write(sim.base_url)))  # archived; no deletion
    changed = sim.sessions()[0]["id"]
    before = rows(setup)[changed]
    assert before["remote_etag"] == f'"{sim.zip_sha256(changed)}"', "validators recorded"
    assert before["remote_last_modified"] == sim.last_modified(changed)
    old_sha = before["sha256"]
    new_sha = sim.change_content(changed)
    assert new_sha != old_sha

    config = setup.write(sim.base_url, account_extra=DELETE_AT_ONCE)
    second = run_cli("run-once", "--config", str(config))
    assert "changed since it was archived" in second.out + second.err
    others = {r["id"] for r in sim.sessions()} | sim.deleted_ids()
    assert changed not in sim.deleted_ids(), "the changed version was deleted"
    assert sim.deleted_ids() == others - {changed}
    after = rows(setup)[changed]
    assert (after["state"], after["sha256"]) == ("verified", new_sha), "new version archived"
    assert after["remote_etag"] == f'"{new_sha}"'
    kept = copies(setup.archive, changed)
    assert sorted(kept.values()) == sorted([old_sha, new_sha]), kept
    (aside,) = [name for name in kept if ".replaced-" in name]
    assert kept[aside] == old_sha

    # The new version qualifies on its own terms: the next pass deletes it, and what the
    # platform held then is exactly what the archive holds.
    run_cli("run-once", "--config", str(config))
    assert changed in sim.deleted_ids()
    for sid, digest in sim.deleted_sha256().items():
        assert digest in copies(setup.archive, sid).values(), sid


def test_a_dry_run_promises_no_deletion_the_pass_would_refuse(sim, setup, run_cli):
    """Without the same re-hash and probe in the dry run, it lists both as "would delete"."""
    run_cli("run-once", "--config", str(setup.write(sim.base_url)))
    damaged, changed = (r["id"] for r in sim.sessions()[:2])
    path = setup.archive / rows(setup)[damaged]["local_path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    sim.change_content(changed)
    config = setup.write(sim.base_url, account_extra=DELETE_AT_ONCE)
    result = run_cli("run-once", "--config", str(config), "--dry-run", "--json", exit_code=None)
    report = json.loads(result.out)
    (account,) = report["accounts"]
    assert damaged not in account["would_delete"] and changed not in account["would_delete"]
    assert len(account["would_delete"]) == 3
    assert changed in account["would_download"]
    assert sim.deleted_ids() == set(), "a dry run deletes nothing"
    assert rows(setup)[changed]["state"] == "verified", "and records nothing"


def test_a_platform_that_never_says_the_size_gets_no_deletion(setup, run_cli):
    with Simulator(port=0, seed=3, sessions=2, faults=Faults(hide_size=True)) as sim:
        config = setup.write(sim.base_url, account_extra=DELETE_AT_ONCE)
        result = run_cli("run-once", "--config", str(config), exit_code=1)
        assert all(r["state"] == "verified" for r in rows(setup).values()), "still archived"
        assert sim.deleted_ids() == set()
        assert "does not say the size" in result.out + result.err


def test_if_match_stops_a_delete_of_bytes_changed_since_the_probe(sim):
    from e4sync.errors import VersionChanged
    from e4sync.sources.e4connect.client import E4Connect

    sid = sim.sessions()[0]["id"]
    with E4Connect("demo@example.org", "demo", base_url=sim.base_url) as client:
        probed = client.remote_version(sid)
        assert probed.size == len(sim.zip_bytes(sid)) and probed.etag
        sim.change_content(sid)
        with pytest.raises(VersionChanged):
            client.remove_session(sid, if_match=probed.etag)
        assert sid not in sim.deleted_ids()
        client.remove_session(sid, if_match=client.remote_version(sid).etag)
        assert sid in sim.deleted_ids()


@pytest.mark.parametrize("where", ["account", "month"])
def test_a_symlinked_folder_inside_the_archive_gets_nothing_and_nothing_is_deleted(
    sim, setup, run_cli, tmp_path, where
):
    """Without the real-path check the files land outside the archive and the remote
    copies are then deleted."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    first = sim.sessions()[0]
    from datetime import UTC, datetime

    start = datetime.fromtimestamp(int(first["start_time"]), UTC)
    link = setup.archive / "lab"
    if where == "month":
        link = link / f"{start:%Y}" / f"{start:%m}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    config = setup.write(sim.base_url, account_extra=DELETE_AT_ONCE)
    result = run_cli("run-once", "--config", str(config), exit_code=1)
    assert "outside the archive root" in result.out + result.err
    assert list(outside.rglob("*")) == [], "nothing written through the link"
    assert first["id"] not in sim.deleted_ids()
    assert rows(setup)[first["id"]]["state"] != "verified"


def test_a_lost_or_cut_copy_is_downloaded_again_and_a_lost_deleted_one_is_reported(
    sim, setup, run_cli
):
    """Without the pass's stat the lost copy stays "verified": nothing is downloaded."""
    run_cli("run-once", "--config", str(setup.write(sim.base_url)))
    lost, cut = (r["id"] for r in sim.sessions()[:2])
    known = rows(setup)
    (setup.archive / known[lost]["local_path"]).unlink()
    cut_path = setup.archive / known[cut]["local_path"]
    cut_path.write_bytes(cut_path.read_bytes()[:1000])

    result = run_cli("run-once", "--config", str(setup.write(sim.base_url)))
    assert "lost or damaged" in result.out + result.err
    now = rows(setup)
    for sid in (lost, cut):
        path = setup.archive / now[sid]["local_path"]
        assert path.read_bytes() == sim.zip_bytes(sid), "downloaded again, whole"
        assert now[sid]["state"] == "verified" and now[sid]["local_problem"] is None
    (aside,) = setup.archive.rglob("*.damaged-*.zip")
    assert len(aside.read_bytes()) == 1000, "the cut file is kept aside as found"

    # Deleted remotely, then lost here: nothing can repair it; it is said every pass.
    config = setup.write(sim.base_url, account_extra=DELETE_AT_ONCE)
    run_cli("run-once", "--config", str(config))
    gone = rows(setup)[lost]
    assert gone["state"] == "remote_deleted"
    (setup.archive / gone["local_path"]).unlink()
    for _ in range(2):
        result = run_cli("run-once", "--config", str(config))
        assert "the platform no longer holds it" in result.out + result.err
        assert str(setup.archive / gone["local_path"]) in result.out + result.err
    assert rows(setup)[lost]["local_problem"].startswith("missing: ")


class ReadOnly:
    """The real E4 source, saying it cannot delete (as a read-only S3 delivery does)."""

    def __init__(self, inner):
        from e4sync.sources import Capabilities

        self.inner = inner
        self.name = inner.name
        self.capabilities = Capabilities(can_delete=False)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def delete(self, item, if_match=None):
        raise AssertionError(f"a source that cannot delete was asked to delete {item.id}")


def test_a_source_that_cannot_delete_is_never_asked_to(sim, setup, caplog):
    import logging

    from e4sync.config import load_config
    from e4sync.errors import UsageError
    from e4sync.sources import make_source
    from e4sync.state.db import open_db
    from e4sync.sync import remove_one, run_pass

    cfg = load_config(setup.write(sim.base_url, account_extra=DELETE_AT_ONCE))
    engine = open_db(cfg.state.url)
    factory = lambda account: ReadOnly(make_source(account, cfg))  # noqa: E731
    try:
        with caplog.at_level(logging.INFO, logger="e4sync.sync"):
            reports = [run_pass(cfg, engine, source_factory=factory) for _ in range(2)]
        sid = sim.sessions()[0]["id"]
        with pytest.raises(UsageError, match="cannot delete"):
            remove_one(cfg, engine, cfg.accounts[0], sid, source_factory=factory)
    finally:
        engine.dispose()
    for report in reports:
        (account,) = report.accounts
        assert "cannot delete" in account.deletions_skipped
        assert account.deleted == 0 and not account.errors and report.exit_code == 0
    assert reports[0].accounts[0].downloaded == len(sim.sessions())
    said = [r for r in caplog.records if "cannot delete" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO, logging.INFO], "once per pass, at INFO"
    assert sim.deleted_ids() == set()
    assert not [e for e in sim.request_log() if e["method"] == "DELETE"]
    assert {r["state"] for r in rows(setup).values()} == {"verified"}
