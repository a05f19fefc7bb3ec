"""The loopback EmbracePlus delivery: files made from the real Avro file, moto's S3 in the
real layout, its keys, and the fault proxy in front of it.

Everything is real code on 127.0.0.1: moto's server, boto3 as the client, fastavro reading
the files back. The real file is read where it lies (``shared/realdata/embraceplus``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from fastavro.schema import parse_schema, to_parsing_canonical_form

from e4sync.sources.embraceplus import avrogen
from e4sync.sources.embraceplus.avrogen import (
    AvroTemplate,
    Enrollment,
    minute_csv,
    read_session,
    resync,
)
from e4sync.sources.embraceplus.simulator import (
    Faults,
    RequestRecord,
    S3Delivery,
    seed_benchmark,
)

REPO = Path(__file__).resolve().parents[2]
# The main checkout has shared/ beside it; a worktree under wt/ one level further up.
REALDATA = (
    next(
        (p for p in (REPO / ".." / "shared", REPO / ".." / ".." / "shared") if p.is_dir()),
        REPO / ".." / "shared",
    )
    / "realdata"
)
REAL_AVRO = REALDATA / "embraceplus" / "test_file.avro"

TODAY = dt.date(2025, 2, 18)
RAW = re.compile(
    r"^v2/829/1/1/participant_data/(?P<day>\d{4}-\d{2}-\d{2})/(?P<folder>[^/]+)/raw_data/v6/"
    r"1-1-(?P<participant>.+)_(?P<unix>\d+)\.avro$"
)
CSV = re.compile(
    r"^v2/829/1/1/participant_data/(?P<day>\d{4}-\d{2}-\d{2})/(?P<folder>[^/]+)/"
    r"digital_biomarkers/aggregated_per_minute/1-1-(?P<participant>.+)_(?P=day)_(?P<metric>[a-z-]+)"
    r"\.csv$"
)


@pytest.fixture(scope="module")
def template() -> AvroTemplate:
    assert REAL_AVRO.is_file(), f"the real file is missing: {REAL_AVRO}"
    return AvroTemplate.load(REAL_AVRO)


def code_of(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


# -- avrogen ----------------------------------------------------------------------------------


def test_a_rendered_file_is_the_real_record_for_someone_else_at_another_time(template) -> None:
    who = Enrollment("007-b", site="2", study="3", organization="829")
    start = 1_739_855_451
    data = template.render(who, "3YK3K15223", start)

    schema, record, codec = read_session(data)
    assert codec == "deflate"
    assert schema["name"] == "empatica.format.avro.Session"
    assert to_parsing_canonical_form(parse_schema(schema)) == to_parsing_canonical_form(
        parse_schema(template.schema)
    )
    assert record["enrollment"] == {
        "participantID": "007-b",
        "siteID": "2",
        "studyID": "3",
        "organizationID": "829",
    }
    assert record["deviceSn"] == "3YK3K15223"
    raw, real = record["rawData"], template.record["rawData"]
    delta = start * 1_000_000 - template.origin_us
    for sensor in ("accelerometer", "eda", "temperature", "bvp", "steps"):
        assert raw[sensor]["timestampStart"] == real[sensor]["timestampStart"] + delta
    assert raw["gyroscope"]["timestampStart"] == 0  # no gyroscope: 0 stays 0
    peaks = raw["systolicPeaks"]["peaksTimeNanos"]
    assert peaks == [t + delta * 1000 for t in real["systolicPeaks"]["peaksTimeNanos"]]
    starts = [raw[s]["timestampStart"] for s in ("accelerometer", "eda", "temperature", "bvp")]
    earliest = min(starts + [p // 1000 for p in peaks])
    assert earliest == start * 1_000_000
    assert raw["accelerometer"]["x"] == real["accelerometer"]["x"]
    assert len(raw["bvp"]["values"]) == len(real["bvp"]["values"]) == 22016
    # Deterministic: the same call gives the same bytes; another seed other bytes only.
    assert template.render(who, "3YK3K15223", start) == data
    other = template.render(who, "3YK3K15223", start, seed=1)
    assert other != data and len(other) == len(data) and read_session(other)[1] == record


def test_cut_arrays_make_small_valid_files(template) -> None:
    data = template.render(Enrollment("0010"), "3YK3M1619H", 1_700_000_000, max_samples=16)
    assert len(data) < 8000  # the schema, with its docs, is most of it
    _, record, _ = read_session(data)
    assert len(record["rawData"]["accelerometer"]["z"]) == 16
    assert len(record["rawData"]["eda"]["values"]) == 16
    assert record["rawData"]["bvp"]["timestampStart"] // 1_000_000 == 1_700_000_000


def test_the_synthetic_stand_in_has_the_real_schema(template) -> None:
    canonical = to_parsing_canonical_form(parse_schema(template.schema))
    assert to_parsing_canonical_form(parse_schema(avrogen.session_schema())) == canonical
    synthetic = AvroTemplate.synthetic(seconds=20)
    _, record, _ = read_session(synthetic.render(Enrollment("S-1"), "3YK3SYNTH0", 1_700_000_000))
    assert record["enrollment"]["participantID"] == "S-1"
    assert record["rawData"]["eda"]["timestampStart"] >= 1_700_000_000 * 1_000_000


def test_resync_keeps_size_and_content_and_changes_the_bytes(template) -> None:
    data = template.render(Enrollment("0010"), "3YK3M1619H", 1_700_000_000, max_samples=64)
    again = resync(data, seed="x")
    assert len(again) == len(data) and again != data
    assert hashlib.md5(again).digest() != hashlib.md5(data).digest()
    assert read_session(again)[1] == read_session(data)[1]
    with pytest.raises(ValueError):
        resync(b"PK\x03\x04 not avro")


def test_a_minute_csv_has_the_columns_and_fills_up_in_order() -> None:
    who = Enrollment("007-b")
    day = dt.date(2024, 5, 28)
    text = minute_csv(who, day, "eda", minutes=90, seed=3)
    lines = text.splitlines()
    assert lines[0].split(",") == [
        "timestamp_unix",
        "timestamp_iso",
        "participant_full_id",
        "eda_scl_usiemens",
        "missing_value_reason",
    ]
    assert len(lines) == 91
    start_ms = avrogen.day_start(day) * 1000
    for minute, line in enumerate(lines[1:]):
        unix_ms, iso, full_id, value, reason = line.split(",")
        assert int(unix_ms) == start_ms + minute * 60_000
        parsed = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
        assert parsed.timestamp() * 1000 == int(unix_ms) and parsed.date() == day
        assert full_id == "1-1-007-b"
        assert bool(value) != bool(reason)  # a value, or no value and a reason
        if reason:
            assert reason in avrogen.MISSING_REASONS
    whole = minute_csv(who, day, "eda", seed=3)
    assert whole.startswith(text) and len(whole.splitlines()) == 1441
    unknown = minute_csv(who, day, "new-metric", minutes=2).splitlines()[0]
    assert unknown.split(",")[3] == "new_metric"


def test_faults_are_decided_by_seed_whatever_the_order() -> None:
    def records() -> list[RequestRecord]:
        return [
            RequestRecord(
                0.0, "GET", f"/b/k{n % 7}", "", "GetObject", f"k{n % 7}", None, None, None
            )
            for n in range(200)
        ]

    def hits(faults: Faults, rs: list[RequestRecord]) -> set[tuple[str, int]]:
        return {(r.path, r._seen) for r in rs if faults._before(r)}

    forward, backward = records(), records()
    a = hits(Faults(seed=5, slowdown_rate=0.3), forward)
    b = Faults(seed=5, slowdown_rate=0.3)
    # The same requests seen in another interleaving: each path's own order is kept.
    by_path: dict[str, list[RequestRecord]] = {}
    for r in backward:
        by_path.setdefault(r.path, []).append(r)
    shuffled = [r for path in sorted(by_path, reverse=True) for r in by_path[path]]
    assert hits(b, shuffled) == a
    assert 30 < len(a) < 90
    assert hits(Faults(seed=6, slowdown_rate=0.3), records()) != a
    counted = Faults(drop_next=2, operations=("GetObject",), key_glob="k1")
    assert [counted._before(r) for r in records()[:9]].count("drop") == 2


# -- the delivery -----------------------------------------------------------------------------


def test_one_delivery_at_a_time_and_the_proxy_can_be_left_out(template) -> None:
    with S3Delivery(
        participants=["A-1"], days=1, raw_per_day=1, metrics=(), proxy=False,
        template=template, today=TODAY, max_samples=8,
    ) as delivery:  # fmt: skip
        assert delivery.endpoint_url == delivery.moto_url and delivery.proxy is None
        with pytest.raises(RuntimeError, match="already running"):
            S3Delivery(days=1, template=template).start()
        listed = delivery.client().list_objects_v2(Bucket=delivery.bucket, Prefix=delivery.prefix)
        assert [o["Key"] for o in listed["Contents"]] == delivery.raw_keys
        assert delivery.requests == [] and delivery.count() == 0


def test_seeding_a_benchmark_of_4700_objects_takes_seconds(template) -> None:
    started = time.perf_counter()
    delivery = seed_benchmark(template=template, today=TODAY)
    try:
        total = time.perf_counter() - started
        assert delivery.object_count == 3 * 30 * 48 + 3 * 30 * 4 == 4680
        assert len(delivery.keys(delivery.prefix)) == 4680
        print(f"\nseeded {delivery.object_count} objects in {delivery.seed_seconds:.2f}s "
              f"(start with moto, IAM and proxy: {total:.2f}s)")  # fmt: skip
        assert delivery.seed_seconds < 30
        key = delivery.raw_keys[-1]
        _, record, _ = read_session(delivery.read(key))
        assert len(record["rawData"]["bvp"]["values"]) == 64
    finally:
        delivery.close()


@pytest.fixture(scope="class")
def delivery(template):
    """One delivery for the tests of a class (moto starts once)."""
    with S3Delivery(
        days=3,
        raw_per_day=3,
        metrics=("eda", "pulse-rate"),
        seed=7,
        today=TODAY,
        today_minutes=720,
        template=template,
        max_samples=256,
    ) as delivery:
        yield delivery


class TestDelivery:
    """Tests on one shared delivery; each test undoes its faults."""

    @pytest.fixture(autouse=True)
    def _clean(self, delivery):
        delivery.faults.clear()
        delivery.faults.operations = delivery.faults.key_glob = None
        delivery.clear_requests()
        yield
        delivery.faults.clear()

    def test_the_layout_lists_page_by_page(self, delivery) -> None:
        s3 = delivery.client()
        pages = list(
            s3.get_paginator("list_objects_v2").paginate(
                Bucket=delivery.bucket, Prefix=delivery.prefix, PaginationConfig={"PageSize": 7}
            )
        )
        listed = [o["Key"] for page in pages for o in page.get("Contents", [])]
        assert listed == delivery.keys(delivery.prefix) == sorted(listed)
        assert len(pages) == -(-len(listed) // 7) > 1
        assert delivery.count("ListObjectsV2") == len(pages)
        assert all(r.params["max-keys"] == "7" for r in delivery.requests)
        days = {"2025-02-16", "2025-02-17", "2025-02-18"}
        seen_participants = set()
        for key in listed:
            match = RAW.match(key) or CSV.match(key)
            assert match, key
            participant, _, serial = match["folder"].rpartition("-")
            assert participant == match["participant"]
            assert serial == delivery.participant(participant).serial
            assert match["day"] in days
            seen_participants.add(participant)
            if RAW.match(key):
                recorded = dt.datetime.fromtimestamp(int(match["unix"]), dt.UTC)
                assert recorded.date().isoformat() == match["day"]
        assert seen_participants == {"0010", "007-b", "TEST-3"}
        # Full days: 3 raw files and 2 CSVs of 1440 minutes; today up to noon.
        for p in delivery.participants:
            old = delivery.folder_prefix(p, dt.date(2025, 2, 17))
            assert len([k for k in listed if k.startswith(old) and k.endswith(".avro")]) == 3
            today = delivery.folder_prefix(p, TODAY)
            for key in (k for k in listed if k.startswith(today)):
                if key.endswith(".csv"):
                    assert delivery.csv_minutes(key) == 720
                else:
                    assert int(RAW.match(key)["unix"]) < avrogen.day_start(TODAY) + 12 * 3600
        one_day = s3.list_objects_v2(Bucket=delivery.bucket, Prefix=delivery.day_prefix(TODAY))
        assert all(o["Key"].startswith(delivery.day_prefix(TODAY)) for o in one_day["Contents"])

    def test_a_raw_file_reads_back_with_etag_and_checksum(self, delivery) -> None:
        key = delivery.raw_keys[0]
        match = RAW.match(key)
        answer = delivery.client().get_object(
            Bucket=delivery.bucket, Key=key, ChecksumMode="ENABLED"
        )
        body = answer["Body"].read()
        assert answer["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        assert answer["ChecksumCRC64NVME"]  # stored as S3 does, and validated by botocore
        _, record, _ = read_session(body)
        assert record["enrollment"]["participantID"] == match["participant"]
        assert record["enrollment"]["organizationID"] == "829"
        assert record["deviceSn"] == delivery.participant(match["participant"]).serial
        assert record["rawData"]["bvp"]["timestampStart"] // 1_000_000 == int(match["unix"])

    def test_read_only_keys_list_and_get_but_cannot_delete(self, delivery) -> None:
        s3 = delivery.client(delivery.readonly)
        key = delivery.csv_keys[0]
        assert s3.head_object(Bucket=delivery.bucket, Key=key)["ContentLength"] > 0
        assert s3.get_object(Bucket=delivery.bucket, Key=key)["Body"].read()
        with pytest.raises(ClientError) as denied:
            s3.delete_object(Bucket=delivery.bucket, Key=key)
        assert code_of(denied.value) == "AccessDenied"
        assert delivery.info(key) is not None
        for outside in ("", "v2/", "v2/830/"):  # S3 enforces the policy's s3:prefix
            with pytest.raises(ClientError) as denied:
                s3.list_objects_v2(Bucket=delivery.bucket, Prefix=outside)
            assert code_of(denied.value) == "AccessDenied"
        with pytest.raises(ClientError) as denied:
            s3.list_buckets()
        assert code_of(denied.value) == "AccessDenied"
        # The full keys may delete.
        doomed = delivery.prefix + "scratch/doomed.txt"
        delivery.put(doomed, b"bye")
        delivery.client(delivery.full).delete_object(Bucket=delivery.bucket, Key=doomed)
        assert delivery.info(doomed) is None

    def test_wrong_keys_are_refused(self, delivery) -> None:
        for keys, code in (
            (delivery.wrong_secret, "SignatureDoesNotMatch"),
            (delivery.unknown_key, "InvalidAccessKeyId"),
        ):
            with pytest.raises(ClientError) as refused:
                delivery.client(keys).list_objects_v2(
                    Bucket=delivery.bucket, Prefix=delivery.prefix
                )
            assert code_of(refused.value) == code
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert delivery.wrong_secret.access_key_id == delivery.readonly.access_key_id
        assert delivery.readonly.secret_access_key not in repr(delivery.readonly)

    def test_slowdown_and_internal_error_answers(self, delivery) -> None:
        s3 = delivery.client()
        delivery.faults.slowdown_next = 1
        with pytest.raises(ClientError) as slow:
            s3.list_objects_v2(Bucket=delivery.bucket, Prefix=delivery.prefix)
        assert code_of(slow.value) == "SlowDown"
        assert slow.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert s3.list_objects_v2(Bucket=delivery.bucket, Prefix=delivery.prefix)["KeyCount"]
        delivery.faults.error_next = 1
        with pytest.raises(ClientError) as error:
            s3.get_object(Bucket=delivery.bucket, Key=delivery.raw_keys[0])
        assert code_of(error.value) == "InternalError"
        assert [(r.operation, r.status, r.fault) for r in delivery.requests] == [
            ("ListObjectsV2", 503, "slowdown"),
            ("ListObjectsV2", 200, None),
            ("GetObject", 500, "error"),
        ]
        # A client that retries gets through.
        delivery.faults.slowdown_next = 2
        retrying = delivery.client(retries=3)
        assert retrying.get_object(Bucket=delivery.bucket, Key=delivery.raw_keys[0])["Body"].read()
        assert [r.status for r in delivery.requests[-3:]] == [503, 503, 200]

    def test_a_cut_body_and_a_dropped_connection(self, delivery) -> None:
        from botocore.exceptions import ConnectionClosedError, ResponseStreamingError

        s3 = delivery.client()
        key = delivery.raw_keys[1]
        size = delivery.info(key).size
        delivery.faults.cut_next, delivery.faults.cut_after = 1, 1000
        answer = s3.get_object(Bucket=delivery.bucket, Key=key)
        assert answer["ContentLength"] == size
        with pytest.raises(ResponseStreamingError):
            answer["Body"].read()
        cut = delivery.requests[-1]
        assert (cut.fault, cut.status, cut.bytes_sent) == ("cut", 200, 1000)
        # The rest, resumed with a Range pinned by If-Match, is whole.
        rest = s3.get_object(
            Bucket=delivery.bucket, Key=key, Range="bytes=1000-", IfMatch=answer["ETag"]
        )
        assert rest["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert len(rest["Body"].read()) == size - 1000
        resumed = delivery.requests[-1]
        assert (resumed.range, resumed.if_match) == ("bytes=1000-", answer["ETag"])
        delivery.faults.drop_next = 1
        with pytest.raises(ConnectionClosedError):
            s3.head_object(Bucket=delivery.bucket, Key=key)
        assert delivery.requests[-1].fault == "drop" and delivery.requests[-1].status is None
        assert s3.head_object(Bucket=delivery.bucket, Key=key)["ContentLength"] == size

    def test_faults_can_aim_at_one_operation_and_add_latency(self, delivery) -> None:
        s3 = delivery.client()
        delivery.faults.slowdown_rate = 1.0
        delivery.faults.operations = ("GetObject",)
        assert s3.list_objects_v2(Bucket=delivery.bucket, Prefix=delivery.prefix)["KeyCount"]
        with pytest.raises(ClientError):
            s3.get_object(Bucket=delivery.bucket, Key=delivery.raw_keys[0])
        delivery.faults.clear()
        delivery.faults.latency = 0.2
        started = time.monotonic()
        s3.head_object(Bucket=delivery.bucket, Key=delivery.raw_keys[0])
        assert time.monotonic() - started >= 0.2

    def test_multipart_and_stored_checksums(self, delivery) -> None:
        s3 = delivery.client()
        data = os.urandom(2500)
        info = delivery.put_multipart(delivery.prefix + "scratch/multi.bin", data, part_size=1000)
        assert info.etag.endswith('-3"') and info.size == 2500
        listed = s3.list_objects_v2(Bucket=delivery.bucket, Prefix=delivery.prefix + "scratch/")
        assert {o["Key"]: o["ETag"] for o in listed["Contents"]}[info.key] == info.etag
        assert s3.get_object(Bucket=delivery.bucket, Key=info.key)["Body"].read() == data
        sha = delivery.put_with_checksum(delivery.prefix + "scratch/sha.bin", data, "SHA256")
        expected = base64.b64encode(hashlib.sha256(data).digest()).decode()
        assert (sha.checksum_algorithm, sha.checksum) == ("SHA256", expected)
        head = s3.head_object(Bucket=delivery.bucket, Key=sha.key, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == expected
        crc = delivery.put_with_checksum(delivery.prefix + "scratch/crc.bin", data, "CRC32")
        assert crc.checksum_algorithm == "CRC32"

    def test_csvs_grow_and_are_rewritten_in_place(self, delivery) -> None:
        s3 = delivery.client()
        key = next(k for k in delivery.csv_keys if f"/{TODAY}/" in k)
        before = s3.head_object(Bucket=delivery.bucket, Key=key)
        old = s3.get_object(Bucket=delivery.bucket, Key=key)["Body"].read()
        grown = delivery.grow_csv(key, 800)
        after = s3.head_object(Bucket=delivery.bucket, Key=key)
        assert after["ETag"] == grown.etag != before["ETag"]
        assert after["ContentLength"] == grown.size > before["ContentLength"]
        assert after["LastModified"] > before["LastModified"]
        new = s3.get_object(Bucket=delivery.bucket, Key=key)["Body"].read()
        assert new.startswith(old) and len(new.splitlines()) == 801
        with pytest.raises(ValueError):
            delivery.grow_csv(key, 800)
        same = delivery.rewrite_same_size(key)
        assert same.size == grown.size and same.etag != grown.etag
        assert delivery.read(key) != new

    def test_a_same_size_rewrite_of_a_raw_file_is_still_valid(self, delivery) -> None:
        key = delivery.raw_keys[2]
        before = delivery.info(key)
        record = read_session(delivery.read(key))[1]
        after = delivery.rewrite_same_size(key)
        assert after.size == before.size and after.etag != before.etag
        assert read_session(delivery.read(key))[1] == record

    def test_a_change_between_list_and_get_fails_the_pinned_get(self, delivery) -> None:
        s3 = delivery.client()
        key = delivery.csv_keys[1]
        listed = s3.list_objects_v2(Bucket=delivery.bucket, Prefix=key)["Contents"][0]
        delivery.change_between_list_and_get(key)
        with pytest.raises(ClientError) as changed:
            s3.get_object(Bucket=delivery.bucket, Key=key, IfMatch=listed["ETag"])
        assert code_of(changed.value) == "PreconditionFailed"
        now = s3.head_object(Bucket=delivery.bucket, Key=key)
        assert now["ContentLength"] == listed["Size"] and now["ETag"] != listed["ETag"]

    def test_late_files_removals_and_the_clock(self, delivery) -> None:
        s3 = delivery.client()
        old_day = dt.date(2025, 2, 16)
        late = delivery.add_late_file(old_day, "007-b")
        match = RAW.match(late)
        assert match["day"] == "2025-02-16" and match["participant"] == "007-b"
        listed = s3.list_objects_v2(Bucket=delivery.bucket, Prefix=delivery.day_prefix(old_day))
        stamps = {o["Key"]: o["LastModified"] for o in listed["Contents"]}
        assert stamps[late] == max(stamps.values())
        assert delivery.add_late_file(2, "007-b") != late  # two days before today

        gone = delivery.raw_keys[-1]
        delivery.remove(gone)
        with pytest.raises(ClientError) as missing:
            s3.get_object(Bucket=delivery.bucket, Key=gone)
        assert code_of(missing.value) == "NoSuchKey"

        noon = next(
            k for k in delivery.csv_keys if f"/{TODAY}/" in k and delivery.csv_minutes(k) == 720
        )
        minutes = delivery.csv_minutes(noon)
        written = delivery.advance(60)
        assert noon in written and delivery.csv_minutes(noon) == minutes + 60
        assert all(k.startswith(delivery.day_prefix(TODAY)) for k in written)


# -- demo and simulate ------------------------------------------------------------------------


def test_the_demo_account_block_points_at_a_live_delivery(tmp_path: Path, monkeypatch) -> None:
    from e4sync.sources.embraceplus.demo import demo_account

    monkeypatch.setenv(avrogen.REAL_FILE_ENV, str(REAL_AVRO))
    with demo_account(tmp_path, sessions=6, name="lab") as platform:
        (account,) = tomllib.loads(platform.account_toml)["account"]
        assert account["name"] == "lab" and account["source"] == "embraceplus"
        assert account["bucket"] == "empatica-us-east-1-prod-data"
        assert account["prefix"] == "v2/829/1/1/" and account["region"] == "us-east-1"
        secret_file = Path(account["secret_access_key_file"])
        assert secret_file.parent == tmp_path
        assert secret_file.stat().st_mode & 0o777 == 0o600
        secret = secret_file.read_text().strip()
        assert secret not in platform.account_toml and secret not in platform.banner
        s3 = boto3.client(
            "s3",
            endpoint_url=account["endpoint_url"],
            region_name=account["region"],
            aws_access_key_id=account["access_key_id"],
            aws_secret_access_key=secret,
        )
        listed = s3.list_objects_v2(Bucket=account["bucket"], Prefix=account["prefix"])
        assert listed["KeyCount"] > 0


def test_simulate_prints_where_and_the_key_id_never_the_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "sim.secret"
    code = (
        "import argparse, sys\n"
        "from e4sync.sources.embraceplus import demo\n"
        "p = argparse.ArgumentParser(); demo.add_simulate_arguments(p)\n"
        "sys.exit(demo.simulate(p.parse_args(sys.argv[1:])))\n"
    )
    args = ["--days", "2", "--raw-per-day", "1", "--max-samples", "32", "--tick", "0",
            "--secret-file", str(secret_file), "--slowdown-rate", "0.1",
            "--avro", str(REAL_AVRO)]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not lines or not lines[-1].startswith("endpoint_url"):
            line = proc.stdout.readline()
            assert line, f"simulate ended early: {proc.stderr.read()}"
            lines.append(line.rstrip("\n"))
        out = "\n".join(lines)
        assert out.startswith("EmbracePlus S3 delivery (moto) at http://127.0.0.1:")
        assert "bucket: empatica-us-east-1-prod-data" in out and "prefix: v2/829/1/1/" in out
        assert re.search(r"access key id \(read-only\): AKIA\w+", out)
        assert f"secret access key in: {secret_file}" in out
        assert "slowdown_rate" in out
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert secret_file.read_text().strip() not in out
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "simulator stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
