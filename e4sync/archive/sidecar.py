"""e4sync.archive.sidecar: the sidecar, and the one owner of its format (SPEC section 5).

Beside each archived ``X<suffix>`` lies its sidecar ``X.json`` (named by
``layout.sidecar_name``): whose file it is (the account, the item's id and the session key
made of both), the metadata the item was listed with when it was downloaded, the file's
name, size and sha256, when it was downloaded and verified, the validators the platform
sent, warnings about its content, and, on a copy kept aside, why and when.

Owns: making one (``build``, both at download, from the listed item, and when ``verify``
repairs a damaged one, from the state database's row, so the two never drift apart); the
fields that must agree with the database (``CHECKED_FIELDS``, ``disagreements``); reading
one back (``load_sidecar``, ``read_sidecar``, ``not_a_sidecar``, ``owner``,
``is_kept_aside``, ``validators``); marking a kept-aside copy's (``mark_kept_aside``); its
bytes on disk (``dumps``: sorted keys, indent 2, ASCII, a trailing newline); and the key
that names an item across accounts (``session_key``). The store writes and names the file;
``reindex`` reads these fields back.

Must not import: e4sync.archive.store, e4sync.sources, e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e4sync import __version__
from e4sync.archive.layout import as_text
from e4sync.fsutil import explain
from e4sync.timestamps import iso

__all__ = [
    "CHECKED_FIELDS",
    "ID_KEY",
    "MAX_SIDECAR_BYTES",
    "SCHEMA",
    "build",
    "disagreements",
    "dumps",
    "is_kept_aside",
    "load_sidecar",
    "mark_kept_aside",
    "not_a_sidecar",
    "owner",
    "read_sidecar",
    "session_key",
    "validators",
]

log = logging.getLogger(__name__)

SCHEMA = 1
# The key the item's id is kept under: the format's name for it since its first version.
ID_KEY = "session_id"
MAX_SIDECAR_BYTES = 1 << 20

# The fields that must agree with the state database for a sidecar to be trusted by
# ``reindex``: a sidecar that disagrees on any of them is rewritten by ``verify``.
CHECKED_FIELDS = ("session_key", "account", ID_KEY, "file", "size", "sha256")


def session_key(account: Any, item_id: Any) -> str:
    """The key that names an item across accounts: ``"<account>/<item id>"``."""
    return f"{as_text(account)}/{as_text(item_id)}"


def build(
    *,
    account: str,
    user_id: str,
    item_id: str,
    remote: Mapping[str, Any],
    file: str,
    size: int,
    sha256: str,
    downloaded_at: float,
    verified_at: float,
    etag: str | None = None,
    last_modified: str | None = None,
    warnings: list[str] | None = None,
    source: str = "",
    content: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sidecar of one archived file. ``remote`` is the listed metadata the file was
    downloaded under; ``etag``/``last_modified`` the validators the platform sent with it;
    ``warnings`` what its check found harmless but worth saying; ``source`` the kind of
    platform (which rebuilds the item from ``remote`` in ``reindex``; none: E4 Connect, as
    every sidecar written before sources had kinds); ``content`` what the file's content
    says of itself (streams, rates, the span recorded)."""
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "session_key": session_key(account, item_id),
        "account": account,
        "user_id": user_id,
        ID_KEY: item_id,
        "remote": dict(remote),
        "file": file,
        "size": size,
        "sha256": sha256,
        "downloaded_at": iso(downloaded_at),
        "verified_at": iso(verified_at),
        "e4sync_version": __version__,
    }
    found = {k: v for k, v in (("etag", etag), ("last_modified", last_modified)) if v}
    if found:
        data["validators"] = found
    if warnings:
        data["warnings"] = list(warnings)
    if source:
        data["source"] = source
    if content:
        data["content"] = dict(content)
    return data


def disagreements(data: dict[str, Any] | None, expected: dict[str, Any]) -> list[str]:
    """The checked fields on which ``data`` (a sidecar as read, or None) differs from
    ``expected`` (one made by :func:`build` from the state database)."""
    if data is None:
        return ["missing or unreadable"]
    return [k for k in CHECKED_FIELDS if str(data.get(k)) != str(expected.get(k))]


def owner(data: dict[str, Any]) -> str | None:
    """The session key of the item a sidecar describes: its ``session_key``, else one made
    of its account and id; None if it names neither."""
    key = data.get("session_key")
    if key:
        return str(key)
    if data.get("account") is not None and data.get(ID_KEY) is not None:
        return session_key(data["account"], data[ID_KEY])
    return None


def not_a_sidecar(data: dict[str, Any]) -> str | None:
    """Why a JSON object read beside an archived file is not an e4sync sidecar, or None."""
    if ID_KEY not in data or "account" not in data:
        return f"no account or {ID_KEY}: not an e4sync sidecar"
    return None


def is_kept_aside(data: dict[str, Any]) -> bool:
    """Whether a sidecar describes an older copy kept beside the current one, which
    ``reindex`` does not take for the item's copy."""
    return bool(data.get("kept_aside"))


def mark_kept_aside(data: dict[str, Any], reason: str, at: str, file: str) -> dict[str, Any]:
    """A copy of ``data`` describing the same bytes kept aside as ``file`` (a name in the
    same folder) at ``at`` (UTC, ``%Y%m%dT%H%M%SZ``) for ``reason``."""
    marked = dict(data)
    marked["kept_aside"] = {"reason": reason, "at": at, "file": file}
    marked["file"] = file
    return marked


def validators(data: dict[str, Any]) -> dict[str, Any]:
    """The validators (``etag``, ``last_modified``) the platform sent with the bytes."""
    found = data.get("validators")
    return found if isinstance(found, dict) else {}


def dumps(data: dict[str, Any]) -> bytes:
    """The sidecar's bytes on disk: sorted keys, indent 2, a trailing newline, ASCII only
    (any other character escaped, so a hostile value cannot break the file)."""
    return (json.dumps(data, sort_keys=True, indent=2, default=str) + "\n").encode("ascii")


def load_sidecar(path: str | os.PathLike[str]) -> tuple[dict | None, str | None]:
    """Read a small JSON object: ``(data, None)``; ``(None, None)`` if there is no file;
    ``(None, problem)`` when it is unreadable, larger than 1 MiB or not a JSON object.
    Logs nothing: the caller reports it."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SIDECAR_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read it: {explain(exc)}"
    if len(raw) > MAX_SIDECAR_BYTES:
        return None, f"larger than {MAX_SIDECAR_BYTES} bytes"
    try:
        data = json.loads(raw)
    except ValueError as exc:  # also UnicodeDecodeError
        return None, f"not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, None


def read_sidecar(path: str | os.PathLike[str]) -> dict | None:
    """The sidecar at ``path`` as a dict, or None if there is none or it cannot be read as
    a JSON object (logged as a warning)."""
    data, problem = load_sidecar(path)
    if problem is not None:
        log.warning("ignoring the sidecar %s: %s", Path(path), problem)
    return data
