"""e4sync.metrics: the Prometheus textfile written after each pass (GUIDE section 7).

Builds the metric values from the state database and the last pass; the atomic write is
``notify.write_metrics_textfile``. Never raises into a pass: the daemon logs its failures.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import Engine

from e4sync.maintenance import status_report
from e4sync.notify import Metric, write_metrics_textfile
from e4sync.sync import PassReport


def build_metrics(engine: Engine, report: PassReport | None) -> list[Metric]:
    status = status_report(engine)
    sessions = Metric("e4sync_sessions", "Sessions per account and state.", "gauge", [])
    last_ok = Metric("e4sync_last_success_timestamp_seconds",
                     "When each account last finished a pass without an account error.",
                     "gauge", [])
    archive = Metric("e4sync_archive_bytes", "Bytes archived per account.", "gauge", [])
    for account in status["accounts"]:
        for state, n in account["counts"].items():
            sessions.samples.append(({"account": account["name"], "state": state}, float(n)))
        archive.samples.append(({"account": account["name"]}, float(account["archive_bytes"])))
        if account["last_ok"]:
            import datetime as dt

            ts = dt.datetime.fromisoformat(account["last_ok"].replace("Z", "+00:00")).timestamp()
            last_ok.samples.append(({"account": account["name"]}, ts))
    metrics = [sessions, last_ok, archive,
               Metric("e4sync_last_run_timestamp_seconds", "When the last pass ended.", "gauge",
                      [({}, report.finished_at if report else time.time())])]
    if report is not None:
        per_pass = [
            ("e4sync_pass_downloads", "Sessions downloaded in the last pass.", "downloaded"),
            ("e4sync_pass_download_bytes", "Bytes downloaded in the last pass.", "bytes"),
            ("e4sync_pass_failures", "Sessions that failed in the last pass.", "failed"),
            ("e4sync_pass_remote_deletes", "Remote copies deleted in the last pass.", "deleted"),
        ]
        for name, help_text, attr in per_pass:
            metrics.append(Metric(name, help_text, "gauge", [
                ({"account": a.name}, float(getattr(a, attr))) for a in report.accounts]))
        metrics.append(Metric("e4sync_up", "1 if the last pass ended with exit code 0.", "gauge",
                              [({}, 1.0 if report.exit_code == 0 else 0.0)]))
    return metrics


def write_metrics(path: Path, engine: Engine, report: PassReport | None) -> None:
    write_metrics_textfile(Path(path), build_metrics(engine, report))
