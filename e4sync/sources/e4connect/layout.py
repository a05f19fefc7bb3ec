"""e4sync.sources.e4connect.layout: the layout fields an E4 Connect session offers (SPEC
section 4 "Layout placeholders").

Owns: ``layout_fields``, the values of the placeholders ``settings.PLACEHOLDERS`` names for
one session, coerced from whatever the platform sent (ints, floats, None, hostile text):
the text fields as text (``2588.0`` -> ``"2588"``), ``device_serial`` derived from the label
(:func:`device_serial`), ``start_time`` as whole unix seconds (or its text, when it is not
a number), ``start`` as an aware UTC datetime (None beyond the calendar: rendered
``unknown``), ``duration`` as seconds (or its text). The archive makes every value safe
for a path and formats ``start`` in ``archive.timezone``. Also ``EXAMPLE_FIELDS`` (a real
session's, the types a layout's format specs are checked against) and ``SUFFIX``, the
extension every E4 file has.

Standard library only, so that the configuration can check a layout cheaply.

Must not import: e4sync.archive, e4sync.config, e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

__all__ = ["EXAMPLE_FIELDS", "SUFFIX", "device_serial", "layout_fields"]

SUFFIX = ".zip"
UNKNOWN = "unknown"

_INT_TEXT = re.compile(r"[+-]?[0-9]{1,30}")
_FLOAT_TEXT = re.compile(
    r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,3})?"
)
_LABEL_TEXT = re.compile(r"([0-9]{1,12})(?:\.0*)?")


def device_serial(label: Any) -> str:
    """Return the serial printed on the wristband: ``"A"`` + the label as 5 uppercase hex
    digits (``2588`` -> ``"A00A1C"``), or ``"unknown"`` when the label is empty or not a
    whole number."""
    match = _LABEL_TEXT.fullmatch(_text(label).strip())
    if match is None:
        return UNKNOWN
    return f"A{int(match.group(1)):05X}"


def layout_fields(
    account: Any,
    user_id: Any,
    session_id: Any,
    device_id: Any,
    label: Any,
    device: Any,
    start_time: Any,
    duration: Any,
) -> dict[str, Any]:
    """The layout fields of one E4 Connect session, keyed in ``settings.PLACEHOLDERS``'s
    order. Never raises: a value that is not what it should be becomes text."""
    start = _number(start_time)
    when = None
    if start is not None:
        try:
            when = datetime.fromtimestamp(int(start), UTC)
        except (OverflowError, OSError, ValueError):
            pass  # beyond the calendar: rendered as "unknown"
    length = _number(duration)
    return {
        "account": _text(account),
        "user_id": _text(user_id),
        "session_id": _text(session_id),
        "device_id": _text(device_id),
        "device_serial": device_serial(label),
        "label": _text(label),
        "device": _text(device),
        "start_time": int(start) if start is not None else _text(start_time),
        "start": when,
        "duration": float(length) if length is not None else _text(duration),
        "participant": "",  # the pass fills it in from the [participants] file
    }


def _text(value: Any) -> str:
    """A platform value as text: None -> "", 2588.0 -> "2588"."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return str(value)
    except Exception:  # an int past Python's 4300-digit limit, an odd object
        return UNKNOWN


def _number(value: Any) -> int | float | None:
    """A platform number from an int, a float or their text; None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) < 10**30 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    text = _text(value).strip()
    if _INT_TEXT.fullmatch(text):
        return int(text)
    if _FLOAT_TEXT.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else None
    return None


# A real row from E4 Connect (session 578634 on wristband A00A1C): what each placeholder's
# value looks like, so that ``{session_id:d}`` (text) is refused and ``{start_time:012d}``
# (a number) is not.
EXAMPLE_FIELDS = layout_fields(
    account="lab",
    user_id="25383",
    session_id="578634",
    device_id="c004bc",
    label="2588",
    device="E4 2.2",
    start_time=1541950248,
    duration=70847.0,
)
