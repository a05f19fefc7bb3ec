#!/usr/bin/env python3
"""benchmarks/run.py: run every benchmark side by side and report the figures.

    .venv/bin/python benchmarks/run.py            # full sizes; writes docs/benchmarks.md
    .venv/bin/python benchmarks/run.py --quick    # smaller sizes, fewer repetitions; no write
    .venv/bin/python benchmarks/run.py --tiny --no-write   # seconds: do they all start? (CI)

Prints one detail table per benchmark and a summary table (one row per benchmark, starting
with its key). Without --quick/--tiny and without --no-write, writes docs/benchmarks.md with
the figures, the machine and the exact command, followed by benchmarks/findings.md. The
EmbracePlus benchmark (``s3``) has a section of its own there, with its own machine and
command: ``--only s3`` at full size rewrites that section alone and keeps the rest. Exits 1
if a benchmark could not run; a missed target is reported, not an error. Talks only to
127.0.0.1 (the simulators run as separate processes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: make `benchmarks` importable

BENCHMARKS = ("throughput", "memory", "bigfile", "idle", "startup", "scale", "s3")
"""Keys in run order; `startup` follows `idle` so that it can use the idle archive."""
OWN_SECTION = "s3"  # rendered in its own section of docs/benchmarks.md (EmbracePlus)
BEGIN, END = "<!-- embraceplus benchmark: begin -->", "<!-- embraceplus benchmark: end -->"


def main(argv: list[str] | None = None) -> int:
    import importlib

    from benchmarks.harness import MODES, Result, machine

    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    size.add_argument("--tiny", action="store_true", help="each benchmark at a tiny size (CI)")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--only", metavar="KEYS", help=f"comma-separated subset of {BENCHMARKS}")
    parser.add_argument("--reps", type=int, help="repetitions (default: by mode)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    mode = MODES["tiny" if args.tiny else "quick" if args.quick else "full"]
    if args.reps:
        import dataclasses

        mode = dataclasses.replace(mode, reps=args.reps)
    keys = BENCHMARKS if not args.only else tuple(k.strip() for k in args.only.split(","))
    unknown = [k for k in keys if k not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    command = "python benchmarks/run.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )

    tmp = Path(tempfile.mkdtemp(prefix="e4sync-bench-"))
    results: list[Result] = []
    failed: list[str] = []
    ctx: dict = {}
    started = time.monotonic()
    print(
        f"e4sync benchmarks, mode {mode.name}, {mode.reps} repetition(s); work in {tmp}", flush=True
    )
    try:
        for key in keys:
            t0 = time.monotonic()
            print(f"\n== {key} ...", flush=True)
            try:
                module = importlib.import_module(f"benchmarks.bench_{key}")
                result = module.run(mode, tmp / key, ctx)
            except Exception as exc:  # report and go on: one broken benchmark hides no other
                traceback.print_exc()
                failed.append(key)
                result = Result(key, key, f"ERROR: {exc}".splitlines()[0][:120], "", False)
            results.append(result)
            print(render_detail(result, markdown=False), flush=True)
            print(f"({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\nSummary")
    print(render_summary(results, markdown=False))
    total = time.monotonic() - started
    print(
        f"\n{len(results)} benchmark(s) in {total:.0f} s"
        + (f"; could not run: {', '.join(failed)}" if failed else "")
    )
    if mode.name == "full" and not args.no_write and not failed:
        path = REPO / "docs" / "benchmarks.md"
        info = machine()
        if not args.only:
            path.write_text(render_doc(results, info, command, mode.reps, total))
            print(f"wrote {path.relative_to(REPO)}")
        elif keys == (OWN_SECTION,) and path.exists():
            section = render_own_section(results[0], info, command, mode.reps, total)
            findings = REPO / "benchmarks" / "findings.md"
            text = findings.read_text() if findings.exists() else None
            path.write_text(splice(path.read_text(), section, text))
            print(f"wrote the EmbracePlus section of {path.relative_to(REPO)}")
    return 1 if failed else 0


def _table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def render_summary(results: list, markdown: bool) -> str:
    rows = [[r.key, r.measured, r.target, r.verdict] for r in results]
    return _table(["benchmark", "measured", "target", "verdict"], rows, markdown)


def render_detail(result, markdown: bool) -> str:
    parts = [f"### {result.title}" if markdown else result.title]
    if result.rows:
        parts.append(_table(result.headers, result.rows, markdown))
    if markdown and result.notes:
        parts.append("\n".join(f"- {note}" for note in result.notes))
    return "\n\n".join(parts) if markdown else "\n".join(parts)


def render_own_section(result, info: dict[str, str], command: str, reps: int, total: float) -> str:
    """The EmbracePlus section: its own date, command, machine (with rclone's and aws's
    versions), summary line and table, between markers so that a run of it alone can
    replace it."""
    from benchmarks.bench_s3 import versions

    today = dt.date.today().isoformat()
    info = {**info, **versions()}
    lines = [
        BEGIN,
        "## EmbracePlus (S3)",
        "",
        "e4sync against its loopback EmbracePlus delivery (moto's S3 on 127.0.0.1 behind a "
        "counting proxy, in its own process, in the real layout), side by side with "
        "`rclone copy --checksum` and `aws s3 sync` at the same number of parallel transfers. "
        "Written by the benchmark runner.",
        "",
        f"Run on {today} with:",
        "",
        "```",
        command.strip(),
        "```",
        "",
        f"{reps} repetitions of each timed step (medians shown); this benchmark took "
        f"{total / 60:.0f} minutes.",
        "",
        "### Machine",
        "",
        _table(["", ""], [[k, v] for k, v in info.items()], markdown=True),
        "",
        "### Summary",
        "",
        render_summary([result], markdown=True),
        "",
        render_detail(result, markdown=True),
        END,
    ]
    return "\n".join(lines)


def splice(doc: str, section: str, findings: str | None = None) -> str:
    """``doc`` with its EmbracePlus section replaced by ``section`` (or put before the
    findings when it has none), and its findings, from their heading to the end, replaced
    by ``findings`` when given."""
    marker = "## Findings"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + section + rest.split(END, 1)[1]
    elif marker in doc:
        head, rest = doc.split(marker, 1)
        doc = head + section + "\n\n" + marker + rest
    else:
        doc = doc.rstrip() + "\n\n" + section + "\n"
    if findings is not None and marker in doc:
        doc = doc[: doc.index(marker, doc.index(END))] + findings.rstrip() + "\n"
    return doc


def render_doc(results: list, info: dict[str, str], command: str, reps: int, total: float) -> str:
    today = dt.date.today().isoformat()
    findings = REPO / "benchmarks" / "findings.md"
    own = [r for r in results if r.key == OWN_SECTION]
    results = [r for r in results if r.key != OWN_SECTION]
    lines = [
        "# Benchmarks",
        "",
        "e4sync measured side by side with the older `e4client` 1.12 package and with "
        "`curl` + `sha256sum` + `unzip -t`, all against e4sync's own E4 Connect simulator on "
        "127.0.0.1 (E4 Connect itself is switched off), and, in its own section below, "
        "against its EmbracePlus S3 delivery beside `rclone` and `aws s3 sync`. The "
        "simulators always run in a separate process, so their memory is never counted. "
        "This file is written by the benchmark runner; the findings at the end are "
        "`benchmarks/findings.md`.",
        "",
        f"Run on {today} with:",
        "",
        "```",
        command.strip(),
        "```",
        "",
        f"{reps} repetitions of each timed step (medians shown; start-up: 20 runs); the whole "
        f"run took {total / 60:.0f} minutes. `--quick` runs smaller sizes, `--tiny` runs each "
        "benchmark at a toy size in seconds (the CI test only checks that they all start).",
        "",
        "## Machine",
        "",
        _table(["", ""], [[k, v] for k, v in info.items()], markdown=True),
        "",
        "## Summary",
        "",
        render_summary(results, markdown=True),
        "",
        "## Details",
        "",
    ]
    for r in results:
        lines += [render_detail(r, markdown=True), ""]
    for r in own:
        lines += [render_own_section(r, info, command, reps, total), ""]
    if findings.exists():
        lines += [findings.read_text().rstrip(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
