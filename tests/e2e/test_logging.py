"""Quiet when quiet, and a log a machine can read: `run-once -q` prints nothing after a good
pass (the cron recipe in docs/getting-started.md relies on it) and says a bad one; the
daemon logs one summary line per pass; `--log-level` and `--log-format json`; urllib3's
retry warnings as one e4sync line; a command a person runs logs in silently unless -v."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

from tests.conftest import REPO, write_config
from tests.e2e.terminal import LOG_LINE, clean_env

USER = "demo@example.org"


def e4sync(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "e4sync", *argv],
        env=clean_env(env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def cron_line() -> str:
    text = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    (line,) = [x.strip() for x in text.splitlines() if x.strip().startswith("*/15 * * * *")]
    return line


def test_the_cron_recipe_is_quiet_after_a_good_pass_and_says_a_bad_one(sim, tmp_path):
    config = write_config(tmp_path, sim.base_url)
    words = cron_line().split()[5:]  # the command cron runs, after the five time fields
    assert words[0].endswith("/e4sync") and words[1:] == ["run-once", "-q"], words
    first = e4sync("run-once", "-q", "--config", str(config))
    assert first.returncode == 0
    assert (first.stdout, first.stderr) == ("", ""), "cron would mail this"
    assert len(list((tmp_path / "archive").rglob("*.zip"))) == 5
    again = e4sync("run-once", "-q", "--config", str(config))
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")

    # A bad pass is said: the error on stderr, the report on stdout, a non-zero code.
    bad = write_config(tmp_path, sim.base_url, accounts=[("lab", USER, "wrong")])
    failed = e4sync("run-once", "-q", "--config", str(bad))
    assert failed.returncode == 77
    assert "refused" in failed.stderr and "lab:" in failed.stdout


def test_json_log_lines_are_one_object_each_and_hold_no_secret(sim, tmp_path):
    config = write_config(tmp_path, sim.base_url)
    run = e4sync("run-once", "-vv", "--log-format", "json", "--config", str(config))
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) > 5
    records = [json.loads(line) for line in lines]
    for record in records:
        assert set(record) == {"time", "level", "logger", "message"}, record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    levels = {r["level"] for r in records}
    assert {"INFO", "DEBUG"} <= levels
    assert any("archived" in r["message"] for r in records)
    assert "demo" not in run.stderr.replace(USER, ""), "the password (the simulator's)"


def test_log_level_decides_what_is_shown(sim, tmp_path):
    config = write_config(tmp_path, sim.base_url)
    quiet = e4sync("run-once", "--log-level", "warning", "--config", str(config))
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "5 listed" in quiet.stdout
    # A command a person runs logs warnings only by default; --log-level info shows more.
    loud = e4sync("whoami", "--log-level", "info", "--config", str(config))
    assert loud.returncode == 0
    assert re.search(r" INFO [\w.]+: logged in to ", loud.stderr), loud.stderr


def test_a_command_logs_in_silently_unless_verbose(sim, tmp_path):
    config = write_config(tmp_path, sim.base_url)
    plain = e4sync("whoami", "--config", str(config))
    assert plain.returncode == 0 and plain.stdout.strip()
    assert plain.stderr == "", plain.stderr
    verbose = e4sync("whoami", "-v", "--config", str(config))
    assert verbose.returncode == 0
    assert re.search(r" INFO [\w.]+: logged in to ", verbose.stderr), verbose.stderr
    # A pass still says it at its default level (the journal, a cron mail without -q).
    run = e4sync("run-once", "--config", str(config))
    assert "logged in to" in run.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_urllib3_retry_warnings_become_one_e4sync_line(tmp_path):
    config = write_config(tmp_path, f"http://127.0.0.1:{closed_port()}/connect")
    run = e4sync("whoami", "--config", str(config))
    assert run.returncode == 75, run.stderr
    assert "Retry(" not in run.stderr and "object at 0x" not in run.stderr, run.stderr
    retried = [line for line in run.stderr.splitlines() if " e4sync.http: " in line]
    assert retried, run.stderr
    for line in retried:
        assert LOG_LINE.match(line)
        assert re.search(r"connection broken \(NewConnectionError: .*refused.*\); retrying /", line)
    assert any(line.startswith("e4sync: error: ") for line in run.stderr.splitlines())


def test_the_daemon_logs_a_summary_line_for_each_pass(sim, tmp_path):
    config = write_config(tmp_path, sim.base_url, schedule={"interval": "1h", "jitter": "0s"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "e4sync", "run", "--config", str(config)],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if "pass finished in" in line:
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    (summary,) = [line for line in lines if "pass finished in" in line]
    assert re.search(
        r" INFO e4sync\.daemon: pass finished in \d+\.\d s: 5 listed, 5 new, 5 downloaded "
        r"\(\d+\.\d [kM]B at \d+\.\d [kM]?B/s\), 0 failed, 0 deleted remotely; 1 account$",
        summary,
    ), summary
