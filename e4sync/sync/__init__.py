"""e4sync.sync: a sync pass (SPEC section 6), in three modules along its steps.

``run`` holds the pass (lock, leases, listing, the pass row, the report), ``downloads``
the download pipeline, ``deletions`` the remote deletions; ``AccountPass`` mixes the two
step groups in. Callers import from here.

Must not import: e4sync.cli.
"""

from e4sync.sync.common import iso
from e4sync.sync.downloads import backoff_delay
from e4sync.sync.run import (
    AccountPass,
    AccountReport,
    PassReport,
    SourceFactory,
    default_source_factory,
    lock_path,
    pass_lock,
    run_pass,
)

__all__ = [
    "AccountPass",
    "AccountReport",
    "PassReport",
    "SourceFactory",
    "backoff_delay",
    "default_source_factory",
    "iso",
    "lock_path",
    "pass_lock",
    "run_pass",
]
