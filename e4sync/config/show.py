"""e4sync.config.show: the effective configuration as printed by ``config show``.

Owns: ``effective_config`` (every key, durations formatted, secrets masked) and
``render_toml`` (that data as TOML text). The masks themselves live in
``e4sync.config.model``, whose reprs need them too.

Imports only the standard library, ``e4sync.config.model`` and ``e4sync.config.schema``.
It must not import the loader, client, state, sync or cli.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e4sync.config.model import (
    MASK,
    Config,
    RemoteConfig,
    _mask_ping_url,
    _mask_url_password,
    format_duration,
)
from e4sync.config.schema import SCHEMA


def _remote_dict(remote: RemoteConfig) -> dict[str, Any]:
    return {
        "delete_after_verify": remote.delete_after_verify,
        "delete_min_age": format_duration(remote.delete_min_age),
        "delete_grace": format_duration(remote.delete_grace),
        "max_deletes_per_pass": remote.max_deletes_per_pass,
    }


def effective_config(cfg: Config) -> dict[str, Any]:
    """Return the effective configuration as plain TOML/JSON-ready data for ``config
    show``: every key, durations formatted, secrets masked (password_command as ``***``,
    a password inside state.url as ``***``, the token path of healthcheck_url as ``***``).
    Password file paths and password variable names are shown: they are not secrets."""
    opt = format_duration
    return {
        "path": str(cfg.path) if cfg.path is not None else None,
        "archive": {
            "root": str(cfg.archive.root),
            "layout": cfg.archive.layout,
            "timezone": cfg.archive.timezone,
            "scrub_interval": opt(cfg.archive.scrub_interval)
            if cfg.archive.scrub_interval is not None
            else "",
        },
        "schedule": {
            "interval": opt(cfg.schedule.interval),
            "jitter": opt(cfg.schedule.jitter),
        },
        "download": {
            "concurrency": cfg.download.concurrency,
            "timeout": opt(cfg.download.timeout),
            "connect_timeout": opt(cfg.download.connect_timeout),
            "max_attempts": cfg.download.max_attempts,
            "backoff": opt(cfg.download.backoff),
            "max_backoff": opt(cfg.download.max_backoff),
        },
        "remote": _remote_dict(cfg.remote),
        "state": {
            "url": _mask_url_password(cfg.state.url),
            "dir": str(cfg.state.dir),
            "lease": opt(cfg.state.lease),
        },
        "monitor": {
            "healthcheck_url": _mask_ping_url(cfg.monitor.healthcheck_url),
            "metrics_textfile": str(cfg.monitor.metrics_textfile)
            if cfg.monitor.metrics_textfile is not None
            else "",
        },
        "account": [
            {
                "name": a.name,
                "username": a.username,
                "base_url": a.base_url,
                "password_file": str(a.password_file) if a.password_file is not None else "",
                "password_env": a.password_env or "",
                "password_command": MASK if a.password_command else "",
                "keyring": a.keyring,
                "layout": a.layout,
                "remote": _remote_dict(a.remote),
            }
            for a in cfg.accounts
        ],
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    out = []
    for ch in str(value):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render_toml(effective: Mapping[str, Any]) -> str:
    """Render ``effective_config()`` output as TOML text (for ``config show``)."""
    lines: list[str] = [f"# read from {effective['path']}"] if effective.get("path") else []

    def write(header: str, table: Mapping[str, Any]) -> None:
        lines.extend(["", header])
        lines.extend(
            f"{key} = {_toml_value(val)}" for key, val in table.items() if not isinstance(val, dict)
        )

    for section in SCHEMA:
        write(f"[{section}]", effective[section])
    for account in effective.get("account", []):
        write("[[account]]", account)
        write("[account.remote]", account["remote"])
    return "\n".join(lines).lstrip("\n") + "\n"
