"""e4sync.sidecar: what the ``X.json`` beside each archived ``X.zip`` says (SPEC section 5).

Owns the sidecar's fields and how one is made, both at download (from the listed item) and
when ``verify`` repairs a damaged one (from the state database's row), so the two can never
drift apart. The archive writes and reads the file (``Archive.write_sidecar``); ``reindex``
reads these fields back. Imports only the standard library and ``e4sync.timestamps``.
"""

from __future__ import annotations

from typing import Any

from e4sync import __version__
from e4sync.timestamps import iso

SCHEMA = 1

# The fields that must agree with the state database for a sidecar to be trusted by
# ``reindex``: a sidecar that disagrees on any of them is rewritten by ``verify``.
CHECKED_FIELDS = ("session_key", "account", "session_id", "file", "size", "sha256")


def build(
    *,
    account: str,
    user_id: str,
    session_id: str,
    remote: dict[str, Any],
    file: str,
    size: int,
    sha256: str,
    downloaded_at: float,
    verified_at: float,
    etag: str | None = None,
    last_modified: str | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The sidecar of one archived file. ``remote`` is the listed metadata the file was
    downloaded under; ``etag``/``last_modified`` the validators the platform sent with it."""
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "session_key": f"{account}/{session_id}",
        "account": account,
        "user_id": user_id,
        "session_id": session_id,
        "remote": remote,
        "file": file,
        "size": size,
        "sha256": sha256,
        "downloaded_at": iso(downloaded_at),
        "verified_at": iso(verified_at),
        "e4sync_version": __version__,
    }
    validators = {k: v for k, v in (("etag", etag), ("last_modified", last_modified)) if v}
    if validators:
        data["validators"] = validators
    if warnings:
        data["warnings"] = list(warnings)
    return data


def disagreements(data: dict[str, Any] | None, expected: dict[str, Any]) -> list[str]:
    """The checked fields on which ``data`` (a sidecar as read, or None) differs from
    ``expected`` (one made by :func:`build` from the state database)."""
    if data is None:
        return ["missing or unreadable"]
    return [k for k in CHECKED_FIELDS if str(data.get(k)) != str(expected.get(k))]
