"""benchmarks.bench_memory: peak RSS while downloading one big session, by size.

For each size, a simulator holding one session of that size runs in its own process; e4sync
``run-once`` (fresh archive, migrated database) and e4client's ``download_session`` each run
as a child whose peak RSS comes from ``wait4``. An idle e4sync pass (nothing to download)
gives the floor: what the program costs before any byte of a session is read.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness import (
    PASSWORD,
    PYTHON,
    USER,
    Mode,
    Result,
    SimProcess,
    Workdir,
    child_env,
    fmt_mb,
    median,
    run_child,
)

TARGET_MB = 60.0
GROWTH_MB = 5.0  # "does not grow with size": largest minus smallest peak


def run(mode: Mode, tmp: Path, ctx: dict) -> Result:
    rows = []
    peaks: dict[int, float] = {}
    floors: list[float] = []
    for size in mode.memory_sizes:
        with SimProcess(sessions=1, session_size=size) as sim:
            sid = sim.sessions()[0]["id"]
            sim.warm([sid])
            e4s, e4c, idle = [], [], []
            for rep in range(mode.reps):
                wd = Workdir(tmp / f"mem-{size}-{rep}", sim.base_url)
                wd.migrate()
                m = wd.run("run-once", "-q").check("e4sync run-once")
                files = wd.archived_files()
                if len(files) != 1:
                    raise RuntimeError(f"e4sync archived {len(files)} files, wanted 1")
                actual = files[0].stat().st_size
                e4s.append(m.rss_mb)
                idle.append(wd.run("run-once", "-q").check("idle run-once").rss_mb)
                wd.remove()
                out = tmp / f"mem-e4client-{size}-{rep}"
                c = run_child(
                    [PYTHON, "-m", "benchmarks.e4client_loop", sim.base_url, str(out), sid],
                    env=child_env({"E4_USER": USER, "E4_PWD": PASSWORD}),
                )
                c.check("e4client download_session")
                e4c.append(c.rss_mb)
                for f in out.glob("*.zip"):
                    f.unlink()
            peaks[size] = median(e4s)
            floors.append(median(idle))
            rows.append(
                [
                    f"{actual / 1e6:.0f} MB",
                    fmt_mb(median(e4s)),
                    fmt_mb(median(idle)),
                    fmt_mb(median(e4s) - median(idle)),
                    fmt_mb(median(e4c)),
                    f"{median(e4c) / median(e4s):.1f}x",
                ]
            )
    largest = max(peaks)
    growth = peaks[largest] - peaks[min(peaks)]
    met = peaks[largest] <= TARGET_MB and growth <= GROWTH_MB
    return Result(
        key="memory",
        title="Memory: peak RSS of the client process while downloading one session",
        measured=f"e4sync {fmt_mb(peaks[largest])} at {largest // 1_000_000} MB "
        f"(+{growth:.1f} MB from {min(peaks) // 1_000_000} MB; floor "
        f"{fmt_mb(median(floors))})",
        target=f"<= {TARGET_MB:.0f} MB, flat in size (+<= {GROWTH_MB:.0f} MB)",
        met=met if mode.judged else None,
        headers=[
            "session",
            "e4sync peak",
            "e4sync idle pass",
            "e4sync download adds",
            "e4client peak",
            "e4client / e4sync",
        ],
        rows=rows,
        notes=[
            "Peak RSS (VmHWM via wait4's ru_maxrss) of the client process alone; the "
            "simulator runs in another process. Median of the repetitions.",
            "'idle pass' is the same e4sync command with nothing left to download: the "
            "cost of the interpreter and e4sync's imports before any session byte.",
        ],
    )
