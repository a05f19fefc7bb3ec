"""benchmarks.bench_bigfile: time to a verified, archived copy of one big session.

e4sync ``run-once`` (download, sha256 while writing, fsync, ZIP check, rename, sidecar,
database) against the shell way on the same file from the same simulator: ``curl`` logging
in through ``authenticate.php`` (cookie jar), ``curl`` downloading, then ``sha256sum`` and
``unzip -tq``, one after another. Every step is a timed child process; the shell total is
their sum. The form with the (demo) credentials goes to curl from a file, not argv.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.harness import (
    PASSWORD,
    USER,
    Mode,
    Result,
    SimProcess,
    Workdir,
    fmt_s,
    median,
    run_child,
)


def run(mode: Mode, tmp: Path, ctx: dict) -> Result:
    size = mode.big_size
    with SimProcess(sessions=1, session_size=size) as sim:
        sid = sim.sessions()[0]["id"]
        sim.warm([sid])
        e4s: list[float] = []
        steps: dict[str, list[float]] = {
            "login": [],
            "download": [],
            "sha256sum": [],
            "unzip -t": [],
        }
        for rep in range(mode.reps):
            wd = Workdir(tmp / f"big-{rep}", sim.base_url)
            wd.migrate()
            m = wd.run("run-once", "-q").check("e4sync run-once")
            files = wd.archived_files()
            if len(files) != 1:
                raise RuntimeError(f"e4sync archived {len(files)} files, wanted 1")
            sidecar = json.loads(files[0].with_suffix(".json").read_text())
            e4s.append(m.seconds)
            for name, seconds in _shell(sim, sid, tmp / f"curl-{rep}", sidecar["sha256"]):
                steps[name].append(seconds)
            actual = files[0].stat().st_size
            wd.remove()
    shell = [sum(vals) for vals in zip(*steps.values(), strict=True)]
    ratio = median(shell) / median(e4s)
    rows = [["e4sync run-once", fmt_s(median(e4s)), f"{actual / 1e6 / median(e4s):.0f} MB/s"]]
    rows += [[f"  {name}", fmt_s(median(v)), ""] for name, v in steps.items()]
    rows.append(
        [
            "curl + sha256sum + unzip -t",
            fmt_s(median(shell)),
            f"{actual / 1e6 / median(shell):.0f} MB/s",
        ]
    )
    return Result(
        key="bigfile",
        title=f"Big file: one {actual / 1e6:.0f} MB session to a verified, archived copy",
        measured=f"e4sync {fmt_s(median(e4s))} vs curl+sha256sum+unzip -t "
        f"{fmt_s(median(shell))} ({ratio:.2f}x)",
        target="e4sync no slower (>= 1.00x)",
        met=(median(e4s) <= median(shell)) if mode.judged else None,
        headers=["way", "median", "rate"],
        rows=rows,
        notes=[
            "The ZIP is pre-built in the simulator. Both ways log in first; e4sync also "
            "fsyncs, writes the sidecar and the state database."
        ],
    )


def _shell(sim: SimProcess, sid: str, work: Path, want_sha: str) -> list[tuple[str, float]]:
    work.mkdir(parents=True, exist_ok=True)
    jar, form, zip_path = work / "cookies.txt", work / "form", work / f"{sid}.zip"
    form.write_text(f"username={USER.replace('@', '%40')}&password={PASSWORD}")
    form.chmod(0o600)
    timed = []
    login = run_child(
        [
            "curl",
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "-c",
            str(jar),
            "-b",
            str(jar),
            "--data",
            f"@{form}",
            f"{sim.base_url}/authenticate.php",
        ]
    )
    timed.append(("login", login.check("curl login").seconds))
    get = run_child(
        [
            "curl",
            "-sS",
            "-f",
            "-b",
            str(jar),
            "-o",
            str(zip_path),
            f"{sim.base_url}/download.php?id={sid}",
        ]
    )
    timed.append(("download", get.check("curl download").seconds))
    digest = run_child(["sha256sum", str(zip_path)]).check("sha256sum")
    if digest.out.split()[0] != want_sha:
        raise RuntimeError("curl's file differs from e4sync's (sha256)")
    timed.append(("sha256sum", digest.seconds))
    timed.append(("unzip -t", run_child(["unzip", "-tq", str(zip_path)]).check("unzip").seconds))
    zip_path.unlink()
    return timed
