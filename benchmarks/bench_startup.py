"""benchmarks.bench_startup: how long the program takes to start.

``e4sync --help`` and ``e4sync status`` (on the large idle archive when the idle benchmark
left one, else on a fresh migrated database), each run ``mode.startup_runs`` times as a
process; the bare interpreter (``python -c pass``) is the floor. ``status`` needs no network.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness import PYTHON, Mode, Result, Workdir, e4sync_argv, fmt_s, median, run_child

TARGET_SECONDS = 0.3


def run(mode: Mode, tmp: Path, ctx: dict) -> Result:
    wd: Workdir | None = ctx.get("idle_workdir")
    where = "the idle benchmark's archive"
    if wd is None:
        # No server is contacted by `status`; the address only has to be valid.
        wd = Workdir(tmp / "startup", "http://127.0.0.1:9/connect")
        wd.migrate()
        where = "a fresh database"
    commands = {
        "python -c pass (floor)": [PYTHON, "-c", "pass"],
        "e4sync --help": [*e4sync_argv(), "--help"],
        "e4sync --version": [*e4sync_argv(), "--version"],
        f"e4sync status ({where})": wd.argv("status"),
    }
    results = {}
    for name, argv in commands.items():
        # `status` exits 1 while an account is NOT OK, as an account no pass has served is.
        ok = (0, 1) if name.startswith("e4sync status") else (0,)
        runs = [run_child(argv).check(name, ok) for _ in range(mode.startup_runs)]
        results[name] = (
            median([r.seconds for r in runs]),
            min(r.seconds for r in runs),
            median([r.rss_mb for r in runs]),
        )
    help_s = results["e4sync --help"][0]
    status_s = results[f"e4sync status ({where})"][0]
    return Result(
        key="startup",
        title="Start-up: short commands, as processes",
        measured=f"--help {fmt_s(help_s)}, status {fmt_s(status_s)}",
        target=f"both < {TARGET_SECONDS} s",
        met=(help_s < TARGET_SECONDS and status_s < TARGET_SECONDS) if mode.judged else None,
        headers=["command", "median", "best", "peak RSS"],
        rows=[
            [name, fmt_s(med), fmt_s(best), f"{rss:.0f} MB"]
            for name, (med, best, rss) in results.items()
        ],
        notes=[f"{mode.startup_runs} runs of each; wall clock of the whole process."],
    )
