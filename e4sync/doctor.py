"""e4sync.doctor: `e4sync doctor` — per account, which password source would be used and
whether the login works; whether the archive root and state directory are writable; whether
a SQLite state database is whole (``PRAGMA quick_check``).

Never prints a secret: only the kind and place of each source. Never creates or migrates
the state database.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from e4sync.config import Config
from e4sync.errors import E4SyncError, StateDamaged


def _writable(path: Path) -> tuple[bool, str]:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".e4sync-doctor-"):
            pass
        return True, f"{path} is writable"
    except OSError as exc:
        return False, (
            f"{path} is not writable ({exc.strerror}); create it and give the user "
            f"running e4sync write access (uid {os.getuid()})"
        )


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


def run_checks(cfg: Config) -> tuple[list[dict], StateDamaged | None]:
    """Every check, and the damage found in the state database if any (the CLI exits with
    its code rather than 1)."""
    from e4sync.client import E4Connect
    from e4sync.credentials import password_provider, password_source

    checks = []
    for what, path in (("archive root", cfg.archive.root), ("state directory", cfg.state.dir)):
        ok, detail = _writable(Path(path))
        checks.append({"what": what, "ok": ok, "detail": detail})
    state, damage = _state_database(cfg)
    if state is not None:
        checks.append(state)
    for account in cfg.accounts:
        try:
            source = password_source(account, interactive=False)
        except E4SyncError as exc:
            checks.append(
                {"what": f"account {account.name} password", "ok": False, "detail": str(exc)}
            )
            continue
        if source is None:
            checks.append(
                {
                    "what": f"account {account.name} password",
                    "ok": False,
                    "detail": "no password source found (password_file, "
                    "password_command, password_env, keyring, or "
                    "$CREDENTIALS_DIRECTORY/e4sync-password)",
                }
            )
            continue
        checks.append(
            {
                "what": f"account {account.name} password",
                "ok": True,
                "detail": f"{source.kind}: {source.detail}",
            }
        )
        try:
            with E4Connect(
                account.options["username"],
                # A provider, not the bare password: a refused login then gets its hint.
                password_provider=password_provider(account, interactive=False),
                base_url=account.options["base_url"],
                timeout=cfg.download.timeout,
                connect_timeout=cfg.download.connect_timeout,
            ) as client:
                user_id = client.user_id()
            checks.append(
                {
                    "what": f"account {account.name} login",
                    "ok": True,
                    "detail": f"logged in to {account.options['base_url']} as user {user_id}",
                }
            )
        except E4SyncError as exc:
            checks.append(
                {"what": f"account {account.name} login", "ok": False, "detail": str(exc)}
            )
    return checks, damage
