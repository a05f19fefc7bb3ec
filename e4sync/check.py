"""e4sync.check: `e4sync check` — the platform's listing against the archive, read-only.

Like rclone's ``check``: every item the platform lists must be archived and whole (its file
there, with the size and sha256 its sidecar records; ``download=True`` also fetches the
platform's bytes to a temporary file and compares their sha256), and every archived item
must be either listed or known to be gone (``remote_deleted``, ``remote_gone``). Each
difference is named, with the item, the path and what differs; nothing is written: not the
archive, not the state database (it is not even created), not the platform. It is what to
run before trusting the archive with the only copy, and after restoring one.

What "archived" means is read from both places the archive is described: the state
database's rows (an item with a recorded path, sha256 and verification) and the sidecars
on disk, so an archive whose database was lost is still recognised (each such item is then
a difference: "not in the state database", fixed by ``e4sync reindex``).

Works for every source kind: it sees only ``Item`` and ``Listing`` (a partial listing can
only say of the items it ``covers`` that they are gone), and the source comes from the one
factory (``make_source``).

Must not import: e4sync.cli, e4sync.sync, e4sync.sources.e4connect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from e4sync.archive import Archive, UnsafePathError
from e4sync.errors import (
    EXIT_CONFIG,
    EXIT_DIFFERENCES,
    EXIT_NOPERM,
    EXIT_OK,
    EXIT_TEMPFAIL,
    E4SyncError,
    StateDamaged,
)
from e4sync.fsutil import explain, sha256_file
from e4sync.sources import Item, Source, make_source
from e4sync.state.states import REMOTE_DELETED, REMOTE_GONE

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from e4sync.config import AccountConfig, Config

log = logging.getLogger("e4sync.check")

# The kinds of difference, as the output names them.
NOT_ARCHIVED = "not archived"  # listed, no archived copy
MISSING = "missing"  # archived, but its file is not there
UNREADABLE = "unreadable"  # its file cannot be read
CHANGED = "changed"  # its file's size or sha256 is not what its sidecar records
SIDECAR = "sidecar"  # its sidecar is missing, unreadable or at odds with the database
NOT_IN_DATABASE = "not in the state database"  # a sidecar the database does not know
PLATFORM_CHANGED = "changed on the platform"  # listed under another version than archived
SIZE_DIFFERS = "size differs"  # the platform lists another size than the archived one
CONTENT_DIFFERS = "content differs"  # --download: the platform's bytes hash otherwise
NOT_LISTED = "not on the platform"  # archived, not listed, not known to be gone
FETCH_FAILED = "not fetched"  # --download: the platform's bytes could not be fetched

GONE_STATES = (REMOTE_DELETED, REMOTE_GONE)


@dataclass(frozen=True)
class Difference:
    item: str
    kind: str
    detail: str
    path: str | None = None

    def line(self) -> str:
        where = f" {self.path}" if self.path else ""
        return f"{self.kind}: {self.item}{where}: {self.detail}"


@dataclass
class AccountCheck:
    name: str
    listed: int = 0
    archived: int = 0
    matched: int = 0
    known_gone: int = 0
    compared: int = 0  # fetched from the platform and compared (--download)
    complete: bool = True
    error: str = ""
    exit_code: int = EXIT_OK
    differences: list[Difference] = field(default_factory=list)

    def add(self, item: str, kind: str, detail: str, path: Path | str | None = None) -> None:
        self.differences.append(Difference(item, kind, detail, str(path) if path else None))


@dataclass
class CheckReport:
    accounts: list[AccountCheck] = field(default_factory=list)
    download: bool = False

    @property
    def differences(self) -> int:
        return sum(len(a.differences) for a in self.accounts)

    @property
    def exit_code(self) -> int:
        """An account that could not be checked first (the most telling of its codes, as a
        pass's), then 1 for any difference, else 0."""
        codes = {a.exit_code for a in self.accounts if a.error}
        for code in (EXIT_CONFIG, EXIT_NOPERM, EXIT_TEMPFAIL):
            if code in codes:
                return code
        if codes:
            return max(codes)
        return EXIT_DIFFERENCES if self.differences else EXIT_OK

    def lines(self) -> list[str]:
        """The report for people: a line per account, one per difference, a total."""
        lines = []
        for a in self.accounts:
            if a.error:
                lines.append(f"{a.name}: not checked: {a.error}")
                continue
            compared = f", {a.compared} compared with the platform's bytes" if self.download else ""
            partial = "" if a.complete else " (a partial listing)"
            lines.append(
                f"{a.name}: {a.listed} listed{partial}, {a.archived} archived, {a.matched} "
                f"match{compared}, {a.known_gone} known deleted or gone, "
                f"{len(a.differences)} difference(s)"
            )
            lines.extend(f"  {d.line()}" for d in a.differences)
        total = self.differences
        lines.append("no differences" if not total else f"{total} difference(s)")
        return lines

    def as_dict(self) -> dict:
        return {
            "schema": 1,
            "download": self.download,
            "clean": self.differences == 0 and not any(a.error for a in self.accounts),
            "differences": self.differences,
            "accounts": [
                {
                    "name": a.name,
                    "listed": a.listed,
                    "archived": a.archived,
                    "matched": a.matched,
                    "known_gone": a.known_gone,
                    "compared": a.compared,
                    "complete": a.complete,
                    "error": a.error or None,
                    "differences": [
                        {"id": d.item, "kind": d.kind, "path": d.path, "detail": d.detail}
                        for d in a.differences
                    ],
                }
                for a in self.accounts
            ],
        }


@dataclass
class _Archived:
    """One archived item, as the state database and the sidecars describe it."""

    item_id: str
    relpath: PurePosixPath
    state: str = ""  # "" when only a sidecar knows it
    size: int | None = None  # the database's
    sha256: str | None = None
    version: str | None = None  # the version it was downloaded under
    sidecar: dict | None = None
    in_database: bool = True


def check_accounts(
    cfg: Config,
    engine: Engine | None,
    *,
    download: bool = False,
    source_factory: Callable[[AccountConfig], Source] | None = None,
) -> CheckReport:
    """Check each configured account's listing against the archive (``engine``: the state
    database, None when it does not exist yet). Raises ``StateDamaged``; every other error
    is the account's (reported, and the next account is checked)."""
    archive = Archive(cfg.archive.root)
    factory = source_factory or (lambda account: make_source(account, cfg))
    report = CheckReport(download=download)
    sidecars = _sidecars(archive) if archive.root.is_dir() else {}
    for account in cfg.accounts:
        result = AccountCheck(account.name)
        report.accounts.append(result)
        try:
            archived = _from_database(engine, account.name)
            for item_id, (relpath, data) in sidecars.get(account.name, {}).items():
                known = archived.get(item_id)
                if known is None:
                    archived[item_id] = _Archived(item_id, relpath, sidecar=data, in_database=False)
                elif known.relpath == relpath:
                    known.sidecar = data
            source = factory(account)
            try:
                _check_account(result, source, archive, archived, download)
            finally:
                source.close()
        except StateDamaged:
            raise
        except E4SyncError as exc:
            result.error = str(exc)
            result.exit_code = exc.exit_code
            log.error("account %s: %s", account.name, exc)
    return report


def _sidecars(archive: Archive) -> dict[str, dict[str, tuple[PurePosixPath, dict]]]:
    """account -> item id -> (relpath, sidecar): every current copy's sidecar on disk."""
    found: dict[str, dict[str, tuple[PurePosixPath, dict]]] = {}
    for relpath, data in archive.iter_sidecars():
        account = data.get("account")
        item_id = data.get("session_id")
        if isinstance(account, str) and isinstance(item_id, str | int):
            found.setdefault(account, {})[str(item_id)] = (relpath, data)
    return found


def _from_database(engine: Engine | None, account: str) -> dict[str, _Archived]:
    """The account's items with an archived copy recorded (path, sha256, verified), read in
    one read-only transaction."""
    if engine is None:
        return {}
    from sqlalchemy import select

    from e4sync.state.db import SQLITE_BEGIN_OPTION
    from e4sync.state.models import Account
    from e4sync.state.models import Session as SessionRow

    query = (
        select(
            SessionRow.remote_id,
            SessionRow.local_path,
            SessionRow.state,
            SessionRow.size,
            SessionRow.sha256,
            SessionRow.downloaded_version,
        )
        .join(Account, Account.id == SessionRow.account_id)
        .where(
            Account.name == account,
            SessionRow.local_path.is_not(None),
            SessionRow.sha256.is_not(None),
            SessionRow.verified_at.is_not(None),
        )
    )
    with engine.connect() as conn:
        conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
        try:
            rows = conn.execute(query).all()
        finally:
            conn.rollback()
    return {
        rid: _Archived(rid, PurePosixPath(path), state, size, sha, version)
        for rid, path, state, size, sha, version in rows
    }


def _check_account(
    result: AccountCheck,
    source: Source,
    archive: Archive,
    archived: dict[str, _Archived],
    download: bool,
) -> None:
    listing = source.list_items(None)  # "never listed completely": the whole listing
    result.complete = listing.complete
    listed = {item.id: item for item in listing.items}
    result.listed = len(listed)
    result.archived = len(archived)
    scratch = tempfile.mkdtemp(prefix="e4sync-check-") if download else None
    try:
        for item_id in sorted(listed, key=lambda i: (listed[i].recorded_at, i)):
            item = listed[item_id]
            copy = archived.get(item_id)
            if copy is None:
                result.add(
                    item_id,
                    NOT_ARCHIVED,
                    "listed on the platform, no archived copy (the next pass downloads it)",
                )
                continue
            said = len(result.differences)
            whole = _check_copy(result, archive, copy, item)
            if whole and scratch is not None:
                path = _path(archive, copy.relpath)
                whole = _compare_with_platform(result, source, copy, item, Path(scratch), path)
            if whole and len(result.differences) == said:
                result.matched += 1  # archived, whole, and nothing else to say of it
        for item_id in sorted(set(archived) - set(listed)):
            copy = archived[item_id]
            if copy.state in GONE_STATES:
                result.known_gone += 1
                continue
            if not listing.covered(item_id):
                continue  # a partial listing cannot say it is gone
            result.add(
                item_id,
                NOT_LISTED,
                "archived, but the platform does not list it and it is not known as deleted "
                "or gone (the next pass records it as remote_gone)",
                _path(archive, copy.relpath),
            )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _path(archive: Archive, relpath: PurePosixPath) -> str:
    try:
        return str(archive.resolve(relpath))
    except UnsafePathError:
        return str(relpath)


def _check_copy(result: AccountCheck, archive: Archive, copy: _Archived, item: Item) -> bool:
    """Whether the archived copy of a listed item is whole: there, the size and sha256
    its sidecar records, the database agreeing, and the platform listing it as archived."""
    try:
        path = archive.resolve(copy.relpath)
    except UnsafePathError as exc:
        result.add(item.id, UNREADABLE, str(exc), copy.relpath)
        return False
    if not copy.in_database:
        result.add(
            item.id,
            NOT_IN_DATABASE,
            "archived (its sidecar is here), but the state database does not record it as "
            "archived; `e4sync reindex` records it",
            path,
        )
    sidecar = copy.sidecar
    if sidecar is None and copy.in_database:
        sidecar, problem = archive.load_sidecar(copy.relpath)
        if sidecar is None and os.path.lexists(path):
            result.add(
                item.id,
                SIDECAR,
                f"its sidecar is {problem or 'missing'} (`e4sync verify` rewrites it)",
                archive.sidecar_path(copy.relpath),
            )
    expected_size = _number(sidecar.get("size")) if sidecar else copy.size
    expected_sha = sidecar.get("sha256") if sidecar else copy.sha256
    if sidecar and copy.in_database and (expected_sha, expected_size) != (copy.sha256, copy.size):
        result.add(
            item.id,
            SIDECAR,
            "its sidecar and the state database record different sizes or sha256 "
            "(`e4sync verify` rewrites the sidecar from the database)",
            archive.sidecar_path(copy.relpath),
        )
    try:
        size, sha256 = sha256_file(path)
    except FileNotFoundError:
        result.add(item.id, MISSING, "the archived file is not there", path)
        return False
    except OSError as exc:
        result.add(item.id, UNREADABLE, f"cannot be read: {explain(exc)}", path)
        return False
    whole = True
    if size != expected_size or sha256 != expected_sha:
        said = f"size {size}, sidecar says {expected_size}" if size != expected_size else ""
        said = said or f"sha256 {sha256[:12]}..., sidecar says {str(expected_sha)[:12]}..."
        result.add(item.id, CHANGED, f"the file is not what was archived ({said})", path)
        whole = False
    version = copy.version if copy.in_database else _sidecar_version(sidecar, item)
    if version is not None and version != item.version:
        result.add(
            item.id,
            PLATFORM_CHANGED,
            "the platform lists it under another version than the archived one",
            path,
        )
        whole = False
    if item.size is not None and expected_size is not None and item.size != expected_size:
        result.add(
            item.id,
            SIZE_DIFFERS,
            f"the platform lists {item.size} bytes, the archived copy has {expected_size}",
            path,
        )
        whole = False
    return whole


def _compare_with_platform(
    result: AccountCheck, source: Source, copy: _Archived, item: Item, scratch: Path, path: str
) -> bool:
    """Fetch the platform's bytes to a temporary file and compare them with the archived
    copy's sha256 (the fetch hashes while streaming); the file is removed at once."""
    expected = copy.sidecar.get("sha256") if copy.sidecar else copy.sha256
    part = scratch / "item.part"
    try:
        fetched = source.fetch(item, part)
    except E4SyncError as exc:
        if isinstance(exc, StateDamaged):
            raise
        result.add(item.id, FETCH_FAILED, f"could not fetch the platform's copy: {exc}", path)
        return False
    finally:
        with contextlib.suppress(OSError):
            part.unlink()
    result.compared += 1
    if fetched.sha256 != expected:
        result.add(
            item.id,
            CONTENT_DIFFERS,
            f"the platform's bytes ({fetched.size} bytes, sha256 {fetched.sha256[:12]}...) "
            f"are not the archived ones (sha256 {str(expected)[:12]}...)",
            path,
        )
        return False
    return True


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _sidecar_version(sidecar: dict | None, item: Item) -> str | None:
    """The version a sidecar-only copy was downloaded under: its kind rebuilds the item
    from the listed metadata the sidecar kept; None when it cannot."""
    if not sidecar or not isinstance(sidecar.get("remote"), dict):
        return None
    from e4sync.sources import DEFAULT_SOURCE, kind

    try:
        rebuilt = kind(str(sidecar.get("source") or DEFAULT_SOURCE)).item_from_raw(
            sidecar["remote"]
        )
    except E4SyncError:
        return None
    return rebuilt.version if rebuilt is not None else None
