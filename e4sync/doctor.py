"""e4sync.doctor: `e4sync doctor` — per account, which password source would be used and
whether the login works; whether the archive root and state directory are writable.

Never prints a secret: only the kind and place of each source.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from e4sync.config import Config
from e4sync.errors import E4SyncError


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


def run_checks(cfg: Config) -> list[dict]:
    from e4sync.client import E4Connect
    from e4sync.credentials import password_provider, password_source

    checks = []
    for what, path in (("archive root", cfg.archive.root), ("state directory", cfg.state.dir)):
        ok, detail = _writable(Path(path))
        checks.append({"what": what, "ok": ok, "detail": detail})
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
                account.username,
                # A provider, not the bare password: a refused login then gets its hint.
                password_provider=password_provider(account, interactive=False),
                base_url=account.base_url,
                timeout=cfg.download.timeout,
                connect_timeout=cfg.download.connect_timeout,
            ) as client:
                user_id = client.user_id()
            checks.append(
                {
                    "what": f"account {account.name} login",
                    "ok": True,
                    "detail": f"logged in to {account.base_url} as user {user_id}",
                }
            )
        except E4SyncError as exc:
            checks.append(
                {"what": f"account {account.name} login", "ok": False, "detail": str(exc)}
            )
    return checks
