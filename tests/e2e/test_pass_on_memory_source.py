"""The real pass on a second kind of source (SPEC sections 5, 6 and 7a): ``run_pass`` with a
real SQLite state file in tmp_path and a real archive folder, served by ``MemorySource``
(tests/fakes.py), whose items have ids of any string (S3 keys with slashes, spaces, unicode),
whose bytes and versions a test changes, which may refuse deletions, and which may list only
part of the account.

Only the platform is in memory; everything the pass does with it is the real code. The
account's ``source`` is set to ``memory`` after loading the configuration and the ``memory``
kind is registered for each test (test-only plumbing, ``tests.fakes.register_memory_kind``).

Tests marked ``xfail(strict=True)`` state the intended behaviour that the code at this commit
does not have yet; each reason names what must change. Strict: the day it works, the mark
must go.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from e4sync.config import Config, load_config
from e4sync.state.db import open_db
from e4sync.sync import AccountReport, run_pass
from tests.fakes import MemoryKind, MemorySource, etag_of, memory_accounts, register_memory_kind
from tests.fakes import version_of as memory_version

ACCOUNT = "mem"
S3_KEY = "v2/829/1/1/participant_data/2026-11-30/p-1-3YK/raw_data/v6/x_1701.avro"
DELETE_AT_ONCE = (
    '[account.remote]\ndelete_after_verify = true\ndelete_min_age = "0s"\ndelete_grace = "0s"\n'
)


@dataclass
class Harness:
    cfg: Config
    engine: object
    registry: MemoryKind
    archive: Path

    def run(self, **kwargs) -> AccountReport:
        report = run_pass(self.cfg, self.engine, source_factory=self.registry.factory, **kwargs)
        (account,) = report.accounts
        return account

    def rows(self) -> dict[str, dict]:
        return {r["remote_id"]: r for r in self._select("select * from sessions")}

    def ledger(self) -> list[dict]:
        return self._select("select * from deletions order by id")

    def _select(self, sql: str) -> list[dict]:
        db = sqlite3.connect(self.cfg.state.dir / "state.db")
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute(sql)]
        finally:
            db.close()

    def file_of(self, item_id: str) -> Path:
        return self.archive / self.rows()[item_id]["local_path"]

    def data_files(self) -> dict[str, bytes]:
        """Every archived data file (not a sidecar), by path relative to the root."""
        return {
            str(p.relative_to(self.archive)): p.read_bytes()
            for p in self.archive.rglob("*")
            if p.is_file() and p.suffix != ".json"
        }

    def sidecars(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in self.archive.rglob("*.json")]


@pytest.fixture
def harness(tmp_path, monkeypatch) -> Callable[..., Harness]:
    """``harness(source, account_extra="")``: a configuration with one account served by
    ``source``, its state database opened (and disposed of after the test)."""
    registry = register_memory_kind(monkeypatch)
    engines = []

    def make(source: MemorySource, account_extra: str = "") -> Harness:
        registry.add(ACCOUNT, source)
        password = tmp_path / "mem.password"
        fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("unused\n")  # the memory kind logs in with nothing
        config = tmp_path / "config.toml"
        config.write_text(
            f'[archive]\nroot = "{tmp_path / "archive"}"\n\n'
            f'[state]\ndir = "{tmp_path / "state"}"\n\n'
            '[download]\nbackoff = "0s"\n\n'
            f'[[account]]\nname = "{ACCOUNT}"\nusername = "memory@example.org"\n'
            f'password_file = "{password}"\nbase_url = "http://127.0.0.1:9"\n'
            f"{account_extra}\n"
        )
        cfg = memory_accounts(load_config(config))
        engine = open_db(cfg.state.url)
        engines.append(engine)
        return Harness(cfg, engine, registry, cfg.archive.root)

    yield make
    for engine in engines:
        engine.dispose()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(seed: str, size: int = 3000) -> bytes:
    """Distinct bytes per seed, several fetch chunks long."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


# -- (a) any string id -----------------------------------------------------------------------

ODD_IDS = [
    S3_KEY,
    S3_KEY.replace("x_1701", "x_1702"),  # one character apart, same folder
    "a/b",
    "a_b",  # the same as "a/b" once a separator is made safe
    "with space/and more spaces .txt",
    "données/été 2026/日本語.csv",
    "../../outside",
    "/absolute/looking",
]


def test_string_ids_with_slashes_archive_to_distinct_files_and_a_second_pass_is_idle(harness):
    source = MemorySource({item_id: blob(item_id) for item_id in ODD_IDS})
    h = harness(source)
    first = h.run()
    assert (first.downloaded, first.failed, first.errors) == (len(ODD_IDS), 0, [])
    rows = h.rows()
    assert set(rows) == set(ODD_IDS), "every id kept exactly as listed"
    assert {r["state"] for r in rows.values()} == {"verified"}
    paths = [r["local_path"] for r in rows.values()]
    assert len(set(paths)) == len(ODD_IDS), "one file per item"
    root = os.path.realpath(h.archive)
    for item_id, row in rows.items():
        path = h.archive / row["local_path"]
        assert os.path.realpath(path).startswith(root + os.sep), item_id
        assert path.read_bytes() == source.data(item_id), item_id
        assert row["sha256"] == sha256(source.data(item_id))
        assert row["version"] == row["downloaded_version"] == memory_version(source.data(item_id))
    assert sorted(h.data_files()) == sorted(paths), "nothing else written"
    owners = sorted(s["session_id"] for s in h.sidecars())
    assert owners == sorted(ODD_IDS), "one sidecar per file, naming its item"

    before = len(source.calls)
    second = h.run()
    during = source.calls[before:]
    assert [c for c in during if c[0] in ("fetch", "verify", "delete")] == []
    assert (second.downloaded, second.new, second.failed, second.errors) == (0, 0, 0, [])
    assert h.rows() == rows, "an idle pass changes no row"


@pytest.mark.xfail(
    strict=True,
    reason=(
        "an account's layout names one suffix (validate_layout checks it ends in the kind's), "
        "so an .avro item of a kind whose layout ends in .zip is archived as '...zip'; the "
        "item's own suffix must reach the file name (a {suffix} placeholder, or a layout "
        "that names the key as S3 does: the EmbracePlus issue decides)"
    ),
)
def test_an_archived_file_carries_its_items_suffix(harness):
    ids = [S3_KEY, "v2/829/1/1/participant_data/2026-11-30/p-1-3YK/x_2026-11-30_eda.csv"]
    source = MemorySource({item_id: blob(item_id) for item_id in ids})
    h = harness(source)
    assert h.run().downloaded == 2
    for item_id in ids:
        name = h.file_of(item_id).name
        assert name.endswith(source.item(item_id).suffix), (item_id, name)


# -- (b) a source that cannot delete ---------------------------------------------------------


def test_a_source_that_can_delete_is_sent_each_delete_under_these_rules(harness):
    """The control for the next test: the same rules do delete from a source that can,
    with If-Match the ETag the archived bytes came with."""
    data = {"k/1.csv": blob("1"), "k/2.csv": blob("2")}
    source = MemorySource(data)
    h = harness(source, DELETE_AT_ONCE)
    report = h.run()
    assert (report.downloaded, report.deleted, report.errors) == (2, 2, [])
    sent = sorted(source.calls_to("delete"))
    assert sent == sorted(("delete", i, etag_of(d)) for i, d in data.items())
    assert source.ids() == []
    assert {r["state"] for r in h.rows().values()} == {"remote_deleted"}
    for item_id, d in data.items():
        assert h.file_of(item_id).read_bytes() == d, "the verified copy stays"


def test_a_source_that_cannot_delete_is_never_sent_a_delete(harness):
    data = {"k/1.csv": blob("1"), "k/2.csv": blob("2")}
    source = MemorySource(data, can_delete=False)
    h = harness(source, DELETE_AT_ONCE)
    for _ in range(2):
        h.run()
    assert source.calls_to("delete") == [], "a delete was sent to a read-only source"
    assert h.ledger() == [], "no deletion is recorded as requested"
    assert {r["state"] for r in h.rows().values()} == {"verified"}
    assert source.ids() == sorted(data)
    for item_id, d in data.items():
        assert h.file_of(item_id).read_bytes() == d


# -- (c) a new version ---------------------------------------------------------------------


def test_an_item_with_new_bytes_is_downloaded_again_and_the_old_copy_kept(harness):
    """A source whose versions are the files' own (S3: a rewritten object) says
    ``refetch_changed``: the new version is downloaded, the old copy kept in its versions
    folder under the account's, with its sidecar marked kept aside."""
    old, new = blob("old"), blob("new", 3100)
    source = MemorySource(
        {"k/changing.csv": old, "k/steady.csv": blob("steady")},
        refetch_changed=True,
        versions_folder=".versions",
    )
    h = harness(source)
    assert h.run().downloaded == 2
    first_path = h.rows()["k/changing.csv"]["local_path"]
    source.put("k/changing.csv", new)
    assert source.item("k/changing.csv").version != memory_version(old)

    before = len(source.calls)
    report = h.run()
    fetched = [c for c in source.calls[before:] if c[0] == "fetch"]
    assert fetched == [("fetch", "k/changing.csv")], "the new version, and only it, fetched"
    assert (report.downloaded, report.failed) == (1, 0)
    row = h.rows()["k/changing.csv"]
    assert row["state"] == "verified"
    assert (row["sha256"], row["downloaded_version"]) == (sha256(new), memory_version(new))
    assert h.file_of("k/changing.csv").read_bytes() == new
    files = h.data_files()
    kept = [p for p, d in files.items() if d == old]
    assert row["local_path"] == first_path, "the new version takes the item's name"
    assert len(kept) == 1 and kept[0] != first_path, "the old bytes kept aside, once"
    assert kept[0].startswith(f"{ACCOUNT}/.versions/"), kept
    assert [p for p, d in files.items() if d == new] == [row["local_path"]]
    aside = [sc for sc in h.sidecars() if sc.get("kept_aside")]
    assert [sc["sha256"] for sc in aside] == [sha256(old)]


def test_a_new_version_of_a_source_that_does_not_refetch_only_blocks_its_deletion(harness):
    """E4 Connect's versions are its listed metadata: an edited label is no new recording.
    Such a change is recorded, not downloaded, and the item is not deleted remotely."""
    source = MemorySource({"k/a.csv": blob("a")})
    h = harness(source, DELETE_AT_ONCE.replace("true", "false"))
    h.run()
    source.put("k/a.csv", blob("a2"))
    before = len(source.calls)
    report = h.run()
    assert [c for c in source.calls[before:] if c[0] == "fetch"] == []
    assert report.changed == 1
    row = h.rows()["k/a.csv"]
    assert row["state"] == "verified" and row["version"] != row["downloaded_version"]


def test_each_listing_is_told_when_the_account_was_last_listed_completely(harness):
    source = MemorySource({"k/a.csv": blob("a")})
    h = harness(source)
    h.run()
    h.run()
    told = [c[1] for c in source.calls if c[0] == "list_items"]
    assert told[0] is None, "never listed completely before the first pass"
    assert told[1] is not None and abs(told[1] - h.rows()["k/a.csv"]["first_seen_at"]) < 5


def test_what_the_content_says_of_itself_reaches_the_row_and_the_sidecar(harness):
    source = MemorySource({"k/a.csv": blob("a", 1234)}, content_facts=True)
    h = harness(source)
    h.run()
    row = h.rows()["k/a.csv"]
    listed = source.item("k/a.csv")
    assert (row["recorded_at"], row["duration"]) == (listed.recorded_at + 60, 1234.0)
    assert json.loads(row["content_json"]) == {"bytes": 1234}
    (sidecar,) = h.sidecars()
    assert sidecar["content"] == {"bytes": 1234} and sidecar["source"] == "memory"


def test_a_delete_refused_as_not_permitted_is_recorded_once_until_retry(harness):
    from e4sync.maintenance import retry
    from e4sync.status import status_report

    source = MemorySource({"k/a.csv": blob("a"), "k/b.csv": blob("b")}, deletion_permitted=False)
    h = harness(source, DELETE_AT_ONCE)
    report = h.run()
    assert len(source.calls_to("delete")) == 1, "the first refusal stops the deletions"
    assert "not permitted" in report.deletions_skipped
    assert [e["result"] for e in h.ledger()] == ["not permitted"]
    h.run()
    assert len(source.calls_to("delete")) == 1, "no later pass asks again"
    (shown,) = status_report(h.engine)["accounts"]
    assert "AccessDenied" in shown["deletions_refused"], "status says why, until retry"
    retry(h.engine)
    source.deletion_permitted = True
    h.run()
    assert len(source.calls_to("delete")) == 3, "after retry both are asked for"
    assert {r["state"] for r in h.rows().values()} == {"remote_deleted"}


# -- (d) partial and complete listings -----------------------------------------------------


def test_a_partial_listing_marks_gone_only_what_it_covers_and_a_complete_one_all(harness):
    today, yesterday = (
        "v2/829/1/1/participant_data/2026-11-30/",
        "v2/829/1/1/participant_data/2026-11-29/",
    )
    kept_id, vanishing_id, old_id = today + "a.avro", today + "c.avro", yesterday + "b.avro"
    data = {kept_id: blob("a"), vanishing_id: blob("c"), old_id: blob("b")}
    source = MemorySource(data)
    h = harness(source)
    assert h.run().downloaded == 3

    # Only today's folder is listed; yesterday's item is still on the platform, unlisted.
    source.covers = today
    source.remove(vanishing_id)
    partial = h.run()
    rows = h.rows()
    assert rows[old_id]["state"] == "verified", "not covered: not known to be gone"
    assert rows[vanishing_id]["state"] == "remote_gone", "covered and missing: gone"
    assert rows[kept_id]["state"] == "verified"
    assert (partial.gone, partial.errors) == (1, [])

    # A complete listing without yesterday's item: now it is known to be gone.
    source.covers = None
    source.remove(old_id)
    complete = h.run()
    rows = h.rows()
    assert rows[old_id]["state"] == "remote_gone"
    assert rows[vanishing_id]["state"] == "remote_gone"
    assert rows[kept_id]["state"] == "verified"
    assert complete.gone == 1
    for item_id, d in data.items():
        assert h.file_of(item_id).read_bytes() == d, "a local copy is never touched for it"
    assert source.calls_to("delete") == []


# -- faults ------------------------------------------------------------------------------------


def test_failed_cut_short_and_refused_fetches_are_retried_and_never_archived_half(harness):
    data = {f"f/{name}.bin": blob(name, 20_000) for name in ("down", "cut", "short", "refused")}
    source = MemorySource(data)
    source.fail_fetch("f/down.bin")
    source.cut_fetch("f/cut.bin", after=5000)
    source.cut_fetch("f/short.bin", after=5000, silent=True)
    source.refuse_verify("f/refused.bin", "the test refuses this file")
    h = harness(source)
    first = h.run()
    assert (first.downloaded, first.failed) == (0, 4)
    rows = h.rows()
    for item_id in data:
        assert rows[item_id]["state"] != "verified", item_id
        assert (rows[item_id]["attempts"], rows[item_id]["sha256"]) == (1, None), item_id
    assert "the test refuses this file" in rows["f/refused.bin"]["last_error"]
    assert "broke after 5000" in rows["f/cut.bin"]["last_error"]
    assert h.sidecars() == [], "nothing committed"
    assert not [p for p in h.data_files() if not p.endswith(".part")], "no file under its name"

    source.accept_verify("f/refused.bin")
    second = h.run()
    assert (second.downloaded, second.failed, second.errors) == (4, 0, [])
    for item_id, d in data.items():
        assert h.rows()[item_id]["state"] == "verified"
        assert h.file_of(item_id).read_bytes() == d, item_id
    assert not [p for p in h.data_files() if p.endswith(".part")], "stale parts removed"
