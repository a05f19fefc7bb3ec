"""e4sync.sync.downloads: the download steps of an account's pass.

Due sessions get their archive paths (one transaction per batch), ``download.concurrency``
threads fetch them to ``X.zip.part`` sharing one login, and a finisher pool verifies,
commits (sidecar, link, fsyncs) and records each one, so a download slot is free as soon as
a body is on disk. A failed attempt is recorded with its back-off; a stopped one leaves its
``.part`` for the next pass to remove. Mixed into ``AccountPass``, whose attributes it uses
(``cfg``, ``account``, ``sessions``, ``archive``, ``stop``, ``lease_lost``, ``report``,
``report_lock``, ``user_id``, ``dry_run``, ``on_progress``, ``on_bytes``, ``claimed_paths``,
``dry_new``).

Must not import cli or ``e4sync.sync.run``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy import select

from e4sync import sidecar
from e4sync.archive import LayoutFields, render_relpath
from e4sync.crashpoints import crashpoint
from e4sync.errors import (
    AuthError,
    E4SyncError,
    Interrupted,
    NotAZipError,
    StateDamaged,
    StorageError,
)
from e4sync.source import RemoteItem, Source, parse_item
from e4sync.state import problems as local_problems
from e4sync.state.models import (
    DOWNLOADING,
    DUE_STATES,
    FAILED,
    NEW,
    VERIFIED,
)
from e4sync.state.models import Session as SessionRow
from e4sync.sync.common import chunks, describe, iso, part_of

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
    # The remote metadata the file was downloaded under, when not the current listing's
    # (an adopted file: its sidecar says), so a change since still blocks remote deletion.
    metadata_hash: str | None = None


class DownloadSteps:
    """The download half of ``AccountPass``."""

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
        due = [(pk, rid) for pk, rid in due if rid in listed]
        if self.dry_run:
            self.report.would_download = [rid for _, rid in due] + self.dry_new
            for rid in self.report.would_download:
                log.info("dry run: would download session %s", rid)
            return
        if not due:
            return
        # Every path taken, by any account (one archive): only a pass that downloads needs
        # them, so an idle pass over a large archive does not read them all.
        with self.sessions() as db:
            self.claimed_paths = set(
                db.scalars(
                    select(SessionRow.local_path).where(
                        SessionRow.local_path.is_not(None), SessionRow.state != NEW
                    )
                )
            )
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
                    except (AuthError, StateDamaged):
                        # The password stopped working mid-pass, or the state database is
                        # damaged: nothing else will work either.
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
            future.add_done_callback(self._finished)

    def _finished(self, future: Future) -> None:
        self._finish_slots.release()
        # Nobody reads a finisher's result: an error escaping even its failure handling
        # (the database gone) is logged here rather than lost with the future.
        exc = future.exception()
        if exc is not None:
            log.error("archiving failed and could not be recorded: %s", exc, exc_info=exc)

    def _fetch(
        self, pk: int, item: RemoteItem, source: Source, relpath: PurePosixPath
    ) -> _Fetched | None:
        """The body on disk as ``X.zip.part`` (or a whole file a killed pass left), or None
        when the attempt failed (recorded) or was stopped (not an attempt: not counted)."""
        part = part_of(self.archive.resolve(relpath))
        started = time.time()
        try:
            # Inside the try: a folder that cannot be made is this session's failure (counted,
            # backed off), never the account's whole pass.
            self.archive.part_path(relpath)
            adopted = self._adopt_existing(relpath, item)
            if adopted is not None:
                size, sha256, then = adopted
                return _Fetched(relpath, part, size, sha256, started, True, then)
            fetched = source.fetch(item, part, cancel=self.stop, progress=self.on_bytes)
            crashpoint("after-fetch")
            return _Fetched(relpath, part, fetched.size, fetched.sha256, started)
        except Interrupted:
            log.info("session %s: stopped before the download finished", item.id)
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
        except StateDamaged:
            # Not this session's failure, and nothing can be recorded: stop the account (the
            # engine remembers the damage and the pass raises it). A file already committed
            # has its sidecar, from which `reindex` rebuilds its row.
            self.stop_account()
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
            row.downloaded_metadata_hash = got.metadata_hash or item.metadata_hash
            row.downloaded_at = got.started
            row.verified_at = time.time()
            row.last_error = None
            row.next_attempt_at = None
            local_problems.clear(row)  # a whole copy is in place again
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
        for chunk in chunks(due, batch):
            if self.stop.is_set() or self.lease_lost.is_set():
                return
            chosen = []
            unplaced: list[tuple[int, RemoteItem, BaseException]] = []
            with self.sessions() as db, db.begin():
                # One SELECT per batch, not one per session (round trips on PostgreSQL).
                rows = db.scalars(
                    select(SessionRow).where(SessionRow.id.in_([pk for pk, _ in chunk]))
                )
                by_pk = {row.id: row for row in rows}
                for pk, rid in chunk:
                    row = by_pk[pk]
                    try:
                        relpath = self._choose_path(row, listed[rid])
                    except (E4SyncError, OSError) as exc:
                        unplaced.append((pk, listed[rid], exc))
                        continue
                    row.state = DOWNLOADING
                    row.local_path = str(relpath)
                    chosen.append((pk, listed[rid], relpath))
            # Recorded after the batch's transaction: one session without a path is its own
            # failure, not the batch's (and a nested write would wait for itself on SQLite).
            for pk, item, exc in unplaced:
                self._record_failure(pk, item, exc)
                self.on_progress(item.id)
            yield from chosen

    def _choose_path(self, row: SessionRow, item: RemoteItem) -> PurePosixPath:
        if row.local_path and row.state == DOWNLOADING:
            # A download taken up again keeps the path it was given (a whole file a killed
            # pass committed there is adopted, not downloaded twice).
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

    def _adopt_existing(
        self, relpath: PurePosixPath, item: RemoteItem
    ) -> tuple[int, str, str | None] | None:
        """A crash after the rename but before the database commit leaves a whole file and
        its sidecar: take it if it still hashes to what the sidecar says. Returns its size,
        sha256 and the metadata hash of the listing it was downloaded under."""
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
            part_of(final).unlink()
        then = parse_item(sidecar.get("remote"))
        return size, sha256, then.metadata_hash if then is not None else None

    def _sidecar(
        self,
        item: RemoteItem,
        relpath: PurePosixPath,
        size: int,
        sha256: str,
        downloaded_at: float,
        verified_at: float,
    ) -> dict:
        return sidecar.build(
            account=self.account.name,
            user_id=self.user_id,
            session_id=item.id,
            remote=item.raw,
            file=relpath.name,
            size=size,
            sha256=sha256,
            downloaded_at=downloaded_at,
            verified_at=verified_at,
        )

    def _record_failure(self, pk: int, item: RemoteItem, exc: BaseException) -> None:
        message = describe(exc)
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


def _content_problems(path: Path, item: RemoteItem) -> list[str]:
    from e4sync.verify import check_zip

    check = check_zip(path, start_time=item.start_time or None)
    return list(check.problems)


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """``base`` doubled per attempt, capped, with +-20 % jitter so that many failed sessions
    (or many workers) do not all come back at the same second."""
    delay = min(cap, base * (2 ** max(0, attempts - 1)))
    return delay * random.uniform(0.8, 1.2)
