"""e4sync.config.loader: find, read and validate the configuration into a ``Config``.

Owns: where the file is looked for (``config_search_path``), TOML reading, the
``E4SYNC_<SECTION>__<KEY>`` environment overrides, every validation rule and message, and
``load_config``. Every problem found is reported at once in one ``ConfigError`` (exit 78)
that names the file (or the environment variable) and the key; no input, however
malformed, gives a traceback.

It validates against ``e4sync.config.schema``: an account's keys are the common ones plus
those of its ``source`` kind; its default layout and layout placeholders, the account its
kind's variables define when none is written (the default kind's ``env_account``) and
whether two accounts may share a login all come from the kind's settings module, and so
do the rules between a kind's keys (its ``check_options``). This module names no source's
keys.

Imports the standard library, platformdirs, ``e4sync.errors``, ``e4sync.sources`` (the
default kind's name), ``e4sync.config.model``, ``e4sync.config.schema`` and
``e4sync.archive`` (which validates layouts). It must not import ``e4sync.config.show``,
client, state, sync or cli.
Must not import: e4sync.config.show, e4sync.state, e4sync.sync, e4sync.cli, requests.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import shlex
import string
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from e4sync.archive import validate_layout
from e4sync.config.model import (
    _D,
    APP_NAME,
    CONFIG_FILENAME,
    ENV_CONFIG,
    ENV_PREFIX,
    AccountConfig,
    Config,
    Key,
    Options,
    RemoteConfig,
    _show,
    format_duration,
    parse_duration,
)
from e4sync.config.schema import (
    ACCOUNT_SCHEMA,
    SCHEMA,
    SECTIONS,
    SecretKeys,
    account_schema,
    kind_settings,
    other_kinds_keys,
)
from e4sync.errors import ConfigError
from e4sync.sources import DEFAULT_SOURCE


def secret_help(secret: SecretKeys | None) -> str:
    """What to say of a secret written into the file: where it goes instead."""
    if secret is None:
        return "secrets never go in the configuration file"
    return (
        f"{secret.what}s never go in the configuration file; use one of: {secret.file} = PATH "
        f"(chmod 600), {secret.command} = COMMAND, {secret.env} = VARIABLE, "
        f"{secret.keyring} = true, or systemd LoadCredential={secret.credential}"
    )


def _secret_of(kind: ModuleType | None) -> SecretKeys | None:
    return getattr(kind, "SECRET", None) if kind is not None else None


def _inline_keys(secret: SecretKeys | None) -> set[str]:
    """The keys that would hold a secret itself: refused wherever they are written."""
    return {"password", *([secret.key] if secret is not None and secret.key else [])}


def _placeholders(layout: str) -> list[str]:
    """The placeholder names in ``layout`` ([] when it does not parse: the archive's
    validation names that problem)."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(layout) if name is not None]
    except ValueError:
        return []


def check_placeholders(layout: str, placeholders: Sequence[str], source: str) -> None:
    """Raise ValueError if ``layout`` names a placeholder the kind ``source`` does not offer."""
    for name in _placeholders(layout):
        if name not in placeholders:
            hint = difflib.get_close_matches(name.strip().lower(), list(placeholders), n=1)
            shown = "{" + name + "}" if name else "{}"
            raise ValueError(
                f"unknown placeholder {shown} for source {source!r}"
                + (f"; did you mean {{{hint[0]}}}?" if hint else "")
                + f" Known: {', '.join(placeholders)}"
            )


def check_kind_layout(layout: str, source: str) -> None:
    """Raise ValueError if ``layout`` cannot name the files of the kind ``source``: a
    placeholder it does not offer, a format spec its values do not suit (checked against
    its ``LAYOUT_EXAMPLES``), or a file name without its ``SUFFIX``."""
    settings = kind_settings(source)
    check_placeholders(layout, settings.PLACEHOLDERS, source)
    examples = getattr(settings, "LAYOUT_EXAMPLES", None) or settings.PLACEHOLDERS
    validate_layout(layout, examples, suffix=getattr(settings, "SUFFIX", ""))


# ---------------------------------------------------------------------------- lookup


def _first_dir(value: str | None) -> str | None:
    # systemd passes several directories colon-separated when a unit names several.
    if not value:
        return None
    first = value.split(":")[0]
    return first or None


def config_search_path(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] = os.environ
) -> Path | None:
    """Return the configuration file to read, or None if there is none.

    Order: ``path`` (``--config``), else ``$E4SYNC_CONFIG``, else ``config.toml`` in
    ``$CONFIGURATION_DIRECTORY`` (systemd ``ConfigurationDirectory=``) if it exists,
    else ``config.toml`` in the platformdirs user config directory if it exists. A file
    named by ``path`` or ``$E4SYNC_CONFIG`` is returned even if missing (loading it then
    fails), because a name a person typed must never be silently skipped.
    """
    if path is not None and os.fspath(path) != "":
        return Path(os.path.expanduser(os.fspath(path)))
    named = env.get(ENV_CONFIG)
    if named:
        return Path(os.path.expanduser(named))
    systemd_dir = _first_dir(env.get("CONFIGURATION_DIRECTORY"))
    if systemd_dir:
        candidate = Path(systemd_dir) / CONFIG_FILENAME
        if candidate.is_file():
            return candidate
    candidate = platformdirs.user_config_path(APP_NAME, appauthor=False) / CONFIG_FILENAME
    return candidate if candidate.is_file() else None


# ---------------------------------------------------------------------------- loading


class _Problems:
    """Collects problems; each names where the value came from and which key."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, key: str, text: str) -> None:
        # "config.toml: [download] concurency: unknown key ..." (where ends in ":" at top level)
        if not key.isprintable():
            key = _show(key)
        self.items.append(f"{where} {key}: {text}" if key else f"{where}: {text}")


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), f"a {type(value).__name__}")


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_http_url(text: str, *, loopback_only_http: bool) -> str:
    """Return a normalised http(s) URL or raise ValueError. Never echoes userinfo."""
    if any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise ValueError("must be a URL without spaces or control characters")
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must start with https:// (got scheme {parts.scheme or 'none'!r})")
    if not host:
        raise ValueError("has no host name")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain a user name or password")
    if loopback_only_http and parts.scheme == "http" and not _is_loopback(host):
        raise ValueError("plain http:// is only allowed for loopback addresses; use https://")
    return text.rstrip("/")


def _no_control(text: str) -> None:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValueError("must not contain control characters")


class _Loader:
    """Turns one raw mapping (file + env overrides) into a Config, collecting problems."""

    def __init__(self, path: Path | None, env: Mapping[str, str]):
        self.path = path
        self.env = env
        self.label = str(path) if path is not None else "environment"
        self.base = path.parent if path is not None else None
        self.problems = _Problems()
        # (section, key) -> env var name, for values that came from an override
        self.origin: dict[tuple[str, str], str] = {}
        # The default kind: its secret's keys name where a password goes instead of the
        # file, and its variables may define an account when none is written.
        self.default_kind = self._kind_or_none(DEFAULT_SOURCE)
        self.secret = _secret_of(self.default_kind)

    # -- helpers ---------------------------------------------------------------------

    def _path(self, text: str, base: Path | None) -> Path:
        _no_control(text)
        path = Path(os.path.expanduser(text))
        # Relative paths are taken from the config file's folder, so a daemon whose
        # working directory is / reads the same config as a person in a shell.
        if not path.is_absolute() and base is not None:
            path = base / path
        return path

    def convert(self, key: Key, value: Any, base: Path | None, source: str | None = None) -> Any:
        """Convert one raw value; raise ValueError(message) if it is wrong. ``source`` is
        the kind of the account the value belongs to (its layout placeholders)."""
        kind = key.kind
        if kind in (_D, "duration_off"):
            if kind == "duration_off" and value == "":
                return None
            seconds = parse_duration(value)
            if key.low is not None and seconds < key.low:
                low = format_duration(key.low)
                raise ValueError(f"must be at least {low}, got {_show(value)}")
            return seconds
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected an integer, got {_show(value)} ({_type_name(value)})")
            if (key.low is not None and value < key.low) or (
                key.high is not None and value > key.high
            ):
                raise ValueError(f"must be between {key.low:g} and {key.high:g}, got {value}")
            return value
        if kind == "hours":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"expected a number of hours, got {_show(value)}")
            if not key.low <= value <= key.high:
                raise ValueError(f"must be between {key.low:g} and {key.high:g}, got {value}")
            return float(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(
                    f"expected true or false, got {_show(value)} ({_type_name(value)})"
                )
            return value
        if kind == "url_list":
            return self._url_list(value, key)
        # Every other kind is a string.
        if not isinstance(value, str):
            shown = "" if key.sensitive else f"{_show(value)} "
            raise ValueError(f"expected a string, got {shown}({_type_name(value)})")
        if kind in ("layout", "layout_opt"):
            return self._layout(value, source) if value or kind == "layout" else ""
        return getattr(self, "_kind_" + kind)(value, base)

    def _url_list(self, value: Any, key: Key) -> tuple[str, ...]:
        """A list of URLs (Apprise's: any scheme, checked by Apprise when it sends); a
        problem never echoes one, since each holds its service's credentials."""
        if not isinstance(value, list | tuple):
            raise ValueError(f'expected a list of URLs (urls = ["..."]), got {_type_name(value)}')
        urls = []
        for i, url in enumerate(value, 1):
            if not isinstance(url, str):
                raise ValueError(f"entry {i}: expected a string, got {_type_name(url)}")
            scheme, sep, rest = url.strip().partition("://")
            if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) or not rest:
                raise ValueError(f"entry {i} is not a URL (scheme://...)")
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
                raise ValueError(f"entry {i} holds a control character")
            urls.append(url.strip())
        return tuple(urls)

    # -- string kinds: each returns the converted value or raises ValueError -----------

    def _kind_path(self, value: str, base: Path | None) -> Path | None:
        return self._path(value, base) if value else None

    def _kind_prom_path(self, value: str, base: Path | None) -> Path | None:
        if not value:
            return None
        if not value.endswith(".prom"):
            raise ValueError("must end in .prom (node_exporter reads only those files)")
        return self._path(value, base)

    def _layout(self, value: str, source: str | None) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        _no_control(value)
        try:
            if source is not None:
                check_kind_layout(value, source)
            else:
                # [archive] layout serves every kind: its form is checked here, its
                # placeholders against each account's kind that uses it.
                validate_layout(value, list(_placeholders(value)))
        except ValueError as exc:
            raise ValueError(str(exc) or "is not a valid layout") from None
        except Exception as exc:  # a bug there must still not become a traceback here
            raise ValueError(f"is not a valid layout ({type(exc).__name__})") from None
        return value

    def _kind_source(self, value: str, base: Path | None) -> str:
        kind_settings(value)  # ValueError: unknown source 'x' (known: ...)
        return value

    def _kind_timezone(self, value: str, base: Path | None) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except Exception:  # ZoneInfoNotFoundError, ValueError, OSError, ...
            raise ValueError(
                f'{_show(value)} is not an IANA time zone name (like "UTC" or "Europe/Rome")'
            ) from None
        return value

    def _kind_dburl(self, value: str, base: Path | None) -> str:
        if not value:
            return ""
        _no_control(value)
        if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
            raise ValueError(
                'expected an SQLAlchemy URL like "sqlite:////var/lib/e4sync/state.db" '
                'or "postgresql+psycopg://user@host/db"'
            )
        return value

    def _kind_ping_url(self, value: str, base: Path | None) -> str:
        return _check_http_url(value, loopback_only_http=False) if value else ""

    def _kind_base_url(self, value: str, base: Path | None) -> str:
        return _check_http_url(value, loopback_only_http=True)

    def _kind_name(self, value: str, base: Path | None) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", value) or value in (".", ".."):
            raise ValueError(
                f"{_show(value)} is not a valid account name (letters, digits, '_', '.', "
                "'-'; not '.' or '..')"
            )
        if len(value) > 64:
            raise ValueError("must be at most 64 characters")
        return value

    def _kind_url_opt(self, value: str, base: Path | None) -> str:
        """An optional address (an S3-compatible store): "" for none; plain http only
        for loopback, as for base_url."""
        return _check_http_url(value, loopback_only_http=True) if value else ""

    def _kind_text_opt(self, value: str, base: Path | None) -> str:
        _no_control(value)
        return value

    def _kind_token_opt(self, value: str, base: Path | None) -> str:
        """An optional word (an access key id): "" for none, else no spaces."""
        if value and not re.fullmatch(r"[\x21-\x7e]{1,256}", value):
            raise ValueError("must be printable ASCII without spaces")
        return value

    def _kind_s3_bucket(self, value: str, base: Path | None) -> str:
        # S3's rules (3-63 of a-z 0-9 . -), and what older us-east-1 buckets and
        # S3-compatible stores allow besides (capitals, _): never a / or a space.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]", value):
            raise ValueError(
                f"{_show(value)} is not a bucket name (3 to 255 letters, digits, '.', '-', "
                "'_', starting and ending with a letter or digit)"
            )
        return value

    def _kind_s3_prefix(self, value: str, base: Path | None) -> str:
        _no_control(value)
        if not value.endswith("/") or value.startswith("/"):
            raise ValueError(
                f'{_show(value)} must be a folder of the bucket, ending in "/" and not '
                'starting with it, e.g. "v2/829/1/1/"'
            )
        if any(part in ("", ".", "..") for part in value[:-1].split("/")):
            raise ValueError(f"{_show(value)} must not hold '//', '.' or '..' folders")
        if len(value.encode("utf-8")) > 512:
            raise ValueError("must be at most 512 bytes")
        return value

    def _kind_aws_region(self, value: str, base: Path | None) -> str:
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?", value):
            raise ValueError(f'{_show(value)} is not a region name like "us-east-1"')
        return value

    def _kind_username(self, value: str, base: Path | None) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        _no_control(value)
        return value

    def _kind_envname(self, value: str, base: Path | None) -> str | None:
        if not value:
            return None
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"{_show(value)} is not an environment variable name")
        return value

    def _kind_command(self, value: str, base: Path | None) -> str | None:
        if not value.strip():
            return None
        try:
            words = shlex.split(value)
        except ValueError:
            raise ValueError("cannot be split into words (unbalanced quotes?)") from None
        if not words:
            return None
        return value

    # -- tables --------------------------------------------------------------------------

    def table(
        self,
        schema: Mapping[str, Key],
        raw: Any,
        where: str,
        base: Path | None,
        *,
        section: str | None = None,
        origin: Mapping[str, str] | None = None,
        source: str | None = None,
        secret: SecretKeys | None = None,
        subtables: tuple[str, ...] = (),
        foreign: Mapping[str, str] | None = None,
        only_known: bool = False,
    ) -> dict[str, Any]:
        """Validate one table against ``schema``; return key -> converted value for the
        keys present (the caller fills in defaults). ``section`` is set for the top-level
        sections, whose values may come from environment overrides; ``origin`` names the
        variable a key's value came from (an account defined by the environment).
        ``source`` is the kind of the account the table belongs to, ``secret`` its secret's
        keys (a key that would hold the secret itself is refused with where it goes),
        ``subtables`` the keys the caller checks itself, ``foreign`` the keys of other kinds
        (named as such), and ``only_known`` ignores unknown keys (an account whose source is
        wrong: its keys cannot be judged)."""
        out: dict[str, Any] = {}
        if not isinstance(raw, dict):
            self.problems.add(where, "", f"expected a table, got {_type_name(raw)}")
            return out
        inline = _inline_keys(secret)
        for key, value in raw.items():
            if key.lower() in inline:
                self.problems.add(where, key, secret_help(secret))
                continue
            spec = schema.get(key)
            if spec is None:
                if key in subtables or only_known:
                    continue
                if foreign and key in foreign:
                    self.problems.add(
                        where,
                        key,
                        f"a key of source {foreign[key]!r} accounts; this account's source "
                        f"is {source!r}",
                    )
                    continue
                self.problems.add(where, key, "unknown key" + _suggest(key, list(schema)))
                continue
            env_var = (origin or {}).get(key) or (
                self.origin.get((section, key)) if section else None
            )
            try:
                # An override's relative path is relative to the working directory.
                out[key] = self.convert(spec, value, None if env_var else base, source)
            except ValueError as exc:
                if env_var:
                    self.problems.add(env_var, "", str(exc))
                else:
                    self.problems.add(where, key, str(exc))
        return out

    def section(self, name: str, raw: dict[str, Any]) -> dict[str, Any]:
        schema = SCHEMA[name]
        where = f"{self.label}: [{name}]"
        got = self.table(
            schema, raw.get(name, {}), where, self.base, section=name, secret=self.secret
        )
        return {
            key: got[key] if key in got else self.convert(spec, spec.default, None)
            for key, spec in schema.items()
        }

    # -- the whole document ---------------------------------------------------------------

    def apply_env_overrides(self, raw: dict[str, Any]) -> None:
        for var in sorted(self.env):
            if not var.startswith(ENV_PREFIX) or "__" not in var[len(ENV_PREFIX) :]:
                continue
            section, _, key = var[len(ENV_PREFIX) :].lower().partition("__")
            if section == "account" or section == "account.remote":
                self.problems.add(var, "", "accounts cannot be set from the environment")
                continue
            if section not in SCHEMA:
                hint = _suggest(section, list(SCHEMA))
                self.problems.add(var, "", f"unknown section {section!r}{hint}")
                continue
            if key not in SCHEMA[section]:
                hint = _suggest(key, list(SCHEMA[section]))
                self.problems.add(var, "", f"unknown key {key!r} in [{section}]{hint}")
                continue
            table = raw.get(section)
            if not isinstance(table, dict):
                table = raw[section] = {}
            table[key] = _coerce_env(SCHEMA[section][key].kind, self.env[var])
            self.origin[(section, key)] = var

    def build(self, raw: dict[str, Any]) -> Config:
        self.apply_env_overrides(raw)
        inline = _inline_keys(self.secret)
        for key in raw:
            if key.lower() in inline:
                self.problems.add(f"{self.label}:", key, secret_help(self.secret))
            elif key not in SCHEMA and key != "account":
                hint = _suggest(key, [*SCHEMA, "account"])
                self.problems.add(f"{self.label}:", f"[{key}]", "unknown section" + hint)

        sections = {name: self.section(name, raw) for name in SCHEMA}
        archive, state, dl = sections["archive"], sections["state"], sections["download"]
        if dl["backoff"] > dl["max_backoff"]:
            self.problems.add(
                f"{self.label}: [download]", "max_backoff", "must not be less than backoff"
            )

        # Under systemd (StateDirectory=, DynamicUser=) the user data dir is read-only:
        # the archive then defaults to the state directory systemd made for us.
        systemd_state = _first_dir(self.env.get("STATE_DIRECTORY"))
        archive["root"] = archive["root"] or (
            Path(systemd_state) / "archive"
            if systemd_state
            else platformdirs.user_data_path(APP_NAME, appauthor=False) / "archive"
        )
        if state["dir"] is None:
            state["dir"] = (
                Path(systemd_state)
                if systemd_state
                else platformdirs.user_state_path(APP_NAME, appauthor=False)
            )
        state["url"] = state["url"] or "sqlite:///" + (state["dir"] / "state.db").as_posix()

        accounts = self.accounts(raw.get("account"), archive["layout"], sections["remote"])
        people = sections["participants"]["file"]
        if people is not None:
            # Read now, so `config check` and every command say what is wrong with it.
            from e4sync.participants import load_participants

            try:
                load_participants(people)
            except ConfigError as exc:
                self.problems.add(f"{self.label}: [participants]", "file", str(exc))

        if self.problems.items:
            raise _config_error(self.problems.items)
        built = {name: SECTIONS[name](**values) for name, values in sections.items()}
        return Config(path=self.path, **built, accounts=accounts)

    # -- accounts -------------------------------------------------------------------------

    def accounts(self, raw: Any, layout: str, remote: dict[str, Any]) -> tuple[AccountConfig, ...]:
        if raw is None or raw == []:
            default = self.default_kind
            help_text = getattr(default, "ENV_ACCOUNT_HELP", "")
            made = getattr(default, "env_account", None)
            found = made(self.env) if made is not None else None
            if found is not None:
                where = f"{self.label}: [account from the environment]"
                account = self.account(found.keys, where, layout, remote, origin=found.origin)
                return (account[0],) if account is not None else ()
            if self.path is None:
                user_file = platformdirs.user_config_path(APP_NAME, appauthor=False)
                self.problems.items.append(
                    "no configuration file found and no account in the environment. Either "
                    f"write {user_file / CONFIG_FILENAME}"
                    " (see config.example.toml), pass --config PATH, set E4SYNC_CONFIG=PATH"
                    + (f", or {help_text}" if help_text else "")
                )
                return ()
            self.problems.add(
                self.label,
                "",
                "no [[account]] table (add one" + (f", or {help_text}" if help_text else "") + ")",
            )
            return ()
        if isinstance(raw, dict):
            self.problems.add(
                f"{self.label}:", "[account]", "must be an array of tables: write [[account]]"
            )
            return ()
        if not isinstance(raw, list):
            self.problems.add(
                f"{self.label}:", "account", f"must be [[account]] tables, got {_type_name(raw)}"
            )
            return ()

        out: list[AccountConfig] = []
        seen_names: dict[str, int] = {}
        seen_logins: dict[tuple[str, Any], str] = {}
        for index, item in enumerate(raw, start=1):
            name = item.get("name") if isinstance(item, dict) else None
            where = (
                f"{self.label}: [account {_show(name)}]"
                if isinstance(name, str) and name
                else f"{self.label}: [[account]] #{index}"
            )
            made = self.account(item, where, layout, remote)
            if made is None:
                continue
            account, kind = made
            if account.name in seen_names:
                first = seen_names[account.name]
                self.problems.add(where, "name", f"duplicate: also used by [[account]] #{first}")
            seen_names.setdefault(account.name, index)
            unique = getattr(kind, "UNIQUE_LOGIN", None)
            if unique is not None:
                try:
                    login = (account.source, unique.of(account.options))
                except Exception:  # a login that cannot be told: nothing to compare
                    login = None
                if login is not None:
                    other = seen_logins.setdefault(login, account.name)
                    if other != account.name:
                        self.problems.add(
                            where, unique.key, f"same login as account {other!r}; {unique.why}"
                        )
            out.append(account)
        return tuple(out)

    def account(
        self,
        item: Any,
        where: str,
        layout: str,
        remote: dict[str, Any],
        origin: Mapping[str, str] | None = None,
    ) -> tuple[AccountConfig, ModuleType] | None:
        """Validate one [[account]] table: its ``source`` first, which says what its other
        keys are. Return the account and its kind's settings, or None (problems noted)."""
        if not isinstance(item, dict):
            self.problems.add(where, "", f"expected a table, got {_type_name(item)}")
            return None
        source: str | None = DEFAULT_SOURCE
        if "source" in item:
            try:
                source = self.convert(ACCOUNT_SCHEMA["source"], item["source"], None)
            except ValueError as exc:
                self.problems.add(where, "source", str(exc))
                source = None
        kind = self._kind_or_none(source) if source is not None else None
        if kind is None:
            # Without its kind, only the keys every account has can be judged.
            common = {key: spec for key, spec in ACCOUNT_SCHEMA.items() if key != "source"}
            self.table(common, item, where, self.base, secret=self.secret, only_known=True)
            for key, spec in common.items():
                if spec.default is None and key not in item:
                    self.problems.add(where, key, "required key is missing")
            return None
        schema = account_schema(source)
        secret = _secret_of(kind)
        got = self.table(
            schema,
            item,
            where,
            self.base,
            origin=origin,
            source=source,
            secret=secret,
            subtables=("remote",),
            foreign=other_kinds_keys(source),
        )
        for key, spec in schema.items():
            if spec.default is None and key not in item:
                self.problems.add(where, key, "required key is missing")
        acct_remote = dict(remote)
        if "remote" in item:
            acct_remote.update(
                self.table(SCHEMA["remote"], item["remote"], where + ".remote", None, secret=secret)
            )
        if any(spec.default is None and key not in got for key, spec in schema.items()):
            return None
        values = {
            key: got[key] if key in got else self.convert(spec, spec.default, None, source)
            for key, spec in schema.items()
        }
        common = {key: values.pop(key) for key in ACCOUNT_SCHEMA}
        own_layout = common["layout"]
        if not own_layout and layout:
            # The archive's layout, used by this account: it must be one its kind can fill.
            try:
                check_kind_layout(layout, source)
            except ValueError as exc:
                var = self.origin.get(("archive", "layout"))
                text = f"{exc} (used by account {common['name']!r})"
                if var:
                    self.problems.add(var, "", text)
                else:
                    self.problems.add(f"{self.label}: [archive]", "layout", text)
        effective = own_layout or layout or getattr(kind, "DEFAULT_LAYOUT", "")
        if not effective:
            self.problems.add(where, "layout", f"required: source {source!r} has no default")
        check = getattr(kind, "check_options", None)
        if check is not None and all(key in got for key in item if key in schema):
            # Rules between the kind's keys (a secret without the key id it belongs to).
            for key, text in check(values):
                self.problems.add(where, key, text)
        hidden = {key for key, spec in schema.items() if spec.sensitive and key in values}
        account = AccountConfig(
            name=common["name"],
            source=common["source"],
            options=Options(values, hidden),
            layout=effective,
            remote=RemoteConfig(**acct_remote),
        )
        return account, kind

    def _kind_or_none(self, source: str) -> ModuleType | None:
        try:
            return kind_settings(source)
        except ValueError:
            return None


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce_env(kind: str, text: str) -> Any:
    """Turn an environment string into the key's TOML type where it reads as one; a
    string that does not is left alone, so validation reports it against the variable."""
    stripped = text.strip()
    if kind == "int" and re.fullmatch(r"[+-]?\d{1,18}", stripped):
        return int(stripped)
    if kind == "hours" and re.fullmatch(r"\d{1,2}(\.\d+)?", stripped):
        return float(stripped)
    if kind == "url_list":
        return text.split()  # URLs separated by white space
    if kind == "bool":
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
    return text


def _config_error(problems: list[str]) -> ConfigError:
    noun = "problem" if len(problems) == 1 else "problems"
    return ConfigError(f"the configuration is invalid ({len(problems)} {noun}):", problems)


def _read_toml(path: Path, named_by: str) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _config_error([f"{path}: no such file (named by {named_by})"]) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _config_error([f"{path}: cannot read: {reason}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _config_error([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if match:
            reason = message[: match.start()]
            raise _config_error(
                [f"{path}: line {match[1]}, column {match[2]}: TOML syntax error: {reason}"]
            ) from None
        raise _config_error([f"{path}: TOML syntax error: {message}"]) from None
    except RecursionError:
        raise _config_error([f"{path}: TOML syntax error: nested too deeply"]) from None


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] = os.environ
) -> Config:
    """Find, read and validate the configuration; return a Config.

    ``path`` is ``--config`` (see ``config_search_path`` for the rest of the lookup).
    Raise ConfigError (exit 78) listing every problem at once.
    """
    found = config_search_path(path, env)
    raw: dict[str, Any] = {}
    if found is not None:
        named_by = "--config" if path else (ENV_CONFIG if env.get(ENV_CONFIG) else "lookup")
        raw = _read_toml(found, named_by)
    return _Loader(found, env).build(raw)
