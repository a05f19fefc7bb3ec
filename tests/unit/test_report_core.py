"""e4sync.report's computation and the participants file (SPEC section 10), without a
database: spans split at local midnight (DST too), overlaps united, gaps and totals."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from e4sync.errors import ConfigError
from e4sync.participants import load_participants
from e4sync.report import Span, as_csv, as_json, compute, split_by_day

BERLIN = ZoneInfo("Europe/Berlin")


def ts(*args: int, zone=BERLIN) -> float:
    return datetime(*args, tzinfo=zone).timestamp()


def test_a_span_across_midnight_is_split_at_local_midnight() -> None:
    parts = split_by_day(ts(2026, 3, 1, 22), ts(2026, 3, 2, 3), BERLIN)
    assert parts == [(date(2026, 3, 1), 7200.0), (date(2026, 3, 2), 10800.0)]


def test_the_day_of_a_dst_change_has_23_hours() -> None:
    # 2026-03-29: clocks go from 02:00 to 03:00 in Berlin.
    parts = split_by_day(ts(2026, 3, 28, 12), ts(2026, 3, 30, 12), BERLIN)
    assert [(d, s / 3600) for d, s in parts] == [
        (date(2026, 3, 28), 12.0),
        (date(2026, 3, 29), 23.0),
        (date(2026, 3, 30), 12.0),
    ]


def test_a_zero_length_item_counts_as_an_item_with_no_hours() -> None:
    r = compute([Span("a", "A1", ts(2026, 3, 1, 10), 0)], by="device", timezone="Europe/Berlin")
    assert [(x.date, x.hours, x.items) for x in r.rows] == [(date(2026, 3, 1), 0.0, 1)]
    assert r.groups[0].days == 0


def test_merged_spans_count_an_overlap_once_and_gaps_are_days_without_data() -> None:
    spans = [
        Span("s", "P1", ts(2026, 3, 1, 10), 3600, merge=True),
        Span("s", "P1", ts(2026, 3, 1, 10, 30), 3600, merge=True),
        Span("s", "P1", ts(2026, 3, 5, 10), 1800, merge=True),
    ]
    r = compute(spans, by="participant", timezone="Europe/Berlin", groups=["P2"])
    assert r.days[0] == date(2026, 3, 1) and r.days[-1] == date(2026, 3, 5)
    totals = {t.group: t for t in r.groups}
    assert totals["P1"].hours == 2.0 and totals["P1"].days == 2
    assert totals["P1"].longest_gap_days == 3
    assert totals["P2"].hours == 0 and totals["P2"].longest_gap_days == 5
    doc = as_json(r)
    assert set(doc) == {"schema", "by", "timezone", "rows", "groups"}
    assert set(doc["rows"][0]) == {"account", "group", "date", "hours", "items"}
    assert as_csv(r).splitlines()[0] == "account,group,date,hours,items"


def test_participants_hand_over_and_overlaps(tmp_path: Path) -> None:
    f = tmp_path / "participants.csv"
    f.write_text(
        "serial,participant,from,to\nA01234,P1,2026-03-01,2026-03-10\nA01234,P2,2026-03-11,\n"
    )
    people = load_participants(f)
    assert people.who("A01234", date(2026, 3, 10)) == "P1"
    assert people.who("A01234", date(2026, 3, 11)) == "P2"
    assert people.who("A01234", date(2026, 2, 28)) is None
    f.write_text(
        "serial,participant,from,to\nA01234,P1,2026-03-01,2026-03-10\nA01234,P2,2026-03-10,\n"
    )
    with pytest.raises(ConfigError, match=r"participants.csv: rows 2 and 3"):
        load_participants(f)


def test_config_check_reads_the_participants_file(tmp_path: Path) -> None:
    from e4sync.config import load_config

    (tmp_path / "participants.csv").write_text(
        "serial,participant,from,to\nA01234,P1,2026-03-01,\nA01234,P2,2026-04-01,2026-04-02\n"
    )
    config = tmp_path / "config.toml"
    config.write_text(
        '[participants]\nfile = "participants.csv"\n\n[report]\ntarget_hours = 20\n\n'
        '[[account]]\nname = "lab"\nusername = "a@example.org"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    text = "\n".join([str(caught.value), *getattr(caught.value, "problems", [])])
    assert "[participants] file:" in text and "participants.csv: rows 2 and 3" in text
    (tmp_path / "participants.csv").write_text(
        "serial,participant,from,to\nA01234,P1,2026-03-01,\n"
    )
    cfg = load_config(config)
    assert cfg.participants.file == tmp_path / "participants.csv"
    assert cfg.report.target_hours == 20.0
