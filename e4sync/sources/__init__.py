"""e4sync.sources: the seam between a platform and the one core (SPEC section 7a).

Owns: the generic ``Item`` (any string id, a recorded time, a version, a size, a suffix,
layout fields, raw metadata), what a fetch and a verification return (``Fetched``,
``Verdict``, ``RemoteVersion``), a listing (``Listing``), what a source can do
(``Capabilities``, and the optional methods named in ``Source``), a table a source-specific
command prints (``Table``), the ``Source`` protocol, ``DryRunSource``, and the registry of
source kinds with its one factory ``make_source``. The archive, state, pass, deletion rules,
status, reindex, ``doctor``, the demo and the CLI see only these names.

A source kind is a package ``e4sync.sources.<name>`` with two modules: ``settings`` (cheap:
its account keys, default layout and layout placeholders; read by the configuration) and
the package itself, whose ``KIND`` says how to connect, how to rebuild an ``Item`` from the
raw metadata a sidecar or the state database kept, and how to check a file's content
without logging in (``verify``, ``reindex``, the scrub). A kind may also have a ``demo``
module (``kind_module(name, "demo")``): what ``e4sync demo`` and ``e4sync simulate`` start.

A kind's package is imported only when an account of that kind is served.
Must not import: e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli, e4sync.sources.e4connect.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from e4sync.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from e4sync.config import AccountConfig, Config

DEFAULT_SOURCE = "e4connect"
# Every kind e4sync ships; a kind is imported only when an account names it.
KINDS = ("e4connect", "embraceplus")


@dataclass(frozen=True, slots=True)
class Item:
    """One thing a platform lists, as the core sees it.

    ``id`` is any string (an S3 key holds slashes); ``recorded_at`` the unix second its
    recording began (0: unknown); ``version`` what makes a changed item a new download
    (E4: a digest of its listed metadata; S3: ETag and size); ``suffix`` its file's
    extension (``.zip``); ``fields`` the layout placeholders it offers (a ``datetime``
    value is formatted in ``archive.timezone``); ``raw`` its metadata as listed, kept as
    JSON in the state database and the sidecar, from which the kind rebuilds the item."""

    id: str
    recorded_at: int
    version: str
    size: int | None = None
    suffix: str = ""
    duration: float = 0.0  # seconds recorded, 0 when unknown
    kind: str = ""  # what the source calls it ("session"; "raw", "biomarker", "other")
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Listing:
    """What one listing found. ``complete``: every item the account holds is in it, so an
    item missing from it has vanished. A partial listing (recent day folders only) says
    which ids it ``covers``; one it does not cover is not known to be gone."""

    items: list[Item]
    complete: bool = True
    covers: Callable[[str], bool] | None = None

    def covered(self, item_id: str) -> bool:
        return self.complete or (self.covers is not None and self.covers(item_id))


@dataclass(frozen=True)
class Capabilities:
    """What a source can do. ``can_delete``: the platform accepts a DELETE from these
    credentials' kind at all (E4 Connect yes; a read-only S3 delivery no).

    ``listing_columns``: what ``e4sync sessions`` shows of each listed item, in order: keys
    of the item's ``raw`` metadata, and those the core fills in, ``start`` (the recorded
    time, ISO 8601 UTC), ``local_state`` and ``local_path`` (from the state database).
    Empty: ``DEFAULT_LISTING_COLUMNS``, from the ``Item``'s own attributes."""

    can_delete: bool = True
    listing_columns: tuple[str, ...] = ()
    # A new version of an archived item is downloaded again (S3: a rewritten object), the
    # old copy kept aside; False: a changed version only blocks the item's remote deletion
    # (E4: metadata edited on the platform, same recording).
    refetch_changed: bool = False
    # Where kept-aside copies go: "" beside the file (``X.replaced-<UTC>.zip``), else this
    # folder under the account's own (``{account}/.versions/...``), so a mirrored tree
    # holds only the platform's files.
    versions_folder: str = ""
    # Kinds of item the platform writes once (S3: raw recordings): a new version of one is
    # downloaded all the same (``refetch_changed``), and said as a warning.
    write_once: tuple[str, ...] = ()


# What `e4sync sessions` shows of a source that names no columns of its own.
DEFAULT_LISTING_COLUMNS = ("id", "kind", "start", "size", "local_state", "local_path")


@dataclass(frozen=True)
class Table:
    """What a source-specific command prints (``e4sync devices``): its columns in order,
    and its rows as the platform sent them (``--json`` prints the rows)."""

    columns: tuple[str, ...]
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class Fetched:
    """What a fetch wrote: the ``.part`` file, its size and sha256 (hashed while streaming)."""

    path: Path
    size: int
    sha256: str
    etag: str | None = None  # the validators the platform sent with these bytes
    last_modified: str | None = None


@dataclass(frozen=True)
class RemoteVersion:
    """What the platform says of an item now, without sending it: its size (None when it
    does not say) and its validators. Asked before every deletion."""

    size: int | None
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True)
class Verdict:
    """What a verification found in a fetched file. Any ``problems`` refuse it; the
    ``warnings`` (a harmless extra member) do not, and travel into the sidecar."""

    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # What the content says of itself, for the sidecar (``content``) and the state database
    # (``sessions.content_json``): a raw file's streams, their rates and sample counts.
    facts: Mapping[str, Any] = field(default_factory=dict)
    # The span the file records, when its content says: (start unix seconds, seconds).
    recorded: tuple[int, float] | None = None
    # The bytes are proven to be the platform's own (a digest it published matched), so the
    # problems are in the content itself: downloading again brings the same bytes, and a
    # refused file is kept aside for a person rather than thrown away.
    bytes_proven: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


class Source(Protocol):
    """One account on one platform, logged in (lazily) with its credentials.

    Optional methods, for the commands that only some platforms can answer; the CLI asks
    ``getattr(source, name, None)`` and a source without one makes the command say "not
    offered by source ..." (exit 64):

    - ``devices() -> Table``: the account's devices (E4 Connect: the purchased ones), for
      ``e4sync devices``;
    - ``download(item_id: str, target: Path) -> Path``: one item, checked, to the file
      ``target`` or into the existing folder ``target`` under the platform's own name,
      outside the archive (via a ``.part`` renamed into place), for ``e4sync download``;
    - ``pinned_version(item: Item) -> RemoteVersion | None``: the listed size and validators
      when the listing pins the item's exact bytes and ``verify`` checks a file against
      them (S3: an ETag that is the object's MD5), else None. With it, a pass adopts a file
      another tool left at an item's archive path (no sidecar: an ``aws s3 sync`` copy)
      once ``verify`` passes, instead of downloading it again.

    ``identity()`` answers ``e4sync whoami``; "" (no identity) makes it "not offered"."""

    name: str  # the kind: "e4connect"
    capabilities: Capabilities

    def identity(self) -> str:
        """Who the credentials are on the platform (E4: the user id); "" if it has none."""
        ...

    def list_items(self, last_complete: float | None = None) -> Listing:
        """What the platform holds. ``last_complete``: when this account last got a
        complete listing (None: never), so a source that lists recent folders each pass
        knows when a whole listing is due."""
        ...

    def fetch(
        self,
        item: Item,
        part_path: Path,
        cancel: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Fetched: ...

    def remote_version(self, item: Item) -> RemoteVersion: ...

    def delete(self, item: Item, if_match: str | None = None) -> None: ...

    def verify(self, path: Path, item: Item) -> Verdict: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Kind:
    """A source kind: how to connect one account, rebuild an item from the raw metadata
    kept for it, and check a file's content offline."""

    name: str
    connect: Callable[..., Source]  # (account, cfg, cancel=None, interactive=None) -> Source
    item_from_raw: Callable[[Mapping[str, Any]], Item | None]
    verify: Callable[[Path, Item], Verdict]
    check_id: Callable[[str], str]  # a usable id, or UsageError naming what is wrong
    endpoint: Callable[[AccountConfig], str]  # what the account points at, for people
    # For `doctor`: where the account's secret would be read from, never the secret itself
    # ("password-file: /etc/e4sync/lab.password"); AuthError when none is found, ConfigError
    # when one is set up wrongly. None: the kind has no secret of its own to check.
    secret_source: Callable[[AccountConfig], str] | None = None
    secret_name: str = "secret"  # what `doctor` calls it ("password")
    # For `e4sync report`: the item field that names the device an item was recorded on,
    # and the item kinds whose span is recording time (None: every kind). ``merge_spans``:
    # one device's items may overlap (files cut from one recording), counted once.
    device_field: str = "serial"
    timed_kinds: tuple[str, ...] | None = None
    merge_spans: bool = False


def kind(name: str) -> Kind:
    """The kind called ``name``; ConfigError naming the known ones for any other."""
    return _package(name).KIND


def settings(name: str) -> ModuleType:
    """The cheap ``settings`` module of the kind called ``name`` (its account keys)."""
    _known(name)
    return importlib.import_module(f"e4sync.sources.{name}.settings")


def make_source(
    account: AccountConfig,
    cfg: Config,
    cancel: threading.Event | None = None,
    interactive: bool | None = None,
) -> Source:
    """The one factory: the pass, the CLI and ``doctor`` all build sources here, so they
    share one set of timeouts, pool sizes and credentials. ``cancel`` ends the source's
    waits (a Retry-After, a backoff) with ``Interrupted``; ``interactive=False`` never
    prompts for a secret (None: only when stdin is a terminal)."""
    return kind(account.source).connect(account, cfg, cancel=cancel, interactive=interactive)


def kind_module(name: str, module: str) -> ModuleType:
    """The optional module ``e4sync.sources.<name>.<module>`` of the kind called ``name``
    (``demo``: the simulator behind ``e4sync demo`` and ``e4sync simulate``), imported by
    name so that its caller names no kind; UsageError when the kind has none."""
    _known(name)
    full = f"e4sync.sources.{name}.{module}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name != full:
            raise
        raise UsageError(f"source {name!r} offers no {module}") from None


def _known(name: str) -> None:
    if name not in KINDS:
        raise ConfigError(f"unknown source {name!r} (known: {', '.join(KINDS)})")


def _package(name: str) -> ModuleType:
    _known(name)
    return importlib.import_module(f"e4sync.sources.{name}")


class DryRunSource:
    """Wraps a source so that nothing can be fetched or deleted: a forgotten ``if dry_run``
    anywhere above still changes nothing (restic's dry-run backend)."""

    def __init__(self, inner: Source):
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities

    def identity(self) -> str:
        return self.inner.identity()

    def list_items(self, last_complete: float | None = None) -> Listing:
        return self.inner.list_items(last_complete)

    def fetch(
        self,
        item: Item,
        part_path: Path,
        cancel: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Fetched:
        raise UsageError(f"dry run: {item.id} would be downloaded, not fetched")

    def remote_version(self, item: Item) -> RemoteVersion:
        return self.inner.remote_version(item)  # reads at most one byte: changes nothing

    def delete(self, item: Item, if_match: str | None = None) -> None:
        raise UsageError(f"dry run: {item.id} would be deleted, not removed")

    def verify(self, path: Path, item: Item) -> Verdict:
        return self.inner.verify(path, item)

    def pinned_version(self, item: Item) -> RemoteVersion | None:
        pinned = getattr(self.inner, "pinned_version", None)  # reads the listing only
        return pinned(item) if pinned is not None else None

    def close(self) -> None:
        self.inner.close()
