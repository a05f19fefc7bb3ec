"""e4sync.config.schema: every configuration key, read from the one place it is declared.

Owns: the section tables ``SCHEMA`` (read from the fields of ``e4sync.config.model``'s
section dataclasses: each field declares its ``Key``), ``ACCOUNT_SCHEMA`` (the keys every
account has: ``name``, ``source``, ``layout``), the keys of an account of one source kind
(``account_schema``: the common keys plus the kind's ``ACCOUNT_KEYS``), what a kind's
settings module may declare besides (``SecretKeys``, ``EnvAccount``, ``UniqueLogin``), the
texts ``config.example.toml`` is built from, and ``config_keys`` (what the docs test checks
the docs against). The loader validates against these tables, ``config show`` renders them
and ``e4sync.config.example`` writes the example file from them.

A kind's keys come from ``e4sync.sources.<kind>.settings`` (``e4sync.sources.settings``),
imported when first asked for, never at import time: the settings modules import this one.

Imports only the standard library, ``e4sync.errors``, ``e4sync.sources`` (the registry of
kinds) and ``e4sync.config.model``. It must not import the loader or show modules,
``e4sync.archive``, client, state, sync or cli.
Must not import: e4sync.config.loader, e4sync.config.show, e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from e4sync import sources
from e4sync.config.model import KEY, AccountConfig, Config, Key

__all__ = [
    "ACCOUNT_SCHEMA",
    "SCHEMA",
    "EnvAccount",
    "Key",
    "SecretKeys",
    "UniqueLogin",
    "account_schema",
    "config_keys",
    "kind_keys",
    "kind_settings",
]


def _keys(cls: type) -> dict[str, Key]:
    return {f.name: f.metadata[KEY] for f in dataclasses.fields(cls) if KEY in f.metadata}


# The sections: Config's fields that are section dataclasses, in their order (which is
# the order they are documented and shown).
SECTIONS: dict[str, type] = {
    name: hint
    for name, hint in typing.get_type_hints(Config).items()
    if isinstance(hint, type) and dataclasses.is_dataclass(hint)
}
SCHEMA: dict[str, dict[str, Key]] = {name: _keys(cls) for name, cls in SECTIONS.items()}
# The keys every account has, whatever its source; the source's own keys come between
# ``source`` and ``layout`` (where AccountConfig has ``options``).
ACCOUNT_SCHEMA: dict[str, Key] = _keys(AccountConfig)
# Keys no account may use for itself: its sub-table, and the word a secret would be.
RESERVED = ("remote", "password")

# ---------------------------------------------------------------------------- the example

EXAMPLE_HEADER = """\
e4sync configuration: every key with its default value.

Copy to ~/.config/e4sync/config.toml (Linux; `e4sync config check` names the file it read),
or pass --config PATH, or set E4SYNC_CONFIG=PATH. Delete the keys you do not change.
Durations: "90s", "15m", "12h", "7d", "1h30m", or a bare number of seconds.
Any key of a section can be overridden from the environment: E4SYNC_<SECTION>__<KEY>,
e.g. E4SYNC_DOWNLOAD__CONCURRENCY=8. Relative paths are relative to this file's folder.
Generated from the schema (python -m e4sync.config.example > config.example.toml)."""
ACCOUNT_DOC = (
    "One [[account]] block per account. Its source says which platform it is on and which "
    "keys it takes besides name, source, layout and [account.remote]."
)
ACCOUNT_REMOTE_DOC = "per-account [remote] keys, merged over [remote]"


# ---------------------------------------------------------------------------- source kinds


@dataclass(frozen=True, slots=True)
class SecretKeys:
    """Which of a kind's account keys say where its secret comes from, and how to name it.

    ``e4sync.credentials`` reads any kind's secret with these: the systemd credential
    ``<credential>-<account>`` then ``<credential>``, the file named by ``file``, the
    command in ``command``, the variable named by ``env``, the keyring (``keyring`` on; the
    entry's user is the value of ``keyring_user``), then a prompt (when ``platform`` is
    set). ``what`` names the secret in every message; ``key`` is the key that would hold
    the secret itself, refused anywhere in the file; ``env_default`` is (account name,
    variable): the variable that account reads when it names none; ``env_note`` is said of
    ``env`` in the message that lists the options."""

    what: str  # "password"
    file: str  # "password_file"
    env: str  # "password_env"
    command: str  # "password_command"
    keyring: str  # "keyring"
    keyring_user: str  # "username"
    credential: str  # "e4sync-password"
    key: str = ""  # "password"
    platform: str = ""  # "E4 Connect": "E4 Connect password for ..."; "" = never prompt
    env_default: tuple[str, str] | None = None
    env_note: str = ""


@dataclass(frozen=True, slots=True)
class EnvAccount:
    """An account defined by environment variables, used when no [[account]] is written:
    its ``keys`` as if written in TOML, and for each key taken from a variable, that
    variable's name (``origin``), which its problems name instead of the file."""

    keys: Mapping[str, Any]
    origin: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class UniqueLogin:
    """Accounts of a kind that must not share a login: ``of`` gives an account's login from
    its options, ``key`` is the key a clash is reported at, ``why`` says what would happen."""

    key: str
    of: Callable[[Mapping[str, Any]], Hashable]
    why: str


def kind_settings(name: str) -> ModuleType:
    """The settings module of the source kind ``name``. Raise ValueError with a message for
    a person if there is no such kind, or it is not part of this version of e4sync."""
    try:
        return sources.settings(name)
    except ImportError:
        raise ValueError(f"source {name!r} is not available in this version of e4sync") from None
    except Exception as exc:  # ConfigError: unknown source 'x' (known: ...)
        raise ValueError(str(exc)) from None


def kind_keys(name: str) -> dict[str, Key]:
    """The account keys of the kind ``name`` (its settings' ``ACCOUNT_KEYS``)."""
    keys = dict(getattr(kind_settings(name), "ACCOUNT_KEYS", {}))
    clash = sorted(set(keys) & {*ACCOUNT_SCHEMA, *RESERVED})
    if clash:
        raise ValueError(f"source {name!r} declares keys every account has: {', '.join(clash)}")
    return keys


def account_schema(name: str) -> dict[str, Key]:
    """Every key of an account of the kind ``name``, in the order they are documented:
    ``name``, ``source``, the kind's keys, ``layout``."""
    out: dict[str, Key] = {}
    for f in dataclasses.fields(AccountConfig):
        if f.name == "options":
            out.update(kind_keys(name))
        elif KEY in f.metadata:
            out[f.name] = f.metadata[KEY]
    return out


def other_kinds_keys(name: str) -> dict[str, str]:
    """The account keys of the kinds other than ``name`` that this e4sync has, each with
    the first kind that declares it (for "a key of source 'x'" problems)."""
    out: dict[str, str] = {}
    for other in sources.KINDS:
        if other == name:
            continue
        try:
            keys = kind_keys(other)
        except ValueError:  # not part of this version
            continue
        for key in keys:
            out.setdefault(key, other)
    return out


def config_keys() -> dict[str, list[str]]:
    """Return every key by section (``account`` for the default source and
    ``account.remote`` included), in the order they are documented. The docs test checks
    the docs against this."""
    keys = {section: list(table) for section, table in SCHEMA.items()}
    keys["account"] = list(account_schema(sources.DEFAULT_SOURCE))
    keys["account.remote"] = list(SCHEMA["remote"])
    return keys
