"""e4sync.report: hours recorded per group (device or participant) and day (SPEC section 10).

``compute`` is pure: spans in, a ``Report`` out. Each span is split at midnight in the given
time zone (zoneinfo: a day across a DST change is 23 or 25 hours long); the spans of a
group that may overlap (``Span.merge``: raw files cut from one recording) are united first,
so an hour is counted once. ``spans_from_db`` is the adapter: the archived items of the
state database (verified, or deleted or gone remotely after verification), each rebuilt by
its source's kind to find its device and participant. ``as_json``, ``as_csv`` and
``as_table`` render a report; ``e4sync.report_plot`` draws it.

Must not import: e4sync.cli, e4sync.sync, e4sync.sources.e4connect, matplotlib.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

BY = ("device", "participant")
UNKNOWN = "(unknown)"  # an item whose device, or whose participant, nobody knows
SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Span:
    """One archived item: when it began (unix seconds) and how long it lasted."""

    account: str
    group: str
    start: float
    seconds: float
    merge: bool = False  # may overlap others of its group: unite before counting


@dataclass(frozen=True, slots=True)
class Row:
    account: str
    group: str
    date: date
    hours: float
    items: int


@dataclass(frozen=True, slots=True)
class Total:
    group: str
    hours: float
    days: int  # days with data (hours > 0)
    longest_gap_days: int  # the longest run of days in the range without data


@dataclass
class Report:
    by: str
    timezone: str
    days: list[date]
    rows: list[Row]
    groups: list[Total]
    target_hours: float | None = None
    grid: dict[str, list[float]] = field(default_factory=dict)  # group -> hours per day

    def under_target(self, group: str) -> list[bool]:
        """Per day: under the daily target (False everywhere with no target)."""
        hours = self.grid.get(group, [])
        if not self.target_hours:
            return [False] * len(hours)
        return [h < self.target_hours for h in hours]


def local_day(ts: float, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(ts, zone).date()


def _midnight(day: date, zone: ZoneInfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def split_by_day(start: float, end: float, zone: ZoneInfo) -> list[tuple[date, float]]:
    """(day, seconds) for each local day [start, end) touches; a zero-length span gives its
    start day with 0 seconds."""
    day = local_day(start, zone)
    if end <= start:
        return [(day, 0.0)]
    out = []
    while True:
        next_midnight = _midnight(day + timedelta(days=1), zone)
        out.append((day, min(end, next_midnight) - max(start, _midnight(day, zone))))
        if end <= next_midnight:
            return out
        day += timedelta(days=1)
        start = next_midnight


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1]:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def compute(
    spans: Iterable[Span],
    *,
    by: str,
    timezone: str,
    first: date | None = None,
    last: date | None = None,
    groups: Iterable[str] = (),
    target_hours: float | None = None,
) -> Report:
    """Hours per (account, group, day) for the days ``first``..``last`` (both included;
    None: the first, the last day with data). ``groups`` are listed even with no data."""
    zone = ZoneInfo(timezone)
    spans = list(spans)
    seconds: dict[tuple[str, str, date], float] = defaultdict(float)
    items: dict[tuple[str, str, date], int] = defaultdict(int)
    merged: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for s in spans:
        end = s.start + max(s.seconds, 0.0)
        for day, _ in split_by_day(s.start, end, zone):
            items[(s.account, s.group, day)] += 1
        if s.merge:
            merged[(s.account, s.group)].append((s.start, end))
        else:
            for day, secs in split_by_day(s.start, end, zone):
                seconds[(s.account, s.group, day)] += secs
    for (account, group), intervals in merged.items():
        for lo, hi in _union(intervals):
            for day, secs in split_by_day(lo, hi, zone):
                seconds[(account, group, day)] += secs
    seen_days = sorted({k[2] for k in items})
    if first is None:
        first = seen_days[0] if seen_days else (last or datetime.now(zone).date())
    if last is None:
        last = seen_days[-1] if seen_days and seen_days[-1] >= first else first
    days = _days(first, last) if first <= last else []
    pairs = sorted({(s.account, s.group) for s in spans})
    names = sorted({g for _, g in pairs} | set(groups))
    rows = [
        Row(a, g, d, round(seconds.get((a, g, d), 0.0) / 3600, 6), items.get((a, g, d), 0))
        for a, g in pairs
        for d in days
    ]
    index = {d: i for i, d in enumerate(days)}
    grid = {g: [0.0] * len(days) for g in names}
    for r in rows:
        grid[r.group][index[r.date]] += r.hours
    totals = []
    for g in names:
        hours = grid[g]
        gap = longest = 0
        for h in hours:
            gap = gap + 1 if h <= 0 else 0
            longest = max(longest, gap)
        totals.append(Total(g, round(sum(hours), 6), sum(1 for h in hours if h > 0), longest))
    return Report(by, timezone, days, rows, totals, target_hours or None, grid)


# ---------------------------------------------------------------------------- the adapter


def spans_from_db(
    engine: Any,
    accounts: Sequence[tuple[str, str]],
    *,
    by: str,
    timezone: str,
    participants: Any = None,
) -> tuple[list[Span], list[str]]:
    """The archived items of ``accounts`` ((name, source) pairs) as spans, grouped ``by``
    device or participant, and the groups to list even with no data (the participants
    file's people, every device an account has archived)."""
    from sqlalchemy import select

    from e4sync import sources
    from e4sync.state.models import REMOTE_DELETED, REMOTE_GONE, VERIFIED, Account
    from e4sync.state.models import Session as SessionRow

    zone = ZoneInfo(timezone)
    kinds = {name: sources.kind(source) for name, source in accounts}
    spans: list[Span] = []
    with engine.connect() as conn:
        result = conn.execute(
            select(
                Account.name,
                SessionRow.recorded_at,
                SessionRow.duration,
                SessionRow.kind,
                SessionRow.remote_json,
                SessionRow.content_json,
                SessionRow.state,
                SessionRow.verified_at,
            )
            .join(Account, Account.id == SessionRow.account_id)
            .where(Account.name.in_(list(kinds)))
            .where(SessionRow.state.in_((VERIFIED, REMOTE_DELETED, REMOTE_GONE)))
        )
        for name, recorded_at, duration, kind_name, remote, content, state, verified in result:
            if state != VERIFIED and verified is None:
                continue  # gone before it was ever verified: not archived
            kind = kinds[name]
            if kind.timed_kinds is not None and kind_name not in kind.timed_kinds:
                continue
            if not recorded_at:
                continue  # when it was recorded is unknown
            start, seconds = float(recorded_at), float(duration or 0.0)
            span = _content_span(content)
            if span is not None:
                start, seconds = span
            try:
                item = kind.item_from_raw(json.loads(remote or "{}"))
            except ValueError:
                item = None
            fields = item.fields if item is not None else {}
            device = str(fields.get(kind.device_field) or fields.get("serial") or "") or UNKNOWN
            if by == "device":
                group = device
            else:
                group = str(fields.get("participant") or "")
                if not group and participants is not None:
                    group = participants.who(device, local_day(start, zone)) or ""
                group = group or UNKNOWN
            spans.append(Span(name, group, start, seconds, kind.merge_spans))
    listed: list[str] = []
    if by == "participant" and participants is not None:
        listed = participants.names()
    return spans, listed


def _content_span(content: str | None) -> tuple[float, float] | None:
    """The span the archived file's content gave (unix seconds, unrounded), if any."""
    if not content:
        return None
    try:
        span = json.loads(content).get("span") or {}
        return float(span["start_unix"]), float(span["seconds"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------------------- renderings


def as_json(report: Report) -> dict:
    return {
        "schema": SCHEMA,
        "by": report.by,
        "timezone": report.timezone,
        "rows": [
            {
                "account": r.account,
                "group": r.group,
                "date": r.date.isoformat(),
                "hours": r.hours,
                "items": r.items,
            }
            for r in report.rows
        ],
        "groups": [
            {
                "group": t.group,
                "hours": t.hours,
                "days": t.days,
                "longest_gap_days": t.longest_gap_days,
            }
            for t in report.groups
        ],
    }


def as_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["account", "group", "date", "hours", "items"])
    for r in report.rows:
        writer.writerow([r.account, r.group, r.date.isoformat(), f"{r.hours:.4f}", r.items])
    return out.getvalue()


def as_table(report: Report) -> str:
    """Days × groups with hours (a day under the target marked ``*``), then the totals."""
    names = [t.group for t in report.groups]
    if not names:
        return "no archived recordings\n"
    width = max(6, len(report.by), *(len(n) for n in names))
    lines = [f"hours per {report.by} and day ({report.timezone})"]
    lines.append("date        " + " ".join(n.rjust(width) for n in names))
    for i, day in enumerate(report.days):
        cells = []
        for n in names:
            h = report.grid[n][i]
            mark = "*" if report.under_target(n)[i] else " "
            cells.append((f"{h:.1f}" + mark).rjust(width))
        lines.append(f"{day.isoformat()}  " + " ".join(cells))
    lines.append("")
    lines.append(f"{report.by:<{width}}  {'hours':>8}  {'days':>5}  {'longest gap (days)':>18}")
    for t in report.groups:
        lines.append(f"{t.group:<{width}}  {t.hours:>8.1f}  {t.days:>5}  {t.longest_gap_days:>18}")
    if report.target_hours:
        lines.append(f"* under the daily target of {report.target_hours:g} hours")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the command


def report_for(cfg: Any, *, by: str, first: date | None = None, last: date | None = None) -> Report:
    """The report of ``cfg``'s accounts from its state database (``e4sync report``)."""
    from e4sync.participants import load_participants
    from e4sync.state.db import default_sqlite_url, open_db, sqlite_path

    people = load_participants(cfg.participants.file) if by == "participant" else None
    url = cfg.state.url or default_sqlite_url(cfg.state.dir)
    spans: list[Span] = []
    listed: list[str] = []
    path = sqlite_path(url)
    if path is None or Path(path).expanduser().exists():  # no pass yet: nothing archived
        engine = open_db(url)
        try:
            spans, listed = spans_from_db(
                engine,
                [(a.name, a.source) for a in cfg.accounts],
                by=by,
                timezone=cfg.archive.timezone,
                participants=people,
            )
        finally:
            engine.dispose()
    elif people is not None:
        listed = people.names()
    return compute(
        spans,
        by=by,
        timezone=cfg.archive.timezone,
        first=first,
        last=last,
        groups=listed,
        target_hours=cfg.report.target_hours,
    )
