"""What `e4sync run-once` shows while it runs: progress bars on a terminal (a real
pseudo-terminal, against the simulator with a bandwidth cap so the bytes take seconds to
arrive), with the log's lines above the bars and never through them; on a pipe, no bar at
all, only the log and the summary."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from e4sync.sources.e4connect.simulator import Faults, Simulator
from tests.conftest import archived, write_config
from tests.e2e.terminal import LOG_LINE, clean_env, run_on_terminal, screen_segments

pytest.importorskip("tqdm")

SESSIONS = 3
SIZE = 1_500_000  # above progress.BIG_FILE: each file gets a bar of its own
BANDWIDTH = 500_000  # bytes per second per response: each download takes about 3 s

BYTES = r"\d+(?:\.\d+)?[kMG]?B"
RATE = r"\d+(?:\.\d+)?[kMG]?B/s"


@pytest.fixture
def slow_sim():
    faults = Faults(bandwidth=BANDWIDTH)
    with Simulator(port=0, seed=5, sessions=SESSIONS, faults=faults, session_size=SIZE) as sim:
        yield sim


def test_a_terminal_shows_bytes_rate_and_files_with_the_log_above_the_bars(slow_sim, tmp_path):
    config = write_config(tmp_path, slow_sim.base_url)
    run = run_on_terminal("run-once", "--config", str(config))
    assert run.code == 0, run.raw[-3000:]
    assert len(archived(tmp_path / "archive")) == SESSIONS
    pieces = screen_segments(run.raw)

    # The pass's bar: bytes so far, a measured rate (not "?B/s") and the files done of due.
    pass_bars = [p for p in pieces if p.startswith("pass ") and not p.startswith("pass took")]
    assert pass_bars, run.raw[-3000:]
    measured = [p for p in pass_bars if re.search(rf"\b{BYTES}\b.*, {RATE}", p)]
    assert measured, pass_bars
    assert any(re.search(rf"/{SESSIONS} files", p) for p in pass_bars)
    # Once the first file is done the total is estimated (E4 Connect lists no sizes): a
    # percentage, the total and an ETA.
    assert any(re.search(rf"\d+%\|.*\| {BYTES}/~{BYTES}, {RATE}, ETA ~", p) for p in pass_bars)
    # One bar per big file, updated while its bytes arrive: several readings of one file.
    ids = {row["id"] for row in slow_sim.sessions()}
    per_file = [p for p in pieces if p.startswith("  ") and p.split()[0] in ids]
    assert per_file, run.raw[-3000:]
    readings = {p for p in per_file if p.split()[0] == per_file[0].split()[0]}
    assert len(readings) >= 3, readings

    # Every log line starts a line of its own and holds no bar; no bar holds a log line.
    logs = [p for p in pieces if LOG_LINE.search(p)]
    assert any("archived" in p for p in logs), logs
    for piece in logs:
        assert LOG_LINE.match(piece), f"a log line drawn into a bar: {piece!r}"
        assert not re.search(rf"{BYTES}, {RATE}|%\||\d files", piece), piece
    # The pass ends with its summary, then its elapsed time and throughput.
    tail = [p for p in pieces if p not in pass_bars and not p.startswith("  ")][-2:]
    assert tail[0].startswith(f"lab: {SESSIONS} listed") and f"{SESSIONS} downloaded" in tail[0]
    assert re.fullmatch(
        rf"pass took \d+\.\d s: {SESSIONS} downloaded, \d+\.\d MB at \d+\.\d [kM]B/s", tail[1]
    ), tail


def test_a_pipe_gets_no_bar_only_the_log_and_the_summary(slow_sim, tmp_path):
    config = write_config(tmp_path, slow_sim.base_url)
    run = subprocess.run(
        [sys.executable, "-m", "e4sync", "run-once", "--config", str(config)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    for stream in (run.stdout, run.stderr):
        assert "\r" not in stream and "\x1b" not in stream
        assert "B/s," not in stream and "%|" not in stream
    lines = run.stdout.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"lab: {SESSIONS} listed, {SESSIONS} new, {SESSIONS} downloaded")
    assert lines[1].startswith("pass took ") and f"{SESSIONS} downloaded" in lines[1]
    assert all(LOG_LINE.match(line) for line in run.stderr.splitlines()), run.stderr


def test_without_tqdm_a_terminal_gets_the_log_and_the_summary(sim, tmp_path):
    """tqdm is an optional extra (e4sync[progress]): without it nothing breaks."""
    config = write_config(tmp_path, sim.base_url)
    block = "import sys; sys.modules['tqdm'] = None; from e4sync.cli import main; sys.exit(main())"
    run = run_on_terminal("run-once", "--config", str(config), python_args=("-c", block))
    assert run.code == 0, run.raw[-3000:]
    pieces = screen_segments(run.raw)
    assert not any(p.startswith("pass ") and "files" in p for p in pieces), pieces
    assert any(p.startswith("lab: 5 listed") for p in pieces), pieces
    assert pieces[-1].startswith("pass took ")


def test_quiet_on_a_terminal_draws_nothing(sim, tmp_path):
    config = write_config(tmp_path, sim.base_url)
    run = run_on_terminal("run-once", "-q", "--config", str(config))
    assert run.code == 0, run.raw
    assert run.raw == ""
    assert len(archived(tmp_path / "archive")) == 5
