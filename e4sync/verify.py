"""e4sync.verify: pure checks of a downloaded session ZIP (SPEC section 6).

Owns: the ZIP structure check (magic bytes, member names, zip-bomb limits, every CRC),
the E4 content check (a data CSV present, CSV headers, start times), the warning for
members that are not E4 files, and the "is this an HTML page" sniff; ``sha256_file`` is
``e4sync.fsutil``'s, offered here too. It returns results and never raises for a bad file.

Must not import: any e4sync module but e4sync.fsutil, or anything outside the standard library.
It never writes to disk: members are streamed through ``zipfile`` in chunks and the
data is thrown away, so a ZIP bomb costs at most CPU time, never disk or memory.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass

from e4sync.fsutil import sha256_file as sha256_file  # callers import it from here

E4_MEMBERS = frozenset(
    {"ACC.csv", "BVP.csv", "EDA.csv", "HR.csv", "IBI.csv", "TEMP.csv", "info.txt", "tags.csv"}
)
# Files that hold a recording; a ZIP with only info.txt and tags.csv holds no data.
SIGNAL_CSVS = frozenset({"ACC.csv", "BVP.csv", "EDA.csv", "HR.csv", "IBI.csv", "TEMP.csv"})

ZIP_MAGIC = b"PK\x03\x04"
CHUNK = 1 << 18  # 256 KiB: as fast as 1 MiB here, and a smaller resident peak
MAX_START_OFFSET = 86400  # a header may start this far from the session's start_time
MAX_MEMBERS = 1000
# Below this many uncompressed bytes a high ratio is harmless (streaming it costs
# nothing) and real files do reach it: EDA of a band lying on a desk is "0.000000" for
# hours. So the ratio limit only applies to members (and totals) larger than this.
RATIO_FLOOR = 16 << 20
_HEADER_BYTES = 4096  # enough for the first line of any E4 CSV
# A warning names this many foreign members, each cut to this many characters, so that a
# ZIP of 999 long names still makes one readable log line.
_NAMED_MEMBERS = 10
_NAME_CHARS = 80

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ZipCheck:
    """The verdict on one file: ``ok`` is true only when ``problems`` is empty.
    ``warnings`` say what is odd but harmless (members that are not E4 files); they
    never make a file fail."""

    ok: bool
    problems: tuple[str, ...]
    members: tuple[str, ...]
    uncompressed_size: int
    warnings: tuple[str, ...] = ()


def looks_like_html(first_bytes: bytes) -> bool:
    """True when a body starts like markup (``<``, possibly after whitespace or a BOM)."""
    head = first_bytes[:4096]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    return head.lstrip().startswith(b"<")


def check_zip(
    path: str | os.PathLike[str],
    *,
    start_time: int | None = None,
    e4_members: bool = True,
    max_ratio: float = 100.0,
    max_uncompressed: int = 4 << 30,
) -> ZipCheck:
    """Check that ``path`` is a whole, safe ZIP and, with ``e4_members``, an E4 session.

    Structure (always): starts with ``PK\\x03\\x04``, opens as a ZIP, member names are
    bare names (no separator, ``..``, absolute path, drive or NUL), no member is
    encrypted, the declared sizes stay under ``max_uncompressed`` and ``max_ratio``
    (members above ``RATIO_FLOOR`` only), and every member's CRC-32 is good.

    Content (``e4_members``): at least one signal CSV is present, each E4 CSV's first
    line parses, and with ``start_time`` each header's start time lies within a day of it.

    A member that is not one of ``E4_MEMBERS`` (with or without ``e4_members``) is a
    warning, not a problem: once its name is safe, its sizes sane and its CRC good, it is
    the platform's data and is kept as sent. One warning names them all.

    Each member is read once. Never raises for a bad file: an unreadable one is a problem.
    """
    try:
        f = open(path, "rb")
    except OSError as exc:
        return _verdict([f"the file cannot be opened: {exc.strerror or exc}"], (), 0)
    with f:
        head = f.read(len(ZIP_MAGIC))
        if head != ZIP_MAGIC:
            return _verdict([_not_a_zip(head + f.read(512))], (), 0)
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            return _verdict([f"the file is not a readable ZIP archive ({exc})"], (), 0)
        with zf:
            return _check_open_zip(zf, start_time, e4_members, max_ratio, max_uncompressed)


def _check_open_zip(
    zf: zipfile.ZipFile,
    start_time: int | None,
    e4_members: bool,
    max_ratio: float,
    max_uncompressed: int,
) -> ZipCheck:
    infos = zf.infolist()
    names = tuple(info.filename for info in infos)
    total = sum(info.file_size for info in infos)
    problems: list[str] = []

    if not infos:
        problems.append("the ZIP archive holds no files")
    if len(infos) > MAX_MEMBERS:
        problems.append(f"the ZIP archive holds {len(infos)} files, more than {MAX_MEMBERS}")
        return _verdict(problems, names, total)
    seen: set[str] = set()
    for info in infos:
        name_problem = _unsafe_name(info.filename)
        if name_problem:
            problems.append(name_problem)
        if info.filename in seen:
            problems.append(f"{info.filename!r} appears twice in the ZIP archive")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            problems.append(f"{info.filename!r} is encrypted")

    if _bomb_problems(infos, total, max_ratio, max_uncompressed, problems):
        # Never decompress something that claims to expand this far.
        return _verdict(problems, names, total)

    if e4_members and not SIGNAL_CSVS & set(names):
        problems.append("the archive holds no E4 data CSV (ACC, BVP, EDA, HR, IBI, TEMP)")
    warnings = _foreign_warning([n for n in names if n not in E4_MEMBERS])

    for info in infos:
        if info.flag_bits & 0x1 or _unsafe_name(info.filename):
            continue
        first, damage = _stream_member(zf, info)
        if damage:
            problems.append(damage)
            continue
        if e4_members and info.filename.endswith(".csv") and info.filename in E4_MEMBERS:
            problems.extend(_header_problems(info.filename, first, info.file_size, start_time))

    return _verdict(problems, names, total, warnings)


def _verdict(
    problems: list[str], names: tuple[str, ...], total: int, warnings: list[str] | None = None
) -> ZipCheck:
    return ZipCheck(
        ok=not problems,
        problems=tuple(problems),
        members=names,
        uncompressed_size=total,
        warnings=tuple(warnings or ()),
    )


def _foreign_warning(foreign: list[str]) -> list[str]:
    """One warning naming the members that are not E4 files (none: no warning). Names are
    shown with ``repr`` so that a newline or a control character in one cannot forge a
    log line, and cut short, as is the list."""
    if not foreign:
        return []
    shown = ", ".join(repr(_shorten(n, _NAME_CHARS)) for n in sorted(foreign)[:_NAMED_MEMBERS])
    if len(foreign) > _NAMED_MEMBERS:
        shown += f" and {len(foreign) - _NAMED_MEMBERS} more"
    if len(foreign) == 1:
        return [
            f"the ZIP holds a file that is not an E4 file, kept as the platform sent it: {shown}"
        ]
    return [
        f"the ZIP holds {len(foreign)} files that are not E4 files, kept as the platform sent"
        f" them: {shown}"
    ]


def _not_a_zip(head: bytes) -> str:
    if not head:
        return "the file is empty"
    if looks_like_html(head):
        return "the file is an HTML page, not a ZIP archive"
    return "the file does not start with a ZIP header (PK\\x03\\x04)"


def _unsafe_name(name: str) -> str | None:
    """Why a member name could escape the folder it is unpacked into, or None."""
    if "\x00" in name:
        return f"{name!r}: a member name holds a NUL character"
    if "/" in name or "\\" in name:
        return f"{name!r}: a member name holds a path separator"
    if name in ("", ".", ".."):
        return f"{name!r}: not a file name"
    if _WINDOWS_DRIVE.match(name):
        return f"{name!r}: a member name is an absolute path"
    return None


def _bomb_problems(
    infos: list[zipfile.ZipInfo],
    total: int,
    max_ratio: float,
    max_uncompressed: int,
    problems: list[str],
) -> bool:
    found = False
    if total > max_uncompressed:
        problems.append(
            f"the archive would expand to {total} bytes, more than the {max_uncompressed} allowed"
        )
        found = True
    for info in infos:
        if info.file_size > RATIO_FLOOR:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > max_ratio:
                problems.append(
                    f"{info.filename!r} expands {ratio:.0f} times (limit {max_ratio:g}):"
                    " refused as a possible ZIP bomb"
                )
                found = True
    packed = sum(info.compress_size for info in infos)
    if total > RATIO_FLOOR and total / max(packed, 1) > max_ratio and not found:
        problems.append(
            f"the archive expands {total / max(packed, 1):.0f} times (limit {max_ratio:g}):"
            " refused as a possible ZIP bomb"
        )
        found = True
    return found


def _stream_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[bytes, str | None]:
    """Read one member to its end (zipfile checks the CRC there), keeping only its
    first bytes for the header check. Returns ``(first bytes, problem or None)``."""
    first = b""
    try:
        with zf.open(info) as member:
            while chunk := member.read(CHUNK):
                if len(first) < _HEADER_BYTES:
                    first += chunk[: _HEADER_BYTES - len(first)]
    except zipfile.BadZipFile as exc:
        if "CRC" in str(exc):
            return first, f"{info.filename}: damaged (bad CRC-32)"
        return first, f"{info.filename}: damaged ({exc})"
    except (zlib.error, EOFError, OSError, ValueError) as exc:
        return first, f"{info.filename}: cannot be decompressed ({type(exc).__name__})"
    except NotImplementedError:
        return first, f"{info.filename}: uses an unsupported compression method"
    except RuntimeError as exc:  # zipfile's "encrypted, password required"
        return first, f"{info.filename}: cannot be read ({exc})"
    return first, None


def _header_problems(name: str, first: bytes, size: int, start_time: int | None) -> list[str]:
    """Check the first line of an E4 CSV (see the protocol file's table)."""
    if name == "tags.csv":
        return []  # no header; often empty
    if size == 0:
        return [] if name == "IBI.csv" else [f"{name}: the file is empty (no header)"]
    try:
        text = first.decode("ascii")
    except UnicodeDecodeError:
        return [f"{name}: the header is not plain text"]
    line = text.split("\n", 1)[0].rstrip("\r").strip()
    fields = [field.strip() for field in line.split(",")]

    if name == "IBI.csv":
        if len(fields) != 2 or not _NUMBER.fullmatch(fields[0]) or fields[1].upper() != "IBI":
            return [f"{name}: the header is not 'start time, IBI': {_shorten(line)!r}"]
        times = [float(fields[0])]
    else:
        if not fields or not all(_NUMBER.fullmatch(field) for field in fields):
            return [f"{name}: the header is not a row of numbers: {_shorten(line)!r}"]
        times = [float(field) for field in fields]
        if name == "ACC.csv" and (len(times) != 3 or len(set(times)) != 1):
            return [f"{name}: the header is not three equal start times: {_shorten(line)!r}"]

    header_start = times[0]
    if not math.isfinite(header_start):
        return [f"{name}: the header's start time is not a number: {_shorten(line)!r}"]
    if start_time is not None and abs(header_start - start_time) > MAX_START_OFFSET:
        return [
            f"{name}: starts at {header_start:.0f}, more than a day from the session's"
            f" start time {start_time}"
        ]
    return []


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
