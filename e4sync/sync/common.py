"""e4sync.sync.common: small helpers shared by the pass's modules (a failure's one-line
reason, a download's ``.part`` name, slices of a long list). Standard library,
e4sync.errors and e4sync.timestamps only.

Must not import: e4sync.cli, e4sync.sources, e4sync.state, e4sync.archive, e4sync.sync.run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from e4sync.errors import E4SyncError
from e4sync.timestamps import iso

__all__ = ["chunks", "describe", "iso", "part_of"]


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed attempt, as recorded in the state database."""
    if isinstance(exc, OSError) and not isinstance(exc, E4SyncError):
        return f"{exc.strerror or exc.__class__.__name__}: {exc.filename or ''}".strip(": ")
    return str(exc) or exc.__class__.__name__


def part_of(final: Path) -> Path:
    """``X.part`` for a final file ``X``: the name a download is written under."""
    return final.with_name(final.name + ".part")


def chunks(seq: list, size: int) -> Iterator[list]:
    """Slices of ``seq``, so one statement never carries 100,000 rows."""
    for start in range(0, len(seq), size):
        yield seq[start : start + size]
