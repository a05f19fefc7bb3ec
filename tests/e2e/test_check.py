"""`e4sync check` (issue 14, item 2): the platform's listing against the archive, read-only.
Against the real simulator on 127.0.0.1 with items missing from it, extra on it and changed
on it, and copies lost or damaged on disk: each difference named, exit 1, `--json`; nothing
written to the archive, the state database or the platform. Then the same core on a second
kind of source (``MemorySource``, tests/fakes.py: S3-like ids, sizes, partial listings)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from e4sync.check import check_accounts
from e4sync.config import load_config
from e4sync.state.db import open_db
from e4sync.sync import run_pass
from tests.conftest import archived
from tests.fakes import MemorySource, memory_accounts, register_memory_kind


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def dump(db_file: Path) -> list[str]:
    db = sqlite3.connect(db_file)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_whole_archive_has_no_differences(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    run_cli("run-once", "--config", config)
    result = run_cli("check", "--config", config)
    assert result.out.splitlines() == [
        "lab: 5 listed, 5 archived, 5 match, 0 known deleted or gone, 0 difference(s)",
        "no differences",
    ]
    report = json.loads(run_cli("check", "--json", "--download", "--config", config).out)
    assert report["clean"] is True and report["differences"] == 0 and report["download"]
    (lab,) = report["accounts"]
    assert (lab["listed"], lab["archived"], lab["matched"], lab["compared"]) == (5, 5, 5, 5)


def test_missing_extra_and_changed_items_are_each_named_and_nothing_is_written(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    run_cli("run-once", "--config", config)
    zips = archived(setup.archive)
    ids = sorted(zips)
    gone_remotely, changed_remotely, lost, flipped, _ = ids
    # The platform: one item no longer listed (nobody told e4sync), one new, one whose
    # bytes changed under the same metadata.
    sim.set_listing_hook(lambda _user, rows: [r for r in rows if r["id"] != gone_remotely])
    extra = sim.add_session()["id"]
    sim.change_content(changed_remotely)
    # The archive: one copy deleted, one with a byte flipped.
    zips[lost].unlink()
    flip_a_byte(zips[flipped])
    before_files, before_rows = snapshot(setup.archive), dump(setup.state / "state.db")
    requests = sim.stats()["requests"]

    result = run_cli("check", "--config", config, exit_code=1)
    lines = result.out.splitlines()
    assert (
        lines[0] == "lab: 5 listed, 5 archived, 2 match, 0 known deleted or gone, 4 difference(s)"
    )
    assert f"  not archived: {extra}: listed on the platform, no archived copy" in result.out
    assert f"  missing: {lost} {zips[lost]}: the archived file is not there" in lines
    assert f"  changed: {flipped} {zips[flipped]}: the file is not what was archived" in (
        result.out
    )
    assert f"  not on the platform: {gone_remotely} {zips[gone_remotely]}: archived, but" in (
        result.out
    )
    assert lines[-1] == "4 difference(s)"
    # Metadata unchanged: only the platform's bytes can show this one.
    assert changed_remotely not in result.out
    assert sim.stats()["requests"].get("download", 0) == requests.get("download", 0)

    with_bytes = run_cli("check", "--download", "--config", config, exit_code=1)
    assert f"  content differs: {changed_remotely} {zips[changed_remotely]}: the platform's" in (
        with_bytes.out
    )
    assert "5 difference(s)" in with_bytes.out
    report = json.loads(run_cli("check", "--json", "--config", config, exit_code=1).out)
    kinds = {d["id"]: d["kind"] for d in report["accounts"][0]["differences"]}
    assert kinds == {
        extra: "not archived",
        lost: "missing",
        flipped: "changed",
        gone_remotely: "not on the platform",
    }
    assert report["clean"] is False and report["differences"] == 4

    # Read-only: the archive, the state database and the platform are as they were (the
    # temporary copies --download fetched are gone).
    assert snapshot(setup.archive) == before_files
    assert dump(setup.state / "state.db") == before_rows
    assert sim.deleted_ids() == set()
    assert not list(setup.archive.rglob("*.part"))


def test_known_deleted_items_are_no_difference_and_a_lost_database_is_named(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    run_cli("run-once", "--config", config)
    victim = sorted(archived(setup.archive))[0]
    run_cli("remove", victim, "--yes", "--config", config)
    run_cli("run-once", "--config", config)  # confirms it: remote_deleted, copy kept
    result = run_cli("check", "--config", config)
    assert "4 listed, 5 archived, 4 match, 1 known deleted or gone, 0 difference(s)" in result.out

    # The state database lost: the sidecars still say what is archived; check names each
    # item the database does not know, and creates no database.
    for f in setup.state.glob("state.db*"):
        f.unlink()
    lost = run_cli("check", "--config", config, exit_code=1)
    assert lost.out.count("not in the state database:") == 4
    assert "`e4sync reindex` records it" in lost.out
    assert f"not on the platform: {victim}" in lost.out  # nothing says it was deleted now
    assert not (setup.state / "state.db").exists()
    run_cli("reindex", "--config", config)
    assert "0 difference(s)" not in run_cli("check", "--config", config, exit_code=1).out


def test_an_account_that_cannot_be_listed_is_said_and_the_others_are_checked(sim, setup, run_cli):
    sim.add_account("other@example.org", "Other-Password", sessions=1)
    config = str(
        setup.write(
            sim.base_url,
            accounts=[("lab", "demo@example.org", "demo"), ("wrong", "other@example.org", "no")],
        )
    )
    run_cli("run-once", "--config", config, exit_code=77)
    result = run_cli("check", "--config", config, exit_code=77)
    assert "lab: 5 listed, 5 archived, 5 match" in result.out
    assert "wrong: not checked: E4 Connect refused the login" in result.out


def test_check_works_on_any_source_kind(tmp_path, monkeypatch):
    registry = register_memory_kind(monkeypatch)
    source = MemorySource(
        {
            "raw/2026-11-01/p1/a.avro": b"a" * 3000,
            "raw/2026-11-02/p1/b.avro": b"b" * 3000,
            "other/c.avro": b"c" * 100,
        }
    )
    registry.add("mem", source)
    password = tmp_path / "pw"
    password.write_text("x\n")
    password.chmod(0o600)
    (tmp_path / "c.toml").write_text(
        f'[archive]\nroot = "{tmp_path / "archive"}"\n[state]\ndir = "{tmp_path / "state"}"\n'
        f'[[account]]\nname = "mem"\nusername = "m"\npassword_file = "{password}"\n'
        'base_url = "http://127.0.0.1:9"\n'
    )
    cfg = memory_accounts(load_config(tmp_path / "c.toml"))
    engine = open_db(cfg.state.url)
    try:
        run_pass(cfg, engine, source_factory=registry.factory)
        clean = check_accounts(cfg, engine, source_factory=registry.factory, download=True)
        assert clean.exit_code == 0 and clean.accounts[0].compared == 3
        # A new version (other bytes, another size) of an archived item.
        source.put("raw/2026-11-01/p1/a.avro", b"A" * 2000)
        # Only part of the account listed: an item it does not cover is not "gone".
        source.covers = "raw/"
        report = check_accounts(cfg, engine, source_factory=registry.factory)
        kinds = sorted((d.item, d.kind) for d in report.accounts[0].differences)
        assert kinds == [
            ("raw/2026-11-01/p1/a.avro", "changed on the platform"),
            ("raw/2026-11-01/p1/a.avro", "size differs"),
        ]
        assert report.accounts[0].complete is False and report.exit_code == 1
        assert not source.calls_to("delete")
    finally:
        engine.dispose()


def test_a_missing_sidecar_is_a_difference_that_verify_repairs(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    run_cli("run-once", "--config", config)
    sid, zip_path = sorted(archived(setup.archive).items())[0]
    zip_path.with_suffix(".json").unlink()
    result = run_cli("check", "--config", config, exit_code=1)
    assert (
        f"  sidecar: {sid} {zip_path.with_suffix('.json')}: its sidecar is missing "
        "(`e4sync verify` rewrites it)"
    ) in result.out.splitlines()
    assert "4 match" in result.out
    run_cli("verify", "--config", config)
    assert "no differences" in run_cli("check", "--config", config).out
