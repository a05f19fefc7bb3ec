"""e4sync.sync.context: what one account's pass shares between its steps.

Owns ``AccountContext``: the configuration, the account, the state database, the archive,
the worker, the signals every step obeys (``stop``, ``lease_lost``, ``disk_full``), the
report with its lock, and the little state one step leaves for another (the sessions a dry
run saw first, the sessions queued again because the platform's copy changed). ``run``
builds one per account; the ``Downloader`` and the ``Deleter`` are handed it, so each of
their attributes is declared here or in their own ``__init__``. Also ``SourceFactory``.

Must not import: e4sync.cli, e4sync.sources.e4connect, e4sync.sync.run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from e4sync.sync.report import AccountReport

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session as DbSession

    from e4sync.archive import Archive
    from e4sync.config import AccountConfig, Config
    from e4sync.sources import Source

__all__ = ["AccountContext", "SourceFactory"]

SourceFactory = Callable[["AccountConfig"], "Source"]


def _ignore(_what: str) -> None:
    pass


@dataclass(kw_only=True, eq=False)
class AccountContext:
    """Everything one account's pass shares. Threads (download, finisher, lease keeper)
    read it; they write only the events and, under ``report_lock``, the report."""

    cfg: Config
    account: AccountConfig
    engine: Engine
    sessions: Callable[[], DbSession]
    archive: Archive
    report: AccountReport
    worker_id: str = ""
    dry_run: bool = False
    # The account's row id: known once the pass has made sure the row exists (0 before).
    account_id: int = 0
    # Who the credentials are on the platform: known once the source has said (after login).
    user_id: str = ""
    # When the account last got a complete listing (None: never); the source decides by it
    # whether this pass lists everything.
    last_complete: float | None = None
    # A stop was asked for (SIGTERM): every step ends at its next check.
    stop: threading.Event = field(default_factory=threading.Event)
    # The lease went to another worker, or the account must stop (credentials refused
    # mid-pass, a damaged state database): no further download starts, no deletion.
    lease_lost: threading.Event = field(default_factory=threading.Event)
    # Set once: downloads pause for the rest of the pass (a full disk).
    disk_full: threading.Event = field(default_factory=threading.Event)
    report_lock: threading.Lock = field(default_factory=threading.Lock)
    # Called after each session and step, and as a download's bytes reach the disk.
    on_progress: Callable[[str], None] = _ignore
    on_bytes: Callable[[int], None] | None = None
    # A progress display's: ("queued", id, size) for each download a step is about to
    # start, ("fetching", id, size) on the download thread as its bytes begin (on_bytes
    # then follows on that thread); the size is the listing's (None: not listed).
    on_download: Callable[[str, str, int | None], None] | None = None
    # Sessions a dry run saw for the first time (recorded nowhere): would be downloaded.
    dry_new: list[str] = field(default_factory=list)
    # Archived sessions whose platform copy changed: downloaded again this pass.
    requeued: set[str] = field(default_factory=set)

    def stop_account(self) -> None:
        """Stop this account's work (no further download, no deletion), as a lost lease does."""
        self.lease_lost.set()

    @property
    def halted(self) -> bool:
        """A stop was asked for or the account was stopped: no further deletion."""
        return self.stop.is_set() or self.lease_lost.is_set()
