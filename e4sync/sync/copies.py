"""e4sync.sync.copies: each pass's look at the archived copies of one account.

A verified copy that is deleted from disk, or cut short, must not stay "verified": the
pass would download nothing and ``status`` would say all is well. So every pass makes one
``stat`` per archived session (cheap: no hashing; the byte-level check is ``verify``'s and
the scrub's) and, for a copy that is missing or has the wrong size, applies the rule of
``state.problems``: a session the platform still lists is downloaded again this pass, one
the platform no longer holds is reported loudly, every pass, until a person restores it.
A copy reported earlier that is back (restored from a backup) is re-hashed before the
report is cleared.

Owns ``check_archived_copies`` and its ``CopiesReport``.
Must not import: e4sync.cli, e4sync.sources, e4sync.sync.run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from e4sync.archive import Archive
from e4sync.state import problems
from e4sync.state.models import ARCHIVED_STATES, DUE_STATES, VERIFIED
from e4sync.state.models import Session as SessionRow

log = logging.getLogger("e4sync.sync")

# How many paths one log line names before "and N more".
SHOWN = 10


@dataclass
class CopiesReport:
    requeued: list[str] = field(default_factory=list)  # downloaded again this pass
    lost: list[str] = field(default_factory=list)  # problem text of copies nothing can repair
    restored: list[str] = field(default_factory=list)  # reported earlier, whole again


def check_archived_copies(
    sessions: Callable[[], DbSession],
    archive: Archive,
    account_id: int,
    account_name: str,
    *,
    dry_run: bool = False,
) -> CopiesReport:
    """Stat every archived copy of the account; mark (unless ``dry_run``) and report what
    is missing or the wrong size, and clear what is whole again."""
    report = CopiesReport()
    found: list[tuple[int, str]] = []
    cleared: list[int] = []
    with sessions() as db:
        # Read in batches, not all at once: an account may hold 100,000 archived copies,
        # and only the few with a problem are kept.
        rows = db.execute(
            select(
                SessionRow.id,
                SessionRow.state,
                SessionRow.local_path,
                SessionRow.size,
                SessionRow.sha256,
                SessionRow.local_problem,
            ).where(
                SessionRow.account_id == account_id,
                SessionRow.local_path.is_not(None),
                SessionRow.sha256.is_not(None),
                SessionRow.state.in_(ARCHIVED_STATES)
                | (SessionRow.state.in_(DUE_STATES) & SessionRow.local_problem.is_not(None)),
            ),
            execution_options={"yield_per": 2000},
        )
        for pk, state, rel, size, sha256, known in rows:
            problem = _look(archive, rel, size)
            if problem is None:
                if (
                    known is not None
                    and state in ARCHIVED_STATES
                    and _rehashes(archive, rel, sha256)
                ):
                    cleared.append(pk)
                    report.restored.append(archive.join(rel))
                continue
            if state in DUE_STATES:
                continue  # already queued to be downloaded again
            if state == VERIFIED:
                report.requeued.append(problem)
            else:
                report.lost.append(problem)
            if problem != known or state == VERIFIED:
                found.append((pk, problem))
    if not dry_run and (found or cleared):
        with sessions() as db, db.begin():
            for pk, problem in found:
                problems.mark(db, db.get(SessionRow, pk), problem)
            for pk in cleared:
                problems.clear(db.get(SessionRow, pk))
    _log(account_name, report, dry_run)
    return report


def _look(archive: Archive, rel: str, size: int | None) -> str | None:
    path = archive.join(rel)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return problems.describe(problems.MISSING, path)
    except OSError as exc:
        return problems.describe(problems.UNREADABLE, path, exc.strerror or str(exc))
    if size is not None and st.st_size != size:
        return problems.describe(
            problems.CHANGED, path, f"{st.st_size} bytes where {size} were archived"
        )
    return None


def _rehashes(archive: Archive, rel: str, sha256: str) -> bool:
    from e4sync.verify import sha256_file

    try:
        return sha256_file(archive.resolve(PurePosixPath(rel)))[1] == sha256
    except (OSError, ValueError):
        return False


def _log(account: str, report: CopiesReport, dry_run: bool) -> None:
    if report.requeued:
        log.warning(
            "account %s: %d archived cop%s lost or damaged; %s again (the damaged "
            "files are kept aside): %s",
            account,
            len(report.requeued),
            "y is" if len(report.requeued) == 1 else "ies are",
            "would download them" if dry_run else "downloading them",
            _shown(report.requeued),
        )
    if report.lost:
        log.error(
            "account %s: %d archived cop%s lost or damaged, and the platform no longer "
            "holds %s: restore %s from a backup: %s",
            account,
            len(report.lost),
            "y is" if len(report.lost) == 1 else "ies are",
            "it" if len(report.lost) == 1 else "them",
            "it" if len(report.lost) == 1 else "them",
            _shown(report.lost),
        )
    for path in report.restored:
        log.info("account %s: %s is whole again", account, path)


def _shown(items: list[str]) -> str:
    more = len(items) - SHOWN
    return "; ".join(items[:SHOWN]) + (f"; and {more} more" if more > 0 else "")
