"""e4sync.sync: one sync pass over every account (SPEC section 6).

A pass: lock, then per account: lease, log in, list in full, record new sessions and
metadata changes, download what is due with ``download.concurrency`` threads sharing one
login, verify, commit, then delete remote copies that qualify, then write the pass row.
A failure in one account never stops the others. Per-session failures are recorded with
their back-off and reported in the ``PassReport``; only ``cli`` turns that into an exit code.

Must not import cli. Talks to the platform only through ``source.Source``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import itertools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session as DbSession

from e4sync import __version__
from e4sync.archive import Archive, LayoutFields, render_relpath
from e4sync.config import AccountConfig, Config
from e4sync.crashpoints import crashpoint
from e4sync.deletion import Candidate, Rules, plan_deletions
from e4sync.errors import (
    EXIT_CONFIG,
    EXIT_NOPERM,
    EXIT_OK,
    EXIT_SESSIONS_FAILED,
    EXIT_TEMPFAIL,
    AuthError,
    ConfigError,
    E4SyncError,
    Interrupted,
    LockBusy,
    NotAZipError,
    SessionNotFound,
    StorageError,
    TransientError,
)
from e4sync.source import DryRunSource, RemoteItem, Source
from e4sync.state import db as statedb
from e4sync.state.models import (
    DOWNLOADING,
    DUE_STATES,
    FAILED,
    NEW,
    REMOTE_DELETED,
    REMOTE_GONE,
    VERIFIED,
    Account,
    Deletion,
    Pass,
)
from e4sync.state.models import Session as SessionRow

log = logging.getLogger("e4sync.sync")

SourceFactory = Callable[[AccountConfig], Source]


@dataclass
class AccountReport:
    """What one pass did for one account."""

    name: str
    ok: bool = True
    exit_code: int = EXIT_OK  # 77/75 when the account itself could not be served
    skipped: str = ""  # why the account was not served (leased by another worker)
    listed: int = 0
    new: int = 0
    changed: int = 0
    downloaded: int = 0
    bytes: int = 0
    failed: int = 0
    deleted: int = 0
    gone: int = 0
    errors: list[str] = field(default_factory=list)
    would_download: list[str] = field(default_factory=list)
    would_delete: list[str] = field(default_factory=list)
    deletion_cap_reached: bool = False


@dataclass
class PassReport:
    started_at: float
    finished_at: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    accounts: list[AccountReport] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The most telling code: configuration, credentials, an unreachable platform,
        then failed sessions (SPEC section 3)."""
        codes = {a.exit_code for a in self.accounts}
        for code in (EXIT_CONFIG, EXIT_NOPERM, EXIT_TEMPFAIL):
            if code in codes:
                return code
        if any(a.failed or a.errors for a in self.accounts):
            return EXIT_SESSIONS_FAILED
        return EXIT_OK


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


@contextlib.contextmanager
def pass_lock(state_dir: Path) -> Iterator[None]:
    """One pass at a time per state directory (a cron ``run-once`` beside the daemon):
    ``flock`` is released by the kernel when the holder dies, so it is never stale."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / "e4sync.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(f"another e4sync holds the lock {path}; try again later") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def default_source_factory(cfg: Config) -> SourceFactory:
    def make(account: AccountConfig) -> Source:
        from e4sync.client import E4Connect
        from e4sync.credentials import password_provider
        from e4sync.source import E4Source

        client = E4Connect(
            account.username,
            base_url=account.base_url,
            password_provider=password_provider(account),
            timeout=cfg.download.timeout,
            connect_timeout=cfg.download.connect_timeout,
            pool_size=max(8, cfg.download.concurrency * 2),
        )
        return E4Source(client)

    return make


def run_pass(cfg: Config, engine: Engine, **kwargs) -> PassReport:
    """Run one pass over the configured accounts (or the named ones) and return its report.

    Raises ``LockBusy`` if another pass holds this state directory, ``TransientError`` if
    the state database is locked or unreachable, ``StorageError`` if the archive root cannot
    be written; everything else is caught per account and reported. The keyword arguments
    are ``_run_pass``'s."""
    try:
        return _run_pass(cfg, engine, **kwargs)
    except Exception as exc:
        busy = statedb.database_busy(exc, str(engine.url))
        if busy is None:
            raise
        raise busy from None


def _run_pass(
    cfg: Config,
    engine: Engine,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    accounts: list[str] | None = None,
    worker_id: str | None = None,
    source_factory: SourceFactory | None = None,
    use_lock: bool | None = None,
    on_progress: Callable[[str], None] | None = None,
    min_gap: float = 0.0,
) -> PassReport:
    """``on_progress`` is called after each session and step (the daemon's watchdog). A
    ``worker_id`` names a long-lived worker (the daemon), whose row stays between passes;
    ``min_gap`` skips accounts another worker listed less than that many seconds ago."""
    stop = stop or threading.Event()
    # A one-off pass (run-once) is its own short-lived worker: its row goes when it ends.
    one_off = worker_id is None
    worker_id = worker_id or statedb.make_worker_id()
    source_factory = source_factory or default_source_factory(cfg)
    chosen = [a for a in cfg.accounts if accounts is None or a.name in accounts]
    report = PassReport(started_at=time.time(), dry_run=dry_run)
    archive = Archive(cfg.archive.root)
    if use_lock is None:
        # A file lock is per host; with a shared PostgreSQL database the account leases
        # keep workers apart instead.
        use_lock = engine.dialect.name == "sqlite"
    lock = pass_lock(cfg.state.dir) if use_lock else contextlib.nullcontext()
    with lock:
        if not dry_run:
            archive.check_writable()
            _remove_stale_parts(engine, archive, cfg, shared=not use_lock)
        sessions = statedb.sessionmaker_for(engine)
        if use_lock:
            _clear_dead_leases(sessions, worker_id)
        statedb.heartbeat(engine, worker_id, "pass")
        for account in chosen:
            if stop.is_set():
                report.interrupted = True
                break
            report.accounts.append(
                AccountPass(
                    cfg,
                    account,
                    engine,
                    sessions,
                    archive,
                    worker_id,
                    stop,
                    source_factory,
                    dry_run,
                    on_progress or _ignore,
                    min_gap,
                ).run()
            )
        if stop.is_set():
            report.interrupted = True
        if one_off:
            statedb.remove_worker(engine, worker_id)
        else:
            statedb.heartbeat(engine, worker_id, "idle")
    report.finished_at = time.time()
    return report


def _clear_dead_leases(sessions: Callable[[], DbSession], worker_id: str) -> None:
    """Under the host's pass lock no other pass can be running on this state database
    (SQLite lives on one host), so any lease still recorded was left by a process that
    died (kill -9, power cut): release it rather than wait for it to expire."""
    with sessions() as db, db.begin():
        stale = db.execute(
            update(Account)
            .where(Account.lease_owner.is_not(None), Account.lease_owner != worker_id)
            .values(lease_owner=None, lease_until=None)
        )
        if stale.rowcount:
            log.info("released %d account lease(s) left by a process that died", stale.rowcount)


def _remove_stale_parts(engine: Engine, archive: Archive, cfg: Config, shared: bool) -> None:
    """Remove ``.part`` and sidecar ``.tmp`` files that no running download can own
    (SPEC section 5). Parts of sessions still due are kept, so a stopped download can
    resume. On a ``shared`` archive (workers on other hosts) one may be being written right
    now: only those untouched for longer than a download's read timeout can be stale."""
    with statedb.sessionmaker_for(engine)() as db:
        keep_rel = db.scalars(
            select(SessionRow.local_path).where(
                SessionRow.state.in_(DUE_STATES), SessionRow.local_path.is_not(None)
            )
        ).all()
    keep = {_part_of(archive.resolve(PurePosixPath(p))) for p in keep_rel}
    min_age = max(600.0, 2 * cfg.download.timeout) if shared else 0.0
    for path in archive.remove_stale_parts(keep=keep, min_age=min_age):
        log.info("removed stale partial file %s", path)


def _ignore(_what: str) -> None:
    pass


def _part_of(final: Path) -> Path:
    return final.with_name(final.name + ".part")


@dataclass(frozen=True)
class _Fetched:
    """A body on disk, waiting to be verified and committed."""

    relpath: PurePosixPath
    part: Path
    size: int
    sha256: str
    started: float
    adopted: bool = False  # a whole file a killed pass had already committed


class AccountPass:
    """One account's part of a pass. Holds the account's lease while it works."""

    def __init__(
        self,
        cfg: Config,
        account: AccountConfig,
        engine: Engine,
        sessions: Callable[[], DbSession],
        archive: Archive,
        worker_id: str,
        stop: threading.Event,
        source_factory: SourceFactory,
        dry_run: bool,
        on_progress: Callable[[str], None],
        min_gap: float = 0.0,
    ):
        self.cfg = cfg
        self.min_gap = min_gap
        self.on_progress = on_progress
        self.account = account
        self.engine = engine
        self.sessions = sessions
        self.archive = archive
        self.worker_id = worker_id
        self.stop = stop
        self.source_factory = source_factory
        self.dry_run = dry_run
        self.report = AccountReport(account.name)
        self.account_id = 0
        self.user_id = ""
        self.lease_lost = threading.Event()
        self.report_lock = threading.Lock()
        self.claimed_paths: set[str] = set()
        self.dry_new: list[str] = []  # sessions a dry run saw for the first time

    # -- the steps ---------------------------------------------------------------------

    def run(self) -> AccountReport:
        started = time.time()
        with self.sessions() as db, db.begin():
            row = statedb.ensure_account(
                db, self.account.name, self.account.username, self.account.base_url
            )
            self.account_id = row.id
        if self.min_gap and self._served_recently():
            self.report.skipped = "served by another worker less than half an interval ago"
            return self.report
        claimed = statedb.claim_accounts(
            self.engine, self.worker_id, [self.account.name], self.cfg.state.lease
        )
        if not claimed:
            self.report.skipped = "leased by another worker"
            log.info("account %s: served by another worker this pass", self.account.name)
            return self.report
        keeper = _LeaseKeeper(
            self.engine, self.worker_id, self.account.name, self.cfg.state.lease, self.lease_lost
        )
        source: Source | None = None
        try:
            keeper.start()
            source = self.source_factory(self.account)
            if self.dry_run:
                source = DryRunSource(source)
            self._serve(source)
        except ConfigError as exc:
            self._account_failed(EXIT_CONFIG, str(exc))
        except AuthError as exc:
            self._account_failed(EXIT_NOPERM, str(exc))
        except TransientError as exc:
            self._account_failed(EXIT_TEMPFAIL, f"platform unreachable: {exc}")
        except E4SyncError as exc:
            self._account_failed(EXIT_SESSIONS_FAILED, str(exc))
        finally:
            keeper.stop()
            if source is not None:
                source.close()
            statedb.release_leases(self.engine, self.worker_id, [self.account.name])
            self._write_pass_row(started)
        return self.report

    def _served_recently(self) -> bool:
        """With several workers each pass of each would otherwise log in to every account:
        skip one that another worker listed less than ``min_gap`` seconds ago."""
        with self.sessions() as db:
            row = db.get(Account, self.account_id)
            listed_at = row.last_listed_at if row else None
        return listed_at is not None and time.time() - listed_at < self.min_gap

    def _account_failed(self, code: int, message: str) -> None:
        self.report.ok = False
        self.report.exit_code = code
        self.report.errors.append(message)
        log.error("account %s: %s", self.account.name, message)

    def _serve(self, source: Source) -> None:
        self.user_id = source.user_id()
        items = source.list_items()
        listing_ok = self._record_listing(items)
        self._download_due(source, {i.id: i for i in items})
        if self.stop.is_set():
            return
        self._delete_qualifying(source, {i.id: i for i in items}, listing_ok)

    # -- listing -----------------------------------------------------------------------

    def _record_listing(self, items: list[RemoteItem]) -> bool:
        """Record new sessions and metadata changes with a constant number of queries,
        holding plain tuples, not ORM objects, for the sessions that did not change (an
        account can list 100,000). Returns whether the listing can be trusted for deletions."""
        now = time.time()
        self.report.listed = len(items)
        listed = {i.id: i for i in items}
        with self.sessions() as db, db.begin():
            account = db.get(Account, self.account_id)
            account.user_id = self.user_id
            account.last_listed_at = now
            known = {
                rid: (pk, state, mhash)
                for rid, pk, state, mhash in db.execute(
                    select(
                        SessionRow.remote_id,
                        SessionRow.id,
                        SessionRow.state,
                        SessionRow.metadata_hash,
                    ).where(SessionRow.account_id == self.account_id)
                )
            }
            present_before = sum(
                1 for _, state, _ in known.values() if state not in (REMOTE_GONE, REMOTE_DELETED)
            )
            if not items and present_before:
                # An empty list where sessions existed is a platform fault, never "all deleted".
                log.warning(
                    "account %s: the platform listed no sessions where %d existed; "
                    "treating the listing as untrustworthy",
                    self.account.name,
                    present_before,
                )
                self.report.errors.append("empty session list where sessions existed")
                return False
            new_ids = [rid for rid in listed if rid not in known]
            if self.dry_run:
                # Say what is new, record nothing: a dry run changes nothing, here included.
                self.dry_new = new_ids
                self.report.new = len(new_ids)
                db.rollback()
                return True
            for chunk in _chunks(new_ids, 1000):
                db.execute(
                    insert(SessionRow),
                    [_new_row_values(self.account_id, listed[r], now) for r in chunk],
                )
            self.report.new = len(new_ids)
            for rid, (pk, state, mhash) in known.items():
                item = listed.get(rid)
                if item is None or (mhash == item.metadata_hash and state != REMOTE_GONE):
                    continue
                row = db.get(SessionRow, pk)
                if mhash != item.metadata_hash:
                    self.report.changed += 1
                    _apply_metadata(row, item)
                    log.info("session %s: remote metadata changed", rid)
                if state == REMOTE_GONE:
                    row.state = VERIFIED if row.verified_at and row.local_path else NEW
                    row.gone_at = None
                    row.next_attempt_at = now
                    log.info("session %s is listed again", rid)
            vanished = [
                (rid, pk)
                for rid, (pk, state, _) in known.items()
                if rid not in listed and state not in (REMOTE_GONE, REMOTE_DELETED)
            ]
            if vanished:
                self._record_vanished(db, vanished, now)
        if self.report.new:
            log.info(
                "account %s: %d sessions listed, %d new",
                self.account.name,
                len(items),
                self.report.new,
            )
        return True

    def _record_vanished(self, db: DbSession, vanished: list[tuple[str, int]], now: float) -> None:
        """A session gone from the listing was deleted by this program (its ledger entry
        waits for this confirmation) or by someone else: ``remote_gone``, copy kept."""
        pending = {
            d.remote_id: d
            for d in db.scalars(
                select(Deletion).where(
                    Deletion.account_id == self.account_id, Deletion.confirmed_at.is_(None)
                )
            )
        }
        gone = []
        for rid, pk in vanished:
            if rid in pending:
                _confirm_deleted(db.get(SessionRow, pk), pending[rid], now)
                self.report.deleted += 1
            else:
                gone.append(pk)
                log.warning("session %s vanished from the platform without e4sync deleting it", rid)
        for chunk in _chunks(gone, 1000):
            db.execute(
                update(SessionRow)
                .where(SessionRow.id.in_(chunk))
                .values(state=REMOTE_GONE, gone_at=now)
                .execution_options(synchronize_session=False)
            )
        self.report.gone += len(gone)

    # -- downloads ---------------------------------------------------------------------

    def _download_due(self, source: Source, listed: dict[str, RemoteItem]) -> None:
        now = time.time()
        with self.sessions() as db:
            due = db.execute(
                select(SessionRow.id, SessionRow.remote_id)
                .where(
                    SessionRow.account_id == self.account_id,
                    SessionRow.state.in_(DUE_STATES),
                    (SessionRow.next_attempt_at.is_(None)) | (SessionRow.next_attempt_at <= now),
                )
                .order_by(SessionRow.start_time, SessionRow.id)
            ).all()
            self.claimed_paths = set(
                db.scalars(
                    select(SessionRow.local_path).where(
                        SessionRow.local_path.is_not(None), SessionRow.state != NEW
                    )
                )
            )
        due = [(pk, rid) for pk, rid in due if rid in listed]
        if self.dry_run:
            self.report.would_download = [rid for _, rid in due] + self.dry_new
            for rid in self.report.would_download:
                log.info("dry run: would download session %s", rid)
            return
        if not due:
            return
        workers = max(1, min(self.cfg.download.concurrency, len(due)))
        pending = self._with_paths(due, listed, batch=4 * workers)
        in_flight: set[Future] = set()
        self._finish_slots = threading.BoundedSemaphore(2 * workers)
        with (
            ThreadPoolExecutor(workers, thread_name_prefix=f"fin-{self.account.name}") as finisher,
            ThreadPoolExecutor(workers, thread_name_prefix=f"dl-{self.account.name}") as pool,
        ):
            self._finisher = finisher
            # A bounded window of submissions, not one future per due session: a first pass
            # over 100,000 sessions would otherwise hold them all in memory at once.
            while True:
                for pk, item, relpath in itertools.islice(pending, 2 * workers - len(in_flight)):
                    in_flight.add(pool.submit(self._download_one, source, pk, item, relpath))
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        future.result()
                    except AuthError:
                        # The password stopped working mid-pass: nothing else will work either.
                        self.stop_account()
                        for other in in_flight:
                            other.cancel()
                        raise

    def stop_account(self) -> None:
        self.lease_lost.set()

    def _download_one(
        self, source: Source, pk: int, item: RemoteItem, relpath: PurePosixPath
    ) -> None:
        """Fetch on a download thread, then hand the file to a finisher thread to verify,
        commit and record, so the download slot is free again as soon as the body is on
        disk (the fsyncs and the database write overlap the next downloads)."""
        if self.stop.is_set() or self.lease_lost.is_set():
            return
        fetched = None
        try:
            fetched = self._fetch(pk, item, source, relpath)
        finally:
            if fetched is None:
                self.on_progress(item.id)
        if fetched is not None:
            self._finish_slots.acquire()
            future = self._finisher.submit(self._finish, pk, item, source, fetched)
            future.add_done_callback(lambda _f: self._finish_slots.release())

    def _fetch(
        self, pk: int, item: RemoteItem, source: Source, relpath: PurePosixPath
    ) -> _Fetched | None:
        """The body on disk as ``X.zip.part`` (or a whole file a killed pass left), or None
        when the attempt failed (recorded) or was stopped (the part kept to resume)."""
        part = self.archive.part_path(relpath)
        started = time.time()
        try:
            adopted = self._adopt_existing(relpath, item)
            if adopted is not None:
                return _Fetched(relpath, part, adopted[0], adopted[1], started, adopted=True)
            fetched = source.fetch(item, part, cancel=self.stop)
            crashpoint("after-fetch")
            return _Fetched(relpath, part, fetched.size, fetched.sha256, started)
        except Interrupted:
            log.info("session %s: stopped; the partial file is kept to resume", item.id)
        except AuthError:
            raise
        except (E4SyncError, OSError) as exc:
            self._failed(pk, item, part, exc)
        return None

    def _finish(self, pk: int, item: RemoteItem, source: Source, got: _Fetched) -> None:
        try:
            if not got.adopted:
                problems = source.verify(got.part, item)
                if problems:
                    with contextlib.suppress(OSError):
                        got.part.unlink()
                    raise NotAZipError("; ".join(problems))
                sidecar = self._sidecar(
                    item, got.relpath, got.size, got.sha256, got.started, time.time()
                )
                self.archive.commit(got.part, got.relpath, sidecar)
                crashpoint("after-commit")
            self._record_verified(pk, item, got)
        except (E4SyncError, OSError) as exc:
            self._failed(pk, item, got.part, exc)
        except Exception:  # a bug must not vanish inside a pool thread
            log.exception("session %s: unexpected error while archiving", item.id)
            self._failed(pk, item, got.part, RuntimeError("unexpected error; see the log"))
        finally:
            self.on_progress(item.id)

    def _failed(self, pk: int, item: RemoteItem, part: Path, exc: BaseException) -> None:
        if isinstance(exc, StorageError) or not isinstance(exc, E4SyncError):
            # A local write failed (disk full, read-only): free the space, start over later.
            with contextlib.suppress(OSError):
                part.unlink()
        self._record_failure(pk, item, exc)

    def _record_verified(self, pk: int, item: RemoteItem, got: _Fetched) -> None:
        with self.sessions() as db, db.begin():
            row = db.get(SessionRow, pk)
            row.state = VERIFIED
            row.local_path = str(got.relpath)
            row.size = got.size
            row.sha256 = got.sha256
            row.downloaded_metadata_hash = item.metadata_hash
            row.downloaded_at = got.started
            row.verified_at = time.time()
            row.last_error = None
            row.next_attempt_at = None
        with self.report_lock:
            self.report.downloaded += 1
            self.report.bytes += got.size
        seconds = max(time.time() - got.started, 1e-6)
        log.info(
            "session %s: archived %s (%.1f MB, %.1f MB/s)",
            item.id,
            self.archive.resolve(got.relpath),
            got.size / 1e6,
            got.size / 1e6 / seconds,
        )

    def _with_paths(
        self, due: list[tuple[int, str]], listed: dict[str, RemoteItem], batch: int
    ) -> Iterator[tuple[int, RemoteItem, PurePosixPath]]:
        """The due sessions with their archive paths, recorded (state ``downloading``) one
        transaction per batch before their downloads start: a crash then still knows which
        ``.part`` belongs to whom, and the download threads make no database write of their
        own before their request."""
        for chunk in _chunks(due, batch):
            if self.stop.is_set() or self.lease_lost.is_set():
                return
            chosen = []
            with self.sessions() as db, db.begin():
                for pk, rid in chunk:
                    row = db.get(SessionRow, pk)
                    relpath = self._choose_path(row, listed[rid])
                    row.state = DOWNLOADING
                    row.local_path = str(relpath)
                    chosen.append((pk, listed[rid], relpath))
            yield from chosen

    def _choose_path(self, row: SessionRow, item: RemoteItem) -> PurePosixPath:
        if row.local_path and row.state == DOWNLOADING:
            # A resumed download keeps the path it had (and so its .part file).
            return PurePosixPath(row.local_path)
        layout = self.account.layout or self.cfg.archive.layout
        fields = LayoutFields(
            account=self.account.name,
            user_id=self.user_id,
            session_id=item.id,
            device_id=item.device_id,
            label=item.label,
            device=item.device,
            start_time=item.start_time,
            duration=item.duration,
        )
        wanted = render_relpath(layout, fields, self.cfg.archive.timezone)
        chosen = self.archive.choose_path(
            wanted, self._session_key(item), lambda p: str(p) in self.claimed_paths
        )
        self.claimed_paths.add(str(chosen))
        return chosen

    def _session_key(self, item: RemoteItem) -> str:
        return f"{self.account.name}/{item.id}"

    def _adopt_existing(self, relpath: PurePosixPath, item: RemoteItem) -> tuple[int, str] | None:
        """A crash after the rename but before the database commit leaves a whole file and
        its sidecar: take it if it still hashes to what the sidecar says."""
        final = self.archive.resolve(relpath)
        sidecar = self.archive.read_sidecar(relpath)
        if not final.exists() or not sidecar:
            return None
        if sidecar.get("session_key") != self._session_key(item):
            return None
        from e4sync.verify import sha256_file

        size, sha256 = sha256_file(final)
        if sha256 != sidecar.get("sha256") or _content_problems(final, item):
            return None
        log.info("session %s: adopting the archived file left by an interrupted pass", item.id)
        # A kill between link(part, final) and unlink(part) leaves the part as a second name.
        with contextlib.suppress(FileNotFoundError):
            _part_of(final).unlink()
        return size, sha256

    def _sidecar(
        self,
        item: RemoteItem,
        relpath: PurePosixPath,
        size: int,
        sha256: str,
        downloaded_at: float,
        verified_at: float,
    ) -> dict:
        return {
            "schema": 1,
            "session_key": self._session_key(item),
            "account": self.account.name,
            "user_id": self.user_id,
            "session_id": item.id,
            "remote": item.raw,
            "file": relpath.name,
            "size": size,
            "sha256": sha256,
            "downloaded_at": iso(downloaded_at),
            "verified_at": iso(verified_at),
            "e4sync_version": __version__,
        }

    def _record_failure(self, pk: int, item: RemoteItem, exc: BaseException) -> None:
        message = _describe(exc)
        now = time.time()
        with self.sessions() as db, db.begin():
            row = db.get(SessionRow, pk)
            row.attempts += 1
            row.last_error = message
            if row.attempts >= self.cfg.download.max_attempts:
                row.state = FAILED
                row.next_attempt_at = None
                log.error(
                    "session %s: failed %d times, giving up until `e4sync retry`: %s",
                    item.id,
                    row.attempts,
                    message,
                )
            else:
                row.next_attempt_at = now + backoff_delay(
                    row.attempts, self.cfg.download.backoff, self.cfg.download.max_backoff
                )
                log.warning(
                    "session %s: attempt %d failed, retrying after %s: %s",
                    item.id,
                    row.attempts,
                    iso(row.next_attempt_at),
                    message,
                )
        with self.report_lock:
            self.report.failed += 1
            self.report.errors.append(f"session {item.id}: {message}")

    # -- deletions ---------------------------------------------------------------------

    def _delete_qualifying(
        self, source: Source, listed: dict[str, RemoteItem], listing_ok: bool
    ) -> None:
        rules = Rules(
            **{
                k: getattr(self.account.remote, k)
                for k in (
                    "delete_after_verify",
                    "delete_min_age",
                    "delete_grace",
                    "max_deletes_per_pass",
                )
            }
        )
        if not rules.delete_after_verify:
            return
        now = time.time()
        with self.sessions() as db:
            # Only sessions old enough on both clocks are loaded (an archive can hold
            # 100,000); the pure plan still checks every rule itself.
            rows = db.scalars(
                select(SessionRow).where(
                    SessionRow.account_id == self.account_id,
                    SessionRow.state == VERIFIED,
                    SessionRow.start_time <= now - rules.delete_min_age,
                    SessionRow.verified_at <= now - rules.delete_grace,
                )
            ).all()
        plan = plan_deletions(
            [_candidate(r, r.remote_id in listed) for r in rows],
            now=now,
            rules=rules,
            listing_ok=listing_ok,
        )
        chosen = [d for d in plan if d.delete]
        self.report.deletion_cap_reached = any("cap" in d.reason for d in plan if not d.delete)
        if self.report.deletion_cap_reached:
            log.warning(
                "account %s: the cap of %d deletions per pass was reached; the rest "
                "wait for the next pass",
                self.account.name,
                rules.max_deletes_per_pass,
            )
        if self.dry_run:
            self.report.would_delete = [d.remote_id for d in chosen]
            for d in chosen:
                log.info("dry run: would delete remote session %s", d.remote_id)
            return
        by_id = {r.remote_id: r for r in rows}
        requested: dict[str, int] = {}
        for decision in chosen:
            if self.stop.is_set() or self.lease_lost.is_set():
                break
            row = by_id[decision.remote_id]
            ledger_id = self._delete_one(source, row)
            if ledger_id is not None:
                requested[row.remote_id] = ledger_id
        if requested:
            self._confirm_deletions(source, requested)

    def _delete_one(self, source: Source, row: SessionRow) -> int | None:
        from e4sync.verify import sha256_file

        path = self.archive.resolve(PurePosixPath(row.local_path))
        try:
            size, sha256 = sha256_file(path)
        except OSError as exc:
            self.report.errors.append(
                f"session {row.remote_id}: local copy unreadable, "
                f"not deleting the remote one: {exc}"
            )
            log.error(
                "session %s: local copy %s unreadable (%s); remote copy kept",
                row.remote_id,
                path,
                exc,
            )
            return None
        if sha256 != row.sha256:
            self.report.errors.append(
                f"session {row.remote_id}: local copy changed on disk; remote copy kept"
            )
            log.error(
                "session %s: %s no longer matches its recorded sha256; remote copy kept "
                "(run `e4sync verify`)",
                row.remote_id,
                path,
            )
            return None
        with self.sessions() as db, db.begin():
            entry = Deletion(
                account_id=self.account_id,
                session_id=row.id,
                remote_id=row.remote_id,
                local_path=row.local_path,
                sha256=sha256,
                requested_at=time.time(),
                e4sync_version=__version__,
            )
            db.add(entry)
            db.flush()
            ledger_id = entry.id
        crashpoint("after-ledger")
        try:
            source.delete(row.remote_id)
            crashpoint("after-delete")
        except SessionNotFound:
            pass  # gone already (a retried DELETE whose first answer was lost)
        except E4SyncError as exc:
            self._set_ledger(ledger_id, f"error: {_describe(exc)}"[:40], confirmed=False)
            self.report.errors.append(f"session {row.remote_id}: delete failed: {exc}")
            if isinstance(exc, AuthError | TransientError):
                raise
            return None
        return ledger_id

    def _confirm_deletions(self, source: Source, requested: dict[str, int]) -> None:
        try:
            still_listed = {i.id for i in source.list_items()}
        except E4SyncError as exc:
            log.warning(
                "account %s: could not re-list to confirm deletions (%s); they are "
                "confirmed on the next pass",
                self.account.name,
                exc,
            )
            return
        now = time.time()
        with self.sessions() as db, db.begin():
            for remote_id, ledger_id in requested.items():
                entry = db.get(Deletion, ledger_id)
                if remote_id in still_listed:
                    entry.result = "still listed"
                    log.warning(
                        "session %s: the platform accepted the delete but still lists "
                        "it; it stays verified and is tried again",
                        remote_id,
                    )
                    continue
                row = db.get(SessionRow, entry.session_id)
                _confirm_deleted(row, entry, now)
                self.report.deleted += 1
                log.info(
                    "session %s: remote copy deleted (verified local copy %s)",
                    remote_id,
                    row.local_path,
                )

    def _set_ledger(self, ledger_id: int, result: str, confirmed: bool) -> None:
        with self.sessions() as db, db.begin():
            db.execute(
                update(Deletion)
                .where(Deletion.id == ledger_id)
                .values(result=result, confirmed_at=time.time() if confirmed else None)
            )

    # -- the pass row ------------------------------------------------------------------

    def _write_pass_row(self, started: float) -> None:
        r = self.report
        if self.dry_run:
            return
        try:
            with self.sessions() as db, db.begin():
                db.add(
                    Pass(
                        account_id=self.account_id,
                        worker=self.worker_id,
                        started_at=started,
                        finished_at=time.time(),
                        ok=r.ok and not r.failed,
                        dry_run=self.dry_run,
                        listed=r.listed,
                        new=r.new,
                        changed=r.changed,
                        downloaded=r.downloaded,
                        bytes=r.bytes,
                        failed=r.failed,
                        deleted=r.deleted,
                        gone=r.gone,
                        errors="\n".join(r.errors)[:20000],
                    )
                )
                account = db.get(Account, self.account_id)
                account.last_error = r.errors[-1][:2000] if r.errors else None
                if r.ok:
                    account.last_ok_at = time.time()
        except Exception:  # the pass's own outcome matters more than its summary row
            log.exception("account %s: could not write the pass summary", self.account.name)


def _content_problems(path: Path, item: RemoteItem) -> list[str]:
    from e4sync.verify import check_zip

    check = check_zip(path, start_time=item.start_time or None)
    return list(check.problems)


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """``base`` doubled per attempt, capped, with +-20 % jitter so that many failed sessions
    (or many workers) do not all come back at the same second."""
    delay = min(cap, base * (2 ** max(0, attempts - 1)))
    return delay * random.uniform(0.8, 1.2)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, E4SyncError):
        return f"{exc.strerror or exc.__class__.__name__}: {exc.filename or ''}".strip(": ")
    return str(exc) or exc.__class__.__name__


def _new_row(account_id: int, item: RemoteItem, now: float) -> SessionRow:
    return SessionRow(**_new_row_values(account_id, item, now))


def _new_row_values(account_id: int, item: RemoteItem, now: float) -> dict:
    values = dict(
        account_id=account_id,
        remote_id=item.id,
        state=NEW,
        first_seen_at=now,
        last_seen_at=now,
        attempts=0,
        next_attempt_at=now,
    )
    values.update(_metadata_values(item))
    return values


def _metadata_values(item: RemoteItem) -> dict:
    return dict(
        start_time=item.start_time,
        duration=item.duration,
        device_id=item.device_id[:64],
        label=item.label[:200],
        device=item.device[:200],
        remote_json=json.dumps(item.raw, sort_keys=True),
        metadata_hash=item.metadata_hash,
    )


def _chunks(seq: list, size: int) -> Iterator[list]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _apply_metadata(row: SessionRow, item: RemoteItem) -> None:
    for key, value in _metadata_values(item).items():
        setattr(row, key, value)


def _confirm_deleted(row: SessionRow, entry: Deletion, now: float) -> None:
    entry.confirmed_at = now
    entry.result = "confirmed"
    row.state = REMOTE_DELETED
    row.remote_deleted_at = now


def _candidate(row: SessionRow, listed: bool) -> Candidate:
    return Candidate(
        remote_id=row.remote_id,
        state=row.state,
        start_time=row.start_time,
        verified_at=row.verified_at,
        local_path=row.local_path,
        sha256=row.sha256,
        metadata_hash=row.metadata_hash,
        downloaded_metadata_hash=row.downloaded_metadata_hash,
        listed=listed,
    )


class _LeaseKeeper:
    """Renews one account's lease in the background; a lost lease sets ``lost`` so the
    pass stops before its next deletion (borg's lock refresh)."""

    def __init__(
        self, engine: Engine, worker_id: str, name: str, lease: float, lost: threading.Event
    ):
        self.engine, self.worker_id, self.name, self.lease, self.lost = (
            engine,
            worker_id,
            name,
            lease,
            lost,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(max(1.0, self.lease / 3)):
            try:
                held = statedb.renew_leases(self.engine, self.worker_id, [self.name], self.lease)
                statedb.heartbeat(self.engine, self.worker_id, f"serving {self.name}")
            except Exception as exc:  # a database hiccup: try again next round
                log.warning("account %s: lease renewal failed: %s", self.name, exc)
                continue
            if self.name not in held:
                log.error(
                    "account %s: lease lost to another worker; stopping this account", self.name
                )
                self.lost.set()
                return
