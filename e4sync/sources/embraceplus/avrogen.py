"""e4sync.sources.embraceplus.avrogen: EmbracePlus files made from the one real Avro file.

Owns the content of a simulated EmbracePlus delivery (``embraceplus-s3.md`` section 2):

- :class:`AvroTemplate`: the real ``test_file.avro`` read once (its schema and its one
  ``empatica.format.avro.Session`` record), or a synthetic stand-in of the same schema when
  the file is not at hand (:func:`default_template`);
- :meth:`AvroTemplate.render`: a new, valid Avro container file (fastavro, deflate codec,
  same schema, one record) for another ``enrollment`` and ``deviceSn``, every time in
  ``rawData`` shifted so that the file starts at a given unix second, the sample arrays kept
  (or cut to ``max_samples`` for big benchmarks); the same arguments give the same bytes;
- :func:`minute_csv`: the per-minute biomarker CSV of a participant-day and a metric
  (``timestamp_unix`` in ms, ``timestamp_iso``, ``participant_full_id``, the metric's value
  column, ``missing_value_reason``), optionally only the first N minutes of the day (a day
  filling up); the rows of a shorter day are a prefix of a longer one;
- :func:`read_session`, :func:`resync`: read a file back, and make another file of the same
  size and content with other bytes (a new sync marker), for same-size rewrites.

Value-column names are those seen in public code that reads these CSVs (unattributed
sources; ``eda_scl_usiemens``, ``pulse_rate_bpm`` ...); other metrics get the metric's name
with ``-`` as ``_``. ``participant_full_id`` is ``<study>-<site>-<participant>``, as in the
file names (inferred). Nothing here starts a server or names S3.

Must not import: e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_NAME = "empatica.format.avro.Session"
CODEC = "deflate"
REAL_FILE_NAME = "test_file.avro"
REAL_FILE_ENV = "E4SYNC_EMBRACEPLUS_AVRO"  # a path to the real file, for the demo

CSV_COLUMNS = ("timestamp_unix", "timestamp_iso", "participant_full_id")  # then value, reason
MISSING_REASONS = ("device_not_recording", "device_not_worn_correctly")

_SENSORS = ("accelerometer", "gyroscope", "eda", "temperature", "bvp", "steps")
_ARRAYS = ("x", "y", "z", "values", "tagsTimeMicros", "peaksTimeNanos")


@dataclass(frozen=True, slots=True)
class Enrollment:
    """Who a file belongs to: the record's ``enrollment`` (all strings, as in the schema)."""

    participant: str
    site: str = "1"
    study: str = "1"
    organization: str = "829"

    @property
    def full_id(self) -> str:
        """The id the CSVs and file names carry: ``<study>-<site>-<participant>``."""
        return f"{self.study}-{self.site}-{self.participant}"

    def as_record(self) -> dict[str, str]:
        return {
            "participantID": self.participant,
            "siteID": self.site,
            "studyID": self.study,
            "organizationID": self.organization,
        }


def _digest(*parts: object, size: int = 16) -> bytes:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=size).digest()


class AvroTemplate:
    """One ``Session`` record and its schema, from which new files are rendered.

    ``origin_us`` is the record's earliest time (µs) over every sensor's ``timestampStart``
    (0 means "no data" and is left alone), tags and systolic peaks; ``duration_s`` how long
    its longest signal lasts."""

    def __init__(self, schema: Mapping[str, Any], record: Mapping[str, Any], source: str):
        import fastavro

        if schema.get("name") != SCHEMA_NAME:
            raise ValueError(f"{source}: schema {schema.get('name')!r}, not {SCHEMA_NAME}")
        self.schema = dict(schema)
        self.record = record
        self.source = source
        self._parsed = fastavro.parse_schema(self.schema)
        raw = record["rawData"]
        times = [raw[s]["timestampStart"] for s in _SENSORS if raw[s]["timestampStart"]]
        times += list(raw["tags"]["tagsTimeMicros"])
        times += [t // 1000 for t in raw["systolicPeaks"]["peaksTimeNanos"]]
        if not times:
            raise ValueError(f"{source}: the record has no timestamps")
        self.origin_us = min(times)
        self.duration_s = _duration(raw)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AvroTemplate:
        """Read the real file (or any one-record ``Session`` container)."""
        import fastavro

        with open(path, "rb") as f:
            reader = fastavro.reader(f)
            schema = reader.writer_schema
            records = list(reader)
        if len(records) != 1:
            raise ValueError(f"{path}: {len(records)} records, expected 1")
        return cls(schema, records[0], str(path))

    @classmethod
    def synthetic(cls, seed: int = 0, seconds: int = 120) -> AvroTemplate:
        """A stand-in of the same schema when the real file is not at hand: ``seconds`` of
        plausible signals at the real file's rates. Prefer :meth:`load`."""
        return cls(session_schema(), _synthetic_record(seed, seconds), "synthetic")

    def render(
        self,
        enrollment: Enrollment,
        device_sn: str,
        start_unix_s: int,
        *,
        max_samples: int | None = None,
        seed: int = 0,
        timezone: int | None = None,
    ) -> bytes:
        """A new container file: the template's record with ``enrollment``, ``device_sn``
        and every time shifted so that the earliest is ``start_unix_s`` (µs 0). Arrays are
        kept, or cut to their first ``max_samples`` entries. The sync marker comes from
        ``seed`` and the other arguments, so the same call gives the same bytes."""
        import fastavro

        record = self.shifted(
            enrollment, device_sn, start_unix_s, max_samples=max_samples, timezone=timezone
        )
        marker = _digest("sync", seed, enrollment, device_sn, start_unix_s, max_samples)
        out = io.BytesIO()
        fastavro.writer(out, self._parsed, [record], codec=CODEC, sync_marker=marker)
        return out.getvalue()

    def shifted(
        self,
        enrollment: Enrollment,
        device_sn: str,
        start_unix_s: int,
        *,
        max_samples: int | None = None,
        timezone: int | None = None,
    ) -> dict[str, Any]:
        """The record :meth:`render` writes (arrays shared with the template, not copied,
        unless cut or shifted)."""
        delta = int(start_unix_s) * 1_000_000 - self.origin_us
        src = self.record["rawData"]

        def cut(values: Sequence[Any]) -> Sequence[Any]:
            return values if max_samples is None else values[:max_samples]

        raw: dict[str, Any] = {}
        for name in _SENSORS:
            sensor = dict(src[name])
            if sensor["timestampStart"]:
                sensor["timestampStart"] += delta
            for axis in ("x", "y", "z", "values"):
                if axis in sensor:
                    sensor[axis] = cut(sensor[axis])
            raw[name] = sensor
        raw["tags"] = {"tagsTimeMicros": [t + delta for t in cut(src["tags"]["tagsTimeMicros"])]}
        peaks = cut(src["systolicPeaks"]["peaksTimeNanos"])
        raw["systolicPeaks"] = {"peaksTimeNanos": [t + delta * 1000 for t in peaks]}
        record = dict(self.record)
        record["enrollment"] = enrollment.as_record()
        record["deviceSn"] = device_sn
        record["rawData"] = {name: raw[name] for name in src}  # the schema's field order
        if timezone is not None:
            record["timezone"] = timezone
        return record


def _duration(raw: Mapping[str, Any]) -> float:
    longest = 0.0
    for name in _SENSORS:
        sensor = raw[name]
        rate = sensor["samplingFrequency"]
        count = len(sensor.get("values", sensor.get("x", ())))
        if rate > 0 and count:
            longest = max(longest, count / rate)
    return longest


def read_session(data: bytes) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(schema, record, codec)`` of a one-record container file; ValueError otherwise."""
    import fastavro

    reader = fastavro.reader(io.BytesIO(data))
    records = list(reader)
    if len(records) != 1:
        raise ValueError(f"{len(records)} records, expected 1")
    return reader.writer_schema, records[0], reader.codec


def resync(data: bytes, seed: int | str = 0) -> bytes:
    """The same container with another 16-byte sync marker: the same size and content,
    other bytes (and so another MD5). ValueError if ``data`` is not an Avro container."""
    if data[:4] != b"Obj\x01":
        raise ValueError("not an Avro container file")
    buf = io.BytesIO(data)
    buf.seek(4)
    # The header's metadata map: blocks of (count, then count key/value byte strings).
    while True:
        count = _read_long(buf)
        if count == 0:
            break
        if count < 0:
            count = -count
            _read_long(buf)  # the block's size in bytes
        for _ in range(2 * count):
            buf.seek(_read_long(buf), io.SEEK_CUR)
    old = data[buf.tell() : buf.tell() + 16]
    new = _digest("resync", seed, old)
    out = bytearray(data)
    at = buf.tell()
    while True:
        out[at : at + 16] = new
        buf.seek(at + 16)
        if buf.tell() >= len(data):
            break
        _read_long(buf)  # objects in the block
        buf.seek(_read_long(buf), io.SEEK_CUR)
        at = buf.tell()
        if data[at : at + 16] != old:
            raise ValueError("a data block is not followed by the sync marker")
    return bytes(out)


def _read_long(buf: io.BytesIO) -> int:
    shift = result = 0
    while True:
        byte = buf.read(1)
        if not byte:
            raise ValueError("truncated Avro header")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return (result >> 1) ^ -(result & 1)
        shift += 7


def realdata_candidates(start: Path | None = None) -> list[Path]:
    """Where the real file may be beside a checkout: ``<repo>/../shared/realdata`` (the
    main checkout) and ``<repo>/../../shared/realdata`` (a worktree under ``wt/``)."""
    repo = (start or Path(__file__)).resolve().parents[3]
    return [
        repo / ".." / "shared" / "realdata" / "embraceplus" / REAL_FILE_NAME,
        repo / ".." / ".." / "shared" / "realdata" / "embraceplus" / REAL_FILE_NAME,
    ]


def default_template(path: str | os.PathLike[str] | None = None) -> AvroTemplate:
    """The real file from ``path``, ``$E4SYNC_EMBRACEPLUS_AVRO`` or beside a checkout;
    the synthetic stand-in when none of them is there (an installed e4sync)."""
    given = path or os.environ.get(REAL_FILE_ENV)
    if given:
        return AvroTemplate.load(given)
    for candidate in realdata_candidates():
        if candidate.is_file():
            return AvroTemplate.load(candidate)
    return AvroTemplate.synthetic()


# -- the schema, for the synthetic stand-in ---------------------------------------------------
# The real file's schema without its "doc" strings: the same Parsing Canonical Form (a test
# checks this against the real file).


def _ns(name: str) -> str:
    return f"empatica.format.avro.{name}"


def _record(name: str, fields: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {**extra, "type": "record", "name": _ns(name), "fields": fields}


def _field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {**extra, "name": name, "type": type_}


def _array(items: str) -> dict[str, str]:
    return {"type": "array", "items": items}


def _signal(name: str, items: str) -> dict[str, Any]:
    return _record(
        name,
        [
            _field("timestampStart", "long"),
            _field("samplingFrequency", "float"),
            _field("values", _array(items)),
        ],
        default=[],
    )


def session_schema() -> dict[str, Any]:
    """``empatica.format.avro.Session`` 6.3 as the real file declares it (docs left out)."""
    version = _record("Version", [_field(n, "int") for n in ("major", "minor", "patch")])
    enrollment = _record(
        "Enrollment",
        [_field(n, "string") for n in ("participantID", "siteID", "studyID", "organizationID")],
    )
    imu_params = _record(
        "ImuParams",
        [_field(n, "int") for n in ("physicalMin", "physicalMax", "digitalMin", "digitalMax")],
        default=[],
    )
    imu = _record(
        "InertialMeasurement",
        [
            _field("timestampStart", "long"),
            _field("samplingFrequency", "float"),
            _field("imuParams", imu_params),
            *(_field(axis, _array("int")) for axis in ("x", "y", "z")),
        ],
        default=[],
    )
    raw = _record(
        "RawData",
        [
            _field("accelerometer", imu),
            _field("gyroscope", _ns("InertialMeasurement")),
            _field("eda", _signal("Eda", "float")),
            _field("temperature", _signal("Temperature", "float")),
            _field("tags", _record("Tags", [_field("tagsTimeMicros", _array("long"))], default=[])),
            _field("bvp", _signal("Bvp", "float")),
            _field(
                "systolicPeaks",
                _record("SystolicPeaks", [_field("peaksTimeNanos", _array("long"))], default=[]),
            ),
            _field("steps", _signal("Steps", "int"), default={}),
        ],
    )
    model = {
        "default": "EMBRACEPLUS",
        "type": "enum",
        "name": _ns("DeviceModel"),
        "symbols": ["EMBRACEPLUS"],
    }
    return {
        "version": "6.3",
        **_record(
            "Session",
            [
                _field("schemaVersion", version),
                _field("fwVersion", _ns("Version")),
                _field("hwVersion", _ns("Version")),
                _field("algoVersion", _ns("Version")),
                _field("timezone", "int", default=0),
                _field("enrollment", enrollment),
                _field("deviceSn", "string", default=""),
                _field("deviceModel", model),
                _field("rawData", raw),
            ],
        ),
    }


def _synthetic_record(seed: int, seconds: int) -> dict[str, Any]:
    import math

    rng = random.Random(f"synthetic-{seed}")
    t0 = 1_694_798_477_000_000  # µs; shifted by render anyway
    n64 = 64 * seconds

    def walk(n: int, start: float, step: float, low: float, high: float) -> list[float]:
        out, value = [], start
        for _ in range(n):
            value = min(high, max(low, value + rng.uniform(-step, step)))
            out.append(value)
        return out

    acc = {
        "timestampStart": t0 + 11_000,
        "samplingFrequency": 64.0,
        "imuParams": {
            "physicalMin": -16,
            "physicalMax": 16,
            "digitalMin": -32768,
            "digitalMax": 32768,
        },
        "x": [int(v) for v in walk(n64, 260, 12, -4000, 4000)],
        "y": [int(v) for v in walk(n64, 450, 12, -4000, 4000)],
        "z": [int(v) for v in walk(n64, -1980, 12, -4000, 4000)],
    }
    gyro = {
        "timestampStart": 0,
        "samplingFrequency": 0.0,
        "imuParams": dict.fromkeys(("physicalMin", "physicalMax", "digitalMin", "digitalMax"), 0),
        "x": [],
        "y": [],
        "z": [],
    }
    bvp = [math.sin(i * 2 * math.pi * 1.2 / 64) * 40 + rng.gauss(0, 2) for i in range(n64)]
    peaks = [(t0 + int(i * 1e6 / 1.2)) * 1000 for i in range(int(seconds * 1.2))]
    return {
        "schemaVersion": {"major": 6, "minor": 3, "patch": 0},
        "fwVersion": {"major": 2, "minor": 3, "patch": 10},
        "hwVersion": {"major": 6, "minor": 0, "patch": 2},
        "algoVersion": {"major": 8, "minor": 8, "patch": 2},
        "timezone": 0,
        "enrollment": Enrollment("SYNTH").as_record(),
        "deviceSn": "3YK3SYNTH0",
        "deviceModel": "EMBRACEPLUS",
        "rawData": {
            "accelerometer": acc,
            "gyroscope": gyro,
            "eda": {
                "timestampStart": t0 + 250_000,
                "samplingFrequency": 4.0,
                "values": walk(4 * seconds, 0.3, 0.01, 0.0, 5.0),
            },
            "temperature": {
                "timestampStart": t0 + 1_000_000,
                "samplingFrequency": 1.0,
                "values": walk(seconds, 31.0, 0.05, 25.0, 37.0),
            },
            "tags": {"tagsTimeMicros": []},
            "bvp": {"timestampStart": t0 + 4_000, "samplingFrequency": 64.0, "values": bvp},
            "systolicPeaks": {"peaksTimeNanos": peaks},
            "steps": {
                "timestampStart": t0 + 5_000_000,
                "samplingFrequency": 0.2,
                "values": [rng.choice((0, 0, 0, 4, 9)) for _ in range(seconds // 5)],
            },
        },
    }


# -- per-minute biomarker CSVs ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    """A per-minute biomarker: its file-name part, its value column and the values' range
    (``decimals`` 0: integers; ``categories``: one of these strings instead)."""

    name: str
    column: str
    low: float = 0.0
    high: float = 1.0
    decimals: int = 4
    categories: tuple[str, ...] = ()


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("eda", "eda_scl_usiemens", 0.02, 3.0, 6),
        Metric("pulse-rate", "pulse_rate_bpm", 52, 118, 0),
        Metric("temperature", "temperature_celsius", 29.0, 35.5, 2),
        Metric("step-counts", "step_counts", 0, 120, 0),
        Metric("respiratory-rate", "respiratory_rate_brpm", 11, 22, 1),
        Metric("prv", "prv_rmssd_ms", 15, 95, 2),
        Metric("accelerometers-std", "accelerometers_std_g", 0.0, 0.4, 6),
        Metric("wearing-detection", "wearing_detection_percentage", 0, 100, 0),
        Metric("met", "met", 0.9, 6.0, 2),
        Metric("activity-counts", "activity_counts", 0, 900, 0),
        Metric("sleep-detection", "sleep_detection_stage", categories=("0", "101", "102")),
        Metric(
            "body-position",
            "body_position_left",
            categories=("sitting_reclining_lying", "standing"),
        ),
    )
}


def metric(name: str) -> Metric:
    """The known metric ``name``, or one whose column is the name with ``-`` as ``_``."""
    return METRICS.get(name) or Metric(name, name.replace("-", "_"))


def day_start(day: dt.date) -> int:
    """The unix second ``day`` begins (UTC)."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def minute_csv(
    enrollment: Enrollment,
    day: dt.date,
    metric_name: str,
    minutes: int | None = None,
    seed: int = 0,
) -> str:
    """The CSV of ``day`` (UTC) for ``metric_name``: a header and one row for each of the
    first ``minutes`` minutes (the whole day, 1440, by default). Rows are drawn in order
    from ``seed``, the participant, the day and the metric, so a day that fills up keeps
    its earlier rows. Some stretches are missing: an empty value and a reason."""
    m = metric(metric_name)
    count = 1440 if minutes is None else max(0, min(1440, minutes))
    rng = random.Random(f"csv\x1f{seed}\x1f{enrollment.full_id}\x1f{day}\x1f{m.name}")
    start_ms = day_start(day) * 1000
    iso_day = day.isoformat()
    full_id = enrollment.full_id
    lines = [",".join((*CSV_COLUMNS, m.column, "missing_value_reason"))]
    value = rng.uniform(m.low, m.high)
    gap = 0
    reason = ""
    for minute in range(count):
        if gap == 0 and rng.random() < 0.0015:
            gap, reason = rng.randint(5, 120), rng.choice(MISSING_REASONS)
        stamp = f"{start_ms + minute * 60_000},{iso_day}T{minute // 60:02d}:{minute % 60:02d}:00Z"
        if gap:
            gap -= 1
            lines.append(f"{stamp},{full_id},,{reason}")
            continue
        if m.categories:
            text = rng.choice(m.categories)
        else:
            span = m.high - m.low
            value = min(m.high, max(m.low, value + rng.uniform(-span, span) * 0.05))
            text = str(round(value)) if m.decimals == 0 else f"{value:.{m.decimals}f}"
        lines.append(f"{stamp},{full_id},{text},")
    return "\n".join(lines) + "\n"
