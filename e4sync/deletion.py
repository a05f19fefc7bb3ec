"""e4sync.deletion: which remote copies may be deleted, decided by a pure function.

``plan_deletions`` takes facts (session rows, the time, the rules, whether this pass listed
the account) and returns a decision with a reason for every verified session. It does no
I/O, so ``run-once --dry-run`` and the real pass print and follow the same plan, and tests
can cover every rule without a server. The checks that need the disk (the file is
there and re-hashes to the recorded sha256) are made by the caller just before each delete.

Imports nothing from e4sync but the state names (``e4sync.state.states``, no SQLAlchemy).
Must not import: sqlalchemy, e4sync.state.models, e4sync.state.db, e4sync.sources, e4sync.sync.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from e4sync.state.states import VERIFIED


@dataclass(frozen=True)
class Candidate:
    """What the plan needs to know of one session."""

    remote_id: str
    state: str
    recorded_at: int
    verified_at: float | None
    local_path: str | None
    sha256: str | None
    version: str
    downloaded_version: str | None
    listed: bool  # present in this pass's listing


@dataclass(frozen=True)
class Rules:
    delete_after_verify: bool
    delete_min_age: float
    delete_grace: float
    max_deletes_per_pass: int


@dataclass(frozen=True)
class Decision:
    remote_id: str
    delete: bool
    reason: str


def plan_deletions(
    candidates: Iterable[Candidate], *, now: float, rules: Rules, listing_ok: bool
) -> list[Decision]:
    """Given every session of one account, return a decision for each verified one, oldest
    recording first. At most ``rules.max_deletes_per_pass`` decisions say delete."""
    verified = sorted(
        (c for c in candidates if c.state == VERIFIED), key=lambda c: (c.recorded_at, c.remote_id)
    )
    decisions: list[Decision] = []
    budget = max(0, rules.max_deletes_per_pass)
    for c in verified:
        reason = _refusal(c, now=now, rules=rules, listing_ok=listing_ok)
        if reason is None and budget == 0:
            reason = f"per-pass cap of {rules.max_deletes_per_pass} deletions reached"
        if reason is None:
            budget -= 1
            decisions.append(
                Decision(c.remote_id, True, "verified copy older than the grace period")
            )
        else:
            decisions.append(Decision(c.remote_id, False, reason))
    return decisions


def _refusal(c: Candidate, *, now: float, rules: Rules, listing_ok: bool) -> str | None:
    if not rules.delete_after_verify:
        return "remote deletion is off (remote.delete_after_verify = false)"
    if not listing_ok:
        return "this pass could not list the account"
    if not c.listed:
        return "not in this pass's listing"
    if not c.local_path or not c.sha256 or c.verified_at is None:
        return "no verified local copy is recorded"
    if c.downloaded_version != c.version:
        return "the remote metadata changed since the download"
    if c.recorded_at <= 0 or now - c.recorded_at < rules.delete_min_age:
        return "recorded less than remote.delete_min_age ago"
    if now - c.verified_at < rules.delete_grace:
        return "verified less than remote.delete_grace ago"
    return None
