"""e4sync.sync.deletions: the remote-deletion step of an account's pass (SPEC section 6).

Runs after every download of the pass: the pure ``deletion.plan_deletions`` decides, then
for each chosen session the local file is re-hashed and the platform is asked whether it
still holds the archived version (size, ETag, Last-Modified: ``Source.remote_version``), the
ledger entry is written, the DELETE is sent (``If-Match``), and a fresh listing confirms it
gone before the session becomes ``remote_deleted``. A session whose platform copy changed is
queued again (``requeued``) and never deleted. A dry run makes the same two proofs.
Mixed into ``AccountPass``, whose attributes it uses (``cfg``, ``account``, ``account_id``,
``sessions``, ``archive``, ``stop``, ``lease_lost``, ``report``, ``dry_run``, ``requeued``).

Must not import: e4sync.cli, e4sync.sync.run, e4sync.sources.e4connect.
"""

from __future__ import annotations

import logging
import time
from pathlib import PurePosixPath

from sqlalchemy import select, update
from sqlalchemy.orm import Session as DbSession

from e4sync import __version__
from e4sync.crashpoints import crashpoint
from e4sync.deletion import Candidate, Rules, plan_deletions
from e4sync.errors import (
    AuthError,
    E4SyncError,
    Interrupted,
    SessionNotFound,
    TransientError,
    VersionChanged,
)
from e4sync.sources import Item, Source
from e4sync.state.models import (
    NEW,
    REMOTE_DELETED,
    VERIFIED,
    Deletion,
)
from e4sync.state.models import Session as SessionRow
from e4sync.sync.common import describe

log = logging.getLogger("e4sync.sync")


class DeletionSteps:
    """The deletion half of ``AccountPass``."""

    def _delete_qualifying(self, source: Source, listed: dict[str, Item], listing_ok: bool) -> None:
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
                    SessionRow.recorded_at <= now - rules.delete_min_age,
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
        by_id = {r.remote_id: r for r in rows}
        requested: dict[str, int] = {}
        for decision in chosen:
            if self.stop.is_set() or self.lease_lost.is_set():
                break
            row = by_id[decision.remote_id]
            item = listed[row.remote_id]  # the plan chose only listed items
            if self.dry_run:
                # The same proofs as the real pass (read-only: a re-hash and a one-byte
                # GET), so a dry run never promises a deletion the pass would refuse.
                if self._proven(source, row, item):
                    self.report.would_delete.append(row.remote_id)
                    log.info("dry run: would delete remote session %s", row.remote_id)
                continue
            ledger_id = self._delete_one(source, row, item)
            if ledger_id is not None:
                requested[row.remote_id] = ledger_id
        if requested:
            self._confirm_deletions(source, requested)

    def _proven(self, source: Source, row: SessionRow, item: Item) -> bool:
        """Both proofs a deletion needs, checked just before it: the local copy re-hashes
        to the recorded sha256, and the platform's copy is still the archived version."""
        sha256 = self._rehash(row)
        return sha256 is not None and self._same_remote_version(source, row, item)

    def _rehash(self, row: SessionRow) -> str | None:
        """The local copy's sha256 if it is whole; None (reported) if not."""
        from e4sync.verify import sha256_file

        path = self.archive.resolve(PurePosixPath(row.local_path))
        try:
            _size, sha256 = sha256_file(path)
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
        return sha256

    def _same_remote_version(self, source: Source, row: SessionRow, item: Item) -> bool:
        """Whether the platform still holds the bytes that were archived: the same size,
        and the same ETag and Last-Modified where they were recorded at download. A
        platform that does not say the size cannot prove it, so nothing is deleted; a
        different version is downloaded again (the archived one is kept aside)."""
        try:
            now = source.remote_version(item)
        except SessionNotFound:
            return False  # gone already: the listing will say so
        except (AuthError, TransientError, Interrupted):
            raise
        except E4SyncError as exc:
            self.report.errors.append(
                f"session {row.remote_id}: could not ask the platform for its copy's size "
                f"({exc}); remote copy kept"
            )
            return False
        if now.size is None:
            message = (
                "the platform does not say the size of its copy, so e4sync cannot prove it is "
                "the archived one; remote copy kept"
            )
            self.report.errors.append(f"session {row.remote_id}: {message}")
            log.error("session %s: %s", row.remote_id, message)
            return False
        differences = []
        if now.size != row.size:
            differences.append(f"size {row.size} -> {now.size}")
        for name, recorded, current, width in (
            ("ETag", row.remote_etag, now.etag, 200),
            ("Last-Modified", row.remote_last_modified, now.last_modified, 100),
        ):
            # Compared as stored: the columns keep at most ``width`` characters.
            if recorded and (current or "")[:width] != recorded:
                differences.append(f"{name} {recorded} -> {current}")
        if differences:
            self._requeue_changed(row, ", ".join(differences))
            return False
        return True

    def _requeue_changed(self, row: SessionRow, what: str) -> None:
        """The platform holds other bytes than the archived ones under the same metadata:
        never delete them; download them again (the archive keeps the old copy aside)."""
        message = f"the platform's copy changed since it was archived ({what})"
        log.warning(
            "session %s: %s; remote copy kept, downloading the new version (the archived "
            "one is kept beside it)",
            row.remote_id,
            message,
        )
        self.report.content_changed += 1
        if self.dry_run:
            self.report.would_download.append(row.remote_id)
            return
        with self.sessions() as db, db.begin():
            db.execute(
                update(SessionRow)
                .where(SessionRow.id == row.id)
                .values(state=NEW, attempts=0, next_attempt_at=time.time(), last_error=message)
            )
        self.requeued.add(row.remote_id)

    def _delete_one(self, source: Source, row: SessionRow, item: Item) -> int | None:
        sha256 = self._rehash(row)
        if sha256 is None or not self._same_remote_version(source, row, item):
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
            source.delete(item, if_match=row.remote_etag)
            crashpoint("after-delete")
        except SessionNotFound:
            pass  # gone already (a retried DELETE whose first answer was lost)
        except VersionChanged as exc:
            # Changed between the probe and the DELETE, and the server honours If-Match.
            self._set_ledger(ledger_id, "refused: version changed", confirmed=False)
            self._requeue_changed(row, str(exc))
            return None
        except Interrupted:
            # Stopped while waiting to retry the DELETE: a stop, not a failed deletion. The
            # entry stays open, so a later disappearance is still known as e4sync's own.
            self._set_ledger(ledger_id, "stopped", confirmed=False)
            raise
        except E4SyncError as exc:
            self._set_ledger(ledger_id, f"error: {describe(exc)}"[:40], confirmed=False)
            self.report.errors.append(f"session {row.remote_id}: delete failed: {exc}")
            if isinstance(exc, AuthError | TransientError):
                raise
            return None
        return ledger_id

    def _confirm_deletions(self, source: Source, requested: dict[str, int]) -> None:
        try:
            still_listed = {i.id for i in source.list_items().items}
        except E4SyncError as exc:
            log.warning(
                "account %s: could not re-list to confirm deletions (%s); they are "
                "confirmed on the next pass",
                self.account.name,
                exc,
            )
            return
        if not still_listed and self.report.listed > len(requested):
            # An empty list where sessions not deleted should remain is the platform failing,
            # not proof: the same rule as for a pass's own listing. The next pass confirms.
            log.warning(
                "account %s: the re-listing came back empty; deletions are confirmed on the "
                "next pass",
                self.account.name,
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
                confirm_deleted(db, row, now)
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


def confirm_deleted(db: DbSession, row: SessionRow, now: float) -> None:
    """The session is gone from a listing after e4sync asked for its deletion: it is
    ``remote_deleted``, and every open ledger entry for it is confirmed, so none is left
    to claim a later disappearance as e4sync's own."""
    db.execute(
        update(Deletion)
        .where(Deletion.session_id == row.id, Deletion.confirmed_at.is_(None))
        .values(confirmed_at=now, result="confirmed")
        .execution_options(synchronize_session="fetch")
    )
    row.state = REMOTE_DELETED
    row.remote_deleted_at = now


def _candidate(row: SessionRow, listed: bool) -> Candidate:
    return Candidate(
        remote_id=row.remote_id,
        state=row.state,
        recorded_at=row.recorded_at,
        verified_at=row.verified_at,
        local_path=row.local_path,
        sha256=row.sha256,
        version=row.version,
        downloaded_version=row.downloaded_version,
        listed=listed,
    )
