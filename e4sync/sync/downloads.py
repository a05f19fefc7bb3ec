"""e4sync.sync.downloads: the download step of an account's pass (SPEC section 6).

Owns ``Downloader``: due sessions get their archive paths (one transaction per batch),
``download.concurrency`` threads fetch them to ``X.part`` sharing one login, and a
finisher pool verifies, commits (sidecar, link, fsyncs) and records each one, so a download
slot is free as soon as a body is on disk. A failed attempt is recorded with its back-off; a
stopped one removes its ``.part`` (no later process could resume it); a full disk pauses the
account's downloads for the pass without counting an attempt. A file on disk is adopted only
when it is not the copy the database already knows (a re-download of a lost, damaged or
replaced copy fetches anew). A file another tool left at an item's path (no sidecar: an
``aws s3 sync`` copy) is adopted without a download when the source pins the item's bytes
(``pinned_version``: S3's MD5 ETag) and ``verify`` passes; otherwise it is never touched.
Also ``backoff_delay`` and ``disk_full``.

Everything it shares with the rest of the pass is in its ``AccountContext``.
Must not import: e4sync.cli, e4sync.sources.e4connect, e4sync.sync.run, e4sync.sync.deletions.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import random
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session as DbSession

from e4sync.archive import render_relpath, session_key, sidecar
from e4sync.crashpoints import crashpoint
from e4sync.errors import (
    AuthError,
    E4SyncError,
    Interrupted,
    NotAZipError,
    StateDamaged,
    StorageError,
)
from e4sync.fsutil import fsync_file
from e4sync.sources import Item, Listing, RemoteVersion, Source, Verdict, kind
from e4sync.state.models import (
    DOWNLOADING,
    DUE_STATES,
    FAILED,
    NEW,
    VERIFIED,
)
from e4sync.state.models import Session as SessionRow
from e4sync.sync.common import chunks, describe, iso, part_of
from e4sync.sync.context import AccountContext

log = logging.getLogger("e4sync.sync")


@dataclass(frozen=True)
class _Fetched:
    """A body on disk, waiting to be verified and committed."""

    relpath: PurePosixPath
    part: Path
    size: int
    sha256: str
    started: float
    adopted: bool = False  # a whole file a killed pass had already committed
    # The version the file was downloaded under, when not the current listing's (an
    # adopted file: its sidecar says), so a change since still blocks remote deletion.
    version: str | None = None
    etag: str | None = None  # the validators the platform sent with the bytes
    last_modified: str | None = None
    verdict: Verdict | None = None  # an adopted file's verification, for its row
    foreign: bool = False  # a copy another tool made, adopted: nothing was downloaded


class _Finishing:
    """One ``download_due`` call's finisher pool, and the slots that bound how many
    fetched bodies wait for it (each holds a ``.part`` on disk)."""

    def __init__(self, pool: ThreadPoolExecutor, slots: threading.BoundedSemaphore):
        self.pool = pool
        self.slots = slots

    def done(self, future: Future) -> None:
        self.slots.release()
        # Nobody reads a finisher's result: an error escaping even its failure handling
        # (the database gone) is logged here rather than lost with the future.
        exc = future.exception()
        if exc is not None:
            log.error("archiving failed and could not be recorded: %s", exc, exc_info=exc)


class _Recorder:
    """Verified downloads recorded in the state database in batches, by a thread of their
    own: a finisher hands its row's new values over (``record``) and goes on to the next
    file, and the recorder writes whatever has gathered meanwhile (up to ``BATCH``) in one
    transaction: one statement and one fsync of the WAL for many files, not an ORM load,
    flush and commit each. ``done(entry)`` or ``failed(entry, exc)`` runs for each entry
    once its transaction ended. ``close`` writes what is left and returns once every entry
    has, so the pass's next step (deletion) reads every row. A kill loses no more than it
    did: a record not yet committed leaves a committed file (and sidecar) whose row still
    says ``downloading``, which the next pass adopts."""

    BATCH = 256

    def __init__(
        self,
        write: Callable[[list[dict]], None],
        done: Callable[[_Entry], None],
        failed: Callable[[_Entry, BaseException], None],
        name: str,
    ):
        self._write, self._done, self._failed = write, done, failed
        self._cond = threading.Condition()
        self._queue: list[_Entry] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def record(self, entry: _Entry) -> None:
        with self._cond:
            self._queue.append(entry)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue[: self.BATCH], self._queue[self.BATCH :]
            try:
                self._write([entry.values for entry in batch])
            except BaseException as exc:
                for entry in batch:
                    self._failed(entry, exc)
            else:
                for entry in batch:
                    self._done(entry)


@dataclass(slots=True)
class _Entry:
    """One verified download waiting for its row: the new values, and what the report,
    the log and a failure need."""

    values: dict
    pk: int
    item: Item
    got: _Fetched


class Downloader:
    """The download step of one account's pass: ``download_due`` fetches, verifies,
    commits and records what is due. Built once the source is connected."""

    def __init__(self, *, ctx: AccountContext, source: Source):
        self.ctx = ctx
        self.source = source
        # Every archive path taken, by any account (one archive): read when a call has
        # something to download, extended as paths are chosen.
        self.claimed_paths: set[str] = set()
        self._people: Any = None  # the [participants] file, read when first needed
        # Copies another tool made, adopted when their paths were chosen (sidecar written),
        # waiting for their download slot to be recorded.
        self._adopted: dict[PurePosixPath, _Fetched] = {}
        self._adopted_lock = threading.Lock()
        self._would_adopt: set[str] = set()  # a dry run's: items such a copy would be
        self._recorder: _Recorder | None = None  # while download_due runs

    def download_due(self, listed: dict[str, Item], only: set[str] | None = None) -> None:
        """Download what is due and listed (of ``only``, when given)."""
        ctx = self.ctx
        now = time.time()
        with ctx.sessions() as db:
            rows = db.execute(
                select(SessionRow.id, SessionRow.remote_id)
                .where(
                    SessionRow.account_id == ctx.account_id,
                    SessionRow.state.in_(DUE_STATES),
                    (SessionRow.next_attempt_at.is_(None)) | (SessionRow.next_attempt_at <= now),
                )
                .order_by(SessionRow.recorded_at, SessionRow.id),
                execution_options={"yield_per": 2000},
            )
            # Read in batches, each id kept as the listing's own string, not the database's
            # copy: a first pass may have 100,000 sessions due.
            due = [
                (pk, listed[rid].id)
                for pk, rid in rows
                if rid in listed and (only is None or rid in only)
            ]
        if ctx.dry_run:
            ctx.report.would_download = [rid for _, rid in due] + ctx.dry_new
            self._plan(due, listed)
            return
        if not due:
            return
        if ctx.on_download is not None:
            for _, rid in due:
                ctx.on_download("queued", rid, listed[rid].size)
        # Every path taken, by any account (one archive): only a pass that downloads needs
        # them, so an idle pass over a large archive does not read them all.
        with ctx.sessions() as db:
            self.claimed_paths = set(
                db.scalars(
                    select(SessionRow.local_path).where(
                        SessionRow.local_path.is_not(None), SessionRow.state != NEW
                    )
                )
            )
        self._recorder = _Recorder(
            self._write_verified,
            self._said_verified,
            self._recording_failed,
            name=f"rec-{ctx.account.name}",
        )
        try:
            self._download(due, listed)
        finally:
            recorder, self._recorder = self._recorder, None
            recorder.close()  # every verified download's row committed before going on

    def due_beyond(self, listing: Listing) -> dict[str, Item]:
        """The due items a partial listing could not have shown (an object in a day folder
        older than the lookback), rebuilt from the metadata they were last listed with, so
        that a retry is tried at this pass rather than at the next whole listing (a day
        away). A GET pinned to that version by If-Match keeps a changed object from being
        saved; one gone fails its GET and waits for the next whole listing to say so."""
        if listing.complete:
            return {}
        ctx = self.ctx
        now = time.time()
        rebuild = kind(ctx.account.source).item_from_raw
        found: dict[str, Item] = {}
        with ctx.sessions() as db:
            rows = db.execute(
                select(SessionRow.remote_id, SessionRow.remote_json).where(
                    SessionRow.account_id == ctx.account_id,
                    SessionRow.state.in_(DUE_STATES),
                    (SessionRow.next_attempt_at.is_(None)) | (SessionRow.next_attempt_at <= now),
                ),
                execution_options={"yield_per": 2000},  # a first pass may leave 100,000 due
            )
            for rid, raw in rows:
                if listing.covered(rid):
                    continue  # listed (then it is in the listing) or known gone
                try:
                    item = rebuild(json.loads(raw or "{}"))
                except ValueError:
                    item = None
                if item is not None and item.id == rid:
                    found[rid] = item
        return found

    def _download(self, due: list[tuple[int, str]], listed: dict[str, Item]) -> None:
        ctx = self.ctx
        workers = max(1, min(ctx.cfg.download.concurrency, len(due)))
        # Paths are chosen and recorded a few dozen at a time: one transaction (and one
        # fsync of the WAL) per batch; the first downloads wait for the first batch only.
        pending = self._with_paths(due, listed, batch=max(32, 4 * workers))
        in_flight: set[Future] = set()
        with (
            ThreadPoolExecutor(workers, thread_name_prefix=f"fin-{ctx.account.name}") as finisher,
            ThreadPoolExecutor(workers, thread_name_prefix=f"dl-{ctx.account.name}") as pool,
        ):
            finishing = _Finishing(finisher, threading.BoundedSemaphore(2 * workers))
            # A bounded window of submissions, not one future per due session: a first pass
            # over 100,000 sessions would otherwise hold them all in memory at once.
            while True:
                for pk, item, relpath, known in itertools.islice(
                    pending, 2 * workers - len(in_flight)
                ):
                    in_flight.add(
                        pool.submit(self._download_one, finishing, pk, item, relpath, known)
                    )
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        future.result()
                    except (AuthError, StateDamaged):
                        # The password stopped working mid-pass, or the state database is
                        # damaged: nothing else will work either.
                        ctx.stop_account()
                        for other in in_flight:
                            other.cancel()
                        raise

    def _plan(self, due: list[tuple[int, str]], listed: dict[str, Item]) -> None:
        """A dry run's plan: each would-be download with the archive path it would get,
        its size (when the listing says) and its recorded date, and why it is due. Reads
        the state database and the archive; writes nothing."""
        ctx = self.ctx
        rows: dict[int, SessionRow] = {}
        with ctx.sessions() as db:
            self.claimed_paths = set(
                db.scalars(
                    select(SessionRow.local_path).where(
                        SessionRow.local_path.is_not(None), SessionRow.state != NEW
                    )
                )
            )
            for chunk in chunks([pk for pk, _ in due], 1000):
                rows.update(
                    (row.id, row)
                    for row in db.scalars(select(SessionRow).where(SessionRow.id.in_(chunk)))
                )
        wanted = [(rows.get(pk), rid) for pk, rid in due]
        wanted += [(None, rid) for rid in ctx.dry_new]
        for row, rid in wanted:
            item = listed[rid]
            if row is None:
                why = "new on the platform"
            else:
                why = row.last_error or f"{row.state}, not archived yet"
            try:
                if row is not None:
                    relpath = self._choose_path(row, item, adopt=False)
                else:
                    relpath = self._choose_new_path(item, adopt=False)
                if item.id in self._would_adopt:
                    why = (
                        "already in the archive, not written by e4sync, and its size, MD5 "
                        "and content match: would be adopted, not downloaded"
                    )
                path = str(ctx.archive.resolve(relpath))
            except (E4SyncError, OSError, ValueError) as exc:
                path = f"(no path: {exc})"
            ctx.report.planned_downloads.append(
                {
                    "id": rid,
                    "path": path,
                    "size": item.size,
                    "recorded": iso(item.recorded_at) if item.recorded_at else None,
                    "why": why,
                }
            )
            log.info("dry run: would download session %s to %s", rid, path)

    def _download_one(
        self,
        finishing: _Finishing,
        pk: int,
        item: Item,
        relpath: PurePosixPath,
        known_sha256: str | None,
    ) -> None:
        """Fetch on a download thread, then hand the file to a finisher thread to verify,
        commit and record, so the download slot is free again as soon as the body is on
        disk (the fsyncs and the database write overlap the next downloads)."""
        if self._paused():
            return
        fetched = None
        try:
            fetched = self._fetch(pk, item, relpath, known_sha256)
        finally:
            if fetched is None:
                self.ctx.on_progress(item.id)
        if fetched is not None:
            finishing.slots.acquire()
            future = finishing.pool.submit(self._finish, pk, item, fetched)
            future.add_done_callback(finishing.done)

    def _fetch(
        self,
        pk: int,
        item: Item,
        relpath: PurePosixPath,
        known_sha256: str | None,
    ) -> _Fetched | None:
        """The body on disk as ``X.part`` (or a whole file a killed pass left), or None
        when the attempt failed (recorded) or was stopped (not an attempt: not counted).
        ``known_sha256`` is the copy the database already has, if any: a file on disk with
        those bytes is the one being replaced, never adopted as the new download."""
        part = part_of(self.ctx.archive.resolve(relpath))
        started = time.time()
        found = _file_id(part)  # a part there before this download is not its to remove
        try:
            # Inside the try: a folder that cannot be made is this session's failure (counted,
            # backed off), never the account's whole pass.
            self.ctx.archive.part_path(relpath)
            adopted = self._adopt_existing(relpath, item, known_sha256)
            if adopted is not None:
                return adopted
            if self.ctx.on_download is not None:
                self.ctx.on_download("fetching", item.id, item.size)
            fetched = self.source.fetch(
                item, part, cancel=self.ctx.stop, progress=self.ctx.on_bytes
            )
            crashpoint("after-fetch")
            return _Fetched(
                relpath,
                part,
                fetched.size,
                fetched.sha256,
                started,
                etag=fetched.etag,
                last_modified=fetched.last_modified,
            )
        except Interrupted:
            # Its resume point lives in this process's client and dies with it, so a part this
            # download made is of no use to anyone: removed now, not at the next start.
            removed = _file_id(part) not in (None, found)
            if removed:
                with contextlib.suppress(OSError):
                    part.unlink()
            log.info(
                "session %s: stopped before the download finished%s",
                item.id,
                "; its partial file is removed" if removed else "",
            )
        except AuthError:
            raise
        except (E4SyncError, OSError) as exc:
            self._failed(pk, item, part, exc)
        return None

    def _finish(self, pk: int, item: Item, got: _Fetched) -> None:
        try:
            verdict = None
            if not got.adopted:
                verdict = self.source.verify(got.part, item)
                if verdict.problems:
                    said = "; ".join(verdict.problems)
                    if verdict.bytes_proven:
                        said += self._keep_refused(item, got, verdict)
                    with contextlib.suppress(OSError):
                        got.part.unlink()
                    raise NotAZipError(said)
                sidecar = self._sidecar(item, got, time.time(), verdict)
                self.ctx.archive.commit(
                    got.part, got.relpath, sidecar, aside_root=self._aside_root()
                )
                if verdict.warnings:
                    # Archived all the same (the platform's data); said once, and in the sidecar.
                    log.warning("session %s: %s", item.id, "; ".join(verdict.warnings))
                crashpoint("after-commit")
            self._record_verified(pk, item, got, verdict or got.verdict)
        except Exception as exc:
            self._archiving_failed(pk, item, got.part, exc)
        finally:
            self.ctx.on_progress(item.id)

    def _keep_refused(self, item: Item, got: _Fetched, verdict: Verdict) -> str:
        """Keep a refused file whose bytes are the platform's own (never lose what may be
        the only copy), once; what to add to the error that says why it was refused."""
        data = self._sidecar(item, got, time.time(), verdict)
        data["refused"] = list(verdict.problems)
        try:
            kept = self.ctx.archive.keep_refused(
                got.part, got.relpath, data, aside_root=self._aside_root()
            )
        except (E4SyncError, OSError) as exc:
            log.warning("session %s: the refused file could not be kept: %s", item.id, exc)
            return ""
        return (
            f"; its bytes are the platform's own (a digest it published matched), kept at "
            f"{kept} for a person to look at; it is fetched again at the next attempts"
        )

    def _archiving_failed(self, pk: int, item: Item, part: Path, exc: BaseException) -> None:
        """What an error while verifying, committing or recording one download means."""
        if isinstance(exc, StateDamaged):
            # Not this session's failure, and nothing can be recorded: stop the account (the
            # engine remembers the damage and the pass raises it). A file already committed
            # has its sidecar, from which `reindex` rebuilds its row.
            self.ctx.stop_account()
        elif isinstance(exc, E4SyncError | OSError):
            self._failed(pk, item, part, exc)
        elif isinstance(exc, Exception) and disk_full(exc):
            # The state database could not commit for lack of space.
            self._failed(pk, item, part, exc)
        elif isinstance(exc, Exception):
            # A bug must not vanish inside a pool thread.
            log.error("session %s: unexpected error while archiving", item.id, exc_info=exc)
            self._failed(pk, item, part, RuntimeError("unexpected error; see the log"))
        else:
            raise exc

    def _failed(self, pk: int, item: Item, part: Path, exc: BaseException) -> None:
        if isinstance(exc, StorageError) or not isinstance(exc, E4SyncError):
            # A local write failed (disk full, read-only): free the space, start over later.
            with contextlib.suppress(OSError):
                part.unlink()
        full = disk_full(exc)
        if full:
            # Not the session's fault: no attempt is counted (a weekend of ENOSPC must not
            # spend every session's attempts), and the rest of the account's downloads
            # wait for the next pass. The row stays due; nothing is written to a database
            # that may itself be out of space.
            self._pause(f"{full}: {describe(exc)}")
            return
        self._record_failure(pk, item, exc)

    def _paused(self) -> bool:
        return self.ctx.halted or self.ctx.disk_full.is_set()

    def _pause(self, reason: str) -> None:
        with self.ctx.report_lock:
            if self.ctx.disk_full.is_set():
                return
            self.ctx.disk_full.set()
            self.ctx.report.paused = reason
            self.ctx.report.errors.append(f"downloads paused for this pass: {reason}")
        log.error(
            "account %s: downloads paused for this pass (%s); no attempt is counted against "
            "the sessions, and the next pass tries again",
            self.ctx.account.name,
            reason,
        )

    def _aside_root(self) -> PurePosixPath | None:
        """Where the copies this account's new versions replace are kept: beside them, or
        in the source's versions folder under the account's (``{account}/.versions``)."""
        folder = self.source.capabilities.versions_folder
        return PurePosixPath(self.ctx.account.name, folder) if folder else None

    def _record_verified(
        self, pk: int, item: Item, got: _Fetched, verdict: Verdict | None = None
    ) -> None:
        values = {
            "id": pk,
            "state": VERIFIED,
            "local_path": str(got.relpath),
            "size": got.size,
            "sha256": got.sha256,
            "downloaded_version": got.version or item.version,
            "downloaded_at": got.started,
            "verified_at": time.time(),
            "remote_etag": (got.etag or "")[:200] or None,
            "remote_last_modified": (got.last_modified or "")[:100] or None,
            "last_error": None,
            "next_attempt_at": None,
            "local_problem": None,  # a whole copy is in place again (state.problems.clear)
        }
        if verdict is not None:
            if verdict.recorded is not None:
                # What the content says beats what the listing said.
                values["recorded_at"], values["duration"] = verdict.recorded
            values["content_json"] = (
                json.dumps(dict(verdict.facts), sort_keys=True) if verdict.facts else None
            )
        recorder = self._recorder
        if recorder is not None:
            recorder.record(_Entry(values, pk, item, got))  # committed in a batch
        else:
            self._write_verified([values])
            self._said_verified(_Entry(values, pk, item, got))

    def _said_verified(self, entry: _Entry) -> None:
        """A verified download's row committed: counted in the report, and logged."""
        item, got = entry.item, entry.got
        with self.ctx.report_lock:
            if got.foreign:
                self.ctx.report.adopted += 1
            else:
                self.ctx.report.downloaded += 1
                self.ctx.report.bytes += got.size
        if got.foreign:
            return  # said when it was adopted
        seconds = max(time.time() - got.started, 1e-6)
        log.info(
            "session %s: archived %s (%.1f MB, %.1f MB/s)",
            item.id,
            self.ctx.archive.join(str(got.relpath)),
            got.size / 1e6,
            got.size / 1e6 / seconds,
        )

    def _recording_failed(self, entry: _Entry, exc: BaseException) -> None:
        self._archiving_failed(entry.pk, entry.item, entry.got.part, exc)

    def _write_verified(self, records: list[dict]) -> None:
        """One transaction: each record's row updated by its primary key (``id``)."""
        with self.ctx.sessions() as db, db.begin():
            update_by_id(db, records)

    def _with_paths(
        self, due: list[tuple[int, str]], listed: dict[str, Item], batch: int
    ) -> Iterator[tuple[int, Item, PurePosixPath, str | None]]:
        """The due sessions with their archive paths, recorded (state ``downloading``) one
        transaction per batch before their downloads start: a crash then still knows which
        ``.part`` belongs to whom, and the download threads make no database write of their
        own before their request."""
        for chunk in chunks(due, batch):
            if self._paused():
                return
            chosen = []
            unplaced: list[tuple[int, Item, BaseException]] = []
            with self.ctx.sessions() as db, db.begin():
                # One SELECT and one UPDATE per batch, not one per session (round trips on
                # PostgreSQL), of the columns a path depends on, not whole ORM rows.
                rows = db.execute(
                    select(
                        SessionRow.id, SessionRow.state, SessionRow.local_path, SessionRow.sha256
                    ).where(SessionRow.id.in_([pk for pk, _ in chunk]))
                )
                by_pk = {row.id: row for row in rows}
                placed = []
                for pk, rid in chunk:
                    row = by_pk[pk]
                    try:
                        relpath = self._choose_path(row, listed[rid])
                    except (
                        E4SyncError,
                        OSError,
                        ValueError,
                    ) as exc:  # ValueError: a layout its fields cannot fill
                        unplaced.append((pk, listed[rid], exc))
                        continue
                    placed.append({"id": pk, "state": DOWNLOADING, "local_path": str(relpath)})
                    chosen.append((pk, listed[rid], relpath, row.sha256))
                update_by_id(db, placed)
            # Recorded after the batch's transaction: one session without a path is its own
            # failure, not the batch's (and a nested write would wait for itself on SQLite).
            for pk, item, exc in unplaced:
                self._record_failure(pk, item, exc)
                self.ctx.on_progress(item.id)
            yield from chosen

    def _choose_path(self, row: Any, item: Item, adopt: bool = True) -> PurePosixPath:
        """``row``: the session's row, or its ``state``, ``local_path`` and ``sha256``."""
        if row.local_path and (row.state == DOWNLOADING or row.sha256):
            # A download taken up again keeps the path it was given (a whole file a killed
            # pass committed there is adopted, not downloaded twice), and so does a copy
            # downloaded again (lost, damaged, or replaced on the platform): the new file
            # takes the old one's name, which the archive keeps aside.
            return PurePosixPath(row.local_path)
        return self._choose_new_path(item, adopt=adopt)

    def _participant(self, item: Item) -> str | None:
        """Who had the item's device on its start day ([participants] file), if anyone."""
        path = self.ctx.cfg.participants.file
        if path is None or not item.recorded_at:
            return None
        if self._people is None:
            from e4sync.participants import load_participants

            self._people = load_participants(path)  # checked when the config was loaded
        serial = item.fields.get(kind(self.ctx.account.source).device_field)
        zone = ZoneInfo(self.ctx.cfg.archive.timezone)
        day = datetime.fromtimestamp(item.recorded_at, zone).date()
        return self._people.who(str(serial or ""), day)

    def _wanted_path(self, item: Item) -> PurePosixPath:
        """Where the layout puts ``item``, before any collision is resolved."""
        layout = self.ctx.account.layout or self.ctx.cfg.archive.layout
        fields = {"account": self.ctx.account.name, "user_id": self.ctx.user_id, **item.fields}
        if "participant" in fields and not fields["participant"]:
            fields["participant"] = self._participant(item) or ""
        # Lenient: the layout was checked against the account's kind when it was loaded.
        return PurePosixPath(render_relpath(layout, fields, self.ctx.cfg.archive.timezone))

    def _choose_new_path(self, item: Item, adopt: bool = True) -> PurePosixPath:
        """A free path for ``item``: the layout's, unless another item or a file e4sync did
        not write holds it. A copy another tool left there that is this item's bytes is
        adopted first (its sidecar written), so the path is the item's; without ``adopt``
        (a dry run) nothing is written and such a copy is only noted."""
        wanted = self._wanted_path(item)
        if not adopt:
            if self._unrecorded_copy(wanted, item) is not None:
                self._would_adopt.add(item.id)
                return wanted
        elif (adopted := self._adopt_unrecorded(wanted, item)) is not None:
            with self._adopted_lock:
                self._adopted[wanted] = adopted  # for its download slot to record
        chosen = self.ctx.archive.choose_path(
            wanted,
            session_key(self.ctx.account.name, item.id),
            lambda p: str(p) in self.claimed_paths,
        )
        self.claimed_paths.add(str(chosen))
        return chosen

    def _adopt_existing(
        self, relpath: PurePosixPath, item: Item, known_sha256: str | None
    ) -> _Fetched | None:
        """A crash after the rename but before the database commit leaves a whole file and
        its sidecar: take it if it still hashes to what the sidecar says, and is not the
        copy the database already knows (that one is being downloaded again). It keeps
        the metadata and validators of the listing it was downloaded under. A copy another
        tool made (no sidecar) is adopted when it is the item's bytes (``_adopt_unrecorded``)."""
        with self._adopted_lock:
            early = self._adopted.pop(relpath, None)
        if early is not None:
            return early  # adopted when its path was chosen
        final = self.ctx.archive.resolve(relpath)
        sidecar = self.ctx.archive.read_sidecar(relpath)
        if not final.exists():
            return None
        if not sidecar:
            return self._adopt_unrecorded(relpath, item)
        if sidecar.get("session_key") != session_key(self.ctx.account.name, item.id):
            return None
        if known_sha256 is not None and sidecar.get("sha256") == known_sha256:
            return None
        from e4sync.verify import sha256_file

        started = time.time()
        size, sha256 = sha256_file(final)
        if sha256 != sidecar.get("sha256"):
            return None
        verdict = self.source.verify(final, item)
        if not verdict.ok:
            return None
        log.info("session %s: adopting the archived file left by an interrupted pass", item.id)
        # A kill between link(part, final) and unlink(part) leaves the part as a second name.
        with contextlib.suppress(FileNotFoundError):
            part_of(final).unlink()
        then = kind(self.ctx.account.source).item_from_raw(sidecar.get("remote"))
        validators = sidecar.get("validators")
        validators = validators if isinstance(validators, dict) else {}
        return _Fetched(
            relpath,
            part_of(final),
            size,
            sha256,
            started,
            adopted=True,
            version=then.version if then is not None else None,
            etag=validators.get("etag"),
            last_modified=validators.get("last_modified"),
            verdict=verdict,
        )

    def _unrecorded_copy(
        self, relpath: PurePosixPath, item: Item
    ) -> tuple[Path, int, str, Verdict, RemoteVersion] | None:
        """The file at ``relpath`` if another tool made it and it is ``item``'s bytes: a
        regular file with no sidecar (named or staged), on a path no other item holds, of
        the listed size, where the source pins the bytes (``pinned_version``: S3's MD5 ETag)
        and its ``verify`` passes (the MD5 and the content). Returns the path, its size and
        sha256, the verdict and the pinned version; None otherwise. Reads; writes nothing."""
        pinned_version = getattr(self.source, "pinned_version", None)
        pinned = pinned_version(item) if pinned_version is not None else None
        if pinned is None or pinned.size is None:
            return None
        try:
            # A quick look first: most new items have no file at their path.
            if not os.path.lexists(self.ctx.archive.join(str(relpath))):
                return None
        except (TypeError, ValueError):
            return None
        if str(relpath) in self.claimed_paths:
            return None
        try:
            final = self.ctx.archive.resolve(relpath)
            side = self.ctx.archive.sidecar_path(relpath)
            found = os.lstat(final)
            if not stat.S_ISREG(found.st_mode) or found.st_size != pinned.size:
                return None
            if os.path.lexists(side) or os.path.lexists(f"{side}.tmp"):
                return None
            from e4sync.verify import sha256_file

            size, sha256 = sha256_file(final)
            verdict = self.source.verify(final, item)
        except (E4SyncError, OSError):
            return None
        if not verdict.ok:
            log.info(
                "session %s: %s is not e4sync's and not this object's bytes (%s); it is left "
                "as it is",
                item.id,
                final,
                "; ".join(verdict.problems),
            )
            return None
        return final, size, sha256, verdict, pinned

    def _adopt_unrecorded(self, relpath: PurePosixPath, item: Item) -> _Fetched | None:
        """Adopt a copy another tool made at ``relpath`` (an ``aws s3 sync`` mirror) when
        it is ``item``'s bytes (``_unrecorded_copy``): fsync it, write its sidecar (the
        listing's validators; the verdict's content), and return it as fetched; the
        download step then records it verified, with no request to the platform. Called
        when a new item's path is chosen, and by the download thread when a path chosen
        earlier holds such a copy (it appeared after the choice)."""
        found = self._unrecorded_copy(relpath, item)
        if found is None:
            return None
        final, size, sha256, verdict, pinned = found
        started = time.time()
        got = _Fetched(
            relpath,
            part_of(final),
            size,
            sha256,
            started,
            adopted=True,
            etag=pinned.etag,
            last_modified=pinned.last_modified,
            verdict=verdict,
            foreign=True,
        )
        try:
            fsync_file(final)  # the other tool may never have
            self.ctx.archive.write_sidecar(relpath, self._sidecar(item, got, time.time(), verdict))
        except (E4SyncError, OSError) as exc:
            log.warning("session %s: could not adopt %s: %s", item.id, final, describe(exc))
            return None
        log.info(
            "session %s: adopted an existing copy at %s (not written by e4sync; its size, MD5 "
            "and content match the listing): not downloaded again",
            item.id,
            final,
        )
        return got

    def _sidecar(self, item: Item, got: _Fetched, verified_at: float, verdict: Verdict) -> dict:
        return sidecar.build(
            source=self.ctx.account.source,
            account=self.ctx.account.name,
            user_id=self.ctx.user_id,
            item_id=item.id,
            remote=item.raw,
            file=got.relpath.name,
            size=got.size,
            sha256=got.sha256,
            downloaded_at=got.started,
            verified_at=verified_at,
            etag=got.etag,
            last_modified=got.last_modified,
            warnings=list(verdict.warnings),
            content=dict(verdict.facts),
        )

    def _record_failure(self, pk: int, item: Item, exc: BaseException) -> None:
        message = describe(exc)
        now = time.time()
        with self.ctx.sessions() as db, db.begin():
            row = db.get(SessionRow, pk)
            row.attempts += 1
            row.last_error = message
            if row.attempts >= self.ctx.cfg.download.max_attempts:
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
                    row.attempts, self.ctx.cfg.download.backoff, self.ctx.cfg.download.max_backoff
                )
                log.warning(
                    "session %s: attempt %d failed, retrying after %s: %s",
                    item.id,
                    row.attempts,
                    iso(row.next_attempt_at),
                    message,
                )
        with self.ctx.report_lock:
            self.ctx.report.failed += 1
            self.ctx.report.errors.append(f"session {item.id}: {message}")


def update_by_id(db: DbSession, records: list[dict]) -> None:
    """Update session rows by their ``id``, each to its record's other values: one Core
    statement per set of columns, run for many rows (SQLAlchemy's ORM bulk update does the
    same, at several times the cost in Python for a few rows)."""
    by_columns: dict[tuple[str, ...], list[dict]] = {}
    for record in records:
        by_columns.setdefault(tuple(sorted(record)), []).append(record)
    for columns, group in by_columns.items():
        statement = _UPDATES.get(columns)
        if statement is None:
            table = SessionRow.__table__
            statement = _UPDATES[columns] = (
                table.update()
                .where(table.c.id == bindparam("_id"))
                .values({c: bindparam(f"_{c}") for c in columns if c != "id"})
            )
        db.execute(statement, [{f"_{c}": r[c] for c in columns} for r in group])


_UPDATES: dict[tuple[str, ...], Any] = {}  # update_by_id's statements, by their columns


def disk_full(exc: BaseException) -> str:
    """ "no space left on device" or "disk quota exceeded" when ``exc`` means the archive's
    or the state database's disk is full; "" otherwise."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC:
        return "no space left on device"
    if code == getattr(errno, "EDQUOT", -1):
        return "disk quota exceeded"
    orig = getattr(exc, "orig", None)  # a SQLAlchemy error wraps the driver's
    if orig is not None:
        if getattr(orig, "sqlite_errorcode", None) == 13 or "disk is full" in str(orig):
            return "no space left on device (the state database)"  # SQLITE_FULL
        if getattr(orig, "sqlstate", None) == "53100":  # PostgreSQL disk_full
            return "no space left on device (the state database)"
    return ""


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """``base`` doubled per attempt, capped, with +-20 % jitter so that many failed sessions
    (or many workers) do not all come back at the same second."""
    delay = min(cap, base * (2 ** max(0, attempts - 1)))
    return delay * random.uniform(0.8, 1.2)
