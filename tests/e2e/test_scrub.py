"""The scrub: a real `e4sync run` daemon with ``[archive] scrub_interval = "1s"`` re-hashes the
archive on its own; a byte flipped on disk is logged as ``changed`` with the file's path,
and finding it costs no request to the platform (the simulator's request log proves it).
What it finds is marked on the session's row (due to be downloaded again by the next pass),
so `status` and the metrics say the account is not OK, naming the file.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

from e4sync.sources.e4connect.simulator import Simulator
from tests.conftest import archived, write_config

SESSIONS = 3


class Lines:
    """The daemon's stderr, line by line, read by a thread: waiting for a line blocks on a
    queue (an event), never on a sleep."""

    def __init__(self, stream):
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r}:\n{''.join(self.seen)[-3000:]}"
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"the daemon ended:\n{''.join(self.seen)[-3000:]}"
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match


def test_the_scrub_names_a_flipped_byte_without_asking_the_platform(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("E4SYNC_", "E4_"))
        and k not in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "JOURNAL_STREAM")
    }
    with Simulator(port=0, seed=61, sessions=SESSIONS, session_size=30_000) as sim:
        config = write_config(
            tmp_path,
            sim.base_url,
            archive={"scrub_interval": "1s"},
            download=None,
            schedule={"interval": "1h", "jitter": "0s"},
            monitor={"metrics_textfile": tmp_path / "e4sync.prom"},
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "e4sync", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lines = Lines(proc.stderr)
            # The first pass archives every session; a later scrub finds them all whole.
            lines.wait_for(rf"scrub: {SESSIONS} archived files re-hashed, all match")
            requests = sim.stats()["requests"]
            zips = archived(tmp_path / "archive")
            victim = sorted(zips.values())[0]
            data = bytearray(victim.read_bytes())
            data[len(data) // 3] ^= 0x01
            victim.write_bytes(bytes(data))
            flipped_at = time.monotonic()

            match = lines.wait_for(r"scrub: changed: (.+)$")
            assert match.group(1).strip() == str(victim)
            # Found on disk alone: not one request since, least of all a new download.
            assert sim.stats()["requests"] == requests
            assert not [e for e in sim.request_log() if e["t"] >= flipped_at]
            # The damaged copy is left for a person to look at, not replaced behind their back.
            assert victim.read_bytes() == bytes(data)
            # Marked on its row: due to be downloaded again by the next pass.
            with sqlite3.connect(tmp_path / "state" / "state.db") as db:
                marked = db.execute(
                    "SELECT remote_id, state, local_problem FROM sessions "
                    "WHERE local_problem IS NOT NULL"
                ).fetchall()
            victim_id = next(sid for sid, path in zips.items() if path == victim)
            assert marked == [(victim_id, "new", f"changed: {victim}")]
            status = subprocess.run(
                [sys.executable, "-m", "e4sync", "status", "--json", "--config", str(config)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            [lab] = json.loads(status.stdout)["accounts"]
            assert lab["healthy"] is False and status.returncode == 1, status.stderr
            assert lab["local_problems"] == [
                {"session": victim_id, "state": "new", "problem": f"changed: {victim}"}
            ]
            # The scrub after the one that marked it finds it again: by then the first one
            # has written the metrics.
            lines.wait_for(r"scrub: changed: ")
            prom = (tmp_path / "e4sync.prom").read_text()
            assert 'e4sync_local_problems{account="lab"} 1' in prom
            assert 'e4sync_pass_downloads{account="lab"} 3' in prom, "the pass's figures kept"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert proc.returncode == 0
