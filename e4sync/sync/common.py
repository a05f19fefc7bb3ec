"""e4sync.sync.common: small helpers shared by the pass's modules. Standard library and
e4sync.errors only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from e4sync.errors import E4SyncError


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with a ``Z`` (status, sidecars, logs)."""
    if ts is None:
        return None
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed attempt, as recorded in the state database."""
    if isinstance(exc, OSError) and not isinstance(exc, E4SyncError):
        return f"{exc.strerror or exc.__class__.__name__}: {exc.filename or ''}".strip(": ")
    return str(exc) or exc.__class__.__name__


def part_of(final: Path) -> Path:
    """``X.zip.part`` for ``X.zip``: the name a download is written under."""
    return final.with_name(final.name + ".part")


def chunks(seq: list, size: int) -> Iterator[list]:
    """Slices of ``seq``, so one statement never carries 100,000 rows."""
    for start in range(0, len(seq), size):
        yield seq[start : start + size]
