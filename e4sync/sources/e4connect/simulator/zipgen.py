"""e4sync.sources.e4connect.simulator.zipgen: deterministic session ZIPs in the exact E4 Connect
format.

Owns the bytes of a simulated session download: eight flat, deflated members (ACC, BVP, EDA, HR,
IBI, TEMP as CSV, the real ``info.txt``, ``tags.csv``) whose headers, rates and number formats copy
the real files in ``shared/realdata``, and for the ``extra_member_sessions`` fault a ninth member
that is not an E4 file (:data:`EXTRA_MEMBER`). The same ``(seed, session_id, start_time,
duration, extra_member)`` always gives the same bytes.

Speed: pure-Python row formatting is far too slow for a 200 MB benchmark archive, so each signal
has a small pool of pre-generated, pre-compressed blocks (per seed). Every compressed block is a
self-contained run of deflate blocks (fresh compressor, sync flush), so a member's deflate stream
is just a concatenation: a freshly generated head (header rows + first block), pool blocks chosen
by a per-session random sequence, a freshly generated tail, and a final empty block. Only the
CRC-32 and sha256 touch every byte, so output runs at hundreds of MB/s and is written sequentially,
never held in memory unless the caller asks for bytes.

Standard library only; must not import any e4sync module outside the simulator package.
Must not import: e4sync.state, e4sync.sync, e4sync.sources.e4connect.client, e4sync.cli, requests.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import random
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import BinaryIO

MEMBERS = ("ACC.csv", "BVP.csv", "EDA.csv", "HR.csv", "IBI.csv", "TEMP.csv", "info.txt", "tags.csv")
"""The members of every simulated session ZIP, in archive order."""

EXTRA_MEMBER = "notes.txt"
"""The member that is not an E4 file, added after the real ones by the ``extra_member_sessions``
fault (a note someone zipped in with the recording)."""
EXTRA_MEMBER_TEXT = b"Participant 07, visit 2: band worn on the left wrist.\n"

RATES = {"ACC.csv": 32, "BVP.csv": 64, "EDA.csv": 4, "TEMP.csv": 4, "HR.csv": 1}
"""Sample rate in Hz of each regularly sampled member."""

HR_DELAY = 10
"""HR.csv starts this many seconds after the other files (a 10 s averaging window)."""

MAX_ZIP_BYTES = 2**31
"""Largest archive offered: no ZIP64 is written, so every size must fit 32 bits with room."""

_LEVEL = 6  # zlib's default level, what PHP's ZipArchive used
_FINAL_BLOCK = b"\x03\x00"  # an empty final fixed-Huffman deflate block: ends every stream
_POOL_VARIANTS = 8
# Rows per pool block; every block is well above deflate's 32 KiB window except the slow signals,
# whose blocks cover several minutes so that a typical session still uses the pool.
_BLOCK_ROWS = {"ACC.csv": 4096, "BVP.csv": 8192, "EDA.csv": 1024, "TEMP.csv": 1024, "HR.csv": 512}
_EDA_STEP = 0.0012815  # the E4's EDA resolution, seen in realdata/flirt/EDA.csv diffs


@functools.cache
def info_txt() -> bytes:
    """The real 1,544-byte ``info.txt`` shipped in every E4 session (package data)."""
    return resources.files("e4sync.sources.e4connect.simulator").joinpath("info.txt").read_bytes()


def device_serial(label: str | int | None) -> str:
    """``A`` + the label as 5 uppercase hex digits (2588 -> ``A00A1C``).

    ``""`` when the label is missing or not a plausible decimal number (labels are free text
    on the platform's side; tests feed hostile ones).
    """
    text = "" if label is None else str(label).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        return ""
    return f"A{int(text):05X}"


def download_filename(start_time: str | int, label: str | int | None) -> str:
    """The file name E4 Connect gave a download: ``<start_time>_<SERIAL>.zip``."""
    serial = device_serial(label)
    return f"{int(float(start_time))}_{serial}.zip" if serial else f"{int(float(start_time))}.zip"


# --- signal generators: each returns ``n`` formatted CSV rows as one str -------------------------
# State is a small dict so a generator can be resumed (head rows, then tail rows) without a jump.


def _acc_rows(rng: random.Random, n: int, st: dict) -> str:
    # Gravity (~64 = 1 g) along a slowly changing orientation plus AR(1) motion, as ints in 1/64 g.
    if "g" not in st:
        st["g"] = _orientation(rng)
        st["m"] = [0.0, 0.0, 0.0]
        st["act"] = 0.8
    gx, gy, gz = st["g"]
    mx, my, mz = st["m"]
    act = st["act"]
    gauss = rng.gauss
    rnd = rng.random
    out = []
    append = out.append
    for _ in range(n):
        if rnd() < 0.002:
            act = (0.3, 0.8, 1.5, 4.0)[int(rnd() * 4)]
            if rnd() < 0.2:
                gx, gy, gz = _orientation(rng)
        mx = 0.9 * mx + gauss(0.0, act)
        my = 0.9 * my + gauss(0.0, act)
        mz = 0.9 * mz + gauss(0.0, act)
        append(f"{_clamp8(gx + mx)},{_clamp8(gy + my)},{_clamp8(gz + mz)}\n")
    st["g"], st["m"], st["act"] = (gx, gy, gz), [mx, my, mz], act
    return "".join(out)


def _orientation(rng: random.Random) -> tuple[float, float, float]:
    x, y, z = rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 1)
    norm = math.sqrt(x * x + y * y + z * z) or 1.0
    return 64 * x / norm, 64 * y / norm, 64 * z / norm


def _clamp8(v: float) -> int:
    return -128 if v < -128 else 127 if v > 127 else round(v)


def _bvp_rows(rng: random.Random, n: int, st: dict) -> str:
    # A PPG-like wave at the heart rate, amplitude drifting, plus sensor noise (2 decimals).
    if "phase" not in st:
        st["phase"] = rng.random()
        st["hr"] = rng.uniform(60, 95)
        st["amp"] = rng.uniform(30, 200)
        st["base"] = 0.0
    phase, hr, amp, base = st["phase"], st["hr"], st["amp"], st["base"]
    gauss = rng.gauss
    rnd = rng.random
    sin = math.sin
    two_pi = 2 * math.pi
    out = []
    append = out.append
    for i in range(n):
        if i % 64 == 0:
            hr = min(150.0, max(45.0, hr + gauss(0, 0.8)))
            amp = min(600.0, max(10.0, amp * (1 + gauss(0, 0.03))))
            base = 0.95 * base + gauss(0, 2.0)
        phase += hr / 3840.0  # beats per sample: hr / 60 s / 64 Hz
        if phase >= 1.0:
            phase -= 1.0
        v = amp * (sin(two_pi * phase) + 0.35 * sin(2 * two_pi * phase - 0.8)) + base
        append(f"{v + gauss(0, 0.6) + (rnd() - 0.5) * 0.02:.2f}\n")
    st["phase"], st["hr"], st["amp"], st["base"] = phase, hr, amp, base
    return "".join(out)


def _eda_rows(rng: random.Random, n: int, st: dict) -> str:
    # Skin conductance: a slow walk quantised to the E4's step, with rare phasic responses.
    level = st.get("level", rng.uniform(0.05, 2.0))
    rnd = rng.random
    out = []
    append = out.append
    for _ in range(n):
        r = rnd()
        if r < 0.01:
            level += rng.uniform(0.0, 0.08)
        elif r < 0.5:
            level += (rnd() - 0.52) * 0.006
        level = min(25.0, max(0.0, level))
        append(f"{round(level / _EDA_STEP) * _EDA_STEP:.6f}\n")
    st["level"] = level
    return "".join(out)


def _temp_rows(rng: random.Random, n: int, st: dict) -> str:
    # Skin temperature in 0.02 degree steps that change every few seconds at most.
    level = st.get("level", rng.uniform(30.5, 34.5))
    rnd = rng.random
    out = []
    append = out.append
    for _ in range(n):
        if rnd() < 0.05:
            level = min(38.0, max(22.0, level + (0.02 if rnd() < 0.5 else -0.02)))
        append(f"{level:.2f}\n")
    st["level"] = level
    return "".join(out)


def _hr_rows(rng: random.Random, n: int, st: dict) -> str:
    # Average heart rate, smooth, 2 decimals.
    level = st.get("level", rng.uniform(60, 95))
    trend = st.get("trend", 0.0)
    out = []
    append = out.append
    for _ in range(n):
        trend = 0.9 * trend + rng.gauss(0, 0.08)
        level = min(180.0, max(45.0, level + trend))
        append(f"{level:.2f}\n")
    st["level"], st["trend"] = level, trend
    return "".join(out)


_GENERATORS: dict[str, Callable[[random.Random, int, dict], str]] = {
    "ACC.csv": _acc_rows,
    "BVP.csv": _bvp_rows,
    "EDA.csv": _eda_rows,
    "TEMP.csv": _temp_rows,
    "HR.csv": _hr_rows,
}


def _header(member: str, start: int) -> str:
    t = float(start)
    if member == "ACC.csv":
        return f"{t:.6f}, {t:.6f}, {t:.6f}\n32.000000, 32.000000, 32.000000\n"
    if member == "BVP.csv":
        return f"{t:.2f}\n64.000000\n"
    if member == "HR.csv":
        return f"{t + HR_DELAY:.6f}\n1.000000\n"
    return f"{t:.6f}\n{RATES[member]:.6f}\n"


def _ibi_text(rng: random.Random, start: int, duration: float, header_only: bool) -> bytes:
    # Sparse beats: runs of detected beats separated by gaps where motion hid the pulse. Beat
    # lengths come from a per-session pool of 1,024 (whole 1/64 s plus jitter, as real files show)
    # walked from random points, because a per-beat gauss() is too slow for a 200 h session.
    parts = [f"{float(start):.6f}, IBI\n"]
    if header_only:
        return parts[0].encode("ascii")
    base = rng.uniform(0.6, 1.0)
    lengths = []
    for _ in range(1024):
        base = min(1.4, max(0.4, base + rng.gauss(0, 0.006)))
        ibi = round(min(1.6, max(0.33, base + rng.gauss(0, 0.04))) * 64) / 64
        lengths.append(ibi + (rng.random() - 0.5) * 8e-5)
    texts = [f"{v:.6f}\n" for v in lengths]
    append = parts.append
    t = rng.uniform(HR_DELAY, HR_DELAY + 60)
    while t < duration:
        i = rng.randrange(1024)
        for _ in range(int(rng.expovariate(1 / 50)) + 1):  # a run of ~50 beats
            t += lengths[i]
            if t >= duration:
                break
            append(f"{t:.6f},")
            append(texts[i])
            i = (i + 1) & 1023
        t += rng.uniform(3, 60)
    return "".join(parts).encode("ascii")


def _tags_text(rng: random.Random, start: int, duration: float) -> bytes:
    # Real sessions often have no tags at all (an empty file), else a few button presses.
    if duration <= 0 or rng.random() < 0.4:
        return b""
    count = rng.randint(1, 6)
    times = sorted(start + rng.uniform(0, duration) for _ in range(count))
    return "".join(f"{t:.2f}\n" for t in times).encode("ascii")


# --- pools and members ----------------------------------------------------------------------------


def _deflate(raw: bytes) -> bytes:
    """Compress ``raw`` into a self-contained, byte-aligned, non-final run of deflate blocks."""
    c = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
    return c.compress(raw) + c.flush(zlib.Z_SYNC_FLUSH)


@dataclass(frozen=True)
class _Block:
    raw: bytes
    packed: bytes


@functools.lru_cache(maxsize=64)
def _pool(seed: int, member: str) -> tuple[_Block, ...]:
    gen = _GENERATORS[member]
    blocks = []
    for k in range(_POOL_VARIANTS):
        rng = random.Random(f"{seed}:pool:{member}:{k}")
        raw = gen(rng, _BLOCK_ROWS[member], {}).encode("ascii")
        blocks.append(_Block(raw, _deflate(raw)))
    return tuple(blocks)


@dataclass
class _Member:
    """One member ready to write: its compressed pieces, CRC and sizes."""

    name: str
    pieces: list[bytes]
    crc: int
    size: int
    csize: int
    stored: bool = False


def _sample_count(member: str, duration: float) -> int:
    if member == "HR.csv":
        return max(0, math.floor(duration) - HR_DELAY)
    return max(0, math.floor(duration * RATES[member]))


def _signal_member(seed: int, session_id: str, member: str, start: int, duration: float) -> _Member:
    n = _sample_count(member, duration)
    rows = _BLOCK_ROWS[member]
    gen = _GENERATORS[member]
    rng = random.Random(f"{seed}:{session_id}:{member}")
    state: dict = {}
    head_rows = min(n, rows)
    head = (_header(member, start) + gen(rng, head_rows, state)).encode("ascii")
    middle, rest = divmod(n - head_rows, rows)
    pool = _pool(seed, member) if middle else ()
    choices = [rng.randrange(_POOL_VARIANTS) for _ in range(middle)]
    tail = gen(rng, rest, state).encode("ascii") if rest else b""
    pieces = [_deflate(head)]
    crc = zlib.crc32(head)
    size = len(head)
    for k in choices:
        block = pool[k]
        pieces.append(block.packed)
        crc = zlib.crc32(block.raw, crc)
        size += len(block.raw)
    if tail:
        pieces.append(_deflate(tail))
        crc = zlib.crc32(tail, crc)
        size += len(tail)
    pieces.append(_FINAL_BLOCK)
    return _Member(member, pieces, crc, size, sum(len(p) for p in pieces))


def _small_member(name: str, raw: bytes) -> _Member:
    if not raw:
        # Real archives store an empty tags.csv uncompressed (method 0), as zip tools do.
        return _Member(name, [], 0, 0, 0, stored=True)
    packed = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
    data = packed.compress(raw) + packed.flush()
    return _Member(name, [data], zlib.crc32(raw), len(raw), len(data))


def _members(
    seed: int, session_id: str, start: int, duration: float, extra_member: bool = False
) -> list[_Member]:
    extras = random.Random(f"{seed}:{session_id}:extras")
    header_only = duration < 30 or extras.random() < 0.1
    out = []
    for name in MEMBERS:
        if name in RATES:
            out.append(_signal_member(seed, session_id, name, start, duration))
        elif name == "IBI.csv":
            ibi_rng = random.Random(f"{seed}:{session_id}:IBI.csv")
            out.append(_small_member(name, _ibi_text(ibi_rng, start, duration, header_only)))
        elif name == "info.txt":
            out.append(_small_member(name, info_txt()))
        else:
            out.append(_small_member(name, _tags_text(extras, start, duration)))
    if extra_member:
        out.append(_small_member(EXTRA_MEMBER, EXTRA_MEMBER_TEXT))
    return out


def _dos_datetime(unix: float) -> tuple[int, int]:
    t = time.gmtime(min(max(unix, 315532800), 4354819199))  # the DOS range, 1980..2107
    dos_time = (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2)
    dos_date = ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
    return dos_time, dos_date


def write_zip(
    out: BinaryIO,
    seed: int,
    session_id: str,
    start_time: int,
    duration: float,
    extra_member: bool = False,
) -> tuple[int, str]:
    """Write the session's ZIP to ``out`` sequentially (no seeks); with ``extra_member``, the eight
    E4 members (the same bytes) followed by :data:`EXTRA_MEMBER`.

    :return: ``(size_in_bytes, sha256_hex)`` of what was written.
    :raises ValueError: if the archive would exceed :data:`MAX_ZIP_BYTES`.
    """
    start = int(float(start_time))
    duration = max(0.0, float(duration))
    members = _members(seed, str(session_id), start, duration, extra_member)
    total = sum(m.csize + 30 + len(m.name) for m in members)
    if total > MAX_ZIP_BYTES or any(m.size >= 2**32 for m in members):
        raise ValueError(f"session ZIP would be {total} bytes; at most {MAX_ZIP_BYTES} offered")
    dos_time, dos_date = _dos_datetime(start + duration)
    sha = hashlib.sha256()
    offset = 0
    central = []

    def emit(data: bytes) -> None:
        nonlocal offset
        out.write(data)
        sha.update(data)
        offset += len(data)

    for m in members:
        name = m.name.encode("ascii")
        method = 0 if m.stored else 8
        fields = (method, dos_time, dos_date, m.crc, m.csize, m.size, len(name))
        central.append(
            struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x0314, 20, 0, *fields, 0, 0, 0, 0,
                        0o100644 << 16, offset) + name
        )  # fmt: skip
        emit(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, *fields, 0) + name)
        for piece in m.pieces:
            emit(piece)
    cd_offset = offset
    cd = b"".join(central)
    emit(cd)
    emit(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(cd),
                     cd_offset, 0))  # fmt: skip
    return offset, sha.hexdigest()


def zip_bytes(
    seed: int, session_id: str, start_time: int, duration: float, extra_member: bool = False
) -> bytes:
    """The session's whole ZIP in memory (for small sessions and tests)."""
    buf = io.BytesIO()
    write_zip(buf, seed, session_id, start_time, duration, extra_member)
    return buf.getvalue()


@functools.lru_cache(maxsize=8)
def _bytes_per_second(seed: int) -> float:
    # Average compressed bytes per recorded second over the signal pools, plus IBI's share
    # (about 0.56 beats/s, as in realdata/flirt, at ~8.5 compressed bytes each).
    rate = 0.0
    for member, hz in RATES.items():
        pool = _pool(seed, member)
        per_row = sum(len(b.packed) for b in pool) / (len(pool) * _BLOCK_ROWS[member])
        rate += per_row * hz
    return rate + 4.8


_FIXED_OVERHEAD = 2600  # info.txt (~660 compressed), tags, headers, local and central records


def estimate_size(seed: int, duration: float) -> int:
    """Roughly how many bytes a session of ``duration`` seconds zips to (within a few %)."""
    return int(_FIXED_OVERHEAD + _bytes_per_second(seed) * max(0.0, duration))


def duration_for_size(seed: int, size_bytes: int) -> float:
    """The recording duration (whole seconds) whose ZIP comes out at about ``size_bytes``."""
    if size_bytes > MAX_ZIP_BYTES:
        raise ValueError(f"size_bytes {size_bytes} above the {MAX_ZIP_BYTES} offered")
    return float(max(1, round((size_bytes - _FIXED_OVERHEAD) / _bytes_per_second(seed))))
