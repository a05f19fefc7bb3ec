"""e4sync.sources.embraceplus.checks: is a fetched S3 object whole, and what does it hold.

Owns the verification of SPEC section 9. Of every object: the bytes received are the
listed size (and the Content-Length S3 sent); the MD5 is the ETag where the ETag is a
plain MD5 (32 hex digits, no ``-``: not for multipart uploads or KMS/SSE-C encryption); a
full-object checksum S3 sent with the GET (CRC64NVME, CRC32C, CRC32, SHA256 or SHA1)
matches the bytes on disk, computed here across any resumed ranges (botocore checks only
an uncut body), and which one was checked is said. Of a raw ``.avro``: an Avro container
whose every block decodes, read to its end, holding exactly one record of schema
``empatica.format.avro.Session`` whose ``enrollment.participantID`` and ``deviceSn`` are the
folder's participant and serial; its facts are each stream's ``timestampStart``,
``samplingFrequency`` and sample count, and the span they cover. Of a biomarker ``.csv``:
its header parses with a ``timestamp_unix`` column (milliseconds), and every row's
timestamp lies in the folder's UTC day; its facts are the rows and the first and last
timestamp. Problems refuse a file; odd but harmless things are warnings.

``Digests`` is what a fetch feeds while it streams (sha256, MD5, the checksum), so that
nothing is read twice; offline (``reindex``, ``verify``, an adopted file) the same is
computed from the file, without S3's checksum, which only a GET says. fastavro and awscrt
(CRC32C, CRC64NVME) are imported when first needed.

Must not import: e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli, boto3.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from e4sync.sources import Item, Verdict
from e4sync.sources.embraceplus.keys import (
    BIOMARKER,
    RAW,
    KeyInfo,
    day_start,
    parse_key,
    plain_md5,
)

CHUNK = 1 << 20
SCHEMA_NAME = "empatica.format.avro.Session"
KNOWN_SCHEMA_MAJOR = 6
TIMESTAMP_COLUMN = "timestamp_unix"
MAX_LISTED = 3  # problems of one kind named one by one; the rest are counted
# The full-object checksums S3 may send, in the order botocore looks for them.
CHECKSUMS = ("CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1")


# -- digests --------------------------------------------------------------------------------


class _Crc:
    """A CRC as S3 states it: the big-endian bytes of the value, base64."""

    def __init__(self, step: Callable[[bytes, int], int], width: int):
        self._step = step
        self._width = width
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = self._step(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")


def _checksum(algorithm: str) -> Any:
    """A hasher for an S3 checksum algorithm; None when this host cannot compute it
    (CRC32C and CRC64NVME need awscrt)."""
    if algorithm == "CRC32":
        return _Crc(lambda data, value: zlib.crc32(data, value), 4)
    if algorithm == "SHA256":
        return hashlib.sha256()
    if algorithm == "SHA1":
        return hashlib.sha1(usedforsecurity=False)
    try:
        from awscrt import checksums
    except ImportError:
        return None
    if algorithm == "CRC32C":
        return _Crc(lambda data, value: checksums.crc32c(data, value), 4)
    if algorithm == "CRC64NVME":
        return _Crc(lambda data, value: checksums.crc64nvme(data, value), 8)
    return None


class Digests:
    """The digests of a body as it arrives: sha256 always, MD5 when the ETag is one, and
    the S3 checksum ``algorithm`` when one is to be checked."""

    def __init__(self, md5: bool = False, algorithm: str | None = None):
        self.size = 0
        self._md5_wanted = md5
        self.algorithm = algorithm
        self.reset()

    def reset(self) -> None:
        """Start again from the first byte (a server that ignored a Range)."""
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if self._md5_wanted else None
        self._checksum = _checksum(self.algorithm) if self.algorithm else None

    def update(self, data: bytes) -> None:
        self.size += len(data)
        self._sha256.update(data)
        if self._md5 is not None:
            self._md5.update(data)
        if self._checksum is not None:
            self._checksum.update(data)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def md5(self) -> str | None:
        return self._md5.hexdigest() if self._md5 is not None else None

    @property
    def checksum(self) -> str | None:
        """The checksum, base64 as S3 sends it; None when it cannot be computed here."""
        if self._checksum is None:
            return None
        return base64.b64encode(self._checksum.digest()).decode("ascii")


def digest_file(path: Path, md5: bool, algorithm: str | None = None) -> Digests:
    digests = Digests(md5=md5, algorithm=algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digests.update(chunk)
    return digests


@dataclass
class Received:
    """What a fetch saw of one object, for its verification: the digests of the bytes
    written, the Content-Length S3 announced, and the full-object checksum it sent (its
    algorithm and value; ``checksum_type`` COMPOSITE for a multipart upload's)."""

    digests: Digests
    content_length: int | None = None
    checksum_algorithm: str | None = None
    checksum_value: str | None = None
    checksum_type: str | None = None
    resumed: int = 0  # how many times a cut body was taken up again with a Range


def pick_checksum(response: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The full-object checksum a GetObject answer carries: (algorithm, value), or
    (None, None) when it sends none."""
    for algorithm in CHECKSUMS:
        value = response.get(f"Checksum{algorithm}")
        if value:
            return algorithm, str(value)
    return None, None


# -- the verdict ----------------------------------------------------------------------------


@dataclass
class _Findings:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    recorded: tuple[int, float] | None = None
    bytes_proven: bool = False

    def verdict(self) -> Verdict:
        return Verdict(
            problems=tuple(self.problems),
            warnings=tuple(self.warnings),
            facts=self.facts,
            recorded=self.recorded,
            bytes_proven=self.bytes_proven,
        )


def check(path: Path, item: Item, received: Received | None = None) -> Verdict:
    """Verify the object ``item`` fetched to ``path``. ``received`` is what the fetch saw
    (None offline: the digests are computed from the file, and S3's checksum is not known)."""
    found = _Findings()
    etag = str(item.raw.get("etag") or "")
    md5 = plain_md5(etag)
    try:
        digests = received.digests if received is not None else digest_file(path, md5 is not None)
        size = path.stat().st_size
    except OSError as exc:
        found.problems.append(f"cannot read the file: {exc.strerror or type(exc).__name__}")
        return found.verdict()
    integrity: dict[str, Any] = {"bytes": size}
    found.facts["integrity"] = integrity
    if digests.size != size:
        found.problems.append(f"{digests.size} bytes were received but {size} are on disk")
    if item.size is not None and size != item.size:
        found.problems.append(f"{size} bytes where the listing said {item.size}")
    if received is not None and received.content_length is not None:
        if received.content_length != item.size:
            found.problems.append(
                f"S3 sent Content-Length {received.content_length} where the listing said "
                f"{item.size}"
            )
    if md5 is None:
        integrity["md5"] = "not checked: the ETag is not an MD5 (a multipart or encrypted upload)"
    elif digests.md5 != md5:
        found.problems.append(f"MD5 {digests.md5} differs from the ETag {md5}")
    else:
        integrity["md5"] = "matches the ETag"
    if received is not None:
        _check_checksum(received, found, integrity)
    if received is not None and received.resumed:
        integrity["resumed"] = received.resumed
    if found.problems:
        return found.verdict()  # the bytes are not the object's: their content says nothing
    # S3's MD5 (the ETag) or its full-object checksum matched: these are the object's bytes.
    found.bytes_proven = integrity.get("md5") == "matches the ETag" or str(
        integrity.get("checksum", "")
    ).endswith(" matches")
    prefix = str(item.raw.get("prefix") or "")
    info = parse_key(item.id[len(prefix) :] if item.id.startswith(prefix) else item.id)
    if info.kind == RAW:
        _check_avro(path, info, found)
    elif info.kind == BIOMARKER:
        _check_csv(path, info, found)
    return found.verdict()


def _check_checksum(received: Received, found: _Findings, integrity: dict[str, Any]) -> None:
    algorithm, expected = received.checksum_algorithm, received.checksum_value
    if not algorithm or not expected:
        integrity["checksum"] = "none sent"
        return
    if "-" in expected or (received.checksum_type or "").upper() == "COMPOSITE":
        integrity["checksum"] = f"{algorithm} of the parts (a multipart upload): not checked"
        return
    got = received.digests.checksum
    if got is None:
        integrity["checksum"] = f"{algorithm} sent, not checked (install awscrt to check it)"
        found.warnings.append(f"S3's {algorithm} checksum was not checked: awscrt is missing")
        return
    if got != expected:
        found.problems.append(f"{algorithm} checksum {got} differs from the {expected} S3 sent")
        return
    integrity["checksum"] = f"{algorithm} matches"


# -- raw recordings (.avro) -----------------------------------------------------------------


def _full_name(schema: Any) -> str:
    if not isinstance(schema, dict):
        return ""
    name = str(schema.get("name") or "")
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _version(value: Any) -> str:
    if isinstance(value, dict):
        return ".".join(str(value.get(k, "?")) for k in ("major", "minor", "patch"))
    return ""


def _check_avro(path: Path, info: KeyInfo, found: _Findings) -> None:
    import fastavro

    first, count = None, 0
    try:
        with open(path, "rb") as handle:
            reader = fastavro.reader(handle)
            raw_schema = reader.metadata.get("avro.schema", "")
            schema = json.loads(raw_schema) if raw_schema else reader.writer_schema
            codec = reader.codec
            for record in reader:  # every block is decoded, to the end of the file
                count += 1
                if count == 1:
                    first = record  # the others are counted, not kept
    except Exception as exc:  # fastavro raises many kinds for a damaged container
        found.problems.append(f"not a whole Avro container: {type(exc).__name__}: {exc}"[:300])
        return
    name = _full_name(schema)
    found.facts.update({"schema": name, "codec": codec})
    if name != SCHEMA_NAME:
        found.problems.append(f"schema {name or '(none)'!r}, not {SCHEMA_NAME}")
        return
    if count != 1 or not isinstance(first, dict):
        found.problems.append(f"{count} records where a raw file holds exactly one")
        return
    _session_facts(first, info, found)


def _session_facts(record: dict, info: KeyInfo, found: _Findings) -> None:
    enrollment = record.get("enrollment") or {}
    participant = str(enrollment.get("participantID", ""))
    serial = str(record.get("deviceSn", ""))
    version = _version(record.get("schemaVersion"))
    found.facts.update(
        {
            "schema_version": version,
            "participant": participant,
            "device": serial,
            "device_model": str(record.get("deviceModel", "")),
            "timezone": record.get("timezone"),
        }
    )
    if participant != info.participant:
        found.problems.append(
            f"the file is of participant {participant!r}, its folder of {info.participant!r}"
        )
    if serial != info.serial:
        found.problems.append(f"the file is of device {serial!r}, its folder of {info.serial!r}")
    major = (record.get("schemaVersion") or {}).get("major")
    if major != KNOWN_SCHEMA_MAJOR:
        found.warnings.append(f"schema version {version}: e4sync knows {KNOWN_SCHEMA_MAJOR}.x")
    streams: dict[str, Any] = {}
    events: dict[str, int] = {}
    starts: list[float] = []
    ends: list[float] = []
    for name, value in (record.get("rawData") or {}).items():
        if not isinstance(value, dict):
            continue
        if "timestampStart" in value and "samplingFrequency" in value:
            n = _samples(value)
            ts, fs = value["timestampStart"], value["samplingFrequency"]
            streams[name] = {"timestampStart": ts, "samplingFrequency": fs, "samples": n}
            if n and isinstance(fs, int | float) and math.isfinite(fs) and fs > 0:
                starts.append(ts / 1e6)
                ends.append(ts / 1e6 + n / fs)
            elif n:
                found.warnings.append(f"{name}: {n} samples at sampling frequency {fs}")
        else:
            lists = [v for v in value.values() if isinstance(v, list)]
            if lists:
                events[name] = len(lists[0])
    found.facts["streams"] = streams
    if events:
        found.facts["events"] = events
    if not starts:
        found.warnings.append("no stream holds samples")
        return
    start, end = min(starts), max(ends)
    found.facts["span"] = {
        "start": _iso(start),
        "end": _iso(end),
        "start_unix": start,
        "seconds": round(end - start, 6),
    }
    found.recorded = (int(start), end - start)
    if info.day is not None and _utc_day(start) != info.day:
        found.warnings.append(
            f"the recording starts {_iso(start)}, not on its folder's day {info.day}"
        )
    if info.unix_s is not None and abs(info.unix_s - start) > 86400:
        found.warnings.append(
            f"the file's name says {_iso(info.unix_s)}, its content starts {_iso(start)}"
        )


def _samples(stream: dict) -> int:
    for key in ("values", "x"):
        if isinstance(stream.get(key), list):
            return len(stream[key])
    lists = [v for v in stream.values() if isinstance(v, list)]
    return len(lists[0]) if lists else 0


def _iso(seconds: float) -> str:
    try:
        when = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return str(seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utc_day(seconds: float) -> date | None:
    try:
        return datetime.fromtimestamp(seconds, UTC).date()
    except (OverflowError, OSError, ValueError):
        return None


# -- per-minute biomarkers (.csv) -----------------------------------------------------------


def _check_csv(path: Path, info: KeyInfo, found: _Findings) -> None:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        found.problems.append(f"not UTF-8 text (byte {exc.start})")
        return
    except OSError as exc:
        found.problems.append(f"cannot read the file: {exc.strerror or type(exc).__name__}")
        return
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [cell.strip() for cell in next(rows)]
    except StopIteration:
        found.problems.append("empty: no header")
        return
    except csv.Error as exc:
        found.problems.append(f"the header does not parse: {exc}")
        return
    if TIMESTAMP_COLUMN not in header:
        found.problems.append(f"no {TIMESTAMP_COLUMN} column in the header {header[:8]}")
        return
    column = header.index(TIMESTAMP_COLUMN)
    low = day_start(info.day) * 1000
    high = low + 86_400_000
    width = len(header)
    count, first, last = 0, None, None
    bad: list[str] = []
    outside: list[str] = []
    ragged = 0
    try:
        # A day's CSV holds up to 1,440 rows: the loop is written for speed (float() takes
        # the cell's spaces itself; a blank row is looked for only when a cell is no number).
        for number, row in enumerate(rows, start=2):
            cell = row[column] if column < len(row) else ""
            try:
                stamp = float(cell)
            except ValueError:
                if not any(part.strip() for part in row):
                    continue  # a blank row
                stamp = None
            count += 1
            if len(row) != width:
                ragged += 1
            if stamp is None or not math.isfinite(stamp):
                bad.append(f"line {number}: {cell.strip()[:40]!r}")
                continue
            if not low <= stamp < high:
                outside.append(f"line {number}: {_iso(stamp / 1000)}")
            if first is None or stamp < first:
                first = stamp
            if last is None or stamp > last:
                last = stamp
    except csv.Error as exc:
        found.problems.append(f"does not parse as CSV: {exc}")
        return
    if bad:
        found.problems.append(f"{TIMESTAMP_COLUMN} is not a number: {_some(bad)}")
    if outside:
        found.problems.append(f"timestamps outside the folder's day {info.day}: {_some(outside)}")
    if ragged:
        found.warnings.append(f"{ragged} rows have not the header's {len(header)} columns")
    if info.name_day is not None and info.name_day != info.day:
        found.warnings.append(f"the file's name says {info.name_day}, its folder {info.day}")
    if not count:
        found.warnings.append("no rows yet: a header only")
    found.facts.update({"columns": header, "rows": count})
    if first is not None and last is not None:
        found.facts.update(
            {
                "first": _iso(first / 1000),
                "last": _iso(last / 1000),
                "first_unix_ms": int(first),
                "last_unix_ms": int(last),
            }
        )


def _some(found: list[str]) -> str:
    shown = ", ".join(found[:MAX_LISTED])
    return shown + (f" and {len(found) - MAX_LISTED} more" if len(found) > MAX_LISTED else "")
