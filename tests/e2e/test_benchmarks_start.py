"""The benchmarks start: ``benchmarks/run.py --tiny --no-write`` runs every benchmark at a toy size.

CI checks only that each benchmark runs to the end and prints its summary row; the figures
at this size mean nothing (the real ones are in docs/benchmarks.md). Nothing is mocked: the
runner starts the simulator as its own process on 127.0.0.1, and e4sync, e4client, curl,
sha256sum and unzip as real child processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "benchmarks" / "run.py"
KEYS = ("throughput", "memory", "bigfile", "idle", "startup", "scale", "s3")

pytestmark = pytest.mark.slow


def _summary_rows(stdout: str) -> dict[str, str]:
    assert "\nSummary\n" in stdout, stdout[-3000:]
    table = stdout.split("\nSummary\n", 1)[1]
    rows = {}
    for line in table.splitlines():
        words = line.split()
        if words and words[0] in KEYS:
            rows[words[0]] = line
    return rows


def test_every_benchmark_starts_and_prints_its_row(tmp_path):
    docs = REPO / "docs" / "benchmarks.md"
    before = docs.read_bytes() if docs.exists() else None
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("E4SYNC_CONFIG", "E4_USER", "E4_PWD", "CREDENTIALS_DIRECTORY")
    }
    env["TMPDIR"] = str(tmp_path)  # the runner's work folder lands here, and is removed
    result = subprocess.run(
        [sys.executable, str(RUNNER), "--tiny", "--no-write"],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
        env=env,
    )
    output = result.stdout[-4000:] + "\n" + result.stderr[-4000:]
    assert result.returncode == 0, output
    rows = _summary_rows(result.stdout)
    assert sorted(rows) == sorted(KEYS), output
    for line in rows.values():
        assert "ERROR" not in line, line
        # Targets are judged only at full size; a tiny run says so instead of PASS/MISS.
        assert line.rstrip().endswith("n/a"), line
    # Each benchmark also printed its detail table before the summary.
    assert result.stdout.count("\n== ") == len(KEYS)
    assert (docs.read_bytes() if docs.exists() else None) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("e4sync-bench-")]


def test_unknown_benchmark_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(RUNNER), "--tiny", "--only", "nosuch"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "unknown benchmark" in result.stderr
