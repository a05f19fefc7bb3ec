"""e4sync.units: sizes for people (``2.9 MB``, ``1.4 GB``), as ``status``, ``check`` and a
dry run's plan print them.

Decimal units (1 kB = 1000 bytes), as disks and file managers count, with three significant
figures at most; bytes below 1 kB are counted exactly. ``--json`` always keeps the exact
byte count.

Must not import: e4sync.
"""

from __future__ import annotations

_UNITS = ("kB", "MB", "GB", "TB", "PB", "EB")


def human_size(n: int | float | None) -> str:
    """``n`` bytes as ``"0 B"``, ``"999 B"``, ``"1.2 kB"``, ``"2.9 MB"``, ``"15 GB"``,
    ``"120 TB"``; None (a size the platform does not say) as ``"size unknown"``."""
    if n is None:
        return "size unknown"
    n = float(n)
    if abs(n) < 1000:
        return f"{int(n)} B"
    value = n
    for unit in _UNITS:
        value /= 1000
        if abs(value) < 999.5 or unit == _UNITS[-1]:
            if abs(value) < 9.95:
                return f"{value:.1f} {unit}"
            return f"{value:.0f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover
