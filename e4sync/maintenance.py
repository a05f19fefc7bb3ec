"""e4sync.maintenance: what the state database and the archive can answer on their own.

``verify_archive`` (re-hash every archived file against the database, mark what it finds
on the rows by ``state.problems``' rule, rewrite damaged sidecars from the rows),
``reindex`` (rebuild the database from the sidecars, with no download) and ``retry``
(clear back-off). None of them talks to the platform. The ``status`` report lives in
``e4sync.status``; the sidecar's fields in ``e4sync.archive.sidecar``.

Must not import: e4sync.sources.e4connect, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from sqlalchemy import Engine, case, select, update

from e4sync.archive import Archive, UnsafePathError
from e4sync.archive.sidecar import build as build_sidecar
from e4sync.archive.sidecar import disagreements
from e4sync.errors import StorageError
from e4sync.sources import DEFAULT_SOURCE, Item, kind
from e4sync.state import db as statedb
from e4sync.state import problems, rows
from e4sync.state.models import (
    ARCHIVED_STATES,
    DUE_STATES,
    FAILED,
    NEW,
    REMOTE_DELETED,
    REMOTE_GONE,
    VERIFIED,
    Account,
)
from e4sync.state.models import Session as SessionRow

log = logging.getLogger("e4sync.maintenance")


@dataclass
class VerifyReport:
    """What ``verify_archive`` found and did. ``missing``, ``changed`` and ``unreadable``
    name the archived files that fail the re-hash (each now marked on its row);
    ``requeued`` those of them the next pass downloads again, ``lost`` those the platform
    no longer holds (a backup is the only way back). ``restored`` files re-hash correctly
    again after an earlier problem; ``repaired_sidecars`` were rewritten from the state
    database, ``sidecar_errors`` could not be."""

    checked: int = 0
    ok: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    repaired_sidecars: list[str] = field(default_factory=list)
    sidecar_errors: list[str] = field(default_factory=list)
    # Why each repaired sidecar was rewritten (for the human output; not in --json).
    repair_reasons: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def clean(self) -> bool:
        """No damage remains. A repaired sidecar is fixed, so it does not count."""
        return not (self.missing or self.changed or self.unreadable or self.sidecar_errors)

    def as_dict(self) -> dict:
        data = asdict(self)
        del data["repair_reasons"]
        return {"schema": 1, **data, "clean": self.clean}


@dataclass
class _Finding:
    """One archived file as the database recorded it, and what its re-hash found."""

    pk: int
    account: str
    user_id: str
    remote_id: str
    state: str
    local_path: str
    sha256: str
    size: int | None
    downloaded_at: float | None
    verified_at: float
    local_problem: str | None
    source: str = ""  # the account's kind of platform, named in the sidecar
    content: dict | None = None  # what the file's content said when verified
    path: Path | None = None
    kind: str | None = None  # problems.MISSING/CHANGED/UNREADABLE, None when whole
    detail: str = ""
    sidecar: dict | None = None  # the old sidecar, when readable
    sidecar_reason: str = ""  # why the sidecar must be rewritten, "" when it is good


def verify_archive(
    engine: Engine,
    archive: Archive,
    account_names: list[str] | None = None,
    *,
    repair: bool = True,
    now: float | None = None,
) -> VerifyReport:
    """Re-hash every file the database says is archived (and every one marked damaged
    earlier), name each that is missing, changed (sha256 differs) or unreadable, and mark
    it on its row (``state.problems``, one transaction): a session the platform still
    holds is downloaded again by the next pass; one it no longer holds is logged as an
    ERROR. A file that re-hashes correctly clears an earlier mark; its sidecar, if
    missing, unreadable or at odds with the database, is rewritten from the row. With
    ``repair=False`` (a dry run) the same is found and reported, and nothing is written.

    Raises ``StateDamaged`` if the state database is damaged, and ``StorageError`` when
    the archive root itself is missing: a disk that is not
    mounted must not make every session look lost and queue the whole archive again."""
    statedb.check_integrity(engine)  # a damaged database is the measure of nothing
    if not archive.root.is_dir():
        raise StorageError(
            f"the archive root {archive.root} is not there (a disk not mounted?); "
            "nothing was checked or marked"
        )
    report = VerifyReport()
    sessions = statedb.sessionmaker_for(engine)
    # The re-hash runs outside any transaction: it can take hours on a large archive, and
    # a write lock held that long would stop the daemon's passes.
    findings = [_check(archive, f) for f in _archived(sessions, account_names)]
    report.checked = len(findings)
    with sessions() as db:  # one transaction for every mark and clear
        sidecars = _record(db, findings, report, time.time() if now is None else now)
        if not repair:
            db.rollback()
            for relpath, _data, reason in sidecars:
                side = archive.sidecar_path(relpath)
                log.warning("dry run: would repair the sidecar %s (%s)", side, reason)
            return report
        db.commit()
    # Sidecars are written after the commit: a rewrite that fails leaves the rows right.
    # What was repaired is the caller's to tell (the command's output, the scrub's log).
    for relpath, data, reason in sidecars:
        side = str(archive.sidecar_path(relpath))
        try:
            archive.write_sidecar(relpath, data)
        except StorageError as exc:
            report.sidecar_errors.append(f"{side}: {exc}")
            continue
        report.repaired_sidecars.append(side)
        report.repair_reasons[side] = reason
    return report


def _archived(sessions, account_names: list[str] | None) -> list[_Finding]:
    query = (
        select(
            SessionRow.id,
            Account.name,
            Account.user_id,
            SessionRow.remote_id,
            SessionRow.state,
            SessionRow.local_path,
            SessionRow.sha256,
            SessionRow.size,
            SessionRow.downloaded_at,
            SessionRow.verified_at,
            SessionRow.local_problem,
            Account.source,
            SessionRow.content_json,
        )
        .join(Account, Account.id == SessionRow.account_id)
        .where(
            SessionRow.local_path.is_not(None),
            SessionRow.sha256.is_not(None),
            SessionRow.verified_at.is_not(None),
            # A marked session is queued again (state new) but keeps the path and sha256
            # of its copy: it is checked too, so a file restored from a backup clears it.
            SessionRow.state.in_(ARCHIVED_STATES) | SessionRow.local_problem.is_not(None),
        )
        .order_by(SessionRow.local_path)
    )
    if account_names is not None:
        query = query.where(Account.name.in_(account_names))
    with sessions() as db:
        return [
            _Finding(
                *row[:11],
                source=row[11] or "",
                content=_json_object(row[12]),
            )
            for row in db.execute(query)
        ]


def _check(archive: Archive, f: _Finding) -> _Finding:
    """Re-hash one file and, when it is whole, read its sidecar."""
    from e4sync.verify import sha256_file

    relpath = PurePosixPath(f.local_path)
    try:
        f.path = archive.resolve(relpath)
    except UnsafePathError as exc:  # a damaged row: nothing outside the root is read
        f.kind, f.detail = problems.UNREADABLE, str(exc)
        return f
    try:
        _, actual = sha256_file(f.path)
    except FileNotFoundError:
        f.kind = problems.MISSING
        return f
    except OSError as exc:
        f.kind, f.detail = problems.UNREADABLE, exc.strerror or str(exc)
        return f
    if actual != f.sha256:
        f.kind = problems.CHANGED
        return f
    f.sidecar, unreadable = archive.load_sidecar(relpath)
    expected = _sidecar_of(f, remote={})
    if f.sidecar is None:
        f.sidecar_reason = unreadable or "missing"
    elif wrong := disagreements(f.sidecar, expected):
        f.sidecar_reason = "disagrees with the state database on " + ", ".join(wrong)
    elif not _usable_remote(f.sidecar, f.remote_id):
        # reindex rebuilds the row from it: without it the session cannot be recovered.
        f.sidecar_reason = "no usable remote session metadata"
    return f


def _record(db, findings: list[_Finding], report: VerifyReport, now: float) -> list:
    """Mark and clear the rows (the caller's one transaction); return the sidecars to
    rewrite as ``(relpath, data, reason)``."""
    rows: dict[int, SessionRow] = {}
    wanted = [f.pk for f in findings if f.kind or f.local_problem or f.sidecar_reason]
    for chunk in _chunks(wanted, 500):
        rows.update(
            (r.id, r) for r in db.scalars(select(SessionRow).where(SessionRow.id.in_(chunk)))
        )
    sidecars = []
    for f in findings:
        if f.kind is None:
            report.ok += 1
        else:
            shown = str(f.path if f.path is not None else f.local_path)
            if f.kind == problems.UNREADABLE:
                report.unreadable.append(f"{shown}: {f.detail}")
            else:
                getattr(report, f.kind).append(shown)
        row = rows.get(f.pk)
        if row is None:
            continue  # whole, with a good sidecar and no earlier problem: nothing to write
        if (row.local_path, row.sha256, row.verified_at) != (
            f.local_path,
            f.sha256,
            f.verified_at,
        ):
            continue  # a pass archived it anew since it was read: what was hashed is past
        if f.kind is not None:
            problems.mark(db, row, problems.describe(f.kind, shown, f.detail), now)
            _tell(report, row, f, shown)
            continue
        if row.local_problem is not None:
            old = row.local_problem
            problems.clear(row)
            if row.state in DUE_STATES and row.last_error == old:
                row.last_error = None  # the queued re-download's only reason is gone
            report.restored.append(str(f.path))
        if f.sidecar_reason:
            data = _sidecar_of(
                f,
                remote=_remote_for(row, f.sidecar),
                etag=row.remote_etag,
                last_modified=row.remote_last_modified,
            )
            # Fields the sidecar had beyond the database's (warnings, validators a reindex
            # could not carry into the row) are kept.
            merged = {**(f.sidecar or {}), **data}
            sidecars.append((PurePosixPath(f.local_path), merged, f.sidecar_reason))
    return sidecars


def _tell(report: VerifyReport, row: SessionRow, f: _Finding, shown: str) -> None:
    if row.state in DUE_STATES:
        report.requeued.append(shown)
    elif row.state in (REMOTE_DELETED, REMOTE_GONE):
        report.lost.append(shown)
        # Loud: no pass can repair this one, and nothing else would say it.
        log.error(
            "%s is %s, and the platform no longer holds session %s of account %s (%s): "
            "it cannot be downloaded again; restore the file from a backup to that path, "
            "then run `e4sync verify`",
            shown,
            f.kind,
            f.remote_id,
            f.account,
            row.state,
        )


def _sidecar_of(
    f: _Finding, remote: dict, etag: str | None = None, last_modified: str | None = None
) -> dict:
    """The sidecar the state database describes (``e4sync.archive.sidecar`` owns its
    fields)."""
    return build_sidecar(
        account=f.account,
        user_id=f.user_id,
        item_id=f.remote_id,
        remote=remote,
        file=PurePosixPath(f.local_path).name,
        size=f.size if f.size is not None else 0,
        sha256=f.sha256,
        downloaded_at=f.downloaded_at if f.downloaded_at is not None else f.verified_at,
        verified_at=f.verified_at,
        etag=etag,
        last_modified=last_modified,
        source=f.source,
        content=f.content,
    )


def _json_object(text: str | None) -> dict | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _remote_for(row: SessionRow, old: dict | None) -> dict:
    """The listed metadata the file was downloaded under: the old sidecar's when its hash
    says so, else the row's latest listing (whose hash, when it differs from the one at
    download, can only block a remote deletion after a reindex: the safe direction)."""
    if old is not None and _usable_remote(old, row.remote_id):
        item = _item_of(old)
        if item is not None and item.version == row.downloaded_version:
            return old["remote"]
    try:
        listed = json.loads(row.remote_json or "{}")
    except ValueError:
        listed = {}
    return listed if isinstance(listed, dict) else {}


def _usable_remote(sidecar: dict, remote_id: str) -> bool:
    if not isinstance(sidecar.get("remote"), dict):  # checked first: a kind warns of others
        return False
    item = _item_of(sidecar)
    return item is not None and item.id == remote_id


def _item_of(sidecar: dict) -> Item | None:
    """The item a sidecar describes, rebuilt by the kind of source that wrote it (a
    sidecar from before sources had kinds is E4 Connect's)."""
    return kind(str(sidecar.get("source") or DEFAULT_SOURCE)).item_from_raw(sidecar["remote"])


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class ReindexReport:
    sidecars: int = 0
    added: int = 0
    updated: int = 0
    missing_zip: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)


def reindex(engine: Engine, archive: Archive, rehash: bool = True) -> ReindexReport:
    """Rebuild session rows from the archive's sidecars, with no download. A sidecar whose
    ZIP is missing or does not hash to the recorded sha256 is reported and not indexed."""
    from e4sync.verify import sha256_file

    report = ReindexReport()
    sessions = statedb.sessionmaker_for(engine)
    for relpath, sidecar in archive.iter_sidecars():
        report.sidecars += 1
        try:
            account_name = str(sidecar["account"])
            item = _item_of(sidecar)
            sha256 = str(sidecar["sha256"])
            if item is None:
                raise ValueError("no usable remote session in the sidecar")
        except (KeyError, TypeError, ValueError) as exc:
            report.bad.append(f"{relpath}: {exc}")
            continue
        path = archive.resolve(relpath)
        if not path.exists():
            report.missing_zip.append(str(path))
            continue
        if rehash:
            try:
                size, actual = sha256_file(path)
            except OSError as exc:
                report.bad.append(f"{relpath}: unreadable: {exc}")
                continue
            if actual != sha256:
                report.bad.append(f"{relpath}: sha256 differs from its sidecar")
                continue
        else:
            size = int(sidecar.get("size") or path.stat().st_size)
        with sessions() as db, db.begin():
            account = statedb.ensure_account(db, account_name, str(sidecar.get("source") or ""))
            if sidecar.get("user_id"):
                account.user_id = str(sidecar["user_id"])
            row = db.scalar(
                select(SessionRow).where(
                    SessionRow.account_id == account.id, SessionRow.remote_id == item.id
                )
            )
            if row is None:
                row = rows.new_row(account.id, item, time.time())
                db.add(row)
                report.added += 1
            else:
                report.updated += 1
            verified_at = _parse_iso(sidecar.get("verified_at")) or time.time()
            if row.state not in (REMOTE_DELETED, REMOTE_GONE):
                row.state = VERIFIED
            row.local_path = str(relpath)
            row.size = size
            row.sha256 = sha256
            row.downloaded_version = item.version
            row.downloaded_at = _parse_iso(sidecar.get("downloaded_at")) or verified_at
            row.verified_at = verified_at
            row.last_error = None
            row.next_attempt_at = None
    return report


def _parse_iso(text: object) -> float | None:
    import datetime as dt

    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def retry(
    engine: Engine, session_ids: list[str] | None = None, account_names: list[str] | None = None
) -> int:
    """Clear back-off so failed and waiting sessions are tried on the next pass; return how
    many rows were reset. ``session_ids=None`` means every failed or waiting session."""
    now = time.time()
    with statedb.sessionmaker_for(engine)() as db, db.begin():
        query = update(SessionRow).where(SessionRow.state.in_((*DUE_STATES, FAILED)))
        if session_ids is not None:
            query = query.where(SessionRow.remote_id.in_(session_ids))
        if account_names is not None:
            ids = select(Account.id).where(Account.name.in_(account_names))
            query = query.where(SessionRow.account_id.in_(ids))
        # A failed session starts afresh; one still downloading keeps its path to resume.
        state = case((SessionRow.state == FAILED, NEW), else_=SessionRow.state)
        result = db.execute(query.values(next_attempt_at=now, attempts=0, state=state))
        # Deletions a platform refused as not permitted are asked for again (new keys).
        refused = update(Account).where(Account.deletions_refused.is_not(None))
        if account_names is not None:
            refused = refused.where(Account.name.in_(account_names))
        db.execute(refused.values(deletions_refused=None))
        return result.rowcount or 0


def session_states(
    engine: Engine, session_ids: list[str], account_names: list[str] | None = None
) -> dict[str, str]:
    """remote id -> state of each of ``session_ids`` the state database knows (of the
    named accounts, when given): what `retry ID` checks before it says what it did."""
    query = (
        select(SessionRow.remote_id, SessionRow.state)
        .join(Account, Account.id == SessionRow.account_id)
        .where(SessionRow.remote_id.in_(session_ids))
    )
    if account_names is not None:
        query = query.where(Account.name.in_(account_names))
    with statedb.sessionmaker_for(engine)() as db:
        return {rid: state for rid, state in db.execute(query)}


def dumps(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
