"""e4sync.sync.report: what a pass did, as the callers read it.

Owns ``AccountReport`` (one account's counts, errors, pause and deletion notes) and
``PassReport`` (every account's, and the exit code they add up to, SPEC section 3). Plain
dataclasses: the CLI renders them, the daemon and ``notify`` read them; nothing here does I/O.

Must not import: e4sync.cli, e4sync.sources.e4connect, e4sync.state, e4sync.sync.run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from e4sync.errors import (
    EXIT_CONFIG,
    EXIT_NOPERM,
    EXIT_OK,
    EXIT_SESSIONS_FAILED,
    EXIT_TEMPFAIL,
)

__all__ = ["AccountReport", "PassReport", "plan_lines"]


@dataclass
class AccountReport:
    """What one pass did for one account."""

    name: str
    ok: bool = True
    exit_code: int = EXIT_OK  # the error's own code when the account could not be served
    skipped: str = ""  # why the account was not served (leased by another worker)
    listed: int = 0
    new: int = 0
    changed: int = 0
    downloaded: int = 0
    adopted: int = 0  # copies another tool made, verified and adopted instead of downloaded
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
    # A dry run's plan, one entry per would-be download: ``id``, ``path`` (the archive path
    # it would get), ``size`` (None when the listing does not say), ``recorded`` (ISO 8601
    # UTC, None when unknown) and ``why``; per would-be deletion: ``id``, ``path``, ``why``.
    planned_downloads: list[dict] = field(default_factory=list)
    planned_deletions: list[dict] = field(default_factory=list)
    deletion_cap_reached: bool = False
    # Why the deletion step did not run although remote.delete_after_verify is on (the
    # source cannot delete); "" when it ran or deletion is off.
    deletions_skipped: str = ""


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


def plan_lines(a: AccountReport) -> list[str]:
    """A dry run's plan for people: each would-be download (its id, recorded date, size,
    target path and why) and each would-be deletion with its reason."""
    from e4sync.units import human_size

    lines = []
    downloads, deletions = a.planned_downloads, a.planned_deletions
    if not downloads:
        lines.append("  would download: nothing")
    else:
        sizes = [d["size"] for d in downloads]
        total = human_size(sum(sizes)) if None not in sizes else "sizes not listed"
        lines.append(f"  would download {len(downloads)} ({total}):")
        for d in downloads:
            recorded = d["recorded"] or "recorded at an unknown time"
            lines.append(
                f"    {d['id']}  {recorded}  {human_size(d['size'])}  -> {d['path']}  ({d['why']})"
            )
    if not deletions:
        lines.append("  would delete: nothing")
    else:
        lines.append(f"  would delete {len(deletions)} from the platform:")
        lines.extend(f"    {d['id']}  {d['path']}  ({d['why']})" for d in deletions)
    return lines
