"""Test doubles for the source seam (SPEC section 7a): ``MemorySource``, a whole platform in
memory behind the ``e4sync.sources.Source`` protocol, and the test-only plumbing that lets the
real pass, adoption and reindex find a ``memory`` source kind.

What is faked, and why only this: a second *platform* cannot exist on this machine (E4 Connect
has its loopback simulator; an S3 delivery would need a bucket). So ``MemorySource`` stands in
for the platform and nothing else: the pass, the state database (a real SQLite file), the
archive (a real folder, real fsyncs) and the deletion rules that a test runs against it are the
real ones. Fetched bytes are really written to the ``.part`` path the pass gives, and their size
and sha256 are computed while writing, as a real source does.

``MemorySource`` holds items under any string id (slashes, spaces, unicode: an S3 key such as
``v2/829/1/1/participant_data/2026-11-30/p-1-3YK/raw_data/v6/x_1701.avro`` is fine), bytes per
item, and a version per item that follows the bytes (an S3-like ETag, the MD5 of the bytes,
and the size: changing the bytes changes the version). It can be read-only
(``can_delete=False``), list completely or only a prefix (``covers``), inject faults (a fetch
that raises, one cut off after N bytes, a verification that refuses), honours ``if_match`` on
``delete`` and logs every call in ``calls`` so a test can say what was, or was never, sent.

Its ``verify`` is content-agnostic, as a source of arbitrary files must be: any bytes are
accepted as long as they are the bytes of the listed version (size and MD5 match, the way
SPEC 9 checks an S3 object against its ETag), unless a test told it to refuse. So garbage, or
a truncated copy, is refused, and a whole copy of any content passes.

``register_memory_kind(monkeypatch)`` is TEST-ONLY PLUMBING. The core finds a kind by its
account's ``source`` name (``e4sync.sources.kind``: ``KINDS`` lists the names, and the kind is
the package ``e4sync.sources.<name>``): the pass asks it for ``endpoint`` (the account row) and
for ``item_from_raw`` (adopting a file a killed pass left), ``reindex`` for ``item_from_raw``.
No ``e4sync/sources/memory/`` package ships, so for one test's duration the fixture adds
``"memory"`` to ``e4sync.sources.KINDS`` and puts a module object holding the memory ``KIND``
(and a ``settings`` module) into ``sys.modules`` under ``e4sync.sources.memory``, where
``importlib.import_module`` finds it first. ``monkeypatch`` undoes both at teardown. Nothing
else of e4sync is patched. ``memory_accounts(cfg)`` sets ``source = "memory"`` on the loaded
accounts, because the configuration file does not take a ``source`` key yet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import threading
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from e4sync.errors import (
    E4SyncError,
    Interrupted,
    NotPermitted,
    RemoteError,
    SessionNotFound,
    TransientError,
    UsageError,
    VersionChanged,
)
from e4sync.sources import (
    Capabilities,
    Fetched,
    Item,
    Kind,
    Listing,
    RemoteVersion,
    Source,
    Verdict,
)

if TYPE_CHECKING:
    import pytest

    from e4sync.config import AccountConfig, Config

MEMORY = "memory"
# 2023-11-14T22:13:20Z: old enough for any delete_min_age a test sets.
DEFAULT_RECORDED_AT = 1_700_000_000
CHUNK = 4096  # small, so a fetch reports progress (and can be cut) in several pieces


# -- items --------------------------------------------------------------------------------


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def version_of(data: bytes) -> str:
    """A memory item's version: its MD5 (an S3 ETag) and its size, as SPEC 7a has for S3."""
    return f"{md5_hex(data)}:{len(data)}"


def etag_of(data: bytes) -> str:
    return f'"{md5_hex(data)}"'


def suffix_for(item_id: str) -> str:
    """The file suffix an id names (``.avro`` for ``.../x_1701.avro``), else ``.bin``."""
    suffix = PurePosixPath(item_id).suffix
    return suffix if 1 < len(suffix) <= 10 and suffix[1:].isalnum() else ".bin"


def layout_fields(item_id: str, recorded_at: int, duration: float) -> dict[str, Any]:
    """The layout placeholders a memory item offers: exactly the names the core's layout
    knows today (``e4sync.archive.LayoutFields`` but ``account`` and ``user_id``, which the
    pass adds). A memory item has no device, so those are empty."""
    return {
        "session_id": item_id,
        "device_id": "",
        "label": "",
        "device": "",
        "start_time": recorded_at,
        "duration": duration,
    }


def item_from_raw(raw: Mapping[str, Any] | None) -> Item | None:
    """The item that ``raw`` (an ``Item.raw``, as the state database or a sidecar kept it,
    after a JSON round trip) describes; None for anything that is not one."""
    if not isinstance(raw, Mapping):
        return None
    item_id, version = raw.get("id"), raw.get("version")
    if not isinstance(item_id, str) or not item_id or not isinstance(version, str):
        return None
    try:
        recorded_at = int(raw.get("recorded_at") or 0)
        duration = float(raw.get("duration") or 0.0)
        size = raw.get("size")
        size = None if size is None else int(size)
    except (TypeError, ValueError):
        return None
    fields = raw.get("fields")
    return Item(
        id=item_id,
        recorded_at=recorded_at,
        version=version,
        size=size,
        suffix=str(raw.get("suffix") or ""),
        duration=duration,
        kind=str(raw.get("kind") or ""),
        fields=dict(fields)
        if isinstance(fields, Mapping)
        else layout_fields(item_id, recorded_at, duration),
        raw=dict(raw),
    )


def verify_file(path: Path, item: Item) -> Verdict:
    """Whether ``path`` holds the bytes of ``item``'s version: its size (when listed) and
    its MD5 (the first half of the version). The content itself is never judged."""
    want_md5 = item.version.split(":", 1)[0]
    size, digest = 0, hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 16):
                size += len(chunk)
                digest.update(chunk)
    except OSError as exc:
        return Verdict(problems=(f"cannot read {path}: {exc.strerror or exc}",))
    problems = []
    if item.size is not None and size != item.size:
        problems.append(f"{size} bytes where {item.size} were listed")
    if digest.hexdigest() != want_md5:
        problems.append(f"MD5 {digest.hexdigest()} is not the listed version's {want_md5}")
    return Verdict(problems=tuple(problems))


def check_id(item_id: str) -> str:
    text = str(item_id)
    if not text or "\0" in text or len(text) > 1024:
        raise UsageError(f"not a memory item id: {text[:60]!r}")
    return text


def endpoint(account: AccountConfig) -> str:
    return f"memory platform of account {account.name}"


# -- the platform ---------------------------------------------------------------------------


@dataclass
class _Entry:
    data: bytes
    recorded_at: int
    duration: float
    suffix: str
    kind: str
    fields: dict[str, Any] | None  # None: the default layout fields

    @property
    def version(self) -> str:
        return version_of(self.data)

    @property
    def etag(self) -> str:
        return etag_of(self.data)


@dataclass
class _FetchFault:
    error: E4SyncError | None = None  # raised before a byte is written
    cut_after: int | None = None  # bytes written before the connection "breaks"
    silent: bool = False  # with cut_after: return the short body as if it were whole


class MemorySource:
    """A platform in memory behind the ``Source`` protocol (see the module docstring).

    ``MemorySource(items={id: bytes}, can_delete=True, covers=None, user="memory-user")``.
    The platform side, for a test: ``put`` (add an item, or give it new bytes: a new
    version), ``remove`` (someone else deleted it), ``data``, ``item``, ``ids``; faults:
    ``fail_fetch``, ``cut_fetch``, ``refuse_verify``; the listing: ``covers`` (None: every
    listing is complete; a prefix, or a tuple of them: only items under it are listed and
    the listing says it covers only those). ``calls`` logs every protocol call as a tuple
    (``("fetch", id)``, ``("delete", id, if_match)``, ...); ``calls_to(op)`` filters it.
    ``close`` is logged but leaves the platform as it is: the pass closes its source after
    each account, and the next pass is served by the same object."""

    name = MEMORY

    def __init__(
        self,
        items: Mapping[str, bytes] | None = None,
        *,
        can_delete: bool = True,
        covers: str | tuple[str, ...] | None = None,
        user: str = "memory-user",
        refetch_changed: bool = False,
        versions_folder: str = "",
        deletion_permitted: bool = True,
        content_facts: bool = False,
    ) -> None:
        self.capabilities = Capabilities(
            can_delete=can_delete,
            refetch_changed=refetch_changed,
            versions_folder=versions_folder,
        )
        # False: a DELETE is answered as read-only S3 keys are (NotPermitted, AccessDenied).
        self.deletion_permitted = deletion_permitted
        # True: verify says what the content records (facts, a span), as S3 raw files do.
        self.content_facts = content_facts
        self.covers = covers
        self.user = user
        self.calls: list[tuple] = []
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._fetch_faults: dict[str, list[_FetchFault]] = {}
        self._refusals: dict[str, str] = {}
        for item_id, data in (items or {}).items():
            self.put(item_id, data)

    # -- the platform side ---------------------------------------------------------------

    def put(
        self,
        item_id: str,
        data: bytes,
        *,
        recorded_at: int | None = None,
        duration: float | None = None,
        suffix: str | None = None,
        kind: str | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> Item:
        """Add ``item_id`` with ``data``, or give it new bytes (a new version); what is not
        given keeps its earlier value (or the default). Returns the item as now listed."""
        if not isinstance(item_id, str) or not item_id:
            raise ValueError("an item id is a non-empty string")
        with self._lock:
            old = self._entries.get(item_id)
            self._entries[item_id] = _Entry(
                data=bytes(data),
                recorded_at=_pick(recorded_at, old, "recorded_at", DEFAULT_RECORDED_AT),
                duration=_pick(duration, old, "duration", 0.0),
                suffix=_pick(suffix, old, "suffix", suffix_for(item_id)),
                kind=_pick(kind, old, "kind", "file"),
                fields=_pick(None if fields is None else dict(fields), old, "fields", None),
            )
            return self._item(item_id)

    def remove(self, item_id: str) -> None:
        """The item vanishes from the platform without e4sync asking (nothing is logged)."""
        with self._lock:
            del self._entries[item_id]

    def data(self, item_id: str) -> bytes:
        with self._lock:
            return self._entries[item_id].data

    def item(self, item_id: str) -> Item:
        with self._lock:
            return self._item(item_id)

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def fail_fetch(self, item_id: str, error: E4SyncError | None = None, *, times: int = 1) -> None:
        """The next ``times`` fetches of ``item_id`` raise ``error`` (default: a
        ``TransientError``, as a 503 after every retry) before writing a byte."""
        error = error or TransientError(f"memory platform: {item_id} is unavailable (503)")
        self._add_fault(item_id, _FetchFault(error=error), times)

    def cut_fetch(self, item_id: str, *, after: int, times: int = 1, silent: bool = False) -> None:
        """The next ``times`` fetches of ``item_id`` stop after ``after`` bytes: with a
        ``TransientError`` (a connection cut; the short ``.part`` stays, as a real client
        leaves it), or, ``silent``, returning the short body as if it were whole (a platform
        that ends the body early without an error: only ``verify`` can tell)."""
        self._add_fault(item_id, _FetchFault(cut_after=after, silent=silent), times)

    def refuse_verify(self, item_id: str, reason: str = "refused by the test") -> None:
        """Every verification of ``item_id`` finds ``reason``, until ``accept_verify``."""
        with self._lock:
            self._refusals[item_id] = reason

    def accept_verify(self, item_id: str) -> None:
        with self._lock:
            self._refusals.pop(item_id, None)

    def calls_to(self, op: str) -> list[tuple]:
        with self._lock:
            return [c for c in self.calls if c[0] == op]

    # -- the Source protocol -------------------------------------------------------------

    def identity(self) -> str:
        self._log("identity")
        return self.user

    def list_items(self, last_complete: float | None = None) -> Listing:
        self._log("list_items", last_complete)
        with self._lock:
            prefixes = self.covers
            ids = sorted(self._entries)
            if prefixes is not None:
                ids = [i for i in ids if i.startswith(prefixes)]
            items = [self._item(i) for i in ids]
        if prefixes is None:
            return Listing(items, complete=True)
        return Listing(items, complete=False, covers=lambda item_id: item_id.startswith(prefixes))

    def fetch(
        self,
        item: Item,
        part_path: Path,
        cancel: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Fetched:
        self._log("fetch", item.id)
        with self._lock:
            entry = self._entries.get(item.id)
            if entry is None:
                raise SessionNotFound(f"memory platform: no item {item.id!r}")
            if entry.version != item.version:
                # As an S3 GET pinned by If-Match: never the bytes of another version.
                raise VersionChanged(f"memory platform: {item.id!r} changed since it was listed")
            data, etag = entry.data, entry.etag
            faults = self._fetch_faults.get(item.id)
            fault = faults.pop(0) if faults else None
        if fault is not None and fault.error is not None:
            raise fault.error
        limit = len(data) if fault is None else min(len(data), fault.cut_after or 0)
        digest, size = hashlib.sha256(), 0
        Path(part_path).unlink(missing_ok=True)  # a new file: never one a part still names
        with open(part_path, "xb") as fh:
            for start in range(0, limit, CHUNK):
                if cancel is not None and cancel.is_set():
                    raise Interrupted(f"stopped while fetching {item.id!r}")
                chunk = data[start : min(start + CHUNK, limit)]
                fh.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(len(chunk))
        if fault is not None and not fault.silent:
            raise TransientError(
                f"memory platform: the connection broke after {size} of {len(data)} bytes"
            )
        return Fetched(path=Path(part_path), size=size, sha256=digest.hexdigest(), etag=etag)

    def remote_version(self, item: Item) -> RemoteVersion:
        self._log("remote_version", item.id)
        with self._lock:
            entry = self._entries.get(item.id)
            if entry is None:
                raise SessionNotFound(f"memory platform: no item {item.id!r}")
            return RemoteVersion(size=len(entry.data), etag=entry.etag, last_modified=None)

    def delete(self, item: Item, if_match: str | None = None) -> None:
        self._log("delete", item.id, if_match)
        with self._lock:
            if not self.capabilities.can_delete:
                # As S3 answers read-only keys: AccessDenied, not worth a retry.
                raise RemoteError(f"memory platform: deleting {item.id!r} is not permitted")
            if not self.deletion_permitted:
                raise NotPermitted(f"memory platform: AccessDenied deleting {item.id!r}")
            entry = self._entries.get(item.id)
            if entry is None:
                raise SessionNotFound(f"memory platform: no item {item.id!r}")
            if if_match is not None and if_match != entry.etag:
                raise VersionChanged(
                    f"memory platform: {item.id!r} is no longer {if_match} (If-Match failed)"
                )
            del self._entries[item.id]

    def verify(self, path: Path, item: Item) -> Verdict:
        self._log("verify", item.id)
        with self._lock:
            refusal = self._refusals.get(item.id)
        verdict = verify_file(path, item)
        if refusal is not None:
            return Verdict(problems=(*verdict.problems, refusal), warnings=verdict.warnings)
        if self.content_facts and verdict.ok:
            size = path.stat().st_size
            # A made-up span that differs from the listing's: the content's word wins.
            return Verdict(
                warnings=verdict.warnings,
                facts={"bytes": size},
                recorded=(item.recorded_at + 60, float(size)),
            )
        return verdict

    def close(self) -> None:
        self._log("close")

    # -- internals -------------------------------------------------------------------------

    def _log(self, *call: Any) -> None:
        with self._lock:
            self.calls.append(call)

    def _add_fault(self, item_id: str, fault: _FetchFault, times: int) -> None:
        with self._lock:
            self._fetch_faults.setdefault(item_id, []).extend([fault] * times)

    def _item(self, item_id: str) -> Item:
        e = self._entries[item_id]
        fields = (
            e.fields if e.fields is not None else layout_fields(item_id, e.recorded_at, e.duration)
        )
        raw: dict[str, Any] = {
            "id": item_id,
            "recorded_at": e.recorded_at,
            "version": e.version,
            "etag": e.etag,
            "size": len(e.data),
            "suffix": e.suffix,
            "duration": e.duration,
            "kind": e.kind,
        }
        if e.fields is not None:
            raw["fields"] = dict(e.fields)
        return Item(
            id=item_id,
            recorded_at=e.recorded_at,
            version=e.version,
            size=len(e.data),
            suffix=e.suffix,
            duration=e.duration,
            kind=e.kind,
            fields=dict(fields),
            raw=raw,
        )


def _pick(given: Any, old: _Entry | None, name: str, default: Any) -> Any:
    """What ``put`` was given, else what the item had, else the default."""
    if given is not None:
        return given
    return getattr(old, name) if old is not None else default


# -- the kind: test-only plumbing -----------------------------------------------------------


class MemoryKind:
    """The ``memory`` source kind, and which ``MemorySource`` serves which account.

    ``kind`` is a real ``e4sync.sources.Kind``: ``connect`` answers an account's source
    from ``sources`` (so ``make_source``, and a pass with no ``source_factory``, find it
    too), ``item_from_raw``, ``verify`` (offline: size and MD5 against the version),
    ``check_id`` and ``endpoint`` are this module's. ``factory`` is a ``SourceFactory`` for
    ``run_pass(..., source_factory=...)``."""

    def __init__(self) -> None:
        self.sources: dict[str, MemorySource] = {}
        self.kind = Kind(
            name=MEMORY,
            connect=self._connect,
            item_from_raw=item_from_raw,
            verify=verify_file,
            check_id=check_id,
            endpoint=endpoint,
        )

    def add(self, account: str, source: MemorySource | None = None) -> MemorySource:
        self.sources[account] = source if source is not None else MemorySource()
        return self.sources[account]

    def factory(self, account: AccountConfig) -> Source:
        return self._connect(account, None)

    def _connect(
        self,
        account: AccountConfig,
        cfg: Config | None,
        cancel: threading.Event | None = None,
        interactive: bool | None = None,
    ) -> Source:
        try:
            return self.sources[account.name]
        except KeyError:
            from e4sync.errors import ConfigError

            raise ConfigError(f"no MemorySource for account {account.name!r}") from None


def register_memory_kind(monkeypatch: pytest.MonkeyPatch) -> MemoryKind:
    """Make ``e4sync.sources.kind("memory")`` (and ``settings("memory")``) answer for the
    rest of the test; see the module docstring. Returns the registry to add sources to."""
    import e4sync.sources

    registry = MemoryKind()
    package = types.ModuleType(f"e4sync.sources.{MEMORY}", "test-only: the memory kind")
    package.__path__ = []  # a package, as a real kind is
    package.KIND = registry.kind
    settings = types.ModuleType(f"e4sync.sources.{MEMORY}.settings", "test-only")
    settings.ACCOUNT_KEYS = {}
    settings.DEFAULT_LAYOUT = MEMORY_LAYOUT
    settings.PLACEHOLDERS = ("account", "user_id", "session_id", "start_time", "start", "duration")
    package.settings = settings
    monkeypatch.setitem(sys.modules, package.__name__, package)
    monkeypatch.setitem(sys.modules, settings.__name__, settings)
    if MEMORY not in e4sync.sources.KINDS:
        monkeypatch.setattr(e4sync.sources, "KINDS", (*e4sync.sources.KINDS, MEMORY))
    return registry


# What a memory account's files are named by: the layout fields a memory item offers.
MEMORY_LAYOUT = "{account}/{session_id}.zip"


def memory_accounts(cfg: Config, names: list[str] | None = None) -> Config:
    """``cfg`` with ``source = "memory"`` on its accounts (those ``names``, default all):
    test-only, until the configuration file takes a ``source`` key."""
    accounts = tuple(
        dataclasses.replace(a, source=MEMORY, layout=MEMORY_LAYOUT)
        if names is None or a.name in names
        else a
        for a in cfg.accounts
    )
    return dataclasses.replace(cfg, accounts=accounts)
