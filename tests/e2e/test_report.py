"""`e4sync report` end to end (SPEC section 10): real passes against the E4 Connect simulator
and the EmbracePlus S3 delivery on 127.0.0.1, then the command, its numbers compared with
hours computed here, independently, from the platform's own listing (E4: each listed
start_time and duration; EmbracePlus: each seeded Avro file's span, read with fastavro).
Sessions across midnight, across the DST change of Europe/Berlin, of zero length; a
wristband handed over mid-range; overlapping ranges refused; the JSON and CSV shapes; the
pictures; the HTML page opened in headless chromium when it is installed (.ci/run installs
it), else parsed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from collections import defaultdict
from datetime import date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import write_config, write_secret

TZ = "Europe/Berlin"
BERLIN = ZoneInfo(TZ)


def local(*args: int) -> int:
    return int(datetime(*args, tzinfo=BERLIN).timestamp())


def serial(label: int) -> str:  # as printed on an E4 wristband
    return f"A{label:05X}"


def hours_by_day(start: float, seconds: float) -> dict[date, float]:
    """Independently: each local day's share of [start, start+seconds), day by day."""
    out: dict[date, float] = {}
    day = datetime.fromtimestamp(start, BERLIN).date() - timedelta(days=1)
    end = start + seconds
    while True:
        lo = datetime.combine(day, datetime.min.time(), BERLIN).timestamp()
        if lo > end:
            break
        nxt = day + timedelta(days=1)
        hi = datetime.combine(nxt, datetime.min.time(), BERLIN).timestamp()
        overlap = min(end, hi) - max(start, lo)
        if overlap > 0 or (seconds == 0 and lo <= start < hi):
            out[day] = max(overlap, 0) / 3600
        day = nxt
    return out


# The sessions the E4 simulator lists: (label, start, duration in seconds).
A, B, C = 2588, 4096, 7777
SESSIONS = [
    (A, local(2026, 3, 27, 9), 3 * 3600),
    (A, local(2026, 3, 28, 22), 4 * 3600),  # across midnight and the DST change (real 4 h)
    (A, local(2026, 3, 29, 23), 2 * 3600),  # starts P1's last day, ends on P2's first
    (A, local(2026, 3, 30, 10), 0),  # zero-length
    (A, local(2026, 3, 31, 8), 5400),
    (B, local(2026, 3, 30, 23, 30), 3600),  # across midnight
    (B, local(2026, 4, 2, 12), 1800),
]
OTHER = (C, local(2026, 3, 29, 1), 3 * 3600)  # the other account's: across the DST jump
# Wristband A is handed from P1 to P2 on 2026-03-30; P4 never recorded.
PARTICIPANTS = (
    "serial,participant,from,to\n"
    f"{serial(A)},P1,2026-03-01,2026-03-29\n"
    f"{serial(A)},P2,2026-03-30,\n"
    f"{serial(B)},P3,2026-03-01,\n"
    "A0FFFF,P4,2026-03-01,\n"
)
OWNER = {
    (serial(A), True): "P1",
    (serial(A), False): "P2",
    (serial(B), True): "P3",
    (serial(B), False): "P3",
}


@pytest.fixture
def e4lab(tmp_path: Path, run_cli):
    from e4sync.sources.e4connect.simulator import Simulator

    with Simulator(port=0, seed=1, sessions=0) as sim:
        for label, start, duration in SESSIONS:
            sim.add_session(start_time=start, duration=duration, label=label)
        # A second account with a wristband of its own (in no participants row).
        sim.add_account("other@example.org", "pw2")
        sim.add_session("other@example.org", start_time=OTHER[1], duration=OTHER[2], label=C)
        (tmp_path / "participants.csv").write_text(PARTICIPANTS)
        config = write_config(
            tmp_path,
            sim.base_url,
            archive={"timezone": TZ},
            accounts=[("lab", "demo@example.org", "demo"), ("other", "other@example.org", "pw2")],
            extra='[participants]\nfile = "participants.csv"\n\n[report]\ntarget_hours = 3\n',
        )
        run_cli("--config", str(config), "run-once")
        yield config, sim.sessions()


def expected(listing, group_of) -> dict[tuple[str, date], float]:
    want: dict[tuple[str, date], float] = defaultdict(float)
    for row in listing:
        start, seconds = int(row["start_time"]), float(row["duration"])
        group = group_of(row, start)
        for day, h in hours_by_day(start, seconds).items():
            want[(group, day)] += h
    return want


def report_json(run_cli, config: Path, *args: str) -> dict:
    return json.loads(run_cli("--config", str(config), "report", "--json", *args).out)


def test_hours_per_device_per_day_are_the_listed_durations_split_at_local_midnight(
    e4lab, run_cli
) -> None:
    config, listing = e4lab
    assert len(listing) == len(SESSIONS)
    doc = report_json(run_cli, config, "--account", "lab")
    assert doc["schema"] == 1 and doc["by"] == "device" and doc["timezone"] == TZ
    got = {(r["group"], date.fromisoformat(r["date"])): r["hours"] for r in doc["rows"]}
    want = expected(listing, lambda row, _: serial(int(row["label"])))
    for key, hours in want.items():
        assert got[key] == pytest.approx(hours, abs=1e-6), key
    assert sum(got.values()) == pytest.approx(sum(d for *_, d in SESSIONS) / 3600)
    # The DST day: 22:00 CET + 4 h ends 03:00 CEST; 2 h on the 28th, 2 h (not 3) after.
    assert got[(serial(A), date(2026, 3, 28))] == pytest.approx(2.0)
    assert got[(serial(A), date(2026, 3, 29))] == pytest.approx(2.0 + 1.0)
    # The zero-length session is an item with no hours.
    (zero,) = [r for r in doc["rows"] if r["group"] == serial(A) and r["date"] == "2026-03-30"]
    assert zero["items"] == 2 and zero["hours"] == pytest.approx(1.0)
    days = [r["date"] for r in doc["rows"] if r["group"] == serial(A)]
    assert days[0] == "2026-03-27" and days[-1] == "2026-04-02"  # every day of the range
    totals = {g["group"]: g for g in doc["groups"]}
    assert totals[serial(B)] == {
        "group": serial(B),
        "hours": pytest.approx(1.5),
        "days": 3,
        "longest_gap_days": 3,  # 03-27..03-29
    }
    assert set(doc["rows"][0]) == {"account", "group", "date", "hours", "items"}
    assert {r["account"] for r in doc["rows"]} == {"lab"}


def test_every_account_is_reported_unless_one_is_named(e4lab, run_cli) -> None:
    config, _ = e4lab
    doc = report_json(run_cli, config)
    assert {r["account"] for r in doc["rows"]} == {"lab", "other"}
    other = [r for r in doc["rows"] if r["account"] == "other"]
    assert {r["group"] for r in other} == {serial(C)}
    # 01:00 CET + 3 h of real time: 05:00 CEST, all on the 29th.
    assert sum(r["hours"] for r in other) == pytest.approx(3.0)
    assert [r["hours"] for r in other if r["date"] == "2026-03-29"] == [pytest.approx(3.0)]
    by_person = report_json(run_cli, config, "--by", "participant")
    unknown = {g["group"]: g for g in by_person["groups"]}["(unknown)"]
    assert unknown["hours"] == pytest.approx(3.0)  # its wristband is in no row
    run_cli("--config", str(config), "report", "--account", "nope", exit_code=2)


def test_from_and_to_pick_days_and_a_group_without_data_is_listed_with_zeros(
    e4lab, run_cli
) -> None:
    config, _ = e4lab
    doc = report_json(
        run_cli, config, "--account", "lab", "--from", "2026-04-01", "--to", "2026-04-03"
    )
    assert sorted({r["date"] for r in doc["rows"]}) == ["2026-04-01", "2026-04-02", "2026-04-03"]
    totals = {g["group"]: g for g in doc["groups"]}
    assert totals[serial(A)] == {
        "group": serial(A),
        "hours": 0,
        "days": 0,
        "longest_gap_days": 3,
    }
    assert totals[serial(B)]["hours"] == pytest.approx(0.5)


def test_per_participant_a_session_belongs_to_who_had_the_wristband_on_its_start_day(
    e4lab, run_cli
) -> None:
    config, listing = e4lab
    doc = report_json(run_cli, config, "--by", "participant")
    assert doc["by"] == "participant"
    handover = local(2026, 3, 30, 0)
    got = {(r["group"], date.fromisoformat(r["date"])): r["hours"] for r in doc["rows"]}
    want = expected(
        listing, lambda row, start: OWNER[(serial(int(row["label"])), start < handover)]
    )
    for key, hours in want.items():
        assert got[key] == pytest.approx(hours, abs=1e-6), key
    # P1's session of the 29th ends on the 30th, still P1's.
    assert got[("P1", date(2026, 3, 30))] == pytest.approx(1.0)
    assert ("P2", date(2026, 3, 29)) not in want
    totals = {g["group"]: g for g in doc["groups"]}
    assert totals["P4"]["hours"] == 0 and totals["P4"]["days"] == 0  # listed, with zeros
    assert totals["P2"]["hours"] == pytest.approx(1.5)


def test_overlapping_ranges_for_one_serial_are_refused_naming_the_rows(
    e4lab, run_cli, tmp_path: Path
) -> None:
    config, _ = e4lab
    (tmp_path / "participants.csv").write_text(
        PARTICIPANTS.replace("2026-03-29\n", "2026-03-30\n", 1)
    )
    result = run_cli("--config", str(config), "report", "--by", "participant", exit_code=78)
    assert "participants.csv: rows 2 and 3" in result.err
    assert serial(A) in result.err and "P1" in result.err and "P2" in result.err


def test_csv_and_table(e4lab, run_cli) -> None:
    config, _ = e4lab
    out = run_cli("--config", str(config), "report", "--csv").out
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["account", "group", "date", "hours", "items"]
    as_json = report_json(run_cli, config)["rows"]
    assert len(rows) - 1 == len(as_json)
    for line, r in zip(rows[1:], as_json, strict=True):
        assert line[:3] == [r["account"], r["group"], r["date"]]
        assert float(line[3]) == pytest.approx(r["hours"], abs=1e-4)
        assert int(line[4]) == r["items"]
    table = run_cli("--config", str(config), "report").out
    assert serial(A) in table and "2026-03-28" in table and "longest gap" in table
    assert "under the daily target of 3 hours" in table


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.svgs = 0
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("data:"):
                self.urls.append(value)
        if tag == "img":
            self.imgs.append(dict(attrs).get("src") or "")
        if tag == "svg":
            self.svgs += 1


def test_pictures_png_svg_and_a_self_contained_html_page(e4lab, run_cli, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    config, _ = e4lab
    png, svg, page = tmp_path / "h.png", tmp_path / "h.svg", tmp_path / "r.html"
    run_cli("--config", str(config), "report", "--png", str(png))
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    run_cli("--config", str(config), "report", "--svg", str(svg))
    assert b"<svg" in svg.read_bytes()
    run_cli("--config", str(config), "report", "--by", "participant", "--html", str(page))
    text = page.read_text()
    parser = _Page()
    parser.feed(text)
    assert parser.urls == []  # nothing to fetch: no src or href but data: URIs
    assert parser.imgs and parser.imgs[0].startswith("data:image/png;base64,")
    # No http(s) URL anywhere but the SVG namespace matplotlib may write.
    assert not re.findall(r"https?://(?!www\.w3\.org/)", text)
    assert "P1" in text and "P4" in text and "longest gap" in text
    _open_in_chromium(page, tmp_path)


# Chromium's own background requests (time, accounts, the spelling dictionary), in its net
# log whatever the page; ~notfound is where --host-resolver-rules sends every host.
_BROWSER_OWN = re.compile(r"^https?://(?:(?:[\w-]+\.)*(?:google|gvt1)\.com\b|~notfound)")


def _open_in_chromium(page: Path, tmp_path: Path) -> None:
    """Headless chromium loads the page with the network cut (every host resolves to
    nowhere) and a net log on: the page makes no request, logs nothing to the console, and
    renders the heatmap (a screenshot that is not blank, the image element in the DOM)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        # Parsed above; .ci/run installs chromium and sets E4SYNC_REQUIRE_CHROMIUM.
        assert not os.environ.get("E4SYNC_REQUIRE_CHROMIUM"), "chromium is not installed"
        return
    netlog = tmp_path / "net.json"
    common = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        f"--log-net-log={netlog}",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ]
    shot = tmp_path / "shot.png"
    ran = subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1400,900", page.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "CONSOLE" not in ran.stderr, ran.stderr
    urls = set(re.findall(r"https?://[^\"\\ ]+", netlog.read_text()))
    assert {u for u in urls if not _BROWSER_OWN.match(u)} == set()
    from PIL import Image

    with Image.open(shot) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is blank"
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'id="heatmap"' in dom and 'id="totals"' in dom


# ---------------------------------------------------------------------------- EmbracePlus


def avro_span(data: bytes) -> tuple[float, float]:
    """Independently, from the file: (start, end) over every stream with samples."""
    import fastavro

    (record,) = list(fastavro.reader(io.BytesIO(data)))
    starts, ends = [], []
    for stream in record["rawData"].values():
        if isinstance(stream, dict) and "timestampStart" in stream:
            n = len(stream.get("values") or stream.get("x") or [])
            if n and stream["samplingFrequency"] > 0:
                starts.append(stream["timestampStart"] / 1e6)
                ends.append(stream["timestampStart"] / 1e6 + n / stream["samplingFrequency"])
    return min(starts), max(ends)


def test_embraceplus_hours_are_the_union_of_the_avro_files_spans(tmp_path: Path, run_cli) -> None:
    from e4sync.sources.embraceplus.simulator import S3Delivery

    with S3Delivery(participants=["P-01", "P-02"], days=2, raw_per_day=3, metrics=()) as s3:
        first = s3.participants[0]
        raws = [k for k in s3.keys(s3.prefix) if k.endswith(".avro")]
        # One more file overlapping the first one's span: counted once.
        base = min(int(re.search(r"_(\d+)\.avro$", k)[1]) for k in raws if first.id in k)
        raws.append(s3.add_raw_file(first, base + 30))
        secret = write_secret(tmp_path / "s3.secret", s3.full.secret_access_key)
        account = {
            "name": "study",
            "source": "embraceplus",
            "bucket": s3.bucket,
            "prefix": s3.prefix,
            "endpoint_url": s3.endpoint_url,
            "access_key_id": s3.full.access_key_id,
            "secret_access_key_file": str(secret),
            "lookback": "3d",
        }
        lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in account.items())
        config = tmp_path / "config.toml"
        config.write_text(
            f'[archive]\nroot = "{tmp_path / "archive"}"\ntimezone = "{TZ}"\n\n'
            f'[state]\ndir = "{tmp_path / "state"}"\n\n[download]\nbackoff = "0s"\n\n'
            f"[[account]]\n{lines}"
        )
        run_cli("--config", str(config), "run-once")
        spans = defaultdict(list)
        for key in raws:
            who = next(p for p in s3.participants if f"-{p.id}_" in key)
            spans[who].append(avro_span(s3.read(key)))
    want: dict[tuple[str, date], float] = defaultdict(float)
    for who, intervals in spans.items():
        merged: list[list[float]] = []
        for lo, hi in sorted(intervals):
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        for lo, hi in merged:
            for day, h in hours_by_day(lo, hi - lo).items():
                want[(who.id, day)] += h
    assert (
        sum(hi - lo for lo, hi in spans[first])
        > sum(  # the overlap is real
            h for (g, _), h in want.items() if g == first.id
        )
        * 3600
        + 1
    )
    assert len(want) >= 2 and len(raws) >= 7, (want, raws)
    for by, name in (("participant", lambda p: p.id), ("device", lambda p: p.serial)):
        doc = report_json(run_cli, config, "--by", by)
        got = {(r["group"], r["date"]): r for r in doc["rows"]}
        for p in s3.participants:
            for (pid, day), hours in want.items():
                if pid == p.id:
                    row = got[(name(p), day.isoformat())]
                    assert row["hours"] == pytest.approx(hours, abs=1e-5)
                    assert row["account"] == "study"
        total = sum(want.values())
        assert sum(g["hours"] for g in doc["groups"]) == pytest.approx(total, abs=1e-4)


def test_without_matplotlib_a_picture_is_one_line_and_exit_2(
    e4lab, run_cli, tmp_path: Path, monkeypatch
) -> None:
    import sys

    config, _ = e4lab
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    result = run_cli(
        "--config", str(config), "report", "--png", str(tmp_path / "x.png"), exit_code=2
    )
    assert result.err.strip() == (
        "e4sync: error: drawing the report needs matplotlib: pip install 'e4sync[report]'"
    )
    assert not (tmp_path / "x.png").exists()
    run_cli("--config", str(config), "report", "--json")  # the numbers need no matplotlib


def test_participant_is_a_layout_placeholder(tmp_path: Path, run_cli) -> None:
    from e4sync.sources.e4connect.simulator import Simulator

    with Simulator(port=0, seed=1, sessions=0) as sim:
        for label, start, duration in [*SESSIONS, (C, local(2026, 3, 29, 1), 60)]:
            sim.add_session(start_time=start, duration=duration, label=label)
        (tmp_path / "participants.csv").write_text(PARTICIPANTS)
        config = write_config(
            tmp_path,
            sim.base_url,
            archive={"timezone": TZ, "layout": "{participant}/{start_time}_{device_serial}.zip"},
            extra='[participants]\nfile = "participants.csv"\n',
        )
        run_cli("--config", str(config), "run-once")
        listing = sim.sessions()
    handover = local(2026, 3, 30, 0)
    want = {
        f"{OWNER.get((serial(int(r['label'])), int(r['start_time']) < handover), '_')}/"
        f"{r['start_time']}_{serial(int(r['label']))}.zip"
        for r in listing
    }
    got = {p.relative_to(tmp_path / "archive").as_posix() for p in tmp_path.rglob("*.zip")}
    assert got == want
    assert any(p.startswith("_/") for p in got)  # the wristband in no row
