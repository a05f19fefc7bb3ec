"""e4sync.status: the ``status`` report (SPEC section 3's JSON shape), from the state database.

The report is six plain SQL queries run through a ``Rows`` function, so the same code
answers on a SQLAlchemy connection (any database) and on the standard library's sqlite3.
``e4sync status`` on a SQLite database already at the current schema takes the second way
and never imports SQLAlchemy, whose import alone costs a quarter of a second (issue 6 wants
the command under 0.3 s). Anything unusual (no file yet, an older schema, an error) falls
back to the SQLAlchemy way, which migrates and maps errors as every other command does, so
the shortcut can change how fast the answer comes, never what it says. The one exception is
a damaged file: both ways raise the same ``StateDamaged`` (``e4sync.state.damage``) at once.

Must not import SQLAlchemy at module level.
Must not import: e4sync.sources.e4connect, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e4sync.state.damage import damage_from
from e4sync.state.states import ARCHIVED_STATES, DUE_STATES, FAILED, SCHEMA_HEAD, STATES
from e4sync.timestamps import iso

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from e4sync.config import Config

# Runs one query with ``:name`` parameters (the style both sqlite3 and SQLAlchemy's text()
# take) and returns its rows as tuples.
Rows = Callable[[str, Mapping[str, Any]], Sequence[Sequence[Any]]]

# Open for retry: the states `e4sync retry` brings back, when they carry an error.
_OPEN_STATES = (*DUE_STATES, FAILED)
_IN_OPEN = ", ".join(f":s{i}" for i in range(len(_OPEN_STATES)))
_OPEN_PARAMS = {f"s{i}": s for i, s in enumerate(_OPEN_STATES)}

ACCOUNTS_SQL = """
SELECT id, name, user_id, lease_owner, lease_until, last_ok_at, last_error, source,
       deletions_refused
FROM accounts ORDER BY name"""
COUNTS_SQL = """
SELECT account_id, state, COUNT(*), COALESCE(SUM(size), 0), COUNT(local_problem)
FROM sessions GROUP BY account_id, state"""
LAST_PASSES_SQL = """
SELECT p.account_id, p.started_at, p.finished_at, p.ok, p.dry_run, p.worker, p.listed, p.new,
       p.downloaded, p.bytes, p.failed, p.deleted, p.gone, p.errors, p.paused
FROM passes p
JOIN (SELECT account_id, MAX(id) AS id FROM passes GROUP BY account_id) last ON p.id = last.id"""
FAILURES_SQL = f"""
SELECT account_id, remote_id, state, attempts, last_error, next_attempt_at
FROM sessions WHERE last_error IS NOT NULL AND state IN ({_IN_OPEN})
ORDER BY remote_id"""
# The first few sessions per account whose archived copy is missing or damaged: when a disk
# is lost every session of an account can be, and the report must stay small.
LOCAL_PROBLEMS_SQL = """
SELECT account_id, remote_id, state, local_problem FROM (
  SELECT account_id, remote_id, state, local_problem,
         ROW_NUMBER() OVER (PARTITION BY account_id ORDER BY remote_id) AS n
  FROM sessions WHERE local_problem IS NOT NULL) problems
WHERE n <= :cap ORDER BY account_id, remote_id"""
LOCAL_PROBLEMS_CAP = 50
WORKERS_SQL = """
SELECT id, current, host, pid, heartbeat_at FROM workers ORDER BY id"""


def build_report(
    rows: Rows,
    account_names: list[str] | None = None,
    now: float | None = None,
    stale_after: float = 600.0,
) -> dict:
    """Per account: counts per state, the last pass, failures with their next retry, the
    archive size, the archived copies that are missing or damaged (the first
    ``LOCAL_PROBLEMS_CAP``, and how many in all); plus the workers and their leases. Six
    queries, whatever the sizes."""
    now = time.time() if now is None else now
    accounts = rows(ACCOUNTS_SQL, {})
    if account_names is not None:
        accounts = [a for a in accounts if a[1] in account_names]
    counts: dict[int, dict[str, int]] = {}
    sizes: dict[int, int] = {}
    problem_totals: dict[int, int] = {}
    for account_id, state, n, size, n_problems in rows(COUNTS_SQL, {}):
        counts.setdefault(account_id, dict.fromkeys(STATES, 0))[state] = int(n)
        if state in ARCHIVED_STATES:
            sizes[account_id] = sizes.get(account_id, 0) + int(size or 0)
        problem_totals[account_id] = problem_totals.get(account_id, 0) + int(n_problems or 0)
    local_problems: dict[int, list[dict]] = {}
    for account_id, remote_id, state, problem in rows(
        LOCAL_PROBLEMS_SQL, {"cap": LOCAL_PROBLEMS_CAP}
    ):
        local_problems.setdefault(account_id, []).append(
            {"session": remote_id, "state": state, "problem": problem}
        )
    passes = {row[0]: _pass(row) for row in rows(LAST_PASSES_SQL, {})}
    failures: dict[int, list[dict]] = {}
    for account_id, remote_id, state, attempts, last_error, next_at in rows(
        FAILURES_SQL, _OPEN_PARAMS
    ):
        failures.setdefault(account_id, []).append(
            {
                "session_id": remote_id,
                "state": state,
                "attempts": attempts,
                "last_error": last_error,
                "next_attempt": iso(next_at),
            }
        )
    out = []
    for (
        account_id,
        name,
        user_id,
        lease_owner,
        lease_until,
        last_ok_at,
        last_error,
        source,
        deletions_refused,
    ) in accounts:
        last_pass = passes.get(account_id)
        account_counts = counts.get(account_id, dict.fromkeys(STATES, 0))
        lease_live = bool(lease_owner and lease_until and lease_until > now)
        problem_total = problem_totals.get(account_id, 0)
        reasons = not_ok_reasons(last_error, last_pass, account_counts[FAILED], problem_total)
        out.append(
            {
                "name": name,
                "source": source,
                "user_id": user_id,
                # A session given up on needs a person (`e4sync retry`), whatever came after;
                # so does an archived copy that is missing or damaged, until it is whole.
                "healthy": not reasons,
                # Why it is not healthy, one line each (empty when it is).
                "reasons": reasons,
                "last_error": last_error,
                # The platform refused deletions as not permitted; none is asked for until
                # `e4sync retry`.
                "deletions_refused": deletions_refused,
                "last_ok": iso(last_ok_at),
                "counts": account_counts,
                "archive_bytes": sizes.get(account_id, 0),
                "last_pass": last_pass,
                "failures": failures.get(account_id, []),
                "local_problems": local_problems.get(account_id, []),
                "local_problems_total": problem_total,
                "lease": {
                    "owner": lease_owner if lease_live else None,
                    "until": iso(lease_until) if lease_live else None,
                },
            }
        )
    return {
        "schema": 1,
        "accounts": out,
        "workers": [
            {
                "id": worker_id,
                "host": host,
                "pid": pid,
                "current": current,
                "heartbeat": iso(heartbeat_at),
                "stale": now - heartbeat_at > stale_after,
            }
            for worker_id, current, host, pid, heartbeat_at in rows(WORKERS_SQL, {})
        ],
    }


def not_ok_reasons(
    last_error: str | None, last_pass: dict | None, failed: int, local_problems: int
) -> list[str]:
    """Why an account is NOT OK, one line per cause; empty when it is ok. An account is ok
    when its last pass went well, it has no account error, no session was given up on and
    no archived copy is missing or damaged."""
    reasons = []
    if last_pass is None:
        # A row with no pass: `reindex` rebuilt it, or a pass never got as far as its row.
        reasons.append("no pass has run yet for this account: run `e4sync run-once`")
        if last_error:
            reasons.append(f"last error: {last_error}")
    elif not last_pass["ok"] or last_error:
        error = last_error or (last_pass["errors"][-1] if last_pass["errors"] else "")
        if last_pass["paused"]:
            reasons.append(f"the last pass paused its downloads: {last_pass['paused']}")
        if last_pass["failed"]:
            said = f" (last error: {error})" if error else ""
            reasons.append(
                f"the last pass could not download {last_pass['failed']} session(s){said}; "
                "the next passes try again"
            )
        elif error:
            reasons.append(f"the last pass failed: {error}")
        elif not last_pass["paused"]:
            reasons.append("the last pass did not finish well")
    if failed:
        reasons.append(
            f"{failed} session(s) given up on after download.max_attempts: `e4sync retry` "
            "tries them again"
        )
    if local_problems:
        reasons.append(
            f"{local_problems} archived cop{'y' if local_problems == 1 else 'ies'} missing or "
            "damaged (see docs/recovery.md)"
        )
    return reasons


def report_for(
    cfg: Config, account_names: list[str] | None = None, stale_after: float = 600.0
) -> dict:
    """``status``'s report for ``cfg``: the fast way when it can (``quick_report``), else,
    once the state folder is known to be usable (``CantCreate``, 73, if not), through
    SQLAlchemy (any database; an older schema is migrated). A SQLite file not created yet
    is not created to say that nothing has run. Every configured account is in it
    (``with_configured``)."""
    from e4sync.folders import ensure_state

    report = quick_report(cfg.state.url, account_names, stale_after)
    if report is None:
        ensure_state(cfg)
        path = sqlite_file(cfg.state.url) if cfg.state.url else None
        if path is not None and not path.expanduser().exists():
            report = empty_report()
        else:
            from e4sync.state.db import default_sqlite_url, open_db

            engine = open_db(cfg.state.url or default_sqlite_url(cfg.state.dir))
            try:
                report = status_report(engine, account_names, stale_after=stale_after)
            finally:
                engine.dispose()
    return with_configured(report, [(a.name, a.source) for a in cfg.accounts])


def empty_report() -> dict:
    """The report of a state database that does not exist yet (nothing is created to say so)."""
    return build_report(lambda _sql, _params: [])


def with_configured(report: dict, accounts: Sequence[tuple[str, str]]) -> dict:
    """``report`` with an entry for each configured account (``(name, source)``) that the
    state database does not know yet: NOT OK, because nothing of it is archived or checked
    (a new configuration, a dry run, a pass that never started)."""
    known = {a["name"] for a in report["accounts"]}
    unseen = [
        {
            "name": name,
            "source": source,
            "user_id": None,
            "healthy": False,
            "reasons": not_ok_reasons(None, None, 0, 0),
            "last_error": None,
            "deletions_refused": None,
            "last_ok": None,
            "counts": dict.fromkeys(STATES, 0),
            "archive_bytes": 0,
            "last_pass": None,
            "failures": [],
            "local_problems": [],
            "local_problems_total": 0,
            "lease": {"owner": None, "until": None},
        }
        for name, source in accounts
        if name not in known
    ]
    if not unseen:
        return report
    merged = sorted([*report["accounts"], *unseen], key=lambda a: a["name"])
    return {**report, "accounts": merged}


def _pass(row: Sequence[Any]) -> dict:
    (_, started, finished, ok, dry_run, worker, listed, new, downloaded, nbytes, failed,
     deleted, gone, errors, paused) = row  # fmt: skip
    return {
        "started": iso(started),
        "finished": iso(finished),
        # SQLite keeps booleans as 0 and 1.
        "ok": bool(ok),
        "dry_run": bool(dry_run),
        "worker": worker,
        "listed": listed,
        "new": new,
        "downloaded": downloaded,
        "bytes": nbytes,
        "failed": failed,
        "deleted": deleted,
        "gone": gone,
        "errors": [e for e in (errors or "").splitlines() if e],
        "paused": paused,  # why downloads paused for that pass (a full disk), or None
    }


def status_report(
    engine: Engine,
    account_names: list[str] | None = None,
    now: float | None = None,
    stale_after: float = 600.0,
) -> dict:
    """``build_report`` on a SQLAlchemy engine: any database, in one read transaction."""
    from sqlalchemy import text

    from e4sync.state.db import SQLITE_BEGIN_OPTION

    with engine.connect() as conn:
        conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
        try:
            return build_report(
                lambda sql, params: conn.execute(text(sql), dict(params)).all(),
                account_names,
                now,
                stale_after,
            )
        finally:
            conn.rollback()


def sqlite_file(url: str) -> Path | None:
    """The file of a plain ``sqlite:///PATH`` URL (as the config writes the default one),
    or None for anything else: other databases, and URLs with options or escapes, which
    only SQLAlchemy should interpret."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url or "%" in url or len(url) == len(prefix):
        return None
    return Path(url[len(prefix) :])


@contextmanager
def sqlite_rows(path: Path) -> Iterator[Rows | None]:
    """A ``Rows`` reading the SQLite file at ``path`` with the standard library, inside one
    read transaction (a consistent snapshot under WAL); None when the file is missing or not
    at ``SCHEMA_HEAD``, for the caller to take the SQLAlchemy way. Writes nothing, and never
    creates the file. A damaged file raises ``StateDamaged``: the other way would only meet
    the same damage, later."""
    if not path.is_file():
        yield None
        return
    # In a file: URI, '%', '?' and '#' have meanings of their own; '%' goes first.
    escaped = path.resolve().as_posix()
    for char, code in (("%", "%25"), ("?", "%3f"), ("#", "%23")):
        escaped = escaped.replace(char, code)
    uri = f"file:{escaped}?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
    except sqlite3.Error as exc:
        _raise_if_damaged(exc, path)
        yield None
        return
    with closing(connection):
        try:
            connection.execute("BEGIN DEFERRED")
            version = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.Error as exc:
            _raise_if_damaged(exc, path)
            version = []
        if version != [(SCHEMA_HEAD,)]:
            yield None
            return
        yield lambda sql, params: connection.execute(sql, dict(params)).fetchall()


def quick_report(
    url: str, account_names: list[str] | None = None, stale_after: float = 600.0
) -> dict | None:
    """``build_report`` read with sqlite3 when ``url`` is a plain SQLite file at the current
    schema, else None (the caller then opens the database with SQLAlchemy, which migrates it
    and turns errors into e4sync's). Raises ``StateDamaged`` for a damaged file."""
    path = sqlite_file(url)
    if path is None:
        return None
    try:
        with sqlite_rows(path) as rows:
            return None if rows is None else build_report(rows, account_names, None, stale_after)
    except sqlite3.Error as exc:
        # A bad page met by one of the report's queries, not only at open.
        _raise_if_damaged(exc, path)
        return None


def _raise_if_damaged(exc: sqlite3.Error, path: Path) -> None:
    damage = damage_from(exc, str(path))
    if damage is not None:
        raise damage from None
