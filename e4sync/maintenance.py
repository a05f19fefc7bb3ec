"""e4sync.maintenance: what the state database and the archive can answer on their own.

``status_report`` (SPEC section 3's JSON shape), ``verify_archive`` (re-hash every archived
file against the database), ``reindex`` (rebuild the database from the sidecars, with no
download) and ``retry`` (clear back-off). None of them talks to the platform.

Must not import client, sync or cli.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

from sqlalchemy import Engine, case, func, select, update

from e4sync.archive import Archive
from e4sync.state import db as statedb
from e4sync.state.models import (
    DUE_STATES,
    FAILED,
    NEW,
    REMOTE_DELETED,
    REMOTE_GONE,
    STATES,
    VERIFIED,
    Account,
    Pass,
    Worker,
)
from e4sync.state.models import Session as SessionRow

log = logging.getLogger("e4sync.maintenance")


def _iso(ts: float | None) -> str | None:
    from e4sync.sync import iso

    return iso(ts)


def status_report(
    engine: Engine,
    account_names: list[str] | None = None,
    now: float | None = None,
    stale_after: float = 600.0,
) -> dict:
    """Per account: counts per state, the last pass, failures with their next retry, the
    archive size; plus the workers and their leases. A constant number of queries."""
    now = time.time() if now is None else now
    with statedb.sessionmaker_for(engine)() as db:
        accounts = db.scalars(select(Account).order_by(Account.name)).all()
        if account_names is not None:
            accounts = [a for a in accounts if a.name in account_names]
        counts: dict[int, dict[str, int]] = {}
        sizes: dict[int, int] = {}
        for account_id, state, n, size in db.execute(
            select(
                SessionRow.account_id,
                SessionRow.state,
                func.count(),
                func.coalesce(func.sum(SessionRow.size), 0),
            ).group_by(SessionRow.account_id, SessionRow.state)
        ):
            counts.setdefault(account_id, dict.fromkeys(STATES, 0))[state] = n
            if state in (VERIFIED, REMOTE_DELETED, REMOTE_GONE):
                sizes[account_id] = sizes.get(account_id, 0) + int(size or 0)
        last_pass_id = {
            aid: pid
            for aid, pid in db.execute(
                select(Pass.account_id, func.max(Pass.id)).group_by(Pass.account_id)
            )
        }
        passes = {
            p.account_id: p
            for p in db.scalars(
                select(Pass).where(Pass.id.in_(list(last_pass_id.values()) or [-1]))
            )
        }
        failures = db.scalars(
            select(SessionRow)
            .where(SessionRow.last_error.is_not(None), SessionRow.state.in_((*DUE_STATES, FAILED)))
            .order_by(SessionRow.remote_id)
        ).all()
        workers = db.scalars(select(Worker).order_by(Worker.id)).all()
    failures_by_account: dict[int, list[dict]] = {}
    for row in failures:
        failures_by_account.setdefault(row.account_id, []).append(
            {
                "session_id": row.remote_id,
                "state": row.state,
                "attempts": row.attempts,
                "last_error": row.last_error,
                "next_attempt": _iso(row.next_attempt_at),
            }
        )
    out = []
    for a in accounts:
        p = passes.get(a.id)
        lease_live = bool(a.lease_owner and a.lease_until and a.lease_until > now)
        out.append(
            {
                "name": a.name,
                "user_id": a.user_id,
                "healthy": a.last_error is None and p is not None and p.ok,
                "last_error": a.last_error,
                "last_ok": _iso(a.last_ok_at),
                "counts": counts.get(a.id, dict.fromkeys(STATES, 0)),
                "archive_bytes": sizes.get(a.id, 0),
                "last_pass": None
                if p is None
                else {
                    "started": _iso(p.started_at),
                    "finished": _iso(p.finished_at),
                    "ok": p.ok,
                    "dry_run": p.dry_run,
                    "worker": p.worker,
                    "listed": p.listed,
                    "new": p.new,
                    "downloaded": p.downloaded,
                    "bytes": p.bytes,
                    "failed": p.failed,
                    "deleted": p.deleted,
                    "gone": p.gone,
                    "errors": [e for e in p.errors.splitlines() if e],
                },
                "failures": failures_by_account.get(a.id, []),
                "lease": {
                    "owner": a.lease_owner if lease_live else None,
                    "until": _iso(a.lease_until) if lease_live else None,
                },
            }
        )
    return {
        "schema": 1,
        "accounts": out,
        "workers": [
            {
                "id": w.id,
                "host": w.host,
                "pid": w.pid,
                "current": w.current,
                "heartbeat": _iso(w.heartbeat_at),
                "stale": now - w.heartbeat_at > stale_after,
            }
            for w in workers
        ],
    }


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
    changed (sha256 differs) or unreadable."""
    from e4sync.verify import sha256_file

    report = VerifyReport()
    with statedb.sessionmaker_for(engine)() as db:
        query = (
            select(SessionRow.local_path, SessionRow.sha256, SessionRow.size, Account.name)
            .join(Account, Account.id == SessionRow.account_id)
            .where(
                SessionRow.local_path.is_not(None),
                SessionRow.sha256.is_not(None),
                SessionRow.verified_at.is_not(None),
                SessionRow.state.in_((VERIFIED, REMOTE_DELETED, REMOTE_GONE)),
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
