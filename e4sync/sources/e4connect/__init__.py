"""e4sync.sources.e4connect: E4 Connect, the E4 wristband's web platform (SPEC sections 1-2).

``KIND`` is what the core knows of it: how to connect an account (``adapter``, which imports
the client and requests only then), how to rebuild a session from the raw metadata a
sidecar kept (``items``), how to check a session ZIP offline (``checks``), what a
session id must look like, and where ``doctor`` finds the account's password. ``settings``
holds its account keys; ``simulator`` is the loopback platform the tests use, and ``demo``
starts it for ``e4sync demo`` and ``e4sync simulate``.

Must not import: e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from e4sync.sources import Item, Kind, Source, Verdict
from e4sync.sources.e4connect.items import item_from_raw

if TYPE_CHECKING:
    from e4sync.config import AccountConfig, Config


def _connect(
    account: AccountConfig, cfg: Config, cancel: Any = None, interactive: bool | None = None
) -> Source:
    from e4sync.sources.e4connect.adapter import connect

    return connect(account, cfg, cancel=cancel, interactive=interactive)


def verify(path: Path, item: Item) -> Verdict:
    """A session ZIP whole, safe and holding E4 files whose CSVs start near the session."""
    from e4sync.sources.e4connect.checks import check_zip

    check = check_zip(path, start_time=item.recorded_at or None, e4_members=True)
    return Verdict(problems=check.problems, warnings=check.warnings)


def check_id(session_id: str) -> str:
    """A session id as E4 Connect makes them: digits only (it goes into a URL). The one
    rule for an id a person gives (``download``, ``retry``); the client keeps its own guard
    for its e4client-compatible API."""
    from e4sync.errors import UsageError

    text = str(session_id).strip()
    if not text.isdigit() or not text.isascii() or len(text) > 20:
        raise UsageError(f"session id must be a number, got {text[:60]!r}")
    return text


def secret_source(account: AccountConfig) -> str:
    """Where the account's password would be read from (never the password), for
    ``doctor``: AuthError when there is none, ConfigError when one is set up wrongly."""
    from e4sync.credentials import password_source
    from e4sync.errors import AuthError

    source = password_source(account, interactive=False)
    if source is None:
        raise AuthError(
            "no password source found (password_file, password_command, password_env, "
            "keyring, or $CREDENTIALS_DIRECTORY/e4sync-password)"
        )
    return f"{source.kind}: {source.detail}"


def endpoint(account: AccountConfig) -> str:
    return f"{account.options['username']} at {account.options['base_url']}"


KIND = Kind(
    name="e4connect",
    connect=_connect,
    item_from_raw=item_from_raw,
    verify=verify,
    check_id=check_id,
    endpoint=endpoint,
    secret_source=secret_source,
    secret_name="password",
    device_field="device_serial",  # "A" + the label as 5 hex digits
)
