"""e4sync.sync.deletions: every remote deletion e4sync makes, and its confirmation (SPEC 6).

Owns ``Deleter``, the deletion step of an account's pass, and ``remove_one``, the single
removal ``e4sync remove`` asks for; both go through the same proofs in the same order. The
local file is re-hashed and must equal the recorded sha256; the platform is asked whether
it still holds the archived version (size, ETag, Last-Modified: ``Source.remote_version``);
the ledger entry is written; the request is sent (``If-Match``); and a fresh listing
confirms the item gone before the session becomes ``remote_deleted``. A session whose
platform copy changed is queued again (``requeued``) and never deleted. A dry run makes the
same two proofs, and its source is a ``DryRunSource``, which sends no DELETE whatever
happens above it. A source whose ``capabilities.can_delete`` is false is never asked.

Confirmation has one home, ``Deleter.confirm``: the pass's listing step hands it the
sessions gone from the listing, the re-listing after the deletions hands it those just
deleted; a session with an open ledger entry is e4sync's own deletion (``remote_deleted``),
any other was deleted by someone else and is the caller's to mark ``remote_gone``.

The pure ``deletion.plan_deletions`` decides which sessions a pass may delete.
Must not import: e4sync.cli, e4sync.sources.e4connect, e4sync.sync.run, e4sync.sync.downloads.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session as DbSession

from e4sync import __version__
from e4sync.crashpoints import crashpoint
from e4sync.deletion import Candidate, Rules, plan_deletions
from e4sync.errors import (
    AuthError,
    E4SyncError,
    Interrupted,
    NotPermitted,
    SessionNotFound,
    TransientError,
    UsageError,
    VersionChanged,
)
from e4sync.sources import DryRunSource, Item, Source, kind, make_source
from e4sync.state.models import (
    NEW,
    REMOTE_DELETED,
    VERIFIED,
    Account,
    Deletion,
)
from e4sync.state.models import Session as SessionRow
from e4sync.sync.common import describe, iso
from e4sync.sync.context import AccountContext, SourceFactory
from e4sync.sync.report import AccountReport

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from e4sync.config import AccountConfig, Config

__all__ = ["Deleter", "Outcome", "Removal", "confirm_deleted", "remove_one"]

log = logging.getLogger("e4sync.sync")

# Why a deletion is refused when the platform no longer holds the item at all.
_GONE = "the platform no longer holds it"


class Deleter:
    """Remote deletions for one account, with their proofs, ledger and confirmation.
    ``delete_qualifying`` is the pass's step; ``remove`` is one asked-for removal."""

    def __init__(self, *, ctx: AccountContext, source: Source):
        self.ctx = ctx
        self.source = source
        # Set when the platform refuses a DELETE as not permitted: no more are sent.
        self.refused = False

    # -- the pass's step ---------------------------------------------------------------

    def delete_qualifying(self, listed: dict[str, Item], listing_ok: bool) -> None:
        """Delete the remote copies the plan chooses, after every download of the pass."""
        ctx = self.ctx
        rules = Rules(
            **{
                k: getattr(ctx.account.remote, k)
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
        if not self.source.capabilities.can_delete:
            ctx.report.deletions_skipped = (
                f"the {self.source.name} source cannot delete remote copies; they are kept"
            )
            log.info(
                "account %s: remote.delete_after_verify is on, but %s",
                ctx.account.name,
                ctx.report.deletions_skipped,
            )
            return
        with ctx.sessions() as db:
            account = db.get(Account, ctx.account_id)
            refused = account.deletions_refused if account is not None else None
        if refused:
            ctx.report.deletions_skipped = (
                f"the platform refused deletions as not permitted ({refused}); "
                "`e4sync retry` asks again"
            )
            log.info("account %s: %s", ctx.account.name, ctx.report.deletions_skipped)
            return
        now = time.time()
        with ctx.sessions() as db:
            # Only sessions old enough on both clocks are loaded (an archive can hold
            # 100,000); the pure plan still checks every rule itself.
            rows = db.scalars(
                select(SessionRow).where(
                    SessionRow.account_id == ctx.account_id,
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
        ctx.report.deletion_cap_reached = any("cap" in d.reason for d in plan if not d.delete)
        if ctx.report.deletion_cap_reached:
            log.warning(
                "account %s: the cap of %d deletions per pass was reached; the rest "
                "wait for the next pass",
                ctx.account.name,
                rules.max_deletes_per_pass,
            )
        by_id = {r.remote_id: r for r in rows}
        requested: dict[str, int] = {}
        for decision in chosen:
            if ctx.halted or self.refused:
                break
            row = by_id[decision.remote_id]
            item = listed[row.remote_id]  # the plan chose only listed items
            if ctx.dry_run:
                # The same proofs as the real pass (read-only: a re-hash and a one-byte
                # GET), so a dry run never promises a deletion the pass would refuse.
                if self._proven(row, item):
                    ctx.report.would_delete.append(row.remote_id)
                    why = (
                        f"{decision.reason}: verified {iso(row.verified_at)}, recorded "
                        f"{iso(row.recorded_at) if row.recorded_at else 'at an unknown time'}; "
                        "the local copy re-hashes to its sha256 and the platform's copy is "
                        "the archived version"
                    )
                    path = str(ctx.archive.resolve(PurePosixPath(row.local_path)))
                    ctx.report.planned_deletions.append(
                        {"id": row.remote_id, "path": path, "why": why}
                    )
                    log.info("dry run: would delete remote session %s (%s)", row.remote_id, why)
                continue
            ledger_id = self._delete_one(row, item)
            if ledger_id is not None:
                requested[row.remote_id] = ledger_id
        if requested:
            self.confirm_by_listing(requested)

    def _delete_one(self, row: SessionRow, item: Item) -> int | None:
        sha256 = self._rehash(row)
        if sha256 is None or self._version_refusal(row, item) is not None:
            return None
        ledger_id = self._write_ledger(row, sha256)
        crashpoint("after-ledger")
        return ledger_id if self._send(row, item, ledger_id) else None

    # -- confirmation: the one place a deletion is confirmed ---------------------------

    def confirm(
        self,
        db: DbSession,
        gone: Iterable[tuple[str, int]],
        now: float,
        *,
        announce: bool = False,
    ) -> list[tuple[str, int]]:
        """Settle sessions (remote id, row id) a fresh listing no longer holds, inside the
        caller's transaction ``db``. One with an open ledger entry was deleted by e4sync:
        it becomes ``remote_deleted``, every open entry for it is confirmed, and it counts
        as deleted (``announce``: logged, for a deletion made this pass). The others
        vanished without e4sync deleting them: returned, for the caller to mark
        ``remote_gone`` (the local copy is never touched because of it)."""
        pending = set(
            db.scalars(
                select(Deletion.remote_id).where(
                    Deletion.account_id == self.ctx.account_id, Deletion.confirmed_at.is_(None)
                )
            )
        )
        others = []
        for rid, pk in gone:
            if rid not in pending:
                others.append((rid, pk))
                continue
            row = db.get(SessionRow, pk)
            confirm_deleted(db, row, now)
            self.ctx.report.deleted += 1
            if announce:
                log.info(
                    "session %s: remote copy deleted (verified local copy %s)",
                    rid,
                    row.local_path,
                )
        return others

    def confirm_by_listing(self, requested: dict[str, int]) -> None:
        """List again after deleting (``requested``: remote id -> ledger id) and confirm
        those gone; one still listed stays verified and is tried again. A listing that
        fails, or comes back empty where other sessions remain, confirms nothing: the
        next pass's listing does."""
        ctx = self.ctx
        try:
            relisting = self.source.list_items(ctx.last_complete)
            still_listed = {i.id for i in relisting.items}
        except E4SyncError as exc:
            log.warning(
                "account %s: could not re-list to confirm deletions (%s); they are "
                "confirmed on the next pass",
                ctx.account.name,
                exc,
            )
            return
        if not still_listed and ctx.report.listed > len(requested):
            # An empty list where sessions not deleted should remain is the platform failing,
            # not proof: the same rule as for a pass's own listing. The next pass confirms.
            log.warning(
                "account %s: the re-listing came back empty; deletions are confirmed on the "
                "next pass",
                ctx.account.name,
            )
            return
        now = time.time()
        with ctx.sessions() as db, db.begin():
            gone = []
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
                if not relisting.covered(remote_id):
                    continue  # this listing does not show its folder: the next one confirms
                gone.append((remote_id, entry.session_id))
            self.confirm(db, gone, now, announce=True)

    # -- one asked-for removal (`e4sync remove`) ---------------------------------------

    def remove(
        self,
        row: SessionRow | None,
        item_id: str,
        sha256: str | None,
        *,
        force: bool,
    ) -> Removal:
        """Remove ``item_id``, already confirmed by the person asking. ``sha256``: the local
        copy's, re-hashed just now and equal to the recorded one (None: no proven copy,
        which only ``force`` gets past, and then without a ledger entry). See
        ``remove_one``."""
        ctx = self.ctx
        listing = self.source.list_items(ctx.last_complete)
        ctx.report.listed = len(listing.items)
        listed = {i.id: i for i in listing.items}
        item = listed.get(item_id) or _known_item(ctx.account, row, item_id)
        proven = row is not None and sha256 is not None
        # A proven copy needs the platform's to be the archived version. One a listing that
        # covers it does not show is gone already: no other version is there to lose (the
        # DELETE is a harmless repeat, its 404 not an error).
        if proven and (item_id in listed or not listing.covered(item_id)):
            refusal = self._version_refusal(row, item)
            if refusal is not None and refusal != _GONE:
                if not force:
                    raise UsageError(_refusing(item_id, refusal))
                proven = False
        if ctx.dry_run:
            return Removal(item_id, Outcome.WOULD_REMOVE, proven=proven)
        if not proven:
            # Forced, without a proven copy: no ledger entry claims it, so the session then
            # shows as remote_gone, never counted as archived and cleaned up.
            try:
                self.source.delete(item)
            except SessionNotFound:
                pass  # gone already
            return Removal(item_id, Outcome.REMOVED)
        ledger_id = self._write_ledger(row, sha256, result="requested by `e4sync remove`")
        crashpoint("after-ledger")
        self._send(row, item, ledger_id, reraise=True)
        self.confirm_by_listing({item_id: ledger_id})
        return Removal(item_id, Outcome.REMOVED, proven=True, confirmed=ctx.report.deleted > 0)

    # -- the proofs, the ledger and the request ----------------------------------------

    def _proven(self, row: SessionRow, item: Item) -> bool:
        """Both proofs a deletion needs, checked just before it: the local copy re-hashes
        to the recorded sha256, and the platform's copy is still the archived version."""
        sha256 = self._rehash(row)
        return sha256 is not None and self._version_refusal(row, item) is None

    def _rehash(self, row: SessionRow) -> str | None:
        """The local copy's sha256 if it is whole; None (reported) if not."""
        path = self.ctx.archive.resolve(PurePosixPath(row.local_path))
        try:
            sha256 = _sha256(path)
        except OSError as exc:
            self.ctx.report.errors.append(
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
            self.ctx.report.errors.append(
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

    def _version_refusal(self, row: SessionRow, item: Item) -> str | None:
        """None when the platform still holds the bytes that were archived: the same size,
        and the same ETag and Last-Modified where they were recorded at download; else why
        not (reported as the pass reports it). A platform that does not say the size
        cannot prove it, so nothing is deleted; a different version is queued to be
        downloaded again (the archived one is kept aside)."""
        try:
            now = self.source.remote_version(item)
        except SessionNotFound:
            return _GONE  # gone already: the listing will say so
        except (AuthError, TransientError, Interrupted):
            raise
        except E4SyncError as exc:
            self.ctx.report.errors.append(
                f"session {row.remote_id}: could not ask the platform for its copy's size "
                f"({exc}); remote copy kept"
            )
            return f"could not ask the platform for its copy's size ({exc})"
        if now.size is None:
            message = (
                "the platform does not say the size of its copy, so e4sync cannot prove it is "
                "the archived one; remote copy kept"
            )
            self.ctx.report.errors.append(f"session {row.remote_id}: {message}")
            log.error("session %s: %s", row.remote_id, message)
            return message
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
            return self._requeue_changed(row, ", ".join(differences))
        return None

    def _requeue_changed(self, row: SessionRow, what: str) -> str:
        """The platform holds other bytes than the archived ones under the same metadata:
        never delete them; download them again (the archive keeps the old copy aside).
        Returns what changed, as recorded in the session's ``last_error``."""
        ctx = self.ctx
        message = f"the platform's copy changed since it was archived ({what})"
        log.warning(
            "session %s: %s; remote copy kept, downloading the new version (the archived "
            "one is kept beside it)",
            row.remote_id,
            message,
        )
        ctx.report.content_changed += 1
        if ctx.dry_run:
            ctx.report.would_download.append(row.remote_id)
            ctx.report.planned_downloads.append(
                {
                    "id": row.remote_id,
                    "path": str(ctx.archive.resolve(PurePosixPath(row.local_path))),
                    "size": row.size,
                    "recorded": iso(row.recorded_at) if row.recorded_at else None,
                    "why": message,
                }
            )
            return message
        with ctx.sessions() as db, db.begin():
            db.execute(
                update(SessionRow)
                .where(SessionRow.id == row.id)
                .values(state=NEW, attempts=0, next_attempt_at=time.time(), last_error=message)
            )
        ctx.requeued.add(row.remote_id)
        return message

    def _write_ledger(self, row: SessionRow, sha256: str, result: str | None = None) -> int:
        """The ledger entry, written (committed) before the request is sent."""
        with self.ctx.sessions() as db, db.begin():
            entry = Deletion(
                account_id=self.ctx.account_id,
                session_id=row.id,
                remote_id=row.remote_id,
                local_path=row.local_path,
                sha256=sha256,
                requested_at=time.time(),
                result=result,
                e4sync_version=__version__,
            )
            db.add(entry)
            db.flush()
            return entry.id

    def _send(self, row: SessionRow, item: Item, ledger_id: int, *, reraise: bool = False) -> bool:
        """Send the DELETE, conditional on the archived bytes' ETag; whether the platform
        took it. A failure is written to the ledger entry and reported; it is raised when
        nothing else can work either (credentials, the platform unreachable, a stop), or
        always with ``reraise`` (a removal a person asked for)."""
        try:
            self.source.delete(item, if_match=row.remote_etag)
            crashpoint("after-delete")
        except SessionNotFound:
            pass  # gone already (a retried DELETE whose first answer was lost)
        except VersionChanged as exc:
            # Changed between the probe and the DELETE, and the server honours If-Match.
            self._set_ledger(ledger_id, "refused: version changed", confirmed=False)
            self._requeue_changed(row, str(exc))
            if reraise:
                raise
            return False
        except NotPermitted as exc:
            # Read-only keys: said once and remembered, so no later pass asks again.
            self._set_ledger(ledger_id, "not permitted", confirmed=False)
            self._refuse(str(exc))
            if reraise:
                raise
            return False
        except Interrupted:
            # Stopped while waiting to retry the DELETE: a stop, not a failed deletion. The
            # entry stays open, so a later disappearance is still known as e4sync's own.
            self._set_ledger(ledger_id, "stopped", confirmed=False)
            raise
        except E4SyncError as exc:
            self._set_ledger(ledger_id, f"error: {describe(exc)}"[:40], confirmed=False)
            self.ctx.report.errors.append(f"session {row.remote_id}: delete failed: {exc}")
            if reraise or isinstance(exc, AuthError | TransientError):
                raise
            return False
        return True

    def _refuse(self, why: str) -> None:
        ctx = self.ctx
        self.refused = True
        with ctx.sessions() as db, db.begin():
            db.get(Account, ctx.account_id).deletions_refused = why[:2000]
        ctx.report.deletions_skipped = f"the platform refused deletions as not permitted: {why}"
        ctx.report.errors.append(ctx.report.deletions_skipped)
        log.error(
            "account %s: %s; no more deletions are asked for until `e4sync retry`",
            ctx.account.name,
            ctx.report.deletions_skipped,
        )

    def _set_ledger(self, ledger_id: int, result: str, confirmed: bool) -> None:
        with self.ctx.sessions() as db, db.begin():
            db.execute(
                update(Deletion)
                .where(Deletion.id == ledger_id)
                .values(result=result, confirmed_at=time.time() if confirmed else None)
            )


def confirm_deleted(db: DbSession, row: SessionRow, now: float) -> None:
    """The session is gone from a listing after e4sync asked for its deletion: it is
    ``remote_deleted``, and every open ledger entry for it is confirmed, so none is left
    to claim a later disappearance as e4sync's own. Called by ``Deleter.confirm`` only."""
    db.execute(
        update(Deletion)
        .where(Deletion.session_id == row.id, Deletion.confirmed_at.is_(None))
        .values(confirmed_at=now, result="confirmed")
        .execution_options(synchronize_session="fetch")
    )
    row.state = REMOTE_DELETED
    row.remote_deleted_at = now


# -- `e4sync remove` ---------------------------------------------------------------------


class Outcome(enum.StrEnum):
    REMOVED = "removed"  # the platform took the DELETE
    WOULD_REMOVE = "would remove"  # a dry run: every proof held, nothing was sent
    DECLINED = "not removed"  # the person asked said no


@dataclass(frozen=True)
class Removal:
    """What ``remove_one`` did. ``proven``: a whole local copy of the version the platform
    holds (a ledger entry was written); ``confirmed``: a fresh listing no longer holds the
    item, and the session is ``remote_deleted``."""

    item_id: str
    outcome: Outcome
    proven: bool = False
    confirmed: bool = False


def remove_one(
    cfg: Config,
    engine: Engine,
    account: AccountConfig,
    item_id: str,
    *,
    dry_run: bool = False,
    force: bool = False,
    ask: Callable[[str], bool] | None = None,
    source_factory: SourceFactory | None = None,
    stop: threading.Event | None = None,
) -> Removal:
    """Remove one item of ``account`` from its platform, with a pass's proofs, in order:

    1. the session has a verified local copy that re-hashes to its recorded sha256, else
       ``UsageError`` before any request (``force`` goes on, as an unproven removal);
    2. ``ask(item_id)`` confirms, still before any request (None: confirmed; it may raise
       ``UsageError``); a dry run asks nothing;
    3. the source is built (``source_factory``, default ``make_source``; wrapped in a
       ``DryRunSource`` for a dry run), and refused (``UsageError``) if it cannot delete;
    4. a listing finds the item, and the platform must still hold the archived version,
       else ``UsageError`` and a changed one is queued to be downloaded again (``force``
       goes on, unproven); a dry run returns here (``Outcome.WOULD_REMOVE``);
    5. the ledger entry is written, the DELETE sent (``If-Match``), and a fresh listing
       confirms it (``Removal.confirmed``). An unproven removal writes no ledger entry,
       sends no ``If-Match`` and confirms nothing: the next pass sees it ``remote_gone``.

    Platform errors are raised as they come (``AuthError``, ``TransientError``, a refused
    DELETE)."""
    from e4sync.archive import Archive
    from e4sync.state import db as statedb

    item_id = kind(account.source).check_id(item_id)
    sessions = statedb.sessionmaker_for(engine)
    archive = Archive(cfg.archive.root)
    with sessions() as db:
        row = db.scalars(
            select(SessionRow)
            .join(Account, Account.id == SessionRow.account_id)
            .where(Account.name == account.name, SessionRow.remote_id == item_id)
        ).first()
        account_id = db.scalar(select(Account.id).where(Account.name == account.name)) or 0
    proof = "no verified local copy is recorded"
    sha256 = None
    if row is not None and row.state == VERIFIED and row.local_path:
        path = archive.resolve(row.local_path)
        try:
            found = _sha256(path)
        except OSError as exc:
            proof = f"{path} cannot be read ({exc.strerror})"
        else:
            proof = "" if found == row.sha256 else f"{path} has changed on disk"
            sha256 = found if not proof else None
    if proof and not force:
        raise UsageError(_refusing(item_id, proof))
    stop = stop or threading.Event()
    ctx = AccountContext(
        cfg=cfg,
        account=account,
        engine=engine,
        sessions=sessions,
        archive=archive,
        report=AccountReport(account.name),
        dry_run=dry_run,
        account_id=account_id,
        stop=stop,
    )
    if not dry_run and ask is not None and not ask(item_id):
        return Removal(item_id, Outcome.DECLINED)
    factory = source_factory or (lambda a: make_source(a, cfg, cancel=stop))
    # Building a source may log in: after the question, so a refusal to ask (no terminal)
    # is said before any request, and a person is not kept waiting for one.
    source = factory(account)
    if dry_run:
        source = DryRunSource(source)
    try:
        if not source.capabilities.can_delete:
            raise UsageError(
                f"refusing to remove session {item_id}: the {source.name} source cannot "
                "delete remote copies"
            )
        return Deleter(ctx=ctx, source=source).remove(row, item_id, sha256, force=force)
    finally:
        source.close()


def _refusing(item_id: str, why: str) -> str:
    return (
        f"refusing to remove session {item_id}: {why} "
        "(run `e4sync run-once` first, or use --force to remove it anyway)"
    )


def _known_item(account: AccountConfig, row: SessionRow | None, item_id: str) -> Item:
    """The item as last recorded (for one the listing did not show), or just its id."""
    if row is not None:
        try:
            item = kind(account.source).item_from_raw(json.loads(row.remote_json or "{}"))
        except ValueError:
            item = None
        if item is not None and item.id == item_id:
            return item
    return Item(id=item_id, recorded_at=0, version="")


def _sha256(path) -> str:
    from e4sync.verify import sha256_file

    return sha256_file(path)[1]


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
