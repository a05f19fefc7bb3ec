"""e4sync.source: the small interface between a platform and the sync engine (SPEC section 7a).

A ``Source`` lists items, fetches one to a path, deletes one and verifies a fetched file
(a ``Verdict``: the problems that refuse it, the warnings that travel with it into the sidecar).
``E4Source`` adapts ``client.E4Connect`` to it; ``DryRunSource`` wraps any source so that
fetch and delete cannot change anything, whatever the caller forgets. The archive, state,
scheduling and deletion rules see only ``RemoteItem`` and this protocol, so a second source
(Empatica's S3 delivery for EmbracePlus) can be added without touching them.

Must not import: e4sync.state, e4sync.archive, e4sync.sync.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from e4sync.errors import UsageError

if TYPE_CHECKING:
    from e4sync.client import RemoteVersion

log = logging.getLogger("e4sync.source")

# The listed fields that define a session's identity and content; a change in any of
# them since the download blocks a remote deletion (SPEC section 6).
METADATA_FIELDS = (
    "id",
    "start_time",
    "duration",
    "device_id",
    "label",
    "device",
    "status",
    "exit_code",
)
MAX_START_TIME = 253402300799  # 9999-12-31T23:59:59Z: beyond it no datetime, no database int
MAX_FIELD_CHARS = 500  # a listed value longer than this is cut: the platform never sends one


@dataclass(frozen=True, slots=True)
class RemoteItem:
    """One session as the platform listed it, coerced from its all-string JSON."""

    id: str
    start_time: int
    duration: float
    device_id: str
    label: str
    device: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def metadata_hash(self) -> str:
        picked = {k: _text(self.raw.get(k)) for k in METADATA_FIELDS}
        blob = json.dumps(picked, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)[:MAX_FIELD_CHARS]


def _number(value: Any, kind: type) -> int | float | None:
    try:
        number = float(_text(value))
    except ValueError:
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return kind(number)


def parse_item(row: Any) -> RemoteItem | None:
    """Coerce one listed row; None (with a warning) for a row that cannot be a session,
    such as one whose id is not a number and so could never be put in a URL safely."""
    if not isinstance(row, dict):
        log.warning("ignoring a listed session that is not an object: %.80r", row)
        return None
    session_id = _text(row.get("id")).strip()
    if not session_id.isdigit() or not session_id.isascii() or len(session_id) > 20:
        log.warning(
            "ignoring a listed session with an id that is not a number: %.80r", row.get("id")
        )
        return None
    start = _number(row.get("start_time"), int)
    if start is None or not 0 <= start <= MAX_START_TIME:
        log.warning(
            "session %s: start_time %.40r is not a time; its CSV times are not checked",
            session_id,
            row.get("start_time"),
        )
        start = 0
    duration = _number(row.get("duration"), float) or 0.0
    clean = {str(k)[:100]: _text(v) for k, v in row.items()}
    return RemoteItem(
        id=session_id,
        start_time=int(start),
        duration=float(duration),
        device_id=_text(row.get("device_id")),
        label=_text(row.get("label")),
        device=_text(row.get("device")),
        raw=clean,
    )


def parse_listing(rows: list[Any]) -> list[RemoteItem]:
    """Every usable row once: the platform's list is neither sorted nor duplicate-free."""
    items: dict[str, RemoteItem] = {}
    for row in rows:
        item = parse_item(row)
        if item is None:
            continue
        if item.id in items:
            if items[item.id].metadata_hash != item.metadata_hash:
                log.warning(
                    "session %s is listed twice with different metadata; keeping the first", item.id
                )
            continue
        items[item.id] = item
    return list(items.values())


@dataclass(frozen=True)
class Fetched:
    """What a fetch wrote: the ``.part`` file, its size and sha256 (hashed while streaming)."""

    path: Path
    size: int
    sha256: str
    etag: str | None = None  # the validators the platform sent with these bytes
    last_modified: str | None = None


@dataclass(frozen=True)
class Verdict:
    """What ``Source.verify`` found in a fetched file. Any ``problems`` refuse it; the
    ``warnings`` (a harmless member that is not an E4 file) do not, and are kept with the
    archived copy (its sidecar) and logged."""

    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


class Source(Protocol):
    """What the sync engine needs from a platform."""

    def user_id(self) -> str: ...

    def list_items(self) -> list[RemoteItem]: ...

    def fetch(
        self,
        item: RemoteItem,
        part_path: Path,
        cancel: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Fetched: ...

    def remote_version(self, item_id: str) -> RemoteVersion:
        """What the platform holds for the item now (size, validators), without its bytes:
        the proof asked for before every deletion."""
        ...

    def delete(self, item_id: str, if_match: str | None = None) -> None: ...

    def verify(self, path: Path, item: RemoteItem) -> Verdict: ...

    def close(self) -> None: ...


class E4Source:
    """E4 Connect behind the ``Source`` protocol: one client, so one login, per account."""

    def __init__(self, client: Any):
        self.client = client

    def user_id(self) -> str:
        return str(self.client.user_id())

    def list_items(self) -> list[RemoteItem]:
        # Always the whole list: sessions appear late with old start times (protocol file).
        return parse_listing(self.client.sessions_list())

    def fetch(
        self,
        item: RemoteItem,
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

    def remote_version(self, item_id: str) -> RemoteVersion:
        return self.client.remote_version(item_id)

    def delete(self, item_id: str, if_match: str | None = None) -> None:
        self.client.remove_session(item_id, if_match=if_match)

    def verify(self, path: Path, item: RemoteItem) -> Verdict:
        from e4sync.verify import check_zip

        check = check_zip(path, start_time=item.start_time or None, e4_members=True)
        return Verdict(problems=check.problems, warnings=check.warnings)

    def close(self) -> None:
        self.client.close()


class DryRunSource:
    """Wraps a source so that nothing can be fetched or deleted: a forgotten ``if dry_run``
    anywhere above still changes nothing (restic's dry-run backend)."""

    def __init__(self, inner: Source):
        self.inner = inner

    def user_id(self) -> str:
        return self.inner.user_id()

    def list_items(self) -> list[RemoteItem]:
        return self.inner.list_items()

    def fetch(
        self,
        item: RemoteItem,
        part_path: Path,
        cancel: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Fetched:
        raise UsageError(f"dry run: session {item.id} would be downloaded, not fetched")

    def remote_version(self, item_id: str) -> RemoteVersion:
        return self.inner.remote_version(item_id)  # reads one byte: changes nothing

    def delete(self, item_id: str, if_match: str | None = None) -> None:
        raise UsageError(f"dry run: session {item_id} would be deleted, not removed")

    def verify(self, path: Path, item: RemoteItem) -> Verdict:
        return self.inner.verify(path, item)

    def close(self) -> None:
        self.inner.close()
