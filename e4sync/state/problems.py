"""e4sync.state.problems: what a lost or damaged archived copy does to its session's row.

One rule, used by the pass (which notices a missing file with one ``stat``), by ``verify``
and by the daemon's scrub (which re-hash): the row records the problem in
``local_problem``, which makes the account not OK in ``status``, the metrics and the pings
until a whole copy is back. A session the platform may still hold (``verified``) is queued
to be downloaded again (state ``new``, attempts cleared); the damaged file is kept aside by
the archive's commit, never overwritten. One already deleted remotely, or gone, keeps its
state: nothing can repair it from here, and it stays reported.

Imports only SQLAlchemy and ``e4sync.state.models``.
Must not import: e4sync.state.db, e4sync.sync, e4sync.archive, e4sync.sources, e4sync.cli.
"""

from __future__ import annotations

import time

from sqlalchemy.orm import Session as DbSession

from e4sync.state.models import NEW, VERIFIED
from e4sync.state.models import Session as SessionRow

MISSING = "missing"
CHANGED = "changed"
UNREADABLE = "unreadable"


def describe(kind: str, path: object, detail: str = "") -> str:
    """The ``local_problem`` text: ``"<kind>: <path>"`` (plus ``": <detail>"``)."""
    return f"{kind}: {path}" + (f": {detail}" if detail else "")


def mark(db: DbSession, row: SessionRow, problem: str, now: float | None = None) -> bool:
    """Record ``problem`` on ``row``; queue it for download again if the platform may still
    hold it. Returns whether it was queued. Idempotent: marking twice changes nothing more."""
    now = time.time() if now is None else now
    row.local_problem = problem[:2000]
    if row.state != VERIFIED:
        return False
    row.state = NEW
    row.attempts = 0
    row.next_attempt_at = now
    row.last_error = problem[:2000]
    return True


def clear(row: SessionRow) -> None:
    """A whole copy is in place again (downloaded anew, or restored and re-hashed)."""
    row.local_problem = None
