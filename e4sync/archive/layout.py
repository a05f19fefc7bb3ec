"""e4sync.archive.layout: where a file goes, and every name derived from it (SPEC section 4
"Layout placeholders").

Owns: turning the ``[archive] layout`` template and an item's fields into a safe relative
path (whatever a platform sends as a value, the path stays inside the root: separators,
``..``, control and invisible characters, reserved Windows names and over-long values are
made harmless, and no value adds or removes a folder, but a path value, such as an S3 key
below its prefix, whose folders are kept, each made safe alike); checking a template against the
placeholders a source kind offers (``validate_layout``); and the names derived from a data
file ``X<suffix>``: its partial file ``X<suffix>.part``, its sidecar ``X.json`` (or
``<name>.json`` when the file has no suffix or is itself ``.json``), the collision names
``X_<item id>_<n><suffix>`` and the kept-aside names ``X.<reason>-<UTC time><suffix>``, each
capped so that it and the names derived from it fit NAME_MAX.

Placeholders come from the item, not from a fixed list: a source kind names the ones it
offers, with an example value of each so that a format spec can be checked against its
type (``{start_time:012d}`` needs a number). A ``datetime`` value is formatted in
``archive.timezone`` with strftime codes (a plain ``date``, which has no zone, as it is:
``2025-02-18`` without a spec); ``None`` (a value the source does not have) renders as
``unknown``. Standard library only.

Must not import: e4sync.archive.store, e4sync.sources, e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
import string
import unicodedata
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from pathlib import PurePath, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DEFAULT_DATETIME_FORMAT",
    "DEFAULT_DATE_FORMAT",
    "MAX_COLLISIONS",
    "MAX_COMPONENT_BYTES",
    "PART",
    "SIDECAR",
    "STAGED",
    "UNKNOWN",
    "as_text",
    "aside_names",
    "collision_names",
    "part_name",
    "render_relpath",
    "sidecar_name",
    "suffix_of",
    "validate_layout",
    "validate_timezone",
]

# A datetime placeholder without a format: sortable, and free of ":" so it is valid on every
# filesystem.
DEFAULT_DATETIME_FORMAT = "%Y-%m-%dT%H-%M-%S"
DEFAULT_DATE_FORMAT = "%Y-%m-%d"  # a plain date (a day folder's): no time to show
UNKNOWN = "unknown"

PART = ".part"  # X<suffix>.part: a download not yet committed
SIDECAR = ".json"  # X.json: the sidecar of X<suffix>
STAGED = ".tmp"  # X.json.tmp: a sidecar written, not yet named

MAX_VALUE_CHARS = 100  # one placeholder's value, after formatting
MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux, macOS and Windows (in UTF-16 units there)
# A rendered file name leaves room for a collision suffix ("_<item id>_<n>").
MAX_RENDERED_STEM_BYTES = 200
MAX_SUFFIX_ID_CHARS = 40
MAX_COLLISIONS = 1000
MAX_SPEC_CHARS = 64
MAX_SPEC_NUMBER = 255  # widths and precisions: a huge width would allocate gigabytes

# Separators, and what Windows, SMB shares and macOS Finder refuse or misread.
_UNSAFE_CHARS = frozenset('/\\<>:"|?*')
# Control, format (bidi overrides, zero-width), lone surrogates, line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_EDGE_JUNK = re.compile(r"^[\s.]+|[\s.]+$")
_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "nul", "conin$", "conout$"]
    + [f"{p}{n}" for p in ("com", "lpt") for n in [*"123456789", "¹", "²", "³"]]
)
# What counts as a file's suffix: a short run of ASCII letters and digits after the last dot
# (".zip", ".avro", ".gz"); ".replaced-20240101T000000Z" is not one.
_SUFFIX_TEXT = re.compile(r"\.[A-Za-z0-9]{1,16}")
_NUMBER = re.compile(r"[0-9]+")
_NO_EXAMPLE = object()


# -- names derived from a data file --------------------------------------------------------


def suffix_of(name: str) -> str:
    """The suffix of a file name: ``".zip"`` for ``"X.zip"``; ``""`` for ``"README"``,
    ``".hidden"`` or ``"X.replaced-20240101T000000Z"``."""
    cut = name.rfind(".")
    if cut <= 0 or not _SUFFIX_TEXT.fullmatch(name, cut):
        return ""
    return name[cut:]


def sidecar_name(name: str) -> str:
    """The sidecar's name for the data file ``name``: ``X.json`` for ``X<suffix>``
    (``X.zip`` -> ``X.json``); ``<name>.json`` when the file has no suffix or is itself
    JSON (``README`` -> ``README.json``, ``notes.json`` -> ``notes.json.json``), so that a
    sidecar never takes its own file's name."""
    ext = suffix_of(name)
    if not ext or ext.lower() == SIDECAR:
        return name + SIDECAR
    return name[: -len(ext)] + SIDECAR


def part_name(name: str) -> str:
    """The name a download of ``name`` is written under: ``X<suffix>.part``."""
    return name + PART


def collision_names(rel: PurePosixPath, item_id: str) -> Iterator[PurePosixPath]:
    """``rel``, then ``<stem>_<item id><suffix>``, ``<stem>_<item id>_2<suffix>``, ... (the
    id made safe and capped at 40 characters; the stem cut so that each name and the
    names derived from it fit NAME_MAX): where two items would land on one path, the later
    one takes the first of these that is free."""
    yield rel
    name = rel.name
    ext = suffix_of(name)
    stem = name[: len(name) - len(ext)]
    sid = _safe_value(item_id)
    if len(sid) > MAX_SUFFIX_ID_CHARS:
        sid = sid[: MAX_SUFFIX_ID_CHARS - 9] + "~" + hashlib.sha256(sid.encode()).hexdigest()[:8]
    budget = MAX_COMPONENT_BYTES - _derived_overhead(ext)
    for n in range(1, MAX_COLLISIONS):
        tail = f"_{sid}" + ("" if n == 1 else f"_{n}")
        room = budget - len((tail + ext).encode("utf-8"))
        yield rel.with_name(truncate_bytes(stem, room) + tail + ext)


def aside_names(rel: PurePosixPath, reason: str, stamp: str) -> Iterator[PurePosixPath]:
    """The names a copy at ``rel`` may be kept aside under, in order:
    ``<stem>.<reason>-<stamp><suffix>``, then ``...-<stamp>-2<suffix>``, ... (the tail's
    ``-`` keeps it from being taken for a suffix, so such a name's sidecar is never
    ``rel``'s)."""
    name = rel.name
    ext = suffix_of(name)
    stem = name[: len(name) - len(ext)]
    budget = MAX_COMPONENT_BYTES - _derived_overhead(ext)
    for n in range(1, MAX_COLLISIONS):
        tail = f".{reason}-{stamp}" + ("" if n == 1 else f"-{n}") + ext
        yield rel.with_name(truncate_bytes(stem, budget - len(tail.encode())) + tail)


def _derived_overhead(ext: str) -> int:
    """How many bytes the longest name derived from ``X<ext>`` adds to it: ``X<ext>.part``
    or the staged sidecar ``X.json.tmp`` (5 for ``.zip``, 9 with no suffix)."""
    sample = "x" + ext
    return max(len(PART), len(sidecar_name(sample)) + len(STAGED) - len(sample))


# -- rendering ------------------------------------------------------------------------------


def validate_layout(
    layout: str,
    placeholders: Mapping[str, Any] | Collection[str],
    timezone: str = "UTC",
    *,
    suffix: str = "",
) -> None:
    """Raise ``ValueError`` with a message a person can act on if ``layout`` (or
    ``timezone``) cannot be used: an unknown placeholder (with a did-you-mean), a bad format
    spec, an absolute path, a ``..``, an empty layout, or one whose file name does not end
    in ``suffix`` (when one is given). A layout that passes renders for any field values.

    ``placeholders`` are the names a source kind offers; given as a mapping, each name's
    value is an example of its type, against which format specs are checked (a ``date`` or
    ``datetime`` takes strftime codes). A name without an example takes any spec, and a
    value the spec does not suit renders as plain text."""
    names, examples = _placeholders(placeholders)
    _parse(layout, names, examples, suffix)
    _zone(timezone)
    samples: list[Mapping[str, Any]] = [dict(examples)] if examples else []
    samples += [dict.fromkeys(names), dict.fromkeys(names, "")]
    for fields in samples:
        render_relpath(layout, fields, timezone, placeholders=placeholders, suffix=suffix)


def render_relpath(
    layout: str,
    fields: Mapping[str, Any],
    timezone: str = "UTC",
    *,
    placeholders: Mapping[str, Any] | Collection[str] | None = None,
    suffix: str = "",
) -> PurePosixPath:
    """Render ``layout`` with an item's ``fields`` into a relative, normalised path that
    cannot leave the archive root. A ``datetime`` value is converted to ``timezone`` (an
    IANA name; a naive one is taken as UTC) and formatted with strftime codes
    (``{start:%Y}``); ``None`` renders as ``unknown``. Every value is made safe: no
    separators, no ``..``, no control characters, no leading dots or spaces, capped at 100
    characters; an empty value becomes ``_``. A ``PurePath`` value (an S3 key below its
    prefix) keeps its folders: each of its parts is made safe so, and a root or a ``..``
    among them never leaves the place the layout puts it.

    The layout may name the fields' keys, or ``placeholders`` (checked as
    :func:`validate_layout` does, with ``suffix``) when given. Raise ``ValueError`` only for
    a bad layout or time zone."""
    if placeholders is None:
        # The item's own values are not examples of their types: a hostile one must render.
        names, examples = tuple(fields), None
    else:
        names, examples = _placeholders(placeholders)
    pieces = _parse(layout, names, examples, suffix)
    zone = _zone(timezone)
    text = "".join(
        piece.literal + ("" if piece.name is None else _render_value(piece, fields, zone))
        for piece in pieces
    )
    parts = [part for part in text.split("/") if part not in ("", ".")]
    last = len(parts) - 1
    return PurePosixPath(
        *(_safe_component(part, is_file=i == last) for i, part in enumerate(parts))
    )


def validate_timezone(timezone: str) -> None:
    """Raise ``ValueError`` if ``timezone`` is not a known IANA zone name."""
    _zone(timezone)


def as_text(value: Any) -> str:
    """A platform value as text: None -> "", 2588.0 -> "2588"."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return str(value)
    except Exception:  # an int past Python's 4300-digit limit, an odd object
        return UNKNOWN


def truncate_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


def quoted(text: str) -> str:
    """``text`` quoted for a message, cut after 80 characters."""
    return repr(text if len(text) <= 80 else text[:80] + "...")


# -- layout parsing -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    literal: str
    name: str | None
    spec: str


def _placeholders(
    placeholders: Mapping[str, Any] | Collection[str],
) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...] | None]:
    """The names and, when given as a mapping, the examples, in a hashable form."""
    if isinstance(placeholders, str):
        raise TypeError("placeholders must be a collection of names, not one string")
    if isinstance(placeholders, Mapping):
        return tuple(placeholders), tuple(placeholders.items())
    return tuple(placeholders), None


def _parse(
    layout: str,
    names: tuple[str, ...],
    examples: tuple[tuple[str, Any], ...] | None,
    suffix: str,
) -> tuple[_Piece, ...]:
    """Check ``layout`` and split it into literal text and placeholders."""
    if not isinstance(layout, str):
        raise ValueError(f"the layout must be text, not {type(layout).__name__}")
    try:
        return _parse_text(layout, names, examples, suffix)
    except TypeError:  # an example that cannot be hashed: checked without the cache
        return _parse_text.__wrapped__(layout, names, examples, suffix)


@functools.lru_cache(maxsize=64)
def _parse_text(
    layout: str,
    names: tuple[str, ...],
    examples: tuple[tuple[str, Any], ...] | None,
    suffix: str,
) -> tuple[_Piece, ...]:
    if not layout.strip():
        raise ValueError("the layout is empty; it must name at least a file")
    where = f"layout {quoted(layout)}"
    try:
        parsed = list(string.Formatter().parse(layout))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc} (write {{{{ and }}}} for literal braces)") from None
    known = dict(examples) if examples is not None else {}
    pieces: list[_Piece] = []
    skeleton = []
    for literal, name, spec, conversion in parsed:
        _check_literal(literal, where)
        skeleton.append(literal)
        if name is None:
            pieces.append(_Piece(literal, None, ""))
            continue
        _check_placeholder(name, spec or "", conversion, names, where)
        _check_spec(name, spec or "", known.get(name, _NO_EXAMPLE), where)
        pieces.append(_Piece(literal, name, spec or ""))
        skeleton.append("\0")  # stands for a value: never a separator, never empty
    _check_structure("".join(skeleton), suffix, where)
    return tuple(pieces)


def _check_literal(literal: str, where: str) -> None:
    for ch in literal:
        if ch == "\\":
            raise ValueError(f"{where}: use / to separate folders, not \\")
        if ch in _UNSAFE_CHARS and ch != "/":
            raise ValueError(f"{where}: the character {ch!r} is not allowed in file names")
        if unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            raise ValueError(f"{where}: control or invisible character {ch!r} in the layout")


def _check_placeholder(
    name: str, spec: str, conversion: str | None, names: tuple[str, ...], where: str
) -> None:
    if name not in names:
        hint = difflib.get_close_matches(name.strip().lower(), names, n=1)
        shown = "{" + name + "}" if name else "{}"
        raise ValueError(
            f"{where}: unknown placeholder {shown}"
            + (f"; did you mean {{{hint[0]}}}?" if hint else "")
            + f" Known: {', '.join(names)}"
        )
    if conversion is not None:
        raise ValueError(
            f"{where}: {{{name}!{conversion}}}: conversions (!r, !s, !a) are not supported"
        )
    if "{" in spec or "}" in spec:
        raise ValueError(
            f"{where}: {{{name}}}: nested placeholders in a format spec are not supported"
        )
    if len(spec) > MAX_SPEC_CHARS:
        raise ValueError(f"{where}: {{{name}}}: the format spec is longer than {MAX_SPEC_CHARS}")


def _check_spec(name: str, spec: str, example: Any, where: str) -> None:
    """Check a format spec against the example of its placeholder's type, if there is one."""
    if isinstance(example, date):
        try:
            text = example.strftime(spec or _default_format(example))
        except (ValueError, UnicodeError) as exc:
            raise ValueError(f"{where}: {{{name}:{spec}}}: bad strftime format: {exc}") from None
        if "/" in text or "\\" in text:
            raise ValueError(
                f"{where}: {{{name}:{spec}}} makes a value with a path separator; put / "
                f"between placeholders instead, e.g. {{{name}:%Y}}/{{{name}:%m}}"
            )
        return
    if example is _NO_EXAMPLE:
        return  # any spec: a value it does not suit renders as text (see _render_piece)
    if _too_wide(spec):
        raise ValueError(
            f"{where}: {{{name}:{spec}}}: widths and precisions above {MAX_SPEC_NUMBER} "
            "are not allowed"
        )
    try:
        format(example, spec)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {{{name}:{spec}}}: bad format spec: {exc}") from None


def _check_structure(skeleton: str, suffix: str, where: str) -> None:
    if skeleton.startswith("/"):
        raise ValueError(f"{where}: must be relative to [archive] root, not an absolute path")
    if skeleton.startswith("~"):
        raise ValueError(f"{where}: must be relative to [archive] root; ~ is not expanded here")
    components = [c for c in skeleton.split("/") if c not in ("", ".")]
    if ".." in components:
        raise ValueError(f"{where}: '..' would leave the archive root")
    if not suffix:
        if skeleton.endswith("/") or not components:
            raise ValueError(f"{where}: must end with a file name")
        return
    if skeleton.endswith("/") or not components or not components[-1].endswith(suffix):
        raise ValueError(f"{where}: the file name must end with {suffix}")
    if components[-1] == suffix:
        raise ValueError(f"{where}: the file name before {suffix} is empty")


def _too_wide(spec: str) -> bool:
    return any(int(number) > MAX_SPEC_NUMBER for number in _NUMBER.findall(spec))


def _zone(name: str) -> tzinfo:
    if not isinstance(name, str) or not name:
        raise ValueError("the time zone must be an IANA name such as UTC or Europe/Berlin")
    if name.upper() in ("UTC", "Z", "ETC/UTC"):
        return UTC  # works even where no tz database is installed
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
        raise ValueError(
            f"unknown time zone {quoted(name)}; use an IANA name such as UTC or Europe/Berlin"
        ) from None


# -- rendering values -----------------------------------------------------------------------


def _render_value(piece: _Piece, fields: Mapping[str, Any], zone: tzinfo) -> str:
    """One placeholder's value, safe: one path component, or for a path value its parts,
    each one component (a format spec does not apply to a path)."""
    value = fields.get(piece.name)  # type: ignore[arg-type]
    if isinstance(value, PurePath):
        parts = [part for part in value.parts if part != value.anchor]
        return "/".join(_safe_value(as_text(part)) for part in parts) or "_"
    return _safe_value(_render_piece(piece, fields, zone))


def _render_piece(piece: _Piece, fields: Mapping[str, Any], zone: tzinfo) -> str:
    spec = piece.spec
    value = fields.get(piece.name)  # type: ignore[arg-type]
    if value is None:
        return UNKNOWN
    if isinstance(value, date):
        try:
            if isinstance(value, datetime):
                if value.tzinfo is None:
                    value = value.replace(tzinfo=UTC)
                value = value.astimezone(zone)
            return value.strftime(spec or _default_format(value))
        except (ValueError, OverflowError, OSError, UnicodeError):
            return UNKNOWN  # beyond the calendar in this zone, or a spec it cannot take
    if not spec or _too_wide(spec):
        return as_text(value)
    try:
        return format(value, spec)
    except (ValueError, TypeError, OverflowError):
        # A spec valid for the example's type but not for this hostile value.
        return as_text(value)


def _default_format(value: date) -> str:
    return DEFAULT_DATETIME_FORMAT if isinstance(value, datetime) else DEFAULT_DATE_FORMAT


def _safe_value(text: str) -> str:
    """One placeholder value made safe inside a path component."""
    digest = ""
    if len(text) > MAX_VALUE_CHARS:
        # Keep long values apart: two values that differ only past the cap differ here too.
        whole = text.encode("utf-8", "surrogatepass")
        digest = "~" + hashlib.sha256(whole).hexdigest()[:8]
        text = text[: MAX_VALUE_CHARS - len(digest)]
    text = unicodedata.normalize("NFC", text)
    text = "".join(
        "_" if ch in _UNSAFE_CHARS or unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
        for ch in text
    )
    text = _EDGE_JUNK.sub("", text)
    return (text or "_") + digest


def _safe_component(component: str, *, is_file: bool) -> str:
    if component in (".", ".."):
        return "_"
    # Windows refuses CON, NUL, COM1 ... as a name, with any extension after them.
    if component.split(".", 1)[0].rstrip(" ").lower() in _WINDOWS_RESERVED:
        component = "_" + component
    if is_file:
        ext = suffix_of(component)
        stem = component[: len(component) - len(ext)]
        component = _shorten(stem, MAX_RENDERED_STEM_BYTES) + ext
        if component.endswith((PART, STAGED)):
            component += "_"  # a data file never looks like a partial one (removed at start)
    else:
        component = _shorten(component, MAX_COMPONENT_BYTES)
    return component


def _shorten(text: str, limit: int) -> str:
    """Cap ``text`` at ``limit`` UTF-8 bytes; a cut end loses its trailing dots and spaces
    (Windows drops them, so two names could meet)."""
    cut = truncate_bytes(text, limit)
    if cut == text:
        return text
    return re.sub(r"[\s.]+$", "", cut) or "_"
