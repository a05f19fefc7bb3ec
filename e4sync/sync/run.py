"""e4sync.sync.run: one sync pass over every account (SPEC section 6).

A pass: lock, then per account: lease, log in, list in full, record new sessions and
metadata changes, download what is due with ``download.concurrency`` threads sharing one
login, verify, commit, then delete remote copies that qualify, then write the pass row.
A failure in one account never stops the others. Per-session failures are recorded with
their back-off and reported in the ``PassReport``; only ``cli`` turns that into an exit code.
A damaged state database is none of these: it stops the pass and is raised
(``StateDamaged``, exit 65), even where a per-session handler caught it first.

Must not import cli. Talks to the platform only through ``source.Source``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session as DbSession

from e4sync.archive import Archive
from e4sync.config import AccountConfig, Config
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
    StateDamaged,
    TransientError,
)
from e4sync.source import DryRunSource, RemoteItem, Source
from e4sync.state import db as statedb
from e4sync.state.models import (
    NEW,
    REMOTE_DELETED,
    REMOTE_GONE,
    VERIFIED,
    Account,
    Deletion,
    Pass,
)
from e4sync.state.models import Session as SessionRow
from e4sync.sync.common import chunks
from e4sync.sync.copies import check_archived_copies
from e4sync.sync.deletions import DeletionSteps, confirm_deleted
from e4sync.sync.downloads import DownloadSteps

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
    content_changed: int = 0  # archived, but the platform now serves other bytes
    lost: int = 0  # archived copies found missing or changed on disk by this pass
    paused: str = ""  # why downloads paused for the rest of the pass (a full disk)
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


def default_source_factory(cfg: Config, stop: threading.Event | None = None) -> SourceFactory:
    """E4 Connect clients for ``cfg``'s accounts; ``stop`` ends their waits (a Retry-After,
    a backoff) with ``Interrupted`` so a stopping process is not held by one."""

    def make(account: AccountConfig) -> Source:
        from e4sync.client import E4Connect
        from e4sync.credentials import password_provider
        from e4sync.source import E4Source

        client = E4Connect(
            account.options["username"],
            base_url=account.options["base_url"],
            password_provider=password_provider(account),
            timeout=cfg.download.timeout,
            connect_timeout=cfg.download.connect_timeout,
            pool_size=max(8, cfg.download.concurrency * 2),
            cancel=stop,
        )
        return E4Source(client)

    return make


def run_pass(cfg: Config, engine: Engine, **kwargs) -> PassReport:
    """Run one pass over the configured accounts (or the named ones) and return its report.

    Raises ``LockBusy`` if another pass holds this state directory, ``TransientError`` if
    the state database is locked or unreachable, ``StateDamaged`` if it is damaged (met
    anywhere in the pass, by any thread), ``StorageError`` if the archive root cannot be
    written; everything else is caught per account and reported. The keyword arguments
    are ``_run_pass``'s."""
    url = str(engine.url)
    try:
        report = _run_pass(cfg, engine, **kwargs)
    except Exception as exc:
        mapped = (
            statedb.damage_found(engine)
            or statedb.database_damaged(exc, url)
            or statedb.database_busy(exc, url)
        )
        if mapped is None:
            raise
        raise mapped from None
    damage = statedb.damage_found(engine)
    if damage is not None:
        raise damage
    return report


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
    on_bytes: Callable[[int], None] | None = None,
    min_gap: float = 0.0,
) -> PassReport:
    """``on_progress`` is called after each session and step, ``on_bytes`` as a download's
    bytes reach the disk (the daemon's watchdog: a slow big file is progress too). A
    ``worker_id`` names a long-lived worker (the daemon), whose row stays between passes;
    ``min_gap`` skips accounts another worker listed less than that many seconds ago."""
    stop = stop or threading.Event()
    # A one-off pass (run-once) is its own short-lived worker: its row goes when it ends.
    one_off = worker_id is None
    worker_id = worker_id or statedb.make_worker_id()
    source_factory = source_factory or default_source_factory(cfg, stop)
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
            _remove_stale_parts(archive, cfg, shared=not use_lock)
        sessions = statedb.sessionmaker_for(engine)
        if use_lock:
            _clear_dead_leases(sessions, worker_id)
        statedb.heartbeat(engine, worker_id, "pass")
        for account in chosen:
            if stop.is_set():
                report.interrupted = True
                break
            if statedb.damage_found(engine) is not None:
                break  # run_pass raises it
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
                    on_bytes,
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


def _remove_stale_parts(archive: Archive, cfg: Config, shared: bool) -> None:
    """Remove ``.part`` and sidecar ``.tmp`` files that no running download can own
    (SPEC section 5). A new process cannot resume a download another left (the resume
    point, the ETag, lives in the client's memory), so every part is stale at start. On a
    ``shared`` archive (workers on other hosts) one may be being written right now: only
    those untouched for longer than a download's read timeout can be stale."""
    min_age = max(600.0, 2 * cfg.download.timeout) if shared else 0.0
    for path in archive.remove_stale_parts(min_age=min_age):
        log.info("removed stale partial file %s", path)


def _ignore(_what: str) -> None:
    pass


class AccountPass(DownloadSteps, DeletionSteps):
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
        on_bytes: Callable[[int], None] | None = None,
    ):
        self.cfg = cfg
        self.min_gap = min_gap
        self.on_progress = on_progress
        self.on_bytes = on_bytes
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
        # Archived sessions whose platform copy changed: downloaded again this pass.
        self.requeued: set[str] = set()
        self.disk_full = threading.Event()  # set once: downloads pause for the pass

    # -- the steps ---------------------------------------------------------------------

    def run(self) -> AccountReport:
        started = time.time()
        with self.sessions() as db, db.begin():
            row = statedb.ensure_account(
                db,
                self.account.name,
                self.account.options["username"],
                self.account.options["base_url"],
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
        except Interrupted as exc:
            # A stop during a wait (a Retry-After, a backoff): not this account's failure.
            log.info("account %s: %s", self.account.name, exc)
        except StateDamaged:
            raise  # not this account's failure: the whole state database's
        except ConfigError as exc:
            self._account_failed(EXIT_CONFIG, str(exc))
        except AuthError as exc:
            self._account_failed(EXIT_NOPERM, str(exc))
        except TransientError as exc:
            # Not always "unreachable": a keyring not up yet, an answer of the wrong shape.
            self._account_failed(EXIT_TEMPFAIL, f"{exc} (temporary: the next pass tries again)")
        except E4SyncError as exc:
            self._account_failed(EXIT_SESSIONS_FAILED, str(exc))
        finally:
            keeper.stop()
            if source is not None:
                source.close()
            # Nothing more is written into a damaged file: it is to be rebuilt anyway.
            if statedb.damage_found(self.engine) is None:
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
        copies = check_archived_copies(
            self.sessions, self.archive, self.account_id, self.account.name, dry_run=self.dry_run
        )
        self.report.lost = len(copies.requeued) + len(copies.lost)
        listed = {i.id: i for i in items}
        self._download_due(source, listed)
        damage = statedb.damage_found(self.engine)
        if damage is not None:
            # A download thread met it and stopped the account: no deletion on its word.
            raise damage
        if self.stop.is_set():
            return
        self._delete_qualifying(source, listed, listing_ok)
        if self.requeued and not self.stop.is_set():
            # A version the platform replaced: fetch it now rather than a pass later. It
            # qualifies for deletion on its own terms (its grace counts from now).
            self._download_due(source, listed, only=self.requeued)

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
            for chunk in chunks(new_ids, 1000):
                db.execute(
                    insert(SessionRow),
                    [_new_row_values(self.account_id, listed[r], now) for r in chunk],
                )
            self.report.new = len(new_ids)
            for rid, (pk, state, mhash) in known.items():
                item = listed.get(rid)
                back = state in (REMOTE_GONE, REMOTE_DELETED)
                if item is None or (mhash == item.metadata_hash and not back):
                    continue
                row = db.get(SessionRow, pk)
                if mhash != item.metadata_hash:
                    self.report.changed += 1
                    _apply_metadata(row, item)
                    log.info("session %s: remote metadata changed", rid)
                if state == REMOTE_GONE:
                    # Back on the platform: a whole copy stays verified; a lost or damaged
                    # one (local_problem) can now be downloaded again.
                    whole = row.verified_at and row.local_path and not row.local_problem
                    row.state = VERIFIED if whole else NEW
                    row.gone_at = None
                    row.next_attempt_at = now
                    log.info("session %s is listed again", rid)
                elif state == REMOTE_DELETED:
                    # Its deletion was confirmed, yet the platform lists it: the remote copy
                    # is there after all. Verified again, so the deletion rules apply anew
                    # (or due again, if the archived copy was lost meanwhile).
                    row.state = NEW if row.local_problem else VERIFIED
                    row.next_attempt_at = now
                    row.remote_deleted_at = None
                    log.warning("session %s is listed again after its deletion", rid)
                if back and row.state == NEW:
                    row.attempts = 0  # a fresh start for a session the platform holds again
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
        pending = set(
            db.scalars(
                select(Deletion.remote_id).where(
                    Deletion.account_id == self.account_id, Deletion.confirmed_at.is_(None)
                )
            )
        )
        gone = []
        for rid, pk in vanished:
            if rid in pending:
                confirm_deleted(db, db.get(SessionRow, pk), now)
                self.report.deleted += 1
            else:
                gone.append(pk)
                log.warning("session %s vanished from the platform without e4sync deleting it", rid)
        for chunk in chunks(gone, 1000):
            db.execute(
                update(SessionRow)
                .where(SessionRow.id.in_(chunk))
                .values(state=REMOTE_GONE, gone_at=now)
                .execution_options(synchronize_session=False)
            )
        self.report.gone += len(gone)

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
                        ok=r.ok and not r.failed and not r.paused,
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
                        paused=r.paused or None,
                    )
                )
                account = db.get(Account, self.account_id)
                account.last_error = r.errors[-1][:2000] if r.errors else None
                if r.ok:
                    account.last_ok_at = time.time()
        except StateDamaged:
            pass  # remembered by the engine; run_pass raises it
        except Exception:  # the pass's own outcome matters more than its summary row
            log.exception("account %s: could not write the pass summary", self.account.name)


def new_row(account_id: int, item: RemoteItem, now: float) -> SessionRow:
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


def _apply_metadata(row: SessionRow, item: RemoteItem) -> None:
    for key, value in _metadata_values(item).items():
        setattr(row, key, value)


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
            except StateDamaged:
                # No hiccup: stop the account's work (as a lost lease does); the pass
                # raises the damage, which the engine remembers.
                self.lost.set()
                return
            except Exception as exc:  # a database hiccup: try again next round
                log.warning("account %s: lease renewal failed: %s", self.name, exc)
                continue
            if self.name not in held:
                log.error(
                    "account %s: lease lost to another worker; stopping this account", self.name
                )
                self.lost.set()
                return
