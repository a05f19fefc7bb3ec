"""e4sync.sources.e4connect.items: an E4 Connect session as a generic ``Item``.

Owns: coercing the platform's all-string listing rows (ids that must be numbers, start
times that may be junk, duplicates, over-long values), the metadata digest that is an E4
item's version (a change in any listed field that defines a session blocks its remote
deletion, SPEC section 6), the layout fields a session offers, and the columns
``e4sync sessions`` shows of it.

Imports only the standard library, ``e4sync.sources`` and this package's ``layout``.
Must not import: e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli, requests.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from e4sync.sources import Item
from e4sync.sources.e4connect.layout import layout_fields

log = logging.getLogger("e4sync.source")

# The listed fields that define a session's identity and content; a change in any of
# them since the download blocks a remote deletion (SPEC section 6).
METADATA_FIELDS = (
    "id",
    "start_time",
    "duration",
    "device_id",
    "label",
    "device",
    "status",
    "exit_code",
)
# What `e4sync sessions` shows of a session: the listed fields, with the core's `start`
# (its start time as ISO 8601) and `local_state` (from the state database).
LISTING_COLUMNS = (
    "id",
    "start_time",
    "start",
    "duration",
    "device_id",
    "label",
    "device",
    "status",
    "exit_code",
    "local_state",
)
MAX_START_TIME = 253402300799  # 9999-12-31T23:59:59Z: beyond it no datetime, no database int
MAX_FIELD_CHARS = 500  # a listed value longer than this is cut: the platform never sends one


def metadata_hash(raw: Mapping[str, Any]) -> str:
    """An E4 item's version: a digest of the listed fields that define the session."""
    picked = {k: _text(raw.get(k)) for k in METADATA_FIELDS}
    blob = json.dumps(picked, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)[:MAX_FIELD_CHARS]


def _number(value: Any, kind: type) -> int | float | None:
    try:
        number = float(_text(value))
    except ValueError:
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return kind(number)


def parse_item(row: Any) -> Item | None:
    """Coerce one listed row; None (with a warning) for a row that cannot be a session,
    such as one whose id is not a number and so could never be put in a URL safely."""
    if not isinstance(row, dict):
        log.warning("ignoring a listed session that is not an object: %.80r", row)
        return None
    session_id = _text(row.get("id")).strip()
    if not session_id.isdigit() or not session_id.isascii() or len(session_id) > 20:
        log.warning(
            "ignoring a listed session with an id that is not a number: %.80r", row.get("id")
        )
        return None
    start = _number(row.get("start_time"), int)
    if start is None or not 0 <= start <= MAX_START_TIME:
        log.warning(
            "session %s: start_time %.40r is not a time; its CSV times are not checked",
            session_id,
            row.get("start_time"),
        )
        start = 0
    duration = _number(row.get("duration"), float) or 0.0
    clean = {str(k)[:100]: _text(v) for k, v in row.items()}
    return Item(
        id=session_id,
        recorded_at=int(start),
        version=metadata_hash(clean),
        suffix=".zip",
        duration=float(duration),
        kind="session",
        fields=session_fields(clean, session_id, int(start), float(duration)),
        raw=clean,
    )


def session_fields(raw: Mapping[str, str], session_id: str, start: int, duration: float) -> dict:
    """The layout placeholders a session offers (SPEC section 4), but ``account`` and
    ``user_id``, which the pass adds: it knows the account and who logged in."""
    fields = layout_fields(
        account="",
        user_id="",
        session_id=session_id,
        device_id=raw.get("device_id", ""),
        label=raw.get("label", ""),
        device=raw.get("device", ""),
        start_time=start,
        duration=duration,
    )
    del fields["account"], fields["user_id"]
    return fields


def item_from_raw(raw: Mapping[str, Any] | None) -> Item | None:
    """The item a sidecar or a state row kept as raw metadata (adoption, reindex)."""
    if not isinstance(raw, Mapping):
        return None
    return parse_item(dict(raw))


def parse_listing(rows: list[Any]) -> list[Item]:
    """Every usable row once: the platform's list is neither sorted nor duplicate-free."""
    items: dict[str, Item] = {}
    for row in rows:
        item = parse_item(row)
        if item is None:
            continue
        if item.id in items:
            if items[item.id].version != item.version:
                log.warning(
                    "session %s is listed twice with different metadata; keeping the first", item.id
                )
            continue
        items[item.id] = item
    return list(items.values())
