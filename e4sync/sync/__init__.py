"""e4sync.sync: a sync pass (SPEC section 6) and every remote deletion, as explicit objects.

``run`` holds the pass top to bottom (``run_pass``; ``AccountPass`` orchestrates one
account: lease, listing, copies check, downloads, deletions, re-downloads, the pass row);
``context`` what one account's steps share (``AccountContext``); ``downloads`` the
``Downloader``; ``deletions`` the ``Deleter``, the one place a deletion is confirmed, and
``remove_one`` (``e4sync remove``); ``report`` what a pass returns; ``copies`` the look at
the archived copies. Callers import from here.

Must not import: e4sync.cli, e4sync.sources.e4connect.
"""

from e4sync.sync.common import iso
from e4sync.sync.context import AccountContext, SourceFactory
from e4sync.sync.deletions import Deleter, Outcome, Removal, remove_one
from e4sync.sync.downloads import Downloader, backoff_delay
from e4sync.sync.report import AccountReport, PassReport
from e4sync.sync.run import (
    AccountPass,
    default_source_factory,
    lock_path,
    pass_lock,
    run_pass,
)

__all__ = [
    "AccountContext",
    "AccountPass",
    "AccountReport",
    "Deleter",
    "Downloader",
    "Outcome",
    "PassReport",
    "Removal",
    "SourceFactory",
    "backoff_delay",
    "default_source_factory",
    "iso",
    "lock_path",
    "pass_lock",
    "remove_one",
    "run_pass",
]
