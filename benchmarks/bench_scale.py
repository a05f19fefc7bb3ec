"""benchmarks.bench_scale: memory of a pass over a very long session list.

A simulator lists ``mode.scale_sessions`` tiny sessions. Two passes are measured as
processes (peak RSS from ``wait4``):

1. the first pass, which records every session as new and queues them all for download;
   downloading 100,000 sessions would take many minutes and measure nothing new, so it is
   stopped with SIGTERM (as systemd would) once the simulator has served ``STOP_AFTER``
   downloads, after the whole queue has been built;
2. an idle pass over the same list with every row marked archived. Downloading them all
   first is what makes the pass idle in real life; here the rows are marked ``verified``
   directly in the state database (one SQL UPDATE), which is what that download leaves
   in the columns an idle pass reads.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

from benchmarks.harness import Mode, Result, SimProcess, Workdir, fmt_mb, fmt_s

TARGET_MB = 200.0
STOP_AFTER = 40


def run(mode: Mode, tmp: Path, ctx: dict) -> Result:
    n = mode.scale_sessions
    with SimProcess(sessions=n, session_size=1) as sim:
        wd = Workdir(tmp / "scale", sim.base_url)
        wd.migrate()

        def stop_after_some(pid: int, done: threading.Event) -> None:
            while not done.wait(0.25):
                if sim.requests().get("download", 0) >= STOP_AFTER and not done.is_set():
                    os.kill(pid, signal.SIGTERM)
                    return

        first = wd.run("run-once", "-q", during=stop_after_some)
        if first.code not in (0, 143):
            raise RuntimeError(f"first pass exited {first.code}\n{first.err[-2000:]}")
        recorded = _mark_archived(wd.db, wd.archive)
        if recorded != n:
            raise RuntimeError(f"the first pass recorded {recorded} of {n} sessions")
        before = sim.requests()
        idle = wd.run("run-once", "-q").check("idle run-once at scale")
        after = sim.requests()
        downloads = after.get("download", 0) - before.get("download", 0)
        if downloads:
            raise RuntimeError(f"the idle pass downloaded {downloads} sessions")
        wd.remove()
    peak = max(first.rss_mb, idle.rss_mb)
    return Result(
        key="scale",
        title=f"Scale: a pass over {n:,} listed sessions",
        measured=f"peak RSS {fmt_mb(first.rss_mb)} (first pass), {fmt_mb(idle.rss_mb)} (idle)",
        target=f"< {TARGET_MB:.0f} MB",
        met=(peak < TARGET_MB) if mode.judged else None,
        headers=["pass", "wall", "peak RSS"],
        rows=[
            [
                f"first: {n:,} new, all queued, stopped by SIGTERM after ~{STOP_AFTER} downloads",
                fmt_s(first.seconds),
                fmt_mb(first.rss_mb),
            ],
            [f"idle: {n:,} listed, all archived", fmt_s(idle.seconds), fmt_mb(idle.rss_mb)],
        ],
        notes=[
            "The first pass records every session as new and queues them all; downloading "
            f"{n:,} sessions would take long and show nothing new, so it is stopped with "
            f"SIGTERM (as systemd would) once the simulator has served {STOP_AFTER} downloads, "
            "after the whole queue has been built.",
            "For the idle pass every row is then marked `verified` by one SQL UPDATE on the "
            "state database, and a sparse file of the recorded size is put at each path: what "
            "downloading them all would leave in what an idle pass reads (the columns, and "
            "one stat per archived copy; the idle benchmark does it with real downloads at "
            "20,000).",
        ],
    )


def _mark_archived(db: Path, archive: Path) -> int:
    """Every row archived, as downloading them all would leave it: the columns an idle
    pass reads, and a file of the recorded size at each path (sparse: the idle pass stats
    every archived copy but reads none)."""
    with sqlite3.connect(db, timeout=30) as conn:
        now = time.time()
        conn.execute(
            "UPDATE sessions SET state = 'verified', local_path = 'lab/' || remote_id || '.zip',"
            " size = 1900, sha256 = printf('%064d', id), downloaded_version ="
            " version, downloaded_at = ?, verified_at = ?, next_attempt_at = NULL,"
            " attempts = 0, last_error = NULL",
            (now, now),
        )
        (count,) = conn.execute("SELECT count(*) FROM sessions").fetchone()
        paths = [row[0] for row in conn.execute("SELECT local_path FROM sessions")]
    for rel in paths:
        path = archive / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(1900)
    return count
