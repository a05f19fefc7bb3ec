"""e4sync.daemon: `e4sync run` — a pass now, then every `schedule.interval` with jitter.

APScheduler 3.11's ``BackgroundScheduler`` runs the passes; the main thread owns the
process: signal handlers that only set an event, sd_notify READY/STATUS/WATCHDOG/STOPPING,
the watchdog, which is pinged only while the scheduler thread is alive and the running
pass keeps making progress (GUIDE section 1 and 4), and the configuration reload.

On SIGTERM/SIGINT the stop event cancels downloads between chunks (each removes its own
``.part``) and ends the clients' waits (a ``Retry-After``, a backoff) with ``Interrupted``.
On SIGHUP the configuration file is read again, with the loader the start used, at the
next point between passes; a bad file is logged and the running configuration kept; a
good one replaces it and the jobs derived from it (the pass interval, the scrub job).
Each pass reads the configuration once at its start, so none runs on a mixture.
A damaged state database, met by a pass or the scrub, is logged and stops the daemon with
exit 65: every later pass would only meet it again.

Calls ``sync.run_pass``.
Must not import: e4sync.cli.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from e4sync import alerts
from e4sync.config import Config
from e4sync.errors import (
    AuthError,
    ConfigError,
    E4SyncError,
    Interrupted,
    LockBusy,
    StateDamaged,
)
from e4sync.notify import Notifier
from e4sync.progress import summary
from e4sync.state import db as statedb
from e4sync.sync import PassReport, SourceFactory, iso, run_pass

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler
    from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger("e4sync.daemon")

STALL_SECONDS = 30 * 60  # a pass with no progress this long stops the watchdog pings


@dataclass
class Health:
    """What the main thread knows of the passes, updated by the pass job."""

    running_since: float | None = None
    last_progress: float = 0.0
    last_report: PassReport | None = None
    last_error: str = ""
    passes: int = 0


class Daemon:
    def __init__(
        self,
        cfg: Config,
        engine: Engine,
        *,
        worker_id: str,
        notifier: Notifier | None = None,
        source_factory: SourceFactory | None = None,
        stop: threading.Event | None = None,
        dry_run: bool = False,
        reload: Callable[[], Config] | None = None,
    ):
        """``reload`` reads the configuration again on SIGHUP, the way the start read it
        (``cli`` passes its own loader, so --account and --base-url still apply); without it
        ``cfg.path`` is read again with ``load_config``."""
        self.cfg = cfg
        self._load = reload or (lambda: _load_file(cfg.path))
        self.dry_run = dry_run
        self.engine = engine
        self.worker_id = worker_id
        self.notifier = notifier or Notifier()
        self.source_factory = source_factory
        self.stop = stop or threading.Event()
        self.health = Health(last_progress=time.monotonic())
        self.scheduler = None
        self._lock = threading.Lock()
        # Set by a signal handler, acted on by the main thread: the handler itself only sets.
        self._wake = threading.Event()
        self._reload_wanted = threading.Event()
        self._reload_deferred = False
        self.damage: StateDamaged | None = None  # set by a job; the daemon then stops

    # -- the main thread ---------------------------------------------------------------

    def run(self, check_login: Callable[[], None] | None = None) -> int:
        """Serve until a signal; return 0 on a clean stop. ``check_login`` (raising
        ``AuthError``) runs before READY=1, so systemd sees a bad password at start-up.
        Raises ``StateDamaged`` once stopped when a job found the state database damaged."""
        self._install_signals()
        if check_login is not None:
            check_login()
        for problem in alerts.problems(self.cfg):
            log.error("%s", problem)  # said now, not at the first failure it would hide
        self.scheduler = self._start_scheduler()
        self.notifier.ready()
        log.info(
            "e4sync daemon started: a pass every %s (jitter %s)",
            _fmt(self.cfg.schedule.interval),
            _fmt(self.cfg.schedule.jitter),
        )
        tick = self.notifier.watchdog_interval or 5.0
        tick = max(0.2, min(tick, 5.0))
        while True:
            self._wake.wait(tick)
            self._wake.clear()
            if self.stop.is_set():
                break
            if self._reload_wanted.is_set():
                self._reload()
            if self._healthy():
                self.notifier.watchdog()
            self.notifier.status(self._status_line())
        log.info("stopping: waiting for the running downloads to reach a safe point")
        self.notifier.stopping()
        self.scheduler.shutdown(wait=True)
        damage = self.damage or statedb.damage_found(self.engine)
        if damage is None:
            try:
                statedb.remove_worker(self.engine, self.worker_id)
            except Exception as exc:  # the database may be what failed; the row goes stale
                log.warning("could not remove this worker's row: %s", exc)
        self.engine.dispose()
        if damage is not None:
            raise damage  # the CLI says it on one line and exits 65
        log.info("stopped")
        return 0

    def _stop_damaged(self, damage: StateDamaged) -> None:
        """Called on a job's thread: log the damage once and stop (never shutdown() here:
        it would join this very thread)."""
        with self._lock:
            first = self.damage is None
            if first:
                self.damage = damage
        if first:
            # How to rebuild it is the last line, said once the file is closed.
            where = damage.path or "the state database"
            log.error("stopping: %s is damaged (%s)", where, damage.reason)
        self.stop.set()

    def _install_signals(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            log.info("received %s", signal.Signals(signum).name)
            self.stop.set()
            self._wake.set()

        def on_hangup(_signum: int, _frame: object) -> None:
            self._reload_wanted.set()
            self._wake.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hangup)

    # -- reload (main thread) ----------------------------------------------------------

    def _reload(self) -> None:
        """Read the configuration again if no pass is running (else once it has ended);
        keep the running one if the new file is bad."""
        with self._lock:
            if self.health.running_since is not None:
                if not self._reload_deferred:
                    log.info("SIGHUP: the configuration is reloaded when the running pass ends")
                    self._reload_deferred = True
                return
        self._reload_wanted.clear()
        self._reload_deferred = False
        # systemd shows the unit "reloading" until READY=1 (sd_notify(3)).
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            self._read_and_apply()
        finally:
            self.notifier.ready()

    def _read_and_apply(self) -> None:
        where = _where(self.cfg.path)
        try:
            new = self._load()
        except E4SyncError as exc:
            problems = getattr(exc, "problems", None) or [str(exc)]
            log.error(
                "configuration not reloaded from %s: %s; keeping the previous configuration",
                where,
                "; ".join(problems),
            )
            return
        except Exception:  # a bug in reading must not take down a daemon that runs fine
            log.exception("configuration not reloaded from %s; keeping the previous one", where)
            return
        with self._lock:
            if self.health.running_since is not None:
                # A pass began while the file was read: apply it once that pass has ended.
                self._reload_wanted.set()
                return
            old, self.cfg = self.cfg, _keep_restart_only(self.cfg, new)
        self._apply_schedule(old, self.cfg)
        log.info(
            "configuration reloaded from %s: %d account(s), a pass every %s (jitter %s)",
            _where(self.cfg.path),
            len(self.cfg.accounts),
            _fmt(self.cfg.schedule.interval),
            _fmt(self.cfg.schedule.jitter),
        )

    def _apply_schedule(self, old: Config, new: Config) -> None:
        """Rebuild the jobs made from the schedule and scrub settings, if they changed."""
        if (old.schedule.interval, old.schedule.jitter) != (
            new.schedule.interval,
            new.schedule.jitter,
        ):
            # The next pass comes one new interval from now.
            self.scheduler.reschedule_job("pass", trigger=_pass_trigger(new))
        if old.archive.scrub_interval != new.archive.scrub_interval:
            if self.scheduler.get_job("scrub") is not None:
                self.scheduler.remove_job("scrub")
            self._add_scrub(self.scheduler, new, dt.datetime.now(dt.UTC))

    def _start_scheduler(self):
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(
            timezone=dt.UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        now = dt.datetime.now(dt.UTC)
        scheduler.add_job(self._pass_job, _pass_trigger(self.cfg), id="pass", next_run_time=now)
        self._add_scrub(scheduler, self.cfg, now)
        scheduler.add_listener(
            lambda event: log.warning(
                "a scheduled %s was skipped: the previous one is still "
                "running or the host was asleep",
                event.job_id,
            ),
            EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES,
        )
        scheduler.start()
        return scheduler

    def _add_scrub(self, scheduler: BaseScheduler, cfg: Config, now: dt.datetime) -> None:
        scrub = cfg.archive.scrub_interval
        if scrub:
            scheduler.add_job(
                self._scrub_job,
                "interval",
                id="scrub",
                seconds=scrub,
                next_run_time=now + dt.timedelta(seconds=scrub),
            )

    def _healthy(self) -> bool:
        thread = getattr(self.scheduler, "_thread", None)
        if thread is None or not thread.is_alive():
            log.error("the scheduler thread died; withholding the watchdog ping")
            return False
        with self._lock:
            running = self.health.running_since is not None
            quiet = time.monotonic() - self.health.last_progress
        if running and quiet > STALL_SECONDS:
            log.error("the running pass has made no progress for %d s", quiet)
            return False
        return True

    def _status_line(self) -> str:
        job = self.scheduler.get_job("pass") if self.scheduler else None
        next_run = job.next_run_time.strftime("%H:%M:%S") if job and job.next_run_time else "-"
        with self._lock:
            h = self.health
            if h.running_since is not None:
                return f"pass running; next {next_run}"
            parts = [f"idle; next pass {next_run}"]
            if h.last_report is not None:
                r = h.last_report
                parts.append(
                    f"last pass {iso(r.finished_at)}: "
                    f"{sum(a.downloaded for a in r.accounts)} downloaded, "
                    f"{sum(a.failed for a in r.accounts)} failed"
                )
            if h.last_error:
                parts.append(f"last error: {h.last_error[:120]}")
        return "; ".join(parts)

    # -- jobs (scheduler threads) ------------------------------------------------------

    def _progress(self, _what: str = "") -> None:
        with self._lock:
            self.health.last_progress = time.monotonic()

    def _bytes_arrived(self, _count: int) -> None:
        # A big session on a slow line finishes rarely; its bytes still show the pass alive.
        self._progress()

    def _pass_job(self) -> None:
        if self.stop.is_set():
            return
        from e4sync.monitoring import monitored_pass

        with self._lock:
            # The pass's configuration, read once: a reload never changes a running pass.
            cfg = self.cfg
            self.health.running_since = time.monotonic()
            self.health.last_progress = time.monotonic()
        report = None
        error = ""
        try:
            report = monitored_pass(
                cfg,
                self.engine,
                lambda: run_pass(
                    cfg,
                    self.engine,
                    stop=self.stop,
                    worker_id=self.worker_id,
                    source_factory=self.source_factory,
                    on_progress=self._progress,
                    on_bytes=self._bytes_arrived,
                    dry_run=self.dry_run,
                    min_gap=self._min_gap(cfg),
                ),
                dry_run=self.dry_run,
            )
            error = "; ".join(e for a in report.accounts for e in a.errors[:1])
            # One line per pass, whatever it did: an idle pass is news in the journal too.
            log.info("%s", summary(report))
        except LockBusy as exc:
            error = str(exc)
            log.warning("pass skipped: %s", exc)
        except StateDamaged as exc:
            error = str(exc)
            self._stop_damaged(exc)
        except E4SyncError as exc:
            error = str(exc)
            log.error("pass failed: %s", exc)
        except Exception as exc:  # keep the daemon alive; the next tick tries again
            error = f"unexpected {exc.__class__.__name__}: {exc}"
            log.exception("pass failed unexpectedly")
        finally:
            with self._lock:
                self.health.running_since = None
                self.health.passes += 1
                self.health.last_error = error
                if report is not None:
                    self.health.last_report = report
            if self._reload_wanted.is_set():
                self._wake.set()  # a SIGHUP waited for this pass: reload now
        # The metrics after the pass may be what met it.
        damage = statedb.damage_found(self.engine)
        if damage is not None:
            self._stop_damaged(damage)

    def _min_gap(self, cfg: Config) -> float:
        # Several workers share a PostgreSQL database: an account another worker listed
        # within half an interval is left alone, so N workers do not mean N logins each.
        if self.engine.dialect.name == "sqlite":
            return 0.0
        return cfg.schedule.interval / 2

    def _scrub_job(self) -> None:
        from e4sync.archive import Archive
        from e4sync.maintenance import verify_archive
        from e4sync.monitoring import report_local_problems

        with self._lock:
            cfg = self.cfg
        try:
            # Marks what it finds (the next pass downloads those the platform still holds)
            # and rewrites damaged sidecars; a lost copy is logged as an ERROR there. A dry
            # run only reports: it changes nothing.
            result = verify_archive(self.engine, Archive(cfg.archive.root), repair=not self.dry_run)
        except StateDamaged as exc:
            self._stop_damaged(exc)
            return
        except Exception as exc:  # a scrub that cannot run must not end the scheduler's job
            log.error("scrub: could not re-hash the archive: %s", exc)
            return
        if result.clean:
            log.info("scrub: %d archived files re-hashed, all match", result.checked)
        else:
            for kind in ("missing", "changed", "unreadable"):
                for path in getattr(result, kind):
                    log.error("scrub: %s: %s", kind, path)
            if result.requeued:
                log.warning(
                    "scrub: %d session(s) will be downloaded again by the next pass",
                    len(result.requeued),
                )
        for path in result.repaired_sidecars:
            log.warning("scrub: repaired sidecar: %s (%s)", path, result.repair_reasons[path])
        for problem in result.sidecar_errors:
            log.error("scrub: sidecar not repaired: %s", problem)
        for path in result.restored:
            log.info("scrub: restored: %s matches its recorded sha256 again", path)
        if self.dry_run:
            return
        with self._lock:
            last_report = self.health.last_report
        report_local_problems(cfg, self.engine, last_report)


def check_logins(
    cfg: Config, source_factory: SourceFactory, engine: Engine, worker_id: str
) -> None:
    """Log in to the accounts once before READY=1; raise ``AuthError`` only if every login
    tried was refused and no account was left to another worker (a platform that is down is
    not a reason to exit). Each login is made
    under the account's lease, so it never logs out another worker serving that account."""
    from e4sync.sources import kind
    from e4sync.state.db import claim_accounts, ensure_account, release_leases, sessionmaker_for

    refused: list[str] = []
    skipped = 0
    for account in cfg.accounts:
        with sessionmaker_for(engine)() as db, db.begin():
            ensure_account(db, account.name, account.source, kind(account.source).endpoint(account))
        if not claim_accounts(engine, worker_id, [account.name], cfg.state.lease):
            log.info("account %s: served by another worker; not checking its login", account.name)
            skipped += 1
            continue
        source = None
        try:
            source = source_factory(account)
            source.identity()
            return
        except AuthError as exc:
            refused.append(str(exc))
        except Interrupted:
            return  # stopped while waiting to retry the login: the main loop exits at once
        except ConfigError:
            raise
        except E4SyncError as exc:
            log.warning(
                "account %s: cannot log in yet (%s); will retry each pass", account.name, exc
            )
            return
        finally:
            if source is not None:
                source.close()
            release_leases(engine, worker_id, [account.name])
    if refused and skipped:
        # Another worker serves an account this one may take over if that worker dies: a
        # wrong password elsewhere is no reason to leave (each pass reports it).
        log.error("refused logins (this worker stays for the other accounts): %s", refused)
    elif refused:
        raise AuthError("; ".join(refused))


def _pass_trigger(cfg: Config) -> IntervalTrigger:
    from apscheduler.triggers.interval import IntervalTrigger

    return IntervalTrigger(
        seconds=max(1.0, cfg.schedule.interval),
        jitter=int(cfg.schedule.jitter) or None,
        timezone=dt.UTC,
    )


def _load_file(path: Path | None) -> Config:
    from e4sync.config import load_config

    return load_config(path)


def _where(path: Path | None) -> str:
    return str(path) if path else "the environment (no configuration file)"


def _keep_restart_only(old: Config, new: Config) -> Config:
    """``new``, except for what the running process cannot change: the state database and
    the folder of its lock (the engine and the pass lock were made from them at start)."""
    if (new.state.url, new.state.dir) == (old.state.url, old.state.dir):
        return new
    # The URL may hold the database password: it is not logged.
    log.warning(
        "configuration: [state] url and dir take effect at the next restart; "
        "this daemon keeps its state database"
    )
    state = dataclasses.replace(new.state, url=old.state.url, dir=old.state.dir)
    return dataclasses.replace(new, state=state)


def _fmt(seconds: float) -> str:
    from e4sync.config import format_duration

    return format_duration(seconds)
