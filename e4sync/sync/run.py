"""e4sync.sync.run: one sync pass over every account (SPEC section 6), top to bottom.

Owns ``run_pass`` (the pass lock, the worker row, one ``AccountPass`` per account) and
``AccountPass``, which orchestrates one account: lease (renewed in the background by
``_LeaseKeeper``), log in, list in full and record new sessions and metadata changes
(handing the vanished ones to ``Deleter.confirm``), check the archived copies, download what
is due (``Downloader``, ``download.concurrency`` threads sharing one login), delete remote
copies that qualify (``Deleter``), download again what the platform replaced, then write
the pass row. Also ``pass_lock`` and the source factory. What the steps share is the
account's ``AccountContext``.

A failure in one account never stops the others: it is reported with the error's own
``exit_code`` (decided in ``e4sync.errors``). Per-session failures are recorded with their
back-off and reported in the ``PassReport``; only ``cli`` turns that into an exit code.
A damaged state database is none of these: it stops the pass and is raised
(``StateDamaged``, exit 65), even where a per-session handler caught it first.

Talks to the platform only through ``e4sync.sources.Source``, built by ``make_source``.
Must not import: e4sync.cli, e4sync.sources.e4connect.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session as DbSession

from e4sync.archive import Archive
from e4sync.config import AccountConfig, Config
from e4sync.errors import (
    ArchiveUnwritable,
    E4SyncError,
    Interrupted,
    LockBusy,
    StateDamaged,
    TransientError,
)
from e4sync.folders import archive_problems
from e4sync.sources import Capabilities, DryRunSource, Listing, Source, kind, make_source
from e4sync.state import db as statedb
from e4sync.state import rows
from e4sync.state.models import (
    NEW,
    REMOTE_DELETED,
    REMOTE_GONE,
    VERIFIED,
    Account,
    Pass,
)
from e4sync.state.models import Session as SessionRow
from e4sync.sync.common import chunks
from e4sync.sync.context import AccountContext, SourceFactory
from e4sync.sync.copies import check_archived_copies
from e4sync.sync.deletions import Deleter
from e4sync.sync.downloads import Downloader
from e4sync.sync.report import AccountReport, PassReport

__all__ = [
    "AccountPass",
    "AccountReport",
    "PassReport",
    "SourceFactory",
    "default_source_factory",
    "pass_lock",
    "run_pass",
]

log = logging.getLogger("e4sync.sync")


@contextlib.contextmanager
def pass_lock(path: Path) -> Iterator[None]:
    """One pass at a time per state database (a cron ``run-once`` beside the daemon), held
    on the lock file ``path`` (see ``lock_path``): ``flock`` is released by the kernel when
    the holder dies, so it is never stale."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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


def lock_path(engine: Engine, state_dir: Path) -> Path:
    """The lock of the state database itself: ``<file>.lock`` beside a SQLite file, so two
    configurations with separate databases (two studies on one host) never wait for each
    other while two passes over one database always do. An in-memory database has no file:
    its lock is in the state directory."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        db_file = Path(database).expanduser().resolve()
        return db_file.with_name(db_file.name + ".lock")
    return state_dir / "e4sync.lock"


def default_source_factory(cfg: Config, stop: threading.Event | None = None) -> SourceFactory:
    """Sources for ``cfg``'s accounts from the one factory; ``stop`` ends their waits (a
    Retry-After, a backoff) with ``Interrupted`` so a stopping process is not held by one."""

    def make(account: AccountConfig) -> Source:
        return make_source(account, cfg, cancel=stop)

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
    on_download: Callable[[str, str, int | None], None] | None = None,
    min_gap: float = 0.0,
) -> PassReport:
    """``on_progress`` is called after each session and step, ``on_bytes`` as a download's
    bytes reach the disk (the daemon's watchdog: a slow big file is progress too),
    ``on_download`` as downloads are queued and begin (``AccountContext``; the terminal's
    progress bars). A
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
    lock = pass_lock(lock_path(engine, cfg.state.dir)) if use_lock else contextlib.nullcontext()
    with lock:
        sessions = statedb.sessionmaker_for(engine)
        if not dry_run:
            try:
                archive.check_writable()
            except ArchiveUnwritable as exc:
                # Before any login; the pass is recorded as failed, so `status` says why,
                # in the words (and with the fix) `config check` and `doctor` give.
                found = archive_problems(cfg)
                error = ArchiveUnwritable(str(found[0])) if found else exc
                _record_failed_pass(cfg, sessions, chosen, worker_id, str(error))
                if error is exc:
                    raise
                raise error from exc
            _remove_stale_parts(archive, cfg, shared=not use_lock)
        # A dry run writes nothing to the state database: no lease, no worker row.
        if use_lock and not dry_run:
            _clear_dead_leases(sessions, worker_id)
        if not dry_run:
            statedb.heartbeat(engine, worker_id, "pass")
        for account in chosen:
            if stop.is_set():
                report.interrupted = True
                break
            if statedb.damage_found(engine) is not None:
                break  # run_pass raises it
            ctx = AccountContext(
                cfg=cfg,
                account=account,
                engine=engine,
                sessions=sessions,
                archive=archive,
                report=AccountReport(account.name),
                worker_id=worker_id,
                dry_run=dry_run,
                stop=stop,
                on_progress=on_progress or _ignore,
                on_bytes=on_bytes,
                on_download=on_download,
            )
            report.accounts.append(
                AccountPass(ctx=ctx, source_factory=source_factory, min_gap=min_gap).run()
            )
        if stop.is_set():
            report.interrupted = True
        if dry_run:
            pass
        elif one_off:
            statedb.remove_worker(engine, worker_id)
        else:
            statedb.heartbeat(engine, worker_id, "idle")
    report.finished_at = time.time()
    return report


def _record_failed_pass(
    cfg: Config,
    sessions: Callable[[], DbSession],
    accounts: list[AccountConfig],
    worker_id: str,
    message: str,
) -> None:
    """A pass that could not start (the archive root cannot be written), recorded for each
    account as a failed pass with its reason, so `status`, the metrics and the next person
    see it. Best effort: the error itself is what the caller raises."""
    now = time.time()
    try:
        with sessions() as db, db.begin():
            for account in accounts:
                row = statedb.ensure_account(
                    db, account.name, account.source, kind(account.source).endpoint(account)
                )
                db.add(
                    Pass(
                        account_id=row.id,
                        worker=worker_id,
                        started_at=now,
                        finished_at=now,
                        ok=False,
                        dry_run=False,
                        errors=message[:20000],
                    )
                )
                row.last_error = message[:2000]
    except Exception as exc:  # the database may be what is unusable too
        log.warning("could not record the failed pass: %s", exc)


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


class AccountPass:
    """One account's part of a pass, top to bottom. Holds the account's lease while it
    works; ``ctx`` is what its steps share (its ``report`` is what ``run`` returns)."""

    def __init__(self, *, ctx: AccountContext, source_factory: SourceFactory, min_gap: float = 0.0):
        self.ctx = ctx
        self.source_factory = source_factory
        # Skip the account if another worker listed it less than this many seconds ago.
        self.min_gap = min_gap

    # -- the steps ---------------------------------------------------------------------

    def run(self) -> AccountReport:
        ctx = self.ctx
        started = time.time()
        if ctx.dry_run:
            # Nothing is written: an account never served has no row (id 0: nothing known),
            # and one another worker serves now is left to it, as a pass would.
            if self._dry_run_skipped():
                return ctx.report
        else:
            with ctx.sessions() as db, db.begin():
                row = statedb.ensure_account(
                    db,
                    ctx.account.name,
                    ctx.account.source,
                    kind(ctx.account.source).endpoint(ctx.account),
                )
                ctx.account_id = row.id
        if self.min_gap and self._served_recently():
            ctx.report.skipped = "served by another worker less than half an interval ago"
            return ctx.report
        claimed = ctx.dry_run or statedb.claim_accounts(
            ctx.engine, ctx.worker_id, [ctx.account.name], ctx.cfg.state.lease
        )
        if not claimed:
            ctx.report.skipped = "leased by another worker"
            log.info("account %s: served by another worker this pass", ctx.account.name)
            return ctx.report
        keeper = _LeaseKeeper(
            ctx.engine, ctx.worker_id, ctx.account.name, ctx.cfg.state.lease, ctx.lease_lost
        )
        source: Source | None = None
        try:
            if not ctx.dry_run:
                keeper.start()
            source = self.source_factory(ctx.account)
            if ctx.dry_run:
                source = DryRunSource(source)
            self._serve(source)
        except Interrupted as exc:
            # A stop during a wait (a Retry-After, a backoff): not this account's failure.
            log.info("account %s: %s", ctx.account.name, exc)
        except StateDamaged:
            raise  # not this account's failure: the whole state database's
        except E4SyncError as exc:
            # The error's own exit code (errors.py decides them all): 78 configuration,
            # 77 credentials, 75 temporary, 1 anything else.
            message = str(exc)
            if isinstance(exc, TransientError):
                # Not always "unreachable": a keyring not up yet, an answer of the wrong shape.
                message = f"{message} (temporary: the next pass tries again)"
            self._account_failed(exc.exit_code, message)
        finally:
            if not ctx.dry_run:
                keeper.stop()
            if source is not None:
                source.close()
            # Nothing more is written into a damaged file: it is to be rebuilt anyway; and
            # nothing at all by a dry run.
            if not ctx.dry_run and statedb.damage_found(ctx.engine) is None:
                statedb.release_leases(ctx.engine, ctx.worker_id, [ctx.account.name])
                self._write_pass_row(started)
        return ctx.report

    def _dry_run_skipped(self) -> bool:
        """For a dry run: the account's row id, read (0 when it has none), and whether
        another worker holds its lease now (then the dry run skips it, as a pass would)."""
        ctx = self.ctx
        with ctx.sessions() as db:
            row = db.execute(
                select(Account.id, Account.lease_owner, Account.lease_until).where(
                    Account.name == ctx.account.name
                )
            ).first()
        if row is None:
            return False
        ctx.account_id, owner, until = row
        if owner and owner != ctx.worker_id and until and until > time.time():
            ctx.report.skipped = "leased by another worker"
            log.info("account %s: served by another worker this pass", ctx.account.name)
            return True
        return False

    def _served_recently(self) -> bool:
        """With several workers each pass of each would otherwise log in to every account:
        skip one that another worker listed less than ``min_gap`` seconds ago."""
        with self.ctx.sessions() as db:
            row = db.get(Account, self.ctx.account_id)
            listed_at = row.last_listed_at if row else None
        return listed_at is not None and time.time() - listed_at < self.min_gap

    def _account_failed(self, code: int, message: str) -> None:
        report = self.ctx.report
        report.ok = False
        report.exit_code = code
        report.errors.append(message)
        log.error("account %s: %s", self.ctx.account.name, message)

    def _serve(self, source: Source) -> None:
        ctx = self.ctx
        downloader = Downloader(ctx=ctx, source=source)
        deleter = Deleter(ctx=ctx, source=source)
        ctx.user_id = source.identity()
        with ctx.sessions() as db:
            row = db.get(Account, ctx.account_id)
            ctx.last_complete = row.last_complete_listing_at if row is not None else None
        listing = source.list_items(ctx.last_complete)
        listing_ok = self._record_listing(listing, deleter, source.capabilities)
        copies = check_archived_copies(
            ctx.sessions, ctx.archive, ctx.account_id, ctx.account.name, dry_run=ctx.dry_run
        )
        ctx.report.lost = len(copies.requeued) + len(copies.lost)
        listed = {i.id: i for i in listing.items}
        # Only what was listed counts for deletion; a retry outside a partial listing is
        # downloaded all the same.
        downloader.download_due({**downloader.due_beyond(listing), **listed})
        damage = statedb.damage_found(ctx.engine)
        if damage is not None:
            # A download thread met it and stopped the account: no deletion on its word.
            raise damage
        if ctx.stop.is_set():
            return
        deleter.delete_qualifying(listed, listing_ok)
        if ctx.requeued and not ctx.stop.is_set():
            # A version the platform replaced: fetch it now rather than a pass later. It
            # qualifies for deletion on its own terms (its grace counts from now).
            downloader.download_due(listed, only=ctx.requeued)

    # -- listing -----------------------------------------------------------------------

    def _record_listing(
        self, listing: Listing, deleter: Deleter, capabilities: Capabilities
    ) -> bool:
        """Record new sessions and metadata changes with a constant number of queries,
        holding plain tuples, not ORM objects, for the sessions that did not change (an
        account can list 100,000). Sessions gone from it go to ``deleter.confirm``. Returns
        whether the listing can be trusted for deletions."""
        now = time.time()
        items = listing.items
        self.ctx.report.listed = len(items)
        listed = {i.id: i for i in items}
        with self.ctx.sessions() as db, db.begin():
            account = db.get(Account, self.ctx.account_id)
            if account is not None and not self.ctx.dry_run:
                account.user_id = self.ctx.user_id
                account.last_listed_at = now
                if listing.complete:
                    account.last_complete_listing_at = now
            # The recorded sessions are read in batches and compared as they come: only the
            # listed ids not met yet (new), the rows to update and the vanished ones are
            # kept, never a tuple per recorded session (an account may hold 100,000).
            unseen = set(listed)
            touched: list[tuple[str, int, str, str]] = []  # changed, or listed again
            vanished: list[tuple[str, int]] = []
            present_before = 0
            for rid, pk, state, mhash in db.execute(
                select(
                    SessionRow.remote_id,
                    SessionRow.id,
                    SessionRow.state,
                    SessionRow.version,
                ).where(SessionRow.account_id == self.ctx.account_id),
                execution_options={"yield_per": 2000},
            ):
                unseen.discard(rid)
                back = state in (REMOTE_GONE, REMOTE_DELETED)
                covered = listing.covered(rid)
                if not back and covered:
                    present_before += 1
                item = listed.get(rid)
                if item is None:
                    if not back and covered:
                        vanished.append((rid, pk))
                elif mhash != item.version or back:
                    touched.append((rid, pk, state, mhash))
            if not items and present_before:
                # An empty list where sessions existed is a platform fault, never "all deleted".
                log.warning(
                    "account %s: the platform listed no sessions where %d existed; "
                    "treating the listing as untrustworthy",
                    self.ctx.account.name,
                    present_before,
                )
                self.ctx.report.errors.append("empty session list where sessions existed")
                return False
            new_ids = [rid for rid in listed if rid in unseen]
            del unseen
            if self.ctx.dry_run:
                # Say what is new, record nothing: a dry run changes nothing, here included.
                self.ctx.dry_new = new_ids
                self.ctx.report.new = len(new_ids)
                db.rollback()
                return True
            for chunk in chunks(new_ids, 1000):
                db.execute(
                    insert(SessionRow),
                    [rows.new_values(self.ctx.account_id, listed[r], now) for r in chunk],
                )
            self.ctx.report.new = len(new_ids)
            for rid, pk, state, mhash in touched:
                item = listed[rid]
                back = state in (REMOTE_GONE, REMOTE_DELETED)
                row = db.get(SessionRow, pk)
                if mhash != item.version:
                    self.ctx.report.changed += 1
                    rows.apply_metadata(row, item)
                    if capabilities.refetch_changed and state == VERIFIED:
                        # A new version of the file itself: downloaded again; the archive
                        # keeps the copy it replaces.
                        row.state = NEW
                        row.attempts = 0
                        row.next_attempt_at = now
                        row.last_error = "a new version is on the platform"
                        if item.kind and item.kind in capabilities.write_once:
                            log.warning(
                                "%s: a new version of a %s file, which the platform writes "
                                "once, is on the platform; downloading it (the archived "
                                "copy is kept)",
                                rid,
                                item.kind,
                            )
                        else:
                            log.info("%s: a new version is on the platform; downloading it", rid)
                    else:
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
            if vanished:
                self._record_vanished(db, deleter, vanished, now)
        if self.ctx.report.new:
            log.info(
                "account %s: %d sessions listed, %d new",
                self.ctx.account.name,
                len(items),
                self.ctx.report.new,
            )
        return True

    def _record_vanished(
        self, db: DbSession, deleter: Deleter, vanished: list[tuple[str, int]], now: float
    ) -> None:
        """A session gone from the listing was deleted by this program (its ledger entry
        waits for this confirmation: ``Deleter.confirm``) or by someone else:
        ``remote_gone``, copy kept."""
        gone = []
        for rid, pk in deleter.confirm(db, vanished, now):
            gone.append(pk)
            log.warning("session %s vanished from the platform without e4sync deleting it", rid)
        for chunk in chunks(gone, 1000):
            db.execute(
                update(SessionRow)
                .where(SessionRow.id.in_(chunk))
                .values(state=REMOTE_GONE, gone_at=now)
                .execution_options(synchronize_session=False)
            )
        self.ctx.report.gone += len(gone)

    # -- the pass row ------------------------------------------------------------------

    def _write_pass_row(self, started: float) -> None:
        r = self.ctx.report
        if self.ctx.dry_run:
            return
        try:
            with self.ctx.sessions() as db, db.begin():
                db.add(
                    Pass(
                        account_id=self.ctx.account_id,
                        worker=self.ctx.worker_id,
                        started_at=started,
                        finished_at=time.time(),
                        ok=r.ok and not r.failed and not r.paused,
                        dry_run=self.ctx.dry_run,
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
                account = db.get(Account, self.ctx.account_id)
                account.last_error = r.errors[-1][:2000] if r.errors else None
                if r.ok:
                    account.last_ok_at = time.time()
        except StateDamaged:
            pass  # remembered by the engine; run_pass raises it
        except Exception:  # the pass's own outcome matters more than its summary row
            log.exception("account %s: could not write the pass summary", self.ctx.account.name)


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
