"""e4sync.monitoring: a pass wrapped in its health pings and followed by its metrics.

Used the same way by `e4sync run` (each scheduled pass) and `e4sync run-once` (cron, the
systemd timer, launchd), so a dead-man's switch, the Prometheus textfile and the
``[notify]`` channels (``e4sync.alerts``) see every pass whatever started it (GUIDE
section 7). A failed ping or metrics write only warns: the
pass's own outcome always wins. Dry runs are not reported: they changed nothing.

An archived copy that is missing or damaged (``sessions.local_problem``) makes the ping a
failure and shows in the ``e4sync_local_problems`` gauge until it is whole again, whatever
the pass itself did: a pass that downloaded nothing is not a healthy archive. The daemon's
scrub reports what it marks the same way (``report_local_problems``).

Must not import: e4sync.cli.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from e4sync import alerts
from e4sync.config import Config
from e4sync.notify import Metric, ping_healthcheck, write_metrics_textfile
from e4sync.status import status_report
from e4sync.sync import PassReport

log = logging.getLogger("e4sync.monitoring")


def monitored_pass(
    cfg: Config, engine: Engine, run: Callable[[], PassReport], dry_run: bool = False
) -> PassReport:
    """Ping start, run the pass, ping success or fail, write the metrics textfile. An
    exception from the pass is pinged as a failure and re-raised; so is a pass that leaves
    an archived copy missing or damaged (the ping's body names them)."""
    url = "" if dry_run else cfg.monitor.healthcheck_url
    if url:
        ping_healthcheck(url, "start")
    try:
        report = run()
    except BaseException as exc:
        if url:
            ping_healthcheck(url, "fail", body=f"{exc.__class__.__name__}: {exc}"[:1000])
        if not dry_run:
            alerts.pass_raised(cfg, exc)
        raise
    if dry_run:
        return report
    notify = alerts.wanted(cfg)
    status = _status(engine) if url or cfg.monitor.metrics_textfile or notify else None
    if url:
        lost = local_problems_summary(status)
        ok = report.exit_code == 0 and not lost
        summary = "; ".join([*(e for a in report.accounts for e in a.errors[:3]), *lost])
        ping_healthcheck(url, "success" if ok else "fail", body=summary[:1000])
    if cfg.monitor.metrics_textfile:
        _write(cfg, engine, report, status)
    if notify:
        alerts.after_pass(cfg, report, status)
    return report


def report_local_problems(cfg: Config, engine: Engine, last_report: PassReport | None) -> None:
    """After the scrub: refresh the metrics (keeping the last pass's figures) and, if any
    archived copy is missing or damaged, ping a failure naming them. A healthy scrub pings
    nothing: success is for a pass to say."""
    status = _status(engine)
    if status is None:
        return
    if cfg.monitor.metrics_textfile and last_report is not None:
        _write(cfg, engine, last_report, status)
    lost = local_problems_summary(status)
    if cfg.monitor.healthcheck_url and lost:
        ping_healthcheck(cfg.monitor.healthcheck_url, "fail", body="; ".join(lost)[:1000])
    alerts.after_scrub(cfg, status)


def local_problems_summary(status: dict | None) -> list[str]:
    """One line per account with missing or damaged copies, naming the first few."""
    lines = []
    for account in (status or {}).get("accounts", []):
        total = account.get("local_problems_total", 0)
        if total:
            named = ", ".join(p["problem"] for p in account["local_problems"][:3])
            more = f" and {total - 3} more" if total > 3 else ""
            lines.append(
                f"{account['name']}: {total} archived copies lost or damaged: {named}{more}"
            )
    return lines


def _status(engine: Engine) -> dict | None:
    try:
        return status_report(engine)  # every account, as the metrics always showed
    except Exception as exc:  # monitoring never fails a pass; the ping still goes
        log.warning("could not read the status for monitoring: %s", exc)
        return None


def _write(cfg: Config, engine: Engine, report: PassReport, status: dict | None) -> None:
    try:
        write_metrics(Path(cfg.monitor.metrics_textfile), engine, report, status)
    except Exception as exc:  # metrics never fail a pass
        log.warning("could not write metrics to %s: %s", cfg.monitor.metrics_textfile, exc)


def build_metrics(
    engine: Engine, report: PassReport | None, status: dict | None = None
) -> list[Metric]:
    status = status if status is not None else status_report(engine)
    sessions = Metric("e4sync_sessions", "Sessions per account and state.", "gauge", [])
    last_ok = Metric(
        "e4sync_last_success_timestamp_seconds",
        "When each account last finished a pass without an account error.",
        "gauge",
        [],
    )
    archive = Metric("e4sync_archive_bytes", "Bytes archived per account.", "gauge", [])
    problems = Metric(
        "e4sync_local_problems",
        "Archived sessions per account whose local copy is missing, changed or unreadable.",
        "gauge",
        [],
    )
    healthy = Metric(
        "e4sync_account_ok",
        "1 if the account is OK as `e4sync status` says (its last pass went well, no session "
        "given up on, no archived copy missing or damaged), else 0.",
        "gauge",
        [],
    )
    for account in status["accounts"]:
        healthy.samples.append(({"account": account["name"]}, 1.0 if account["healthy"] else 0.0))
        for state, n in account["counts"].items():
            sessions.samples.append(({"account": account["name"], "state": state}, float(n)))
        archive.samples.append(({"account": account["name"]}, float(account["archive_bytes"])))
        problems.samples.append(
            ({"account": account["name"]}, float(account["local_problems_total"]))
        )
        if account["last_ok"]:
            ts = dt.datetime.fromisoformat(account["last_ok"].replace("Z", "+00:00")).timestamp()
            last_ok.samples.append(({"account": account["name"]}, ts))
    metrics = [
        sessions,
        last_ok,
        archive,
        problems,
        healthy,
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
                "e4sync_pass_downloads_paused",
                "1 if the last pass paused the account's downloads (a full disk).",
                "gauge",
                [({"account": a.name}, 1.0 if a.paused else 0.0) for a in report.accounts],
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


def write_metrics(
    path: Path, engine: Engine, report: PassReport | None, status: dict | None = None
) -> None:
    write_metrics_textfile(path, build_metrics(engine, report, status))
