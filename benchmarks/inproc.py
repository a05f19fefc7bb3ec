"""benchmarks.inproc: one e4sync pass run in-process, its SQL statements counted.

``python -m benchmarks.inproc CONFIG [--dry-run]`` opens the state database as ``e4sync
run-once`` does, counts every statement sent to the driver (SQLAlchemy's
``before_cursor_execute`` event, so pragmas and BEGINs count too), runs ``sync.run_pass`` and
prints one JSON line: seconds to open the database, seconds of the pass, statements by
kind, and the pass's figures. Imports e4sync (it is the thing measured); nothing imports this.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inproc")
    parser.add_argument("config")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    from sqlalchemy import event

    from e4sync.cli import open_state
    from e4sync.config import load_config
    from e4sync.sync import run_pass

    cfg = load_config(args.config)
    engine = open_state(cfg)
    opened = time.perf_counter()
    kinds: Counter[str] = Counter()

    @event.listens_for(engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        kinds[statement.lstrip().split(None, 1)[0].upper()] += 1

    report = run_pass(cfg, engine, dry_run=args.dry_run)
    finished = time.perf_counter()
    engine.dispose()
    accounts = report.accounts
    print(
        json.dumps(
            {
                "open_seconds": opened - started,
                "pass_seconds": finished - opened,
                "statements": sum(kinds.values()),
                "by_kind": dict(kinds),
                "exit_code": report.exit_code,
                "listed": sum(a.listed for a in accounts),
                "new": sum(a.new for a in accounts),
                "downloaded": sum(a.downloaded for a in accounts),
                "failed": sum(a.failed for a in accounts),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
