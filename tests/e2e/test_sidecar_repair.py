"""A damaged sidecar (issue 11, item 4): when the ZIP still re-hashes to its recorded sha256,
`verify` rewrites the sidecar from the state database, so that `reindex` into a fresh
database recovers the session. The real simulator on 127.0.0.1, a real SQLite state file,
real `run-once`/`verify`/`reindex`/`status` in-process."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

from tests.conftest import archived
from tests.e2e.test_run_once import downloads


def seconds(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_verify_rewrites_damaged_sidecars_and_reindex_then_recovers_them(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    zips = archived(setup.archive)
    garbage_id, wrong_sha_id, deleted_id = sorted(zips)[:3]
    side = {sid: zips[sid].with_suffix(".json") for sid in (garbage_id, wrong_sha_id, deleted_id)}
    # What the download itself wrote, to compare the repairs with.
    fresh = {sid: json.loads(path.read_text()) for sid, path in side.items()}

    side[garbage_id].write_bytes(b"\x00{not json at all")
    wrong = dict(fresh[wrong_sha_id], sha256="0" * 64, warnings=["kept: an extra field"])
    side[wrong_sha_id].write_text(json.dumps(wrong))
    side[deleted_id].unlink()
    # The platform's metadata changed after the download: the readable old sidecar still
    # holds the listing the file was downloaded under, and that is the one kept.
    with sqlite3.connect(setup.state / "state.db") as db:
        db.execute(
            "UPDATE sessions SET remote_json = ?, version = ? WHERE remote_id = ?",
            (
                json.dumps({**fresh[wrong_sha_id]["remote"], "label": "9999"}),
                "x" * 64,
                wrong_sha_id,
            ),
        )
        # Validators recorded at download go into the sidecar from their columns.
        db.execute(
            "UPDATE sessions SET remote_etag = ?, remote_last_modified = ? WHERE remote_id = ?",
            ('"etag-1"', "Tue, 01 Dec 2026 10:00:00 GMT", deleted_id),
        )

    # Repaired is fixed: reported, exit 0 (exit 1 means damage remains).
    report = json.loads(run_cli("verify", "--json", "--config", str(config)).out)
    assert sorted(report["repaired_sidecars"]) == sorted(str(p) for p in side.values())
    assert report["clean"] is True and report["ok"] == report["checked"] == len(zips)
    for sid, path in side.items():
        repaired = json.loads(path.read_text())
        expected = dict(fresh[sid])
        if sid == wrong_sha_id:
            expected["warnings"] = ["kept: an extra field"]
        if sid == deleted_id:
            expected["validators"] = {
                "etag": '"etag-1"',
                "last_modified": "Tue, 01 Dec 2026 10:00:00 GMT",
            }
        # Field for field what the download wrote; the verification time comes from the
        # database row, recorded a moment after the download wrote its sidecar.
        assert {k: v for k, v in repaired.items() if k != "verified_at"} == {
            k: v for k, v in expected.items() if k != "verified_at"
        }
        assert 0 <= seconds(repaired["verified_at"]) - seconds(fresh[sid]["verified_at"]) <= 2
    assert not list(setup.archive.rglob("*.tmp")), "written atomically, no temp file left"
    # Nothing left to repair, and the human output says so.
    again = run_cli("verify", "--config", str(config)).out
    assert "repaired sidecar" not in again and f"{len(zips)} match" in again

    # The database lost: the sidecars alone rebuild it, the repaired ones included.
    for f in setup.state.glob("state.db*"):
        f.rename(setup.dir / f.name)
    result = run_cli("reindex", "--config", str(config))
    assert f"{len(zips)} sessions added" in result.out and "skipped" not in result.out
    # NOT OK until a pass has run on the rebuilt database (exit 1), and it says so.
    status = json.loads(run_cli("status", "--json", "--config", str(config), exit_code=1).out)
    assert status["accounts"][0]["counts"]["verified"] == len(zips)
    before = downloads(sim)
    run_cli("run-once", "--config", str(config))
    assert downloads(sim) == before, "a recovered session is not downloaded again"


def test_verify_human_output_names_each_repaired_sidecar(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    victim = sorted(archived(setup.archive).values())[0].with_suffix(".json")
    victim.write_text("[]")
    result = run_cli("verify", "--config", str(config))
    assert f"repaired sidecar: {victim} (not a JSON object)" in result.out
    assert json.loads(victim.read_text())["sha256"]
