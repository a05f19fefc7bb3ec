"""e4sync.crashpoints: named places where the crash tests kill the process with SIGKILL.

``crashpoint("after-ledger")`` does nothing unless ``E4SYNC_CRASHPOINT`` names that point,
in which case the process sends itself a real SIGKILL right there: no ``finally`` block,
no flush, exactly like ``kill -9`` or a power cut at that line. It lets the crash suite hit
the narrow windows (between the ledger entry and the delete request, between the rename
and the database commit) every time instead of by luck. Standard library only.

Must not import: e4sync, requests, urllib3, sqlalchemy, alembic, apscheduler, platformdirs, keyring.
"""

from __future__ import annotations

import os
import signal

_WANTED = os.environ.get("E4SYNC_CRASHPOINT", "")


def crashpoint(name: str) -> None:
    if _WANTED and _WANTED == name:
        os.kill(os.getpid(), signal.SIGKILL)
