"""The EmbracePlus S3 source end to end (SPEC section 9): the real pass (``run_pass``) and the
CLI (``run-once``, ``status``, ``sessions``, ``verify``, ``reindex``, ``config show``) on a
configuration with ``source = "embraceplus"`` and ``endpoint_url``, against moto's real S3
server on 127.0.0.1 (a random port) behind a small counting, fault-injecting proxy
(tests/moto_s3.py): every answer travels over HTTP, signed with SigV4, with S3's ETags,
checksums, ranges and preconditions as moto implements them. The objects are the one real
EmbracePlus recording and variants of it made with fastavro, and per-minute CSVs.

Each test names the behaviour it checks. The archive and the state database are real
folders and files in tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from e4sync.config import load_config
from e4sync.state.db import open_db
from e4sync.sync import AccountReport, run_pass
from tests.conftest import write_secret
from tests.moto_s3 import (
    PREFIX,
    REAL_DAY,
    REAL_PARTICIPANT,
    REAL_SERIAL,
    REAL_SPAN,
    REAL_START,
    S3,
    MotoServer,
    avro_variant,
    csv_bytes,
    csv_key,
    fresh_bucket,
    md5_hex,
    raw_key,
    real_avro,
    serve_moto,
    sha256_hex,
)

ACCOUNT = "study"
KEY_ID = "AKIAE4SYNCTESTKEY01"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"


def today() -> datetime:
    return datetime.now(UTC)


def days_ago(n: int):
    return (today() - timedelta(days=n)).date()


def recent_raw(s3: S3, n_days: int = 0, participant: str = "P-01", serial: str = "3YK3K15223"):
    """A raw recording of ``n_days`` ago (its day folder and its content agree), put."""
    day = days_ago(n_days)
    start = recent_start(n_days)
    key = raw_key(day, participant, serial, start)
    data = avro_variant(participant, serial, start)
    s3.put(key, data)
    return key, data


def login(seen) -> bool:
    """The one-key listing ``identity()`` makes to check the keys before any work."""
    return seen.query.get("max-keys") == ["1"]


@dataclass
class Lab:
    """One EmbracePlus account's configuration in tmp_path, pointed at ``s3``."""

    dir: Path
    s3: S3
    config: Path
    archive: Path
    state: Path

    def write(self, **account: object) -> Path:
        keys: dict[str, object] = {
            "name": ACCOUNT,
            "source": "embraceplus",
            "bucket": self.s3.bucket,
            "prefix": PREFIX,
            "endpoint_url": self.s3.url,
            "access_key_id": KEY_ID,
            "secret_access_key_file": self.dir / "s3.secret",
            "lookback": "3d",
            "full_listing": "1d",
        }
        keys.update(account)
        lines = "".join(
            f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}\n"
            for k, v in keys.items()
            if v is not None
        )
        self.config.write_text(
            f'[archive]\nroot = "{self.archive}"\n\n[state]\ndir = "{self.state}"\n\n'
            '[download]\nbackoff = "0s"\ntimeout = "20s"\nconnect_timeout = "5s"\n'
            f"concurrency = 2\n\n[[account]]\n{lines}"
        )
        return self.config

    def run(self) -> AccountReport:
        """One real pass (``run_pass``) over the account."""
        cfg = load_config(self.config)
        engine = open_db(cfg.state.url)
        try:
            (report,) = run_pass(cfg, engine).accounts
        finally:
            engine.dispose()
        return report

    def rows(self) -> dict[str, dict]:
        db = sqlite3.connect(self.state / "state.db")
        db.row_factory = sqlite3.Row
        try:
            return {r["remote_id"]: dict(r) for r in db.execute("select * from sessions")}
        finally:
            db.close()

    def path(self, key: str) -> Path:
        """Where the default layout ``{account}/{key}`` puts an object: its own tree."""
        return self.archive / ACCOUNT / key[len(PREFIX) :]

    def sidecar(self, key: str) -> dict:
        path = self.path(key)
        name = path.name[: -len(path.suffix)] if path.suffix else path.name
        return json.loads(path.with_name(name + ".json").read_text())

    def versions(self) -> list[Path]:
        return sorted(p for p in (self.archive / ACCOUNT / ".versions").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    yield from serve_moto()


@pytest.fixture
def s3(moto_server: MotoServer) -> Iterator[S3]:
    yield from fresh_bucket(moto_server)


@pytest.fixture
def lab(tmp_path: Path, s3: S3, monkeypatch: pytest.MonkeyPatch) -> Lab:
    # Only the account's own credentials: never the developer's AWS settings.
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    write_secret(tmp_path / "s3.secret", SECRET)
    made = Lab(tmp_path, s3, tmp_path / "config.toml", tmp_path / "archive", tmp_path / "state")
    made.write()
    return made


# -- a new file ------------------------------------------------------------------------------


def test_a_new_file_is_archived_under_its_key_with_a_sidecar_and_the_avro_facts(
    lab: Lab, s3: S3, run_cli
):
    raw = raw_key(REAL_DAY, REAL_PARTICIPANT, REAL_SERIAL, REAL_START)
    data = real_avro()
    s3.put(raw, data)
    day_csv = csv_key(REAL_DAY, REAL_PARTICIPANT, REAL_SERIAL)
    s3.put(day_csv, csv_bytes(REAL_DAY, 30))
    other = PREFIX + "participant_data/README.txt"
    s3.put(other, b"anything else is mirrored as it is\n")

    result = run_cli("run-once", "--config", str(lab.config), "--json")
    (account,) = json.loads(result.out)["accounts"]
    assert (account["listed"], account["downloaded"], account["failed"]) == (3, 3, 0)

    # The bucket's own tree below the prefix, byte for byte, a sidecar beside each file.
    path = lab.path(raw)
    assert path.relative_to(lab.archive).as_posix() == (
        f"study/participant_data/2023-09-15/TEST-3YK3M1619H/raw_data/v6/1-1-TEST_{REAL_START}.avro"
    )
    assert path.read_bytes() == data
    assert lab.path(other).read_bytes() == s3.get(other)
    sidecar = lab.sidecar(raw)
    assert sidecar["source"] == "embraceplus" and sidecar["session_id"] == raw
    assert sidecar["sha256"] == sha256_hex(data) and sidecar["size"] == len(data)
    assert sidecar["remote"]["etag"] == f'"{md5_hex(data)}"'
    content = sidecar["content"]
    assert content["schema"] == "empatica.format.avro.Session"
    assert (content["participant"], content["device"]) == (REAL_PARTICIPANT, REAL_SERIAL)
    assert content["streams"]["accelerometer"] == {
        "timestampStart": 1694798477598807,
        "samplingFrequency": pytest.approx(64.0023, abs=1e-4),
        "samples": 22208,
    }
    assert content["streams"]["eda"]["samples"] == 1380
    assert content["span"]["start_unix"] == pytest.approx(1694798477.587423)
    assert content["span"]["seconds"] == pytest.approx(REAL_SPAN, abs=1e-3)
    assert content["integrity"]["md5"] == "matches the ETag"
    assert content["integrity"]["checksum"] == "CRC32 matches"  # S3's default
    assert lab.sidecar(day_csv)["content"]["rows"] == 30

    rows = lab.rows()
    assert {k: r["state"] for k, r in rows.items()} == dict.fromkeys(
        (raw, day_csv, other), "verified"
    )
    assert rows[raw]["recorded_at"] == REAL_START and rows[raw]["duration"] == pytest.approx(
        REAL_SPAN, abs=1e-3
    )
    assert json.loads(rows[raw]["content_json"])["streams"]["bvp"]["samples"] == 22016
    assert (rows[raw]["kind"], rows[day_csv]["kind"], rows[other]["kind"]) == (
        "raw",
        "biomarker",
        "other",
    )

    # The CLI reads the same: status, sessions (the bucket's columns), verify, reindex.
    status = json.loads(run_cli("status", "--config", str(lab.config), "--json").out)
    assert json.dumps(status).count("verified") >= 1
    listed = json.loads(run_cli("sessions", "--config", str(lab.config), "--json").out)
    by_key = {row["key"]: row for row in listed}
    assert set(by_key) == {raw, day_csv, other}
    assert by_key[raw]["kind"] == "raw" and by_key[raw]["size"] == len(data)
    assert by_key[raw]["local_state"] == "verified"
    assert by_key[raw]["local_path"] == path.relative_to(lab.archive).as_posix()
    assert by_key[raw]["start"].startswith("2023-09-15T17:21:17")
    verified = run_cli("verify", "--config", str(lab.config))
    assert "3 files checked, 3 match" in verified.out
    for db_file in lab.state.glob("state.db*"):
        db_file.rename(db_file.with_name(db_file.name + ".old"))
    rebuilt = run_cli("reindex", "--config", str(lab.config))
    assert "3 sidecars read: 3 sessions added" in rebuilt.out
    again = lab.rows()
    assert {k: r["state"] for k, r in again.items()} == {k: "verified" for k in rows}
    assert again[raw]["version"] == rows[raw]["version"] == f'"{md5_hex(data)}":{len(data)}'


def test_a_raw_file_of_another_participant_or_device_than_its_folder_is_refused(lab: Lab, s3: S3):
    day = days_ago(0)
    start = int(datetime(day.year, day.month, day.day, 8, tzinfo=UTC).timestamp())
    good = raw_key(day, "P-1-a", "3YK3K15223", start)  # a participant id with '-'
    s3.put(good, avro_variant("P-1-a", "3YK3K15223", start))
    wrong_person = raw_key(day, "P-2", "3YK3K15223", start)
    s3.put(wrong_person, avro_variant("P-1-a", "3YK3K15223", start))
    wrong_device = raw_key(day, "P-1-a", "3YK0000000", start)
    s3.put(wrong_device, avro_variant("P-1-a", "3YK3K15223", start))
    not_avro = raw_key(day, "P-1-a", "3YK3K15223", start + 1800)
    s3.put(not_avro, avro_variant("P-1-a", "3YK3K15223", start)[:100_000])  # cut short

    report = lab.run()
    assert (report.downloaded, report.failed) == (1, 3)
    rows = lab.rows()
    assert rows[good]["state"] == "verified"
    assert lab.sidecar(good)["content"]["participant"] == "P-1-a"
    assert "participant 'P-1-a', its folder of 'P-2'" in rows[wrong_person]["last_error"]
    assert "device '3YK3K15223', its folder of '3YK0000000'" in rows[wrong_device]["last_error"]
    assert "not a whole Avro container" in rows[not_avro]["last_error"]
    for key in (wrong_person, wrong_device, not_avro):
        assert not lab.path(key).exists() and not list(lab.path(key).parent.glob("*.part"))


def test_a_refused_file_whose_bytes_are_s3s_own_is_kept_aside_once(lab: Lab, s3: S3):
    """Fetching it again brings the same bytes, and they may be the only copy there is."""
    day = days_ago(0)
    start = int(datetime(day.year, day.month, day.day, 9, tzinfo=UTC).timestamp())
    refused = raw_key(day, "P-2", "3YK3K15223", start)
    data = avro_variant("P-1-a", "3YK3K15223", start)  # another participant's recording
    s3.put(refused, data)

    first = lab.run()
    assert (first.downloaded, first.failed) == (0, 1)
    (kept,) = [p for p in lab.versions() if p.suffix == ".avro"]
    assert kept.read_bytes() == data and ".refused-" in kept.name
    assert kept.parent == (lab.archive / ACCOUNT / ".versions" / refused[len(PREFIX) :]).parent
    side = json.loads(kept.with_suffix(".json").read_text())
    assert side["kept_aside"]["reason"] == "refused" and side["file"] == kept.name
    assert any("its folder of 'P-2'" in why for why in side["refused"])
    assert side["sha256"] == hashlib.sha256(data).hexdigest()
    assert str(kept) in lab.rows()[refused]["last_error"]
    assert not lab.path(refused).exists()

    second = lab.run()  # backoff 0s: tried again, the same bytes, not kept twice
    assert second.failed == 1 and lab.rows()[refused]["attempts"] == 2
    assert [p for p in lab.versions() if p.suffix == ".avro"] == [kept]
    assert lab.rows()[refused]["state"] != "verified"


# -- listing: lookback and full ------------------------------------------------------------


def test_a_late_file_in_an_old_day_folder_is_found_by_the_next_full_listing_only(lab: Lab, s3: S3):
    first, _ = recent_raw(s3, 0)
    lab.write(full_listing="30d")
    assert lab.run().downloaded == 1  # never listed whole: the first listing is whole

    late, late_data = recent_raw(s3, 20, participant="P-02")  # uploaded late, dated 20 days ago
    recent, _ = recent_raw(s3, 2, participant="P-03")
    mark = s3.proxy.mark()
    report = lab.run()
    assert report.downloaded == 1 and recent in lab.rows() and late not in lab.rows()
    # One listing of the day folders from 3 days ago on, not of the whole prefix.
    lists = [r for r in s3.proxy.requests(mark) if r.op == "list" and not login(r)]
    assert [(r.query["prefix"], r.query["start-after"]) for r in lists] == [
        ([PREFIX + "participant_data/"], [PREFIX + f"participant_data/{days_ago(3)}"])
    ]

    lab.write(full_listing="0s")  # a whole listing is due again
    mark = s3.proxy.mark()
    report = lab.run()
    assert report.downloaded == 1 and lab.rows()[late]["state"] == "verified"
    assert lab.path(late).read_bytes() == late_data
    lists = [r for r in s3.proxy.requests(mark) if r.op == "list" and not login(r)]
    assert [(r.query["prefix"], "start-after" in r.query) for r in lists] == [([PREFIX], False)]
    assert {r["state"] for r in lab.rows().values()} == {"verified"} and first in lab.rows()


def test_pagination_with_a_small_page_size(lab: Lab, s3: S3, monkeypatch):
    from e4sync.sources.embraceplus import adapter

    monkeypatch.setattr(adapter, "PAGE_SIZE", 2)
    keys = [csv_key(days_ago(1), f"P-{n}", "3YK3K15223") for n in range(7)]
    for key in keys:
        s3.put(key, csv_bytes(days_ago(1), 5))
    mark = s3.proxy.mark()
    report = lab.run()
    assert (report.listed, report.downloaded) == (7, 7)
    pages = [
        r for r in s3.proxy.requests(mark) if r.op == "list" and r.query.get("max-keys") == ["2"]
    ]
    assert len(pages) == 4 and sum("continuation-token" in r.query for r in pages) == 3
    assert {k: r["state"] for k, r in lab.rows().items()} == dict.fromkeys(keys, "verified")


def test_an_idle_second_pass_makes_only_list_requests(lab: Lab, s3: S3):
    for n in range(3):
        recent_raw(s3, n, participant=f"P-{n}")
    s3.put(csv_key(days_ago(0), "P-0", "3YK3K15223"), csv_bytes(days_ago(0), 10))
    assert lab.run().downloaded == 4
    mark = s3.proxy.mark()
    report = lab.run()  # lookback only: listed whole a moment ago
    assert (report.listed, report.downloaded) == (4, 0)
    # The login check (one key) and one page of the day folders: nothing fetched or probed.
    assert s3.proxy.ops(mark) == ["list", "list"]
    lab.write(full_listing="0s")
    mark = s3.proxy.mark()
    assert lab.run().downloaded == 0
    assert s3.proxy.ops(mark) == ["list", "list"]


# -- changed objects -------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["grows", "same size"])
def test_a_rewritten_csv_is_downloaded_again_and_the_old_copy_kept_in_versions(
    lab: Lab, s3: S3, change: str
):
    key = csv_key(days_ago(0), "P-01", "3YK3K15223")
    old = csv_bytes(days_ago(0), 60)
    s3.put(key, old)
    assert lab.run().downloaded == 1
    new = csv_bytes(days_ago(0), 61) if change == "grows" else csv_bytes(days_ago(0), 60, bump=1)
    assert (len(new) == len(old)) == (change == "same size") and new != old
    s3.put(key, new)

    report = lab.run()
    assert (report.changed, report.downloaded, report.failed) == (1, 1, 0)
    assert lab.path(key).read_bytes() == new
    row = lab.rows()[key]
    assert row["state"] == "verified" and row["sha256"] == sha256_hex(new)
    assert row["version"] == f'"{md5_hex(new)}":{len(new)}'
    assert lab.sidecar(key)["content"]["rows"] == (61 if change == "grows" else 60)
    # The old bytes under {account}/.versions/, in the same place, with their sidecar.
    (kept, kept_sidecar) = sorted(lab.versions(), key=lambda p: p.suffix != ".csv")
    assert kept.read_bytes() == old and ".replaced-" in kept.name
    assert kept.parent.relative_to(lab.archive / ACCOUNT / ".versions") == lab.path(
        key
    ).parent.relative_to(lab.archive / ACCOUNT)
    assert json.loads(kept_sidecar.read_text())["sha256"] == sha256_hex(old)
    assert lab.run().downloaded == 0  # and that is the end of it


def test_a_rewritten_raw_file_is_downloaded_again_with_a_warning(lab: Lab, s3: S3, caplog):
    key, old = recent_raw(s3, 0)
    assert lab.run().downloaded == 1
    day = days_ago(0)
    start = int(datetime(day.year, day.month, day.day, 9, tzinfo=UTC).timestamp())
    new = avro_variant("P-01", "3YK3K15223", start + 1)  # raw files are written once, but
    s3.put(key, new)
    caplog.set_level(logging.INFO)
    assert lab.run().downloaded == 1
    assert lab.path(key).read_bytes() == new
    (kept,) = [p for p in lab.versions() if p.suffix == ".avro"]
    assert kept.read_bytes() == old
    (said,) = [r for r in caplog.records if "which the platform writes once" in r.getMessage()]
    assert said.levelno == logging.WARNING and key in said.getMessage()


def test_an_object_changed_between_listing_and_get_is_never_saved_half_old(lab: Lab, s3: S3):
    key = csv_key(days_ago(0), "P-01", "3YK3K15223")
    old, new = csv_bytes(days_ago(0), 30), csv_bytes(days_ago(0), 31)
    s3.put(key, old)
    # Rewritten after the listing, just before its GET: If-Match refuses it.
    s3.proxy.add(op="get", key=key, before=lambda: s3.put(key, new))
    report = lab.run()
    assert (report.downloaded, report.failed) == (0, 1)
    row = lab.rows()[key]
    assert row["state"] != "verified" and "changed on S3 since it was listed" in row["last_error"]
    assert not lab.path(key).exists() and not list(lab.path(key).parent.glob("*.part"))
    (get,) = [r for r in s3.proxy.requests() if r.op == "get"]
    assert get.headers["If-Match"] == f'"{md5_hex(old)}"'

    report = lab.run()  # listed again: the new version, whole
    assert (report.downloaded, report.failed) == (1, 0)
    assert lab.path(key).read_bytes() == new and lab.rows()[key]["state"] == "verified"


def test_an_object_removed_remotely_is_remote_gone_and_its_copy_kept(lab: Lab, s3: S3):
    recent, recent_data = recent_raw(s3, 1)
    stays, _ = recent_raw(s3, 1, participant="P-02")  # (an empty listing is never trusted)
    old = csv_key(days_ago(40), "P-01", "3YK3K15223")
    s3.put(old, csv_bytes(days_ago(40), 10))
    lab.write(full_listing="30d")
    assert lab.run().downloaded == 3
    s3.delete(recent)
    s3.delete(old)

    report = lab.run()  # the day folders only: the old one is not known to be gone
    assert report.gone == 1
    rows = lab.rows()
    assert (rows[recent]["state"], rows[old]["state"]) == ("remote_gone", "verified")
    assert rows[stays]["state"] == "verified"
    lab.write(full_listing="0s")
    assert lab.run().gone == 1 and lab.rows()[old]["state"] == "remote_gone"
    assert lab.path(recent).read_bytes() == recent_data and lab.path(old).exists()


# -- integrity ---------------------------------------------------------------------------------


def test_a_multipart_object_is_verified_without_an_md5(lab: Lab, s3: S3):
    day = days_ago(0)
    start = int(datetime(day.year, day.month, day.day, 10, tzinfo=UTC).timestamp())
    key = raw_key(day, "P-01", "3YK3K15223", start)
    data = avro_variant("P-01", "3YK3K15223", start)
    made = s3.put_multipart(key, [data])
    assert made["ETag"].endswith('-1"')
    assert lab.run().downloaded == 1
    content = lab.sidecar(key)["content"]
    assert content["integrity"]["md5"].startswith("not checked: the ETag is not an MD5")
    assert content["integrity"]["checksum"] == "none sent"
    assert content["span"]["start_unix"] == pytest.approx(start + 0.587423, abs=1e-3)
    row = lab.rows()[key]
    assert row["state"] == "verified" and row["recorded_at"] == start
    assert lab.path(key).read_bytes() == data


@pytest.mark.parametrize(
    "algorithm, said",
    [
        ("SHA256", "SHA256 matches"),
        ("CRC32", "CRC32 matches"),
        ("CRC32C", "CRC32C matches"),
        ("CRC64NVME", "CRC64NVME matches"),
        (None, "none sent"),
    ],
)
def test_the_checksum_s3_sends_is_checked_and_said(lab: Lab, s3: S3, algorithm, said):
    key = csv_key(days_ago(0), "P-01", "3YK3K15223")
    data = csv_bytes(days_ago(0), 100)
    if algorithm is None:
        s3.put_unchecksummed(key, data)
    else:
        s3.put(key, data, ChecksumAlgorithm=algorithm)
    assert lab.run().downloaded == 1
    integrity = lab.sidecar(key)["content"]["integrity"]
    assert integrity == {"bytes": len(data), "md5": "matches the ETag", "checksum": said}


@pytest.mark.parametrize("checksum", ["SHA256", None])
def test_a_body_altered_in_transit_is_refused_then_fetched_whole(lab: Lab, s3: S3, checksum):
    key = csv_key(days_ago(0), "P-01", "3YK3K15223")
    data = csv_bytes(days_ago(0), 100)
    if checksum:
        s3.put(key, data, ChecksumAlgorithm=checksum)
    else:
        s3.put_unchecksummed(key, data)  # only the MD5 can tell
    s3.proxy.add(op="get", key=key, flip_byte=len(data) // 2)
    report = lab.run()
    assert (report.downloaded, report.failed) == (0, 1)
    error = lab.rows()[key]["last_error"]
    assert ("SHA256 checksum" if checksum else "differs from the ETag") in error
    assert not lab.path(key).exists()
    assert lab.versions() == []  # bytes that are not S3's are nobody's: not kept aside
    assert lab.run().downloaded == 1 and lab.path(key).read_bytes() == data


# -- retries ---------------------------------------------------------------------------------


def test_a_cut_body_is_resumed_with_a_range_pinned_by_if_match(lab: Lab, s3: S3):
    key, data = recent_raw(s3, 0)
    s3.proxy.add(op="get", key=key, cut_after=50_000)
    s3.proxy.add(op="get", key=key, cut_after=30_000)  # the resumed body is cut too
    report = lab.run()
    assert (report.downloaded, report.failed) == (1, 0)
    assert lab.path(key).read_bytes() == data
    gets = [r for r in s3.proxy.requests() if r.op == "get"]
    assert [r.headers.get("Range") for r in gets] == [None, "bytes=50000-", "bytes=80000-"]
    assert {r.headers["If-Match"] for r in gets} == {f'"{md5_hex(data)}"'}
    integrity = lab.sidecar(key)["content"]["integrity"]
    assert integrity["resumed"] == 2 and integrity["checksum"] == "CRC32 matches"


def test_slow_down_and_500_are_retried_with_backoff(lab: Lab, s3: S3):
    key, data = recent_raw(s3, 0)
    s3.proxy.add(op="list", status=503, code="SlowDown", times=2)
    s3.proxy.add(op="get", key=key, status=500, code="InternalError", times=2)
    report = lab.run()
    assert (report.downloaded, report.failed, report.errors) == (1, 0, [])
    assert lab.path(key).read_bytes() == data
    assert s3.proxy.counts()["get"] == 3


def test_a_failed_object_older_than_the_lookback_is_retried_at_the_next_pass(
    lab: Lab, s3: S3, monkeypatch
):
    """Not a day later, at the next whole listing: the retry is made from the metadata it
    was listed with, pinned to that version by If-Match."""
    from e4sync.sources.embraceplus import adapter

    monkeypatch.setattr(adapter, "MAX_ATTEMPTS", 1)
    key, data = recent_raw(s3, 10)  # a day folder well beyond the 3-day lookback
    fault = s3.proxy.add(op="get", key=key, status=500, code="InternalError", times=100)
    first = lab.run()  # the first listing is whole
    assert (first.downloaded, first.failed) == (0, 1)
    assert lab.rows()[key]["state"] != "verified"
    s3.proxy.faults.remove(fault)  # S3 works again

    mark = s3.proxy.mark()
    second = lab.run()  # full_listing 1d: only the recent day folders are listed
    lists = [r for r in s3.proxy.requests(mark) if r.op == "list" and not login(r)]
    assert [r.query["start-after"] for r in lists] == [[PREFIX + f"participant_data/{days_ago(3)}"]]
    assert (second.listed, second.downloaded, second.failed) == (0, 1, 0)
    assert lab.rows()[key]["state"] == "verified" and lab.path(key).read_bytes() == data
    (get,) = [r for r in s3.proxy.requests(mark) if r.op == "get"]
    assert get.headers["If-Match"] == f'"{md5_hex(data)}"'


def test_an_s3_that_keeps_failing_is_temporary_exit_75(lab: Lab, s3: S3, run_cli, monkeypatch):
    from e4sync.sources.embraceplus import adapter

    monkeypatch.setattr(adapter, "MAX_ATTEMPTS", 2)
    recent_raw(s3, 0)
    s3.proxy.add(op="list", status=503, code="SlowDown", times=100)
    result = run_cli("run-once", "--config", str(lab.config), exit_code=75)
    assert "SlowDown" in result.out + result.err


def test_an_endpoint_that_cannot_be_reached_is_temporary_exit_75(lab: Lab, run_cli, monkeypatch):
    from e4sync.sources.embraceplus import adapter

    monkeypatch.setattr(adapter, "MAX_ATTEMPTS", 1)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    lab.write(endpoint_url=closed)
    result = run_cli("run-once", "--config", str(lab.config), exit_code=75)
    assert "cannot reach S3 at " + closed in result.out + result.err


# -- credentials and configuration -----------------------------------------------------------


def test_a_wrong_secret_exits_77_with_a_clear_message_and_no_secret_anywhere(
    lab: Lab, s3: S3, run_cli, caplog
):
    key, data = recent_raw(s3, 0)
    key_id, secret = s3.enable_auth(["s3:GetObject", "s3:ListBucket"])
    lab.write(access_key_id=key_id)
    write_secret(lab.dir / "s3.secret", SECRET)  # not this key id's
    caplog.set_level(logging.DEBUG)  # botocore's debug output too
    result = run_cli("run-once", "--config", str(lab.config), "-v", exit_code=77)
    said = result.out + result.err
    assert "S3 refused the credentials of access key id " + key_id in said
    assert "SignatureDoesNotMatch" in said
    for text in (
        result.out,
        result.err,
        caplog.text,
        (lab.state / "state.db").read_bytes().decode("latin-1"),
    ):
        assert SECRET not in text and secret not in text
    assert [r.op for r in s3.proxy.requests()] == ["list"]  # refused at the login check
    assert not lab.path(key).exists()

    # A secret with a stray space at its end is refused, and the message says so (counts
    # only: never a character of it).
    write_secret(lab.dir / "s3.secret", secret + " ")
    result = run_cli("run-once", "--config", str(lab.config), exit_code=77)
    assert "trailing whitespace (1 character)" in result.out + result.err
    assert secret not in result.out + result.err + caplog.text

    # The right secret (with a trailing newline, as `echo` writes it) is let in.
    write_secret(lab.dir / "s3.secret", secret)
    run_cli("run-once", "--config", str(lab.config))
    assert lab.path(key).read_bytes() == data
    # An unknown key id is refused the same way.
    lab.write(access_key_id="AKIANOSUCHKEY0000000")
    result = run_cli("run-once", "--config", str(lab.config), exit_code=77)
    assert "InvalidAccessKeyId" in result.out + result.err


def test_read_only_keys_make_a_delete_not_permitted_once(lab: Lab, s3: S3, run_cli):
    key, _ = recent_raw(s3, 0)
    key_id, secret = s3.enable_auth(["s3:GetObject", "s3:ListBucket"])
    lab.write(access_key_id=key_id)
    write_secret(lab.dir / "s3.secret", secret)
    with lab.config.open("a") as f:
        f.write(
            '[account.remote]\ndelete_after_verify = true\ndelete_min_age = "0s"\n'
            'delete_grace = "0s"\n'
        )
    report = lab.run()
    assert report.downloaded == 1 and report.deleted == 0
    assert (
        "not permitted" in report.deletions_skipped and "AccessDenied" in report.deletions_skipped
    )
    deletes = [r for r in s3.proxy.requests() if r.op == "delete"]
    assert len(deletes) == 1 and deletes[0].headers["If-Match"] == lab.rows()[key]["remote_etag"]
    assert key in s3.keys_now()
    mark = s3.proxy.mark()
    lab.run()
    assert "delete" not in s3.proxy.ops(mark), "a refusal is recorded once, not asked again"

    # Keys that may delete: the verified copy's object goes, If-Match on its ETag.
    other_id, other_secret = s3.keys["admin"]
    lab.write(access_key_id=other_id)
    write_secret(lab.dir / "s3.secret", other_secret)
    with lab.config.open("a") as f:
        f.write(
            '[account.remote]\ndelete_after_verify = true\ndelete_min_age = "0s"\n'
            'delete_grace = "0s"\n'
        )
    run_cli("retry", "--all", "--config", str(lab.config))  # asks again after a refusal
    report = lab.run()
    assert report.deleted == 1 and key not in s3.keys_now()
    assert lab.rows()[key]["state"] == "remote_deleted" and lab.path(key).exists()


def test_a_bucket_that_does_not_exist_or_an_empty_prefix_exits_78(lab: Lab, s3: S3, run_cli):
    lab.write(bucket="no-such-bucket-e4sync")
    result = run_cli("run-once", "--config", str(lab.config), exit_code=78)
    said = result.out + result.err
    assert "there is no bucket 'no-such-bucket-e4sync' (bucket)" in said and PREFIX in said
    lab.write(prefix="v2/999/1/1/")  # the bucket exists; nothing under this prefix
    result = run_cli("run-once", "--config", str(lab.config), exit_code=78)
    said = result.out + result.err
    assert f"bucket {s3.bucket!r} holds no object under prefix 'v2/999/1/1/'" in said


def test_config_show_masks_the_secret_command(lab: Lab, run_cli):
    lab.write(secret_access_key_file=None, secret_access_key_command=f"printf {SECRET}")
    shown = run_cli("config", "show", "--config", str(lab.config)).out
    assert SECRET not in shown and 'secret_access_key_command = "***"' in shown
    assert f'access_key_id = "{KEY_ID}"' in shown and 'source = "embraceplus"' in shown


def test_the_secret_may_come_from_a_command_and_boto3_is_loaded_only_for_embraceplus(
    lab: Lab, s3: S3, run_cli
):
    import subprocess
    import sys

    key, data = recent_raw(s3, 0)
    lab.write(secret_access_key_file=None, secret_access_key_command=f"printf {SECRET}")
    run_cli("run-once", "--config", str(lab.config))
    assert lab.path(key).read_bytes() == data
    # E4 Connect users pay nothing: the CLI, the config and the kind load no boto3.
    probe = (
        "import sys, e4sync.cli, e4sync.config, e4sync.sources.embraceplus;"
        "from e4sync.sources import kind; kind('embraceplus');"
        "heavy = ('boto3', 'botocore', 'fastavro');"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_nothing_outside_the_sources_names_boto3():
    package = Path(__file__).resolve().parents[2] / "e4sync"
    named = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.relative_to(package).parts[0] != "sources"
        and any(w in p.read_text() for w in ("boto3", "botocore"))
    ]
    assert named == []


def test_download_writes_one_checked_object_outside_the_archive(lab: Lab, s3: S3, run_cli):
    key, data = recent_raw(s3, 0)
    out = lab.dir / "out"
    result = run_cli("download", key, "-o", f"{out}/", "--config", str(lab.config))
    written = out / key.rsplit("/", 1)[1]
    assert result.out.strip() == str(written) and written.read_bytes() == data
    assert not list(out.glob("*.part")) and not lab.archive.exists()
    # A key outside the account's prefix, or no key at all, is refused before any request.
    mark = s3.proxy.mark()
    run_cli("download", "v2/999/x.avro", "--config", str(lab.config), exit_code=2)
    run_cli("download", "../etc/passwd", "--config", str(lab.config), exit_code=2)
    assert s3.proxy.ops(mark) == []


def test_an_archive_copied_elsewhere_verifies_offline(lab: Lab, s3: S3, tmp_path: Path):
    """``KIND.verify`` (reindex, the scrub) needs no credentials: size, MD5 and content."""
    from e4sync.sources import kind

    key, data = recent_raw(s3, 0)
    assert lab.run().downloaded == 1
    found = kind("embraceplus")
    item = found.item_from_raw(lab.sidecar(key)["remote"])
    copy = tmp_path / "copy.avro"
    shutil.copyfile(lab.path(key), copy)
    verdict = found.verify(copy, item)
    assert verdict.ok and verdict.recorded[0] == lab.rows()[key]["recorded_at"]
    copy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert "differs from the ETag" in found.verify(copy, item).problems[0]


# -- an existing `aws s3 sync` copy ----------------------------------------------------------


def test_an_aws_s3_sync_copy_in_place_is_adopted_after_verifying_not_downloaded_again(
    lab: Lab, s3: S3, run_cli
):
    """docs/embraceplus.md: a lab that mirrored the bucket with `aws s3 sync` puts
    ``archive.root`` so that ``{account}/{key}`` lands on its copy. A file there with no
    sidecar whose size, MD5 (the ETag) and content are the listed object's is adopted (a
    sidecar written, its row verified) with no GET; any other file e4sync did not write is
    left exactly as it is, and the object archived beside it."""
    raw, raw_data = recent_raw(s3, 0)
    day_csv = csv_key(days_ago(0), "P-01", "3YK3K15223")
    s3.put(day_csv, csv_bytes(days_ago(0), 30))
    stale = csv_key(days_ago(1), "P-01", "3YK3K15223")
    old = csv_bytes(days_ago(1), 60)
    s3.put(stale, old)
    day = days_ago(1)
    start = int(datetime(day.year, day.month, day.day, 11, tzinfo=UTC).timestamp())
    multipart = raw_key(day, "P-01", "3YK3K15223", start)
    s3.put_multipart(multipart, [avro_variant("P-01", "3YK3K15223", start)])
    # The lab's mirror, as `aws s3 sync s3://<bucket>/<prefix> <root>/<account>/` leaves it:
    # every object under its key below the prefix, made by boto3's downloads, no sidecars.
    client = s3.moto.client()
    for key in sorted(s3.keys_now()):
        lab.path(key).parent.mkdir(parents=True, exist_ok=True)
        client.download_file(s3.bucket, key, str(lab.path(key)))
    # Since then one CSV was rewritten to the same size, which `aws s3 sync` skips.
    new = csv_bytes(days_ago(1), 60, bump=1)
    assert len(new) == len(old) and new != old
    s3.put(stale, new)
    before = {p: (p.stat().st_ino, p.read_bytes()) for p in lab.archive.rglob("*") if p.is_file()}

    mark = s3.proxy.mark()
    plan = run_cli("run-once", "--dry-run", "--config", str(lab.config)).out
    assert plan.count("would be adopted, not downloaded") == 2, plan
    assert "get" not in s3.proxy.ops(mark)
    assert {p for p in lab.archive.rglob("*") if p.is_file()} == set(before)  # wrote nothing

    mark = s3.proxy.mark()
    result = run_cli("run-once", "--config", str(lab.config), "--json")
    (account,) = json.loads(result.out)["accounts"]
    assert (account["adopted"], account["downloaded"], account["failed"]) == (2, 2, 0)
    gets = sorted(r.key for r in s3.proxy.requests(mark) if r.op == "get")
    assert gets == sorted([stale, multipart]), "the adopted files were not fetched"
    rows = lab.rows()
    assert {k: r["state"] for k, r in rows.items()} == dict.fromkeys(
        (raw, day_csv, stale, multipart), "verified"
    )
    # Adopted: the very same file (inode and bytes), a sidecar beside it, the row's facts.
    for key, data in ((raw, raw_data), (day_csv, s3.get(day_csv))):
        path = lab.path(key)
        assert (path.stat().st_ino, path.read_bytes()) == before[path] and path.read_bytes() == data
        sidecar = lab.sidecar(key)
        assert sidecar["session_id"] == key and sidecar["sha256"] == sha256_hex(data)
        assert sidecar["content"]["integrity"]["md5"] == "matches the ETag"
        assert sidecar["validators"]["etag"] == f'"{md5_hex(data)}"'
        assert rows[key]["local_path"] == path.relative_to(lab.archive).as_posix()
        assert rows[key]["sha256"] == sha256_hex(data)
        assert rows[key]["remote_etag"] == f'"{md5_hex(data)}"'
    assert rows[raw]["recorded_at"] == recent_start(0) and rows[raw]["duration"] > 0
    assert json.loads(rows[raw]["content_json"])["streams"]["eda"]["samples"] > 0
    assert lab.sidecar(day_csv)["content"]["rows"] == 30
    # Not the object's bytes (stale), or not provably so (a multipart ETag is no MD5): the
    # lab's file is untouched and has no sidecar; e4sync's verified copy is beside it.
    for key, data in ((stale, new), (multipart, s3.get(multipart))):
        path = lab.path(key)
        assert (path.stat().st_ino, path.read_bytes()) == before[path]
        assert not path.with_suffix(".json").exists()
        archived = lab.archive / rows[key]["local_path"]
        assert archived != path and archived.parent == path.parent
        assert archived.read_bytes() == data and rows[key]["sha256"] == sha256_hex(data)
    assert not list(lab.archive.rglob("*.part")) and not lab.versions()

    mark = s3.proxy.mark()
    again = lab.run()
    assert (again.adopted, again.downloaded, again.failed) == (0, 0, 0)
    assert "get" not in s3.proxy.ops(mark)
    assert "4 files checked, 4 match" in run_cli("verify", "--config", str(lab.config)).out


def recent_start(n_days: int) -> int:
    """The recording start ``recent_raw`` gives a file of ``n_days`` ago: 09:00 UTC that
    day, or its midnight while today's 09:00 is still to come (a recording from the future
    is one no deletion would take, and the suite may run just after midnight)."""
    day = days_ago(n_days)
    midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    nine = midnight + 9 * 3600
    return nine if nine <= time.time() - 60 else midnight
