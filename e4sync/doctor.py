"""e4sync.doctor: `e4sync doctor` — whether the archive root and state directory are
writable; whether a SQLite state database is whole (``PRAGMA quick_check``); per account,
where its secret would be read from (the kind says: E4 Connect's password sources) and
whether the login works.

Owns the checks and their order, not how to log in: the source comes from the one factory
(``make_source``), so a doctor login is the pass's login. Each login is made under the
account's lease, as a worker's is, because the platform allows one live login per account:
an account another worker serves is reported "served by another worker; login not checked"
rather than logged out. An account no worker has served yet (no row in the state database,
or no database) has no lease to take, and gets none: ``doctor`` adds no account row.

Never prints a secret: only the kind and place of each source. Never creates or migrates
the state database; it writes only a lease, given back at once.

Must not import: e4sync.cli, e4sync.sources.e4connect.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e4sync.config import Config
from e4sync.errors import E4SyncError, StateDamaged

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from e4sync.config import AccountConfig


def _folder_check(what: str, problems: list, path: Path) -> dict:
    """A folder e4sync writes in: the first problem ``e4sync.folders`` found, else that it
    is writable (or can be made: nothing is created here)."""
    if problems:
        return {"what": what, "ok": False, "detail": str(problems[0])}
    path = Path(os.path.abspath(Path(path).expanduser()))
    if path.is_dir():
        return {"what": what, "ok": True, "detail": f"{path} is writable"}
    return {"what": what, "ok": True, "detail": f"{path} does not exist yet; it can be created"}


def _state_database(cfg: Config) -> tuple[dict | None, StateDamaged | None]:
    """The state database check, and the damage it found. Only a SQLite file is checked
    (a PostgreSQL server keeps its own files whole); one not created yet is fine."""
    from e4sync.state.db import (
        check_integrity,
        current_revision,
        default_sqlite_url,
        make_engine,
        sqlite_path,
    )

    url = cfg.state.url or default_sqlite_url(cfg.state.dir)
    path = sqlite_path(url)
    what = "state database"
    if path is None:
        return None, None
    if not Path(path).exists():
        return {"what": what, "ok": True, "detail": f"{path}: not created yet"}, None
    engine = make_engine(url)
    try:
        check_integrity(engine)
        revision = current_revision(engine)
    except StateDamaged as exc:
        # How to rebuild it is the error's own line, said once the file is closed.
        return {"what": what, "ok": False, "detail": f"{path} is damaged ({exc.reason})"}, exc
    except E4SyncError as exc:
        return {"what": what, "ok": False, "detail": f"{path}: {exc}"}, None
    finally:
        engine.dispose()
    return {"what": what, "ok": True, "detail": f"{path}: whole, at revision {revision}"}, None


def _lease_database(cfg: Config, damage: StateDamaged | None) -> tuple[Engine | None, str]:
    """The state database that holds the accounts' leases, and why a login may not be
    checked without it ("" when it may). No database yet, or one never migrated: no
    worker has served any account from it, so there is no lease to respect."""
    from sqlalchemy.exc import SQLAlchemyError

    from e4sync.state.db import current_revision, default_sqlite_url, make_engine, sqlite_path

    if damage is not None:
        return None, "the state database, which holds the account's lease, is damaged"
    url = cfg.state.url or default_sqlite_url(cfg.state.dir)
    path = sqlite_path(url)
    if path is not None and not Path(path).exists():
        return None, ""
    engine = make_engine(url)
    try:
        if current_revision(engine) is None:
            engine.dispose()
            return None, ""
    except (E4SyncError, SQLAlchemyError) as exc:
        engine.dispose()
        return None, _cannot_read(exc, url)
    return engine, ""


def _cannot_read(exc: BaseException, url: str) -> str:
    """One line for a state database that cannot be read; never its URL's password."""
    from e4sync.state.db import database_busy

    if not isinstance(exc, E4SyncError):
        busy = database_busy(exc, url)
        exc = busy if busy is not None else exc
    said = str(exc) if isinstance(exc, E4SyncError) else type(exc).__name__
    return f"the state database, which holds the account's lease, cannot be read ({said})"


@contextlib.contextmanager
def _lease(engine: Engine | None, account: str, worker_id: str, seconds: float) -> Iterator[str]:
    """Hold ``account``'s lease while the block logs in, as a worker does (the platform
    allows one live login per account: a second one would log a serving worker out).
    Yields "" when the login may be checked, else who serves the account. An account no
    worker has served has no row and no lease; it gets none (``doctor`` adds no account)."""
    from sqlalchemy import select

    from e4sync.state.db import SQLITE_BEGIN_OPTION, claim_accounts, release_leases
    from e4sync.state.models import Account

    def read(column: Any) -> Any:
        with engine.connect() as conn:
            conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
            try:
                return conn.execute(select(column).where(Account.name == account)).first()
            finally:
                conn.rollback()

    if engine is None or read(Account.id) is None:
        yield ""
        return
    if not claim_accounts(engine, worker_id, [account], seconds):
        row = read(Account.lease_owner)
        yield (row[0] if row is not None else "") or "another worker"
        return
    try:
        yield ""
    finally:
        release_leases(engine, worker_id, [account])


def offline_problems(cfg: Config) -> tuple[list[str], int]:
    """What `config check` adds to a configuration that reads: the folders it names (the
    state folder and database, the archive root) and each account's secret file, checked
    without logging in or creating anything. Returns the problems, one line each, and the
    exit code they mean: 73 for a folder, else the secret's (78 a file that cannot be
    used, 77 no secret at all); 0 when there are none."""
    from e4sync.credentials import check_secret
    from e4sync.errors import EXIT_CANTCREAT, EXIT_OK
    from e4sync.folders import archive_problems, state_problems
    from e4sync.sources import kind

    folders = [*state_problems(cfg), *archive_problems(cfg)]
    problems = [str(p) for p in folders]
    code = EXIT_CANTCREAT if folders else EXIT_OK
    for account in cfg.accounts:
        if kind(account.source).secret_source is None:
            continue
        try:
            check_secret(account)
        except E4SyncError as exc:
            problems.append(f"account {account.name}: {exc}")
            code = code or exc.exit_code
    return problems, code


def run_checks(cfg: Config) -> tuple[list[dict], StateDamaged | None]:
    """Every check, and the damage found in the state database if any (the CLI exits with
    its code rather than 1)."""
    from e4sync.folders import archive_problems, folder_problem, state_problems
    from e4sync.state.db import make_worker_id

    state = state_problems(cfg)
    if not state and not cfg.state.url.startswith("sqlite"):
        # PostgreSQL: the state folder holds nothing of the database, but is still e4sync's.
        found = folder_problem("state folder", Path(cfg.state.dir), "[state] dir")
        state = [found] if found is not None else []
    checks = [
        _folder_check("archive root", archive_problems(cfg), cfg.archive.root),
        _folder_check("state directory", state, cfg.state.dir),
    ]
    state_check, damage = _state_database(cfg) if not state else (None, None)
    if state_check is not None:
        checks.append(state_check)
    engine, unusable = _lease_database(cfg, damage)
    worker_id = f"doctor:{make_worker_id()}"
    try:
        for account in cfg.accounts:
            checks.extend(_account_checks(cfg, account, engine, unusable, worker_id))
    finally:
        if engine is not None:
            engine.dispose()
    return checks, damage


def _account_checks(
    cfg: Config, account: AccountConfig, engine: Engine | None, unusable: str, worker_id: str
) -> list[dict]:
    """The account's secret source (when its kind has one), then its login, made under
    the account's lease."""
    from sqlalchemy.exc import SQLAlchemyError

    from e4sync.credentials import check_secret
    from e4sync.sources import kind, make_source

    source_kind = kind(account.source)
    checks = []
    if source_kind.secret_source is not None:
        what = f"account {account.name} {source_kind.secret_name}"
        try:
            detail = source_kind.secret_source(account)
            # Read, when it is a file: a missing or unreadable one fails here, not at login.
            check_secret(account)
        except E4SyncError as exc:
            return [{"what": what, "ok": False, "detail": str(exc)}]
        checks.append({"what": what, "ok": True, "detail": detail})
    what = f"account {account.name} login"
    if unusable:
        return [*checks, {"what": what, "ok": False, "detail": f"login not checked: {unusable}"}]
    try:
        with _lease(engine, account.name, worker_id, cfg.state.lease) as owner:
            if owner:
                checks.append(
                    {
                        "what": what,
                        "ok": True,
                        "detail": f"served by another worker; login not checked ({owner})",
                    }
                )
                return checks
            # A provider, not the bare secret: a refused login then gets its hint.
            login = make_source(account, cfg, interactive=False)
            try:
                user_id = login.identity()
            finally:
                login.close()
    except E4SyncError as exc:
        return [*checks, {"what": what, "ok": False, "detail": str(exc)}]
    except SQLAlchemyError as exc:
        # The lease's own queries (a database locked or gone since it was opened).
        return [*checks, {"what": what, "ok": False, "detail": _cannot_read(exc, "")}]
    endpoint = source_kind.endpoint(account)
    checks.append(
        {
            "what": what,
            "ok": True,
            "detail": f"logged in to {endpoint}" + (f" as user {user_id}" if user_id else ""),
        }
    )
    return checks
