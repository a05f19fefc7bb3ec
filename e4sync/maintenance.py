"""e4sync.maintenance: what the state database and the archive can answer on their own.

``verify_archive`` (re-hash every archived file against the database), ``reindex`` (rebuild
the database from the sidecars, with no download) and ``retry`` (clear back-off). None of
them talks to the platform. The ``status`` report lives in ``e4sync.status``.

Must not import client, sync or cli.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

from sqlalchemy import Engine, case, select, update

from e4sync.archive import Archive
from e4sync.state import db as statedb
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
    checked: int = 0
    ok: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.changed or self.unreadable)

    def as_dict(self) -> dict:
        return {"schema": 1, **asdict(self), "clean": self.clean}


def verify_archive(
    engine: Engine, archive: Archive, account_names: list[str] | None = None
) -> VerifyReport:
    """Re-hash every file the database says is archived and name each one that is missing,
    changed (sha256 differs) or unreadable. The database itself is checked first: a
    damaged one raises ``StateDamaged`` (its rows cannot be the measure of anything)."""
    from e4sync.verify import sha256_file

    statedb.check_integrity(engine)
    report = VerifyReport()
    with statedb.sessionmaker_for(engine)() as db:
        query = (
            select(SessionRow.local_path, SessionRow.sha256, SessionRow.size, Account.name)
            .join(Account, Account.id == SessionRow.account_id)
            .where(
                SessionRow.local_path.is_not(None),
                SessionRow.sha256.is_not(None),
                SessionRow.verified_at.is_not(None),
                SessionRow.state.in_(ARCHIVED_STATES),
            )
        )
        rows = db.execute(query).all()
    for local_path, sha256, _size, account in rows:
        if account_names is not None and account not in account_names:
            continue
        report.checked += 1
        path = archive.resolve(PurePosixPath(local_path))
        try:
            _, actual = sha256_file(path)
        except FileNotFoundError:
            report.missing.append(str(path))
            continue
        except OSError as exc:
            report.unreadable.append(f"{path}: {exc.strerror or exc}")
            continue
        if actual != sha256:
            report.changed.append(str(path))
        else:
            report.ok += 1
    return report


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
    from e4sync.source import parse_item
    from e4sync.verify import sha256_file

    report = ReindexReport()
    sessions = statedb.sessionmaker_for(engine)
    for relpath, sidecar in archive.iter_sidecars():
        report.sidecars += 1
        try:
            account_name = str(sidecar["account"])
            item = parse_item(sidecar["remote"])
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
            account = statedb.ensure_account(db, account_name, "", "")
            if sidecar.get("user_id"):
                account.user_id = str(sidecar["user_id"])
            row = db.scalar(
                select(SessionRow).where(
                    SessionRow.account_id == account.id, SessionRow.remote_id == item.id
                )
            )
            if row is None:
                from e4sync.sync import new_row

                row = new_row(account.id, item, time.time())
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
            row.downloaded_metadata_hash = item.metadata_hash
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
        return result.rowcount or 0


def dumps(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
