"""e4sync.sources.embraceplus.keys: an S3 object of Empatica's delivery as a generic ``Item``.

Owns: reading a key below the account's prefix (SPEC section 9, embraceplus-s3.md section 1)
into what it says. Below ``participant_data/<YYYY-MM-DD>/<participant>-<serial>/``:
a raw recording ``raw_data/v6/<study>-<site>-<participant>_<unix_s>.avro`` (kind ``raw``),
a per-minute biomarker CSV
``digital_biomarkers/aggregated_per_minute/<...>_<YYYY-MM-DD>_<metric>.csv`` (kind
``biomarker``); anything else (kind ``other``, mirrored as it is). A participant id may
hold ``-``: the folder splits on the last one. Also the item made of one listed object
(id = the full key, version = ETag and size, the recorded time from the name or the day
folder, the layout fields), rebuilt from the raw metadata a sidecar kept
(``item_from_raw``), the rule for a key a person gives (``check_id``), the day folders a
listing covers, and whether an ETag is a plain MD5.

Standard library and ``e4sync.sources`` only: a kind is looked up cheaply.
Must not import: e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli, boto3, botocore.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import PurePosixPath
from typing import Any

from e4sync.sources import Item

RAW = "raw"
BIOMARKER = "biomarker"
OTHER = "other"

DAYS = "participant_data/"  # the day folders, below the prefix
MAX_KEY_BYTES = 1024  # S3's own limit
_DAY = r"\d{4}-\d{2}-\d{2}"
_DAY_FOLDER = re.compile(rf"participant_data/({_DAY})/")
_PERSON_FOLDER = re.compile(rf"participant_data/({_DAY})/([^/]+)/")
_RAW_NAME = re.compile(r"raw_data/v\d+/([^/]+)_(\d{1,12})\.avro")
_CSV_NAME = re.compile(rf"digital_biomarkers/aggregated_per_minute/([^/]+)_({_DAY})_([^/]+)\.csv")
_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,16}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class KeyInfo:
    """What a key below the prefix says of itself."""

    rel: str  # the key below the prefix
    kind: str  # raw, biomarker, other
    day: date | None = None  # the day folder: the UTC day the data was recorded
    participant: str = ""
    serial: str = ""
    unix_s: int | None = None  # a raw file's start, from its name
    metric: str = ""  # a biomarker CSV's
    name_day: date | None = None  # the day a biomarker CSV's name says

    @property
    def file(self) -> str:
        return self.rel.rsplit("/", 1)[-1]


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def parse_key(rel: str) -> KeyInfo:
    """What the key ``rel`` (below the prefix) is. Never raises: a key that is not one of
    the delivery's is kind ``other``, with whatever folders it does have."""
    match = _PERSON_FOLDER.match(rel)
    if match is None:
        folder = _DAY_FOLDER.match(rel)
        return KeyInfo(rel, OTHER, day=_day(folder.group(1)) if folder else None)
    day = _day(match.group(1))
    folder = match.group(2)
    participant, dash, serial = folder.rpartition("-")
    if not dash or not participant or not serial:
        participant, serial = folder, ""
    rest = rel[match.end() :]
    common = dict(day=day, participant=participant, serial=serial)
    raw = _RAW_NAME.fullmatch(rest)
    if raw is not None and day is not None:
        return KeyInfo(rel, RAW, unix_s=int(raw.group(2)), **common)
    csv = _CSV_NAME.fullmatch(rest)
    if csv is not None and day is not None:
        return KeyInfo(rel, BIOMARKER, metric=csv.group(3), name_day=_day(csv.group(2)), **common)
    return KeyInfo(rel, OTHER, **common)


def is_plain_md5(etag: str | None) -> bool:
    """Whether an ETag is the object's MD5: 32 hex digits, no ``-`` (a multipart upload's
    ends ``-<parts>``; SSE-KMS and SSE-C objects have others, embraceplus-s3.md section 4)."""
    return bool(etag) and _MD5_ETAG.fullmatch(etag) is not None  # type: ignore[arg-type]


def plain_md5(etag: str | None) -> str | None:
    """The MD5 an ETag is, in lower case; None when it is not one."""
    match = _MD5_ETAG.fullmatch(etag or "")
    return match.group(1).lower() if match else None


def suffix_of(key: str) -> str:
    """A key's file extension (``.avro``), "" when its name has none."""
    name = key.rsplit("/", 1)[-1]
    cut = name.rfind(".")
    if cut <= 0 or not _SUFFIX.fullmatch(name, cut):
        return ""
    return name[cut:]


def key_problem(key: str, prefix: str = "") -> str | None:
    """Why ``key`` cannot be an item of the delivery under ``prefix``; None when it can:
    a key of at most 1024 bytes, not a folder marker, with no control characters and no
    ``.``/``..`` folder (an archive path is safe anyway; such a key is no delivery's)."""
    if not isinstance(key, str) or not key:
        return "an S3 key must not be empty"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"an S3 key is at most {MAX_KEY_BYTES} bytes"
    if _CONTROL.search(key):
        return "an S3 key must not hold control characters"
    if prefix and (not key.startswith(prefix) or key == prefix):
        return f"the key is not below the account's prefix {prefix!r}"
    if key.startswith("/") or key.endswith("/"):
        return "an S3 key of a file neither starts nor ends with '/'"
    if any(part in ("", ".", "..") for part in key.split("/")):
        return "an S3 key must not hold '//', '.' or '..' folders"
    return None


def day_start(day: date) -> int:
    """The unix second a UTC day begins."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def make_item(
    prefix: str,
    key: str,
    etag: str,
    size: int,
    last_modified: str,
    checksum_algorithm: list[str] | None = None,
    storage_class: str | None = None,
) -> Item:
    """The item of one listed object. Its ``raw`` is what the listing said (and the
    prefix the key was listed under, so that the item can be rebuilt from it alone)."""
    info = parse_key(key[len(prefix) :])
    raw = Listed(
        key,
        prefix,
        info.kind,
        etag,
        int(size),
        last_modified,
        _shared(list(checksum_algorithm)) if checksum_algorithm else None,
        _shared(storage_class) if storage_class else None,
    )
    return _item(info, raw, len(prefix))


class Listed(Mapping[str, Any]):
    """What the listing said of one object (an item's ``raw``): ``key``, ``prefix``,
    ``kind``, ``etag``, ``size``, ``last_modified``, and ``checksum_algorithm`` and
    ``storage_class`` when S3 sent them; read-only. A mapping in slots, not a dict: a pass
    over 100,000 listed objects holds one each (about 100 bytes, against 340 for a dict
    of these keys). ``dict(listed)`` is what goes into JSON."""

    __slots__ = (
        "checksum_algorithm",
        "etag",
        "key",
        "kind",
        "last_modified",
        "prefix",
        "size",
        "storage_class",
    )
    _ORDER = ("key", "prefix", "kind", "etag", "size", "last_modified")
    _OPTIONAL = ("checksum_algorithm", "storage_class")

    def __init__(
        self,
        key: str,
        prefix: str,
        kind: str,
        etag: str,
        size: int,
        last_modified: str,
        checksum_algorithm: list[str] | None = None,
        storage_class: str | None = None,
    ):
        self.key, self.prefix, self.kind, self.etag = key, prefix, kind, etag
        self.size, self.last_modified = size, last_modified
        self.checksum_algorithm, self.storage_class = checksum_algorithm, storage_class

    def __getitem__(self, name: str) -> Any:
        if name in self._ORDER or (name in self._OPTIONAL and getattr(self, name) is not None):
            return getattr(self, name)
        raise KeyError(name)

    def __iter__(self) -> Any:
        yield from self._ORDER
        yield from (name for name in self._OPTIONAL if getattr(self, name) is not None)

    def __len__(self) -> int:
        return len(self._ORDER) + sum(getattr(self, n) is not None for n in self._OPTIONAL)

    def __repr__(self) -> str:
        return f"Listed({dict(self)!r})"


def _item(info: KeyInfo, raw: Mapping[str, Any], below: int) -> Item:
    if info.unix_s is not None:
        recorded = info.unix_s
    elif info.day is not None:
        recorded = day_start(info.day)
    else:
        recorded = 0
    return Item(
        id=raw["key"],
        recorded_at=recorded,
        version=f"{raw['etag']}:{raw['size']}",
        size=raw["size"],
        suffix=_shared(suffix_of(raw["key"])),
        kind=info.kind,
        fields=LayoutFields(raw["key"], below),
        raw=raw,
    )


# One object for the few values every listed object repeats (a storage class, a checksum
# name, a suffix): a listing of 100,000 objects holds each once, not 100,000 times.
_SHARED: dict[Any, Any] = {}


def _shared(value: Any) -> Any:
    key = tuple(value) if isinstance(value, list) else value
    if len(_SHARED) > 1000:  # only a hostile bucket has that many kinds of value
        return value
    return _SHARED.setdefault(key, value)


class LayoutFields(Mapping[str, Any]):
    """An object's layout placeholders (``layout_fields``), worked out from its key the
    first time a layout asks: a pass holds an item per listed object, and only the few it
    downloads are placed, so a listing of 100,000 objects keeps 100,000 of these (two
    references each), not as many dicts of parsed folders and paths."""

    __slots__ = ("_below", "_fields", "_key")

    def __init__(self, key: str, below: int):
        self._key = key
        self._below = below  # where the key below the prefix begins
        self._fields: dict[str, Any] | None = None

    def _all(self) -> dict[str, Any]:
        if self._fields is None:
            self._fields = layout_fields(parse_key(self._key[self._below :]))
        return self._fields

    def __getitem__(self, name: str) -> Any:
        return self._all()[name]

    def __iter__(self) -> Any:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"LayoutFields({self._all()!r})"


def layout_fields(info: KeyInfo) -> dict[str, Any]:
    """The layout placeholders an object offers (``settings.PLACEHOLDERS`` but ``account``,
    which the pass adds): ``key`` a path (its folders are kept), ``date`` the day folder
    (a ``date``; None, "unknown", outside one)."""
    return {
        "key": PurePosixPath(info.rel),
        "participant": info.participant,
        "serial": info.serial,
        "date": info.day,
        "kind": info.kind,
        "metric": info.metric,
        "file": info.file,
    }


def item_from_raw(raw: Mapping[str, Any] | None) -> Item | None:
    """The item a sidecar or a state row kept as raw metadata (adoption, reindex)."""
    if not isinstance(raw, Mapping):
        return None
    key, prefix, etag, size = (raw.get(k) for k in ("key", "prefix", "etag", "size"))
    if not isinstance(key, str) or not isinstance(prefix, str) or not isinstance(etag, str):
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return None
    if key_problem(key, prefix) is not None:
        return None
    info = parse_key(key[len(prefix) :])
    return _item(info, {**raw, "kind": info.kind}, len(prefix))


def day_folders_from(prefix: str, first: date) -> tuple[str, str]:
    """What a listing of the day folders from ``first`` on asks S3 for: the prefix of
    every day folder, and the key to start after (every key in ``first``'s folder or a
    later one sorts after it, as S3 sorts keys: by their UTF-8 bytes)."""
    days = prefix + DAYS
    return days, days + first.isoformat()


def check_id(key: str) -> str:
    """An S3 key as a person gives it (``download``, ``retry``): the whole key, as
    ``e4sync sessions`` lists it. UsageError naming what is wrong."""
    from e4sync.errors import UsageError

    text = str(key)
    problem = key_problem(text)
    if problem is not None:
        raise UsageError(f"{problem}, got {text[:80]!r}")
    return text
