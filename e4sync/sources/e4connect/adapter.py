"""e4sync.sources.e4connect.adapter: E4 Connect behind the ``Source`` protocol.

One client, so one login, per account: the pass's download threads share its cookie.
The whole list is read every time, because sessions appear late with old start times
(e4connect-protocol.md). Here, and only here, the core's generic calls become client calls,
and so do the optional ones only E4 Connect answers: ``devices`` (the purchased devices)
and ``download`` (one session to a file, outside the archive).

Must not import: e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from e4sync.sources import Capabilities, Fetched, Item, Listing, RemoteVersion, Table, Verdict
from e4sync.sources.e4connect import verify as verify_session
from e4sync.sources.e4connect.client import E4Connect
from e4sync.sources.e4connect.items import LISTING_COLUMNS, parse_listing

# The purchased devices' fields, as `e4sync devices` shows them (SPEC section 1).
DEVICE_COLUMNS = ("device_id", "label", "model", "hardware_code", "purchase_code", "purchase_id")

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
    capabilities = Capabilities(can_delete=True, listing_columns=LISTING_COLUMNS)

    def __init__(self, client: E4Connect):
        self.client = client

    def identity(self) -> str:
        return str(self.client.user_id())

    def list_items(self, last_complete: float | None = None) -> Listing:
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

    def devices(self) -> Table:
        """The account's purchased devices, as the platform sent them."""
        return Table(DEVICE_COLUMNS, self.client.purchased_devices())

    def download(self, item_id: str, target: Path) -> Path:
        """One session's ZIP to the file ``target``, or into the folder ``target`` under the
        name the platform's own downloads have (``<start_time>_<SERIAL>.zip``): streamed to a
        ``.part``, checked to be a whole ZIP (any members: it is the platform's file, an odd
        one is logged), then renamed into place."""
        return Path(self.client.download_session(item_id, target, platform_name=True))

    def close(self) -> None:
        self.client.close()
