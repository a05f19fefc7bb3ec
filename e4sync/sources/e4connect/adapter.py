"""e4sync.sources.e4connect.adapter: E4 Connect behind the ``Source`` protocol.

One client, so one login, per account: the pass's download threads share its cookie.
The whole list is read every time, because sessions appear late with old start times
(e4connect-protocol.md). Here, and only here, the core's generic calls become client calls.

Must not import: e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from e4sync.sources import Capabilities, Fetched, Item, Listing, RemoteVersion, Verdict
from e4sync.sources.e4connect import verify as verify_session
from e4sync.sources.e4connect.client import E4Connect
from e4sync.sources.e4connect.items import parse_listing

if TYPE_CHECKING:
    from e4sync.config import AccountConfig, Config


def connect(
    account: AccountConfig,
    cfg: Config,
    cancel: threading.Event | None = None,
    interactive: bool | None = None,
) -> E4Source:
    """The client for ``account`` with the configuration's timeouts: the pass, the CLI and
    ``doctor`` all get theirs here."""
    from e4sync.credentials import password_provider

    client = E4Connect(
        account.options["username"],
        base_url=account.options["base_url"],
        password_provider=password_provider(account, interactive=interactive),
        timeout=cfg.download.timeout,
        connect_timeout=cfg.download.connect_timeout,
        pool_size=max(8, cfg.download.concurrency * 2),
        cancel=cancel,
    )
    return E4Source(client)


class E4Source:
    """E4 Connect behind the ``Source`` protocol."""

    name = "e4connect"
    capabilities = Capabilities(can_delete=True)

    def __init__(self, client: E4Connect):
        self.client = client

    def identity(self) -> str:
        return str(self.client.user_id())

    def list_items(self) -> Listing:
        return Listing(parse_listing(self.client.sessions_list()), complete=True)

    def fetch(
        self,
        item: Item,
        part_path: Path,
        cancel: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Fetched:
        # The archive's commit fsyncs the part before it links it into place.
        result = self.client.fetch(
            item.id, part_path, cancel=cancel, progress=progress, fsync=False
        )
        return Fetched(
            path=Path(result.path),
            size=result.size,
            sha256=result.sha256,
            etag=result.etag,
            last_modified=result.last_modified,
        )

    def remote_version(self, item: Item) -> RemoteVersion:
        return self.client.remote_version(item.id)

    def delete(self, item: Item, if_match: str | None = None) -> None:
        self.client.remove_session(item.id, if_match=if_match)

    def verify(self, path: Path, item: Item) -> Verdict:
        return verify_session(path, item)

    def close(self) -> None:
        self.client.close()
