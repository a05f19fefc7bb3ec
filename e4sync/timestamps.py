"""e4sync.timestamps: how e4sync writes a moment (status, sidecars, logs). Standard library
only, so that anything may import it without loading the rest of e4sync.

Must not import: e4sync, requests, urllib3, sqlalchemy, alembic, apscheduler, platformdirs, keyring.
"""

from __future__ import annotations

import datetime as dt


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with a ``Z``; None stays None."""
    if ts is None:
        return None
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )
