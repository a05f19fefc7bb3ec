"""e4sync.participants: who wore which wristband when (SPEC section 10).

The ``[participants] file`` is a CSV with the columns ``serial,participant,from,to`` (ISO
dates, ``to`` empty while ongoing, both days included). An item belongs to whoever had its
serial on the item's start day in ``archive.timezone``. Two ranges of one serial that share
a day are a ConfigError naming the file and both rows.

Imports only the standard library and ``e4sync.errors``.
Must not import: e4sync.state, e4sync.sync, e4sync.sources, e4sync.cli.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from e4sync.errors import ConfigError

COLUMNS = ("serial", "participant", "from", "to")


@dataclass(frozen=True, slots=True)
class Assignment:
    serial: str
    participant: str
    first: date
    last: date | None  # None: ongoing
    row: int  # the line of the file

    def covers(self, day: date) -> bool:
        return self.first <= day and (self.last is None or day <= self.last)


@dataclass(frozen=True)
class Participants:
    assignments: tuple[Assignment, ...] = ()

    def who(self, serial: str, day: date) -> str | None:
        """The participant who had ``serial`` on ``day``; None if nobody had it."""
        for a in self.assignments:
            if a.serial == serial and a.covers(day):
                return a.participant
        return None

    def names(self) -> list[str]:
        return sorted({a.participant for a in self.assignments})


def _day(text: str, path: Path, row: int, column: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{path}: row {row}: {column} {text!r} is not an ISO date (YYYY-MM-DD)"
        ) from None


def load_participants(path: Path | None) -> Participants:
    """Read the participants file (None: no file, nobody assigned)."""
    if path is None:
        return Participants()
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"participants file {path}: {exc.strerror or exc}") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ConfigError(
            f"{path}: the header lacks {', '.join(missing)} (columns: serial,participant,from,to)"
        )
    reader.fieldnames = header
    found: list[Assignment] = []
    for n, rec in enumerate(reader, start=2):
        values = {k: (rec.get(k) or "").strip() for k in COLUMNS}
        if not any(values.values()):
            continue
        if not values["serial"] or not values["participant"] or not values["from"]:
            raise ConfigError(f"{path}: row {n}: serial, participant and from are required")
        first = _day(values["from"], path, n, "from")
        last = _day(values["to"], path, n, "to") if values["to"] else None
        if last is not None and last < first:
            raise ConfigError(f"{path}: row {n}: to {last} is before from {first}")
        found.append(Assignment(values["serial"], values["participant"], first, last, n))
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            if a.serial != b.serial:
                continue
            if (b.last is None or a.first <= b.last) and (a.last is None or b.first <= a.last):
                raise ConfigError(
                    f"{path}: rows {a.row} and {b.row} give serial {a.serial} to "
                    f"{a.participant} and {b.participant} on the same days"
                )
    return Participants(tuple(found))
