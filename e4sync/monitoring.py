"""e4sync.monitoring: a pass wrapped in its health pings and followed by its metrics.

Used the same way by `e4sync run` (each scheduled pass) and `e4sync run-once` (cron, the
systemd timer, launchd), so a dead-man's switch and the Prometheus textfile see every pass
whatever started it (GUIDE section 7). A failed ping or metrics write only warns: the
pass's own outcome always wins. Dry runs are not reported: they changed nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from e4sync.config import Config
from e4sync.notify import Metric, ping_healthcheck, write_metrics_textfile
from e4sync.status import status_report
from e4sync.sync import PassReport

log = logging.getLogger("e4sync.monitoring")


def monitored_pass(
    cfg: Config, engine: Engine, run: Callable[[], PassReport], dry_run: bool = False
) -> PassReport:
    """Ping start, run the pass, ping success or fail, write the metrics textfile. An
    exception from the pass is pinged as a failure and re-raised."""
    url = "" if dry_run else cfg.monitor.healthcheck_url
    if url:
        ping_healthcheck(url, "start")
    try:
        report = run()
    except BaseException as exc:
        if url:
            ping_healthcheck(url, "fail", body=f"{exc.__class__.__name__}: {exc}"[:1000])
        raise
    if url:
        ok = report.exit_code == 0
        summary = "; ".join(e for a in report.accounts for e in a.errors[:3])
        ping_healthcheck(url, "success" if ok else "fail", body=summary[:1000])
    if cfg.monitor.metrics_textfile and not dry_run:
        try:
            write_metrics(Path(cfg.monitor.metrics_textfile), engine, report)
        except Exception as exc:  # metrics never fail a pass
            log.warning("could not write metrics to %s: %s", cfg.monitor.metrics_textfile, exc)
    return report


def build_metrics(engine: Engine, report: PassReport | None) -> list[Metric]:
    status = status_report(engine)
    sessions = Metric("e4sync_sessions", "Sessions per account and state.", "gauge", [])
    last_ok = Metric(
        "e4sync_last_success_timestamp_seconds",
        "When each account last finished a pass without an account error.",
        "gauge",
        [],
    )
    archive = Metric("e4sync_archive_bytes", "Bytes archived per account.", "gauge", [])
    for account in status["accounts"]:
        for state, n in account["counts"].items():
            sessions.samples.append(({"account": account["name"], "state": state}, float(n)))
        archive.samples.append(({"account": account["name"]}, float(account["archive_bytes"])))
        if account["last_ok"]:
            ts = dt.datetime.fromisoformat(account["last_ok"].replace("Z", "+00:00")).timestamp()
            last_ok.samples.append(({"account": account["name"]}, ts))
    metrics = [
        sessions,
        last_ok,
        archive,
        Metric(
            "e4sync_last_run_timestamp_seconds",
            "When the last pass ended.",
            "gauge",
            [({}, report.finished_at if report else time.time())],
        ),
    ]
    if report is not None:
        per_pass = [
            ("e4sync_pass_downloads", "Sessions downloaded in the last pass.", "downloaded"),
            ("e4sync_pass_download_bytes", "Bytes downloaded in the last pass.", "bytes"),
            ("e4sync_pass_failures", "Sessions that failed in the last pass.", "failed"),
            ("e4sync_pass_remote_deletes", "Remote copies deleted in the last pass.", "deleted"),
        ]
        for name, help_text, attr in per_pass:
            metrics.append(
                Metric(
                    name,
                    help_text,
                    "gauge",
                    [({"account": a.name}, float(getattr(a, attr))) for a in report.accounts],
                )
            )
        metrics.append(
            Metric(
                "e4sync_up",
                "1 if the last pass ended with exit code 0.",
                "gauge",
                [({}, 1.0 if report.exit_code == 0 else 0.0)],
            )
        )
    return metrics


def write_metrics(path: Path, engine: Engine, report: PassReport | None) -> None:
    write_metrics_textfile(path, build_metrics(engine, report))
