"""e4sync.config.show: the effective configuration as printed by ``config show``.

Owns: ``effective_config`` (every key of the schema, durations formatted, secrets masked)
and ``render_toml`` (that data as TOML text; ``e4sync config show`` prints it). Both walk
``e4sync.config.schema``, so a key added there is shown with no change here; how a value
is shown follows its key's kind, and a key marked ``sensitive`` is masked. The masks
themselves live in ``e4sync.config.model``, whose reprs need them too.

Imports only the standard library, ``e4sync.config.model`` and ``e4sync.config.schema``.
It must not import the loader, client, state, sync or cli.
Must not import: e4sync.config.loader, e4sync.sources.e4connect, e4sync.state, e4sync.sync.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e4sync.config.model import (
    MASK,
    AccountConfig,
    Config,
    Key,
    _mask_apprise_url,
    _mask_ping_url,
    _mask_url_password,
    format_duration,
)
from e4sync.config.schema import ACCOUNT_SCHEMA, SCHEMA, account_schema


def shown_value(key: Key, value: Any) -> Any:
    """A converted value as ``config show`` prints it: a duration as text, a path as text,
    "" for a key left unset, a secret masked (a password inside a URL as ``***``, the token
    path of a ping URL as ``***``, any other sensitive value as ``***``)."""
    if value is None:
        return ""
    if key.kind in ("duration", "duration_off"):
        return format_duration(value)
    if key.kind == "dburl":
        return _mask_url_password(value)
    if key.kind == "ping_url":
        return _mask_ping_url(value)
    if key.kind == "url_list":
        return [_mask_apprise_url(u) for u in value]
    if key.sensitive:
        return MASK if value else ""
    if isinstance(value, Path):
        return str(value)
    return value


def _table(schema: Mapping[str, Key], values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: shown_value(spec, values[key]) for key, spec in schema.items() if key in values}


def _account(account: AccountConfig) -> dict[str, Any]:
    try:
        schema: Mapping[str, Key] = account_schema(account.source)
    except ValueError:  # a hand-built account of a kind this e4sync lacks
        schema = ACCOUNT_SCHEMA
    common = {key: getattr(account, key) for key in ACCOUNT_SCHEMA}
    shown = _table(schema, {**common, **account.options})
    # A key the schema does not know is masked: show never guesses a value safe.
    shown.update({k: MASK if v else "" for k, v in account.options.items() if k not in schema})
    shown["remote"] = _section(SCHEMA["remote"], account.remote)
    return shown


def _section(schema: Mapping[str, Key], section: Any) -> dict[str, Any]:
    return _table(schema, {key: getattr(section, key) for key in schema})


def effective_config(cfg: Config) -> dict[str, Any]:
    """Return the effective configuration as plain TOML/JSON-ready data for ``config
    show``: every key, durations formatted, secrets masked (a sensitive key such as
    password_command as ``***``, a password inside state.url as ``***``, the token path of
    healthcheck_url as ``***``). Password file paths and password variable names are
    shown: they are not secrets."""
    out: dict[str, Any] = {"path": str(cfg.path) if cfg.path is not None else None}
    for name, schema in SCHEMA.items():
        out[name] = _section(schema, getattr(cfg, name))
    out["account"] = [_account(a) for a in cfg.accounts]
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
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
