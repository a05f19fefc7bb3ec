"""EmbracePlus keys and checks without a server (SPEC section 9, embraceplus-s3.md): what a
key says, the item it makes, where the default layout puts it, and what the verification
refuses or warns of, on the real recording and on files made to be wrong."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path, PurePosixPath

import pytest

from e4sync.archive import render_relpath
from e4sync.errors import UsageError
from e4sync.sources import kind
from e4sync.sources.embraceplus.checks import Digests, Received, check
from e4sync.sources.embraceplus.keys import (
    check_id,
    is_plain_md5,
    item_from_raw,
    key_problem,
    make_item,
    parse_key,
)
from tests.moto_s3 import (
    PREFIX,
    REAL_DAY,
    REAL_PARTICIPANT,
    REAL_SERIAL,
    REAL_START,
    csv_bytes,
    csv_key,
    md5_hex,
    raw_key,
    real_avro,
)

RAW = "participant_data/2025-02-18/007-3YK3K15223/raw_data/v6/1-1-007_1739855451.avro"
CSV = (
    "participant_data/2024-05-28/0010-3YK3B15/digital_biomarkers/aggregated_per_minute/"
    "1-1-0010_2024-05-28_pulse-rate.csv"
)


def test_a_key_says_its_kind_day_participant_serial_and_time():
    raw = parse_key(RAW)
    assert (raw.kind, raw.day, raw.participant, raw.serial, raw.unix_s) == (
        "raw",
        date(2025, 2, 18),
        "007",
        "3YK3K15223",
        1739855451,
    )
    csv = parse_key(CSV)
    assert (csv.kind, csv.metric, csv.name_day, csv.participant) == (
        "biomarker",
        "pulse-rate",
        date(2024, 5, 28),
        "0010",
    )
    # A participant id with '-' splits on the last one (sensorfabric's split('-') does not).
    hyphen = parse_key("participant_data/2025-02-18/site-a-007-3YK3K15223/raw_data/v6/x_1.avro")
    assert (hyphen.participant, hyphen.serial) == ("site-a-007", "3YK3K15223")
    other = parse_key("participant_data/2025-02-18/007-3YK/notes/readme.txt")
    assert (other.kind, other.day, other.participant) == ("other", date(2025, 2, 18), "007")
    assert parse_key("manifest.json").kind == "other" and parse_key("manifest.json").day is None
    assert parse_key("participant_data/2025-13-45/007-3YK/raw_data/v6/x_1.avro").kind == "other"


def test_an_item_is_its_key_its_etag_and_size_and_is_rebuilt_from_its_raw_metadata():
    key = PREFIX + RAW
    etag = '"aeda5eac89688580467984ebdbac9741"'
    item = make_item(PREFIX, key, etag, 196322, "2025-02-18T06:00:00Z", ["CRC32"])
    assert (item.id, item.version, item.size, item.suffix, item.kind) == (
        key,
        f"{etag}:196322",
        196322,
        ".avro",
        "raw",
    )
    assert item.recorded_at == 1739855451
    assert item.fields["key"] == PurePosixPath(RAW) and item.fields["date"] == date(2025, 2, 18)
    raw = json.loads(json.dumps(dict(item.raw)))
    assert raw["prefix"] == PREFIX and raw["checksum_algorithm"] == ["CRC32"]
    rebuilt = item_from_raw(raw)
    assert rebuilt == item and rebuilt.fields == item.fields
    assert kind("embraceplus").item_from_raw(raw) == item
    csv = make_item(PREFIX, PREFIX + CSV, '"x"', 10, "")
    assert csv.recorded_at == 1716854400  # the day folder's midnight, UTC
    for junk in (None, {}, {**raw, "size": "7"}, {**raw, "key": "v2/other/x"}, {**raw, "etag": 1}):
        assert item_from_raw(junk) is None


def test_the_default_layout_mirrors_the_tree_and_no_key_leaves_the_account():
    item = make_item(PREFIX, PREFIX + RAW, '"e"', 1, "")
    fields = {"account": "study-829", **item.fields}
    assert render_relpath("{account}/{key}", fields).as_posix() == "study-829/" + RAW
    assert render_relpath("{account}/{date:%Y}/{participant}/{file}", fields).as_posix() == (
        "study-829/2025/007/1-1-007_1739855451.avro"
    )
    assert render_relpath("{account}/{date}/{kind}_{metric}", fields).as_posix() == (
        "study-829/2025-02-18/raw__"
    )
    hostile = {"account": "a", "key": PurePosixPath("/../../etc/./passwd")}
    assert render_relpath("{account}/{key}", hostile).as_posix() == "a/_/_/etc/passwd"


def test_an_etag_is_an_md5_only_when_plain():
    assert is_plain_md5('"aeda5eac89688580467984ebdbac9741"')
    assert is_plain_md5("AEDA5EAC89688580467984EBDBAC9741")
    assert not is_plain_md5('"785226831a201b8e61327aab68128269-2"')  # multipart
    assert not is_plain_md5('"abc"') and not is_plain_md5("") and not is_plain_md5(None)


@pytest.mark.parametrize(
    "key, problem",
    [
        ("", "must not be empty"),
        ("a\nb", "control characters"),
        ("a/../b", "'..'"),
        ("a//b", "'//'"),
        ("/a", "neither starts nor ends"),
        ("folder/", "neither starts nor ends"),
        ("x" * 1025, "at most 1024 bytes"),
    ],
)
def test_a_key_a_person_gives_is_checked(key, problem):
    assert problem in key_problem(key)
    with pytest.raises(UsageError, match=problem.replace("(", r"\(")):
        check_id(key)


def test_check_id_takes_a_whole_key_and_key_problem_its_prefix():
    assert check_id(PREFIX + RAW) == PREFIX + RAW
    assert "below the account's prefix" in key_problem("v2/9/" + RAW, PREFIX)
    assert key_problem(PREFIX + RAW, PREFIX) is None


# -- checks ----------------------------------------------------------------------------------


def checked(tmp_path: Path, key: str, data: bytes, etag: str | None = None, **seen):
    path = tmp_path / "object.part"
    path.write_bytes(data)
    item = make_item(PREFIX, key, etag or f'"{md5_hex(data)}"', len(data), "")
    received = None
    if seen:
        digests = Digests(md5=True, algorithm=seen.get("checksum_algorithm"))
        digests.update(data)
        received = Received(digests, content_length=len(data), **seen)
    return check(path, item, received)


def test_the_real_recording_verifies_with_its_facts(tmp_path):
    key = raw_key(REAL_DAY, REAL_PARTICIPANT, REAL_SERIAL, REAL_START)
    verdict = checked(tmp_path, key, real_avro())
    assert verdict.ok and verdict.warnings == ()
    assert verdict.facts["schema_version"] == "6.3.0" and verdict.facts["codec"] == "deflate"
    assert verdict.facts["events"] == {"tags": 0, "systolicPeaks": 416}
    assert verdict.recorded == (REAL_START, pytest.approx(346.998933, abs=1e-3))


def test_an_avro_file_of_another_schema_or_with_two_records_is_refused(tmp_path):
    import fastavro

    from tests.moto_s3 import _real_session

    schema, session = _real_session()
    key = raw_key(REAL_DAY, REAL_PARTICIPANT, REAL_SERIAL, REAL_START)
    two = io.BytesIO()
    fastavro.writer(two, schema, [session, session], codec="deflate")
    assert checked(tmp_path, key, two.getvalue()).problems == (
        "2 records where a raw file holds exactly one",
    )
    other = io.BytesIO()
    other_schema = {"type": "record", "name": "x.Other", "fields": [{"name": "a", "type": "int"}]}
    fastavro.writer(other, other_schema, [{"a": 1}])
    (problem,) = checked(tmp_path, key, other.getvalue()).problems
    assert problem == "schema 'x.Other', not empatica.format.avro.Session"
    # A block's end damaged (the size and MD5 as listed): it does not decode. (A bit
    # flipped inside deflate data may well decode: Avro's deflate has no checksum of its
    # own, which is why the MD5 and S3's checksum are checked first.)
    damaged = bytearray(real_avro())
    damaged[-1] ^= 0xFF
    (problem,) = checked(tmp_path, key, bytes(damaged)).problems
    assert problem.startswith("not a whole Avro container")


def test_a_csv_is_checked_against_its_day(tmp_path):
    day = date(2024, 5, 28)
    key = csv_key(day, "0010", "3YK3B15")
    verdict = checked(tmp_path, key, csv_bytes(day, 3))
    assert verdict.ok and verdict.facts["rows"] == 3
    assert (verdict.facts["first"], verdict.facts["last"]) == (
        "2024-05-28T00:00:00.000Z",
        "2024-05-28T00:02:00.000Z",
    )
    (problem,) = checked(tmp_path, key, csv_bytes(date(2024, 5, 29), 2)).problems
    assert problem.startswith("timestamps outside the folder's day 2024-05-28: line 2: 2024-05-29")
    (problem,) = checked(tmp_path, key, b"time,value\n1,2\n").problems
    assert problem.startswith("no timestamp_unix column")
    assert checked(tmp_path, key, b"").problems == ("empty: no header",)
    assert "is not a number" in checked(tmp_path, key, b"timestamp_unix\nsoon\n").problems[0]
    header_only = checked(tmp_path, key, b"timestamp_unix,eda\n")
    assert header_only.ok and header_only.warnings == ("no rows yet: a header only",)


def test_size_md5_and_the_checksum_s3_sent_are_checked(tmp_path):
    key = PREFIX + "notes.txt"
    data = b"hello" * 100
    assert checked(tmp_path, key, data).ok
    (problem,) = checked(tmp_path, key, data, etag='"' + "0" * 32 + '"').problems
    assert problem.startswith("MD5 ") and "differs from the ETag" in problem
    # The values moto (S3) computed for these bytes: CRC32C and CRC64NVME need awscrt.
    for algorithm, value in (("CRC32C", "wP9fqg=="), ("CRC64NVME", "FNv5PxEwheA=")):
        verdict = checked(tmp_path, key, data, checksum_algorithm=algorithm, checksum_value=value)
        assert verdict.facts["integrity"]["checksum"] == f"{algorithm} matches"
    bad = checked(tmp_path, key, data, checksum_algorithm="CRC32C", checksum_value="AAAAAA==")
    assert bad.problems == ("CRC32C checksum wP9fqg== differs from the AAAAAA== S3 sent",)
    parts = checked(tmp_path, key, data, checksum_algorithm="CRC32", checksum_value="V38=-2")
    assert parts.ok and "of the parts" in parts.facts["integrity"]["checksum"]
    path = tmp_path / "short.part"
    path.write_bytes(data[:-1])
    item = make_item(PREFIX, key, f'"{md5_hex(data)}"', len(data), "")
    assert check(path, item).problems[0] == f"{len(data) - 1} bytes where the listing said 500"
