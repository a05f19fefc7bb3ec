"""e4sync.config: the TOML configuration, read into frozen dataclasses.

Owns: where the configuration file is looked for, the schema (every key, its type and
default), duration strings, ``E4SYNC_<SECTION>__<KEY>`` environment overrides, the
``E4_USER``/``E4_PWD`` fallback account, and the masked view printed by ``config show``.
Every problem found is reported at once in one ``ConfigError`` (exit 78) that names the
file (or the environment variable) and the key; no input, however malformed, gives a
traceback.

Passwords never live here: an account only says *where* its password comes from
(``e4sync.credentials`` reads it).

Imports only the standard library, platformdirs, ``e4sync.errors`` and ``e4sync.archive``
(the default layout and its validation; standard library only). It must not import
client, state, sync or cli.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import shlex
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import platformdirs

from e4sync.archive import DEFAULT_LAYOUT  # the archive owns the layout and its default
from e4sync.errors import ConfigError

APP_NAME = "e4sync"
CONFIG_FILENAME = "config.toml"
ENV_CONFIG = "E4SYNC_CONFIG"
ENV_PREFIX = "E4SYNC_"
ENV_USER = "E4_USER"
ENV_PASSWORD = "E4_PWD"
DEFAULT_ACCOUNT_NAME = "default"
DEFAULT_BASE_URL = "https://www.empatica.com/connect"
# A century: longer is surely a typo, and it keeps timedelta/datetime arithmetic safe.
MAX_DURATION = 100 * 365 * 86400.0
MASK = "***"

PASSWORD_HELP = (
    "passwords never go in the configuration file; use one of: password_file = PATH "
    "(chmod 600), password_command = COMMAND, password_env = VARIABLE, keyring = true, "
    "or systemd LoadCredential=e4sync-password"
)


# ---------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    root: Path
    layout: str
    timezone: str
    scrub_interval: float | None  # None: periodic re-verification is off


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    interval: float
    jitter: float


@dataclass(frozen=True, slots=True)
class DownloadConfig:
    concurrency: int
    timeout: float
    connect_timeout: float
    max_attempts: int
    backoff: float
    max_backoff: float


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    delete_after_verify: bool
    delete_min_age: float
    delete_grace: float
    max_deletes_per_pass: int


@dataclass(frozen=True, slots=True)
class StateConfig:
    url: str
    dir: Path
    lease: float

    def __repr__(self) -> str:
        # A PostgreSQL URL may carry the database password.
        url = _mask_url_password(self.url)
        return f"StateConfig(url={url!r}, dir={self.dir!r}, lease={self.lease!r})"


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    healthcheck_url: str
    metrics_textfile: Path | None

    def __repr__(self) -> str:
        # Whoever has a ping URL's token can fake this daemon's heartbeat.
        return (
            f"MonitorConfig(healthcheck_url={_mask_ping_url(self.healthcheck_url)!r}, "
            f"metrics_textfile={self.metrics_textfile!r})"
        )


@dataclass(frozen=True, slots=True)
class AccountConfig:
    name: str
    username: str
    base_url: str
    password_file: Path | None
    password_env: str | None
    password_command: str | None
    keyring: bool
    layout: str
    remote: RemoteConfig

    def __repr__(self) -> str:
        # password_command may embed a token (`op read op://…`, `vault … -token=…`).
        return (
            f"AccountConfig(name={self.name!r}, username={self.username!r}, "
            f"base_url={self.base_url!r}, password_file={self.password_file!r}, "
            f"password_env={self.password_env!r}, "
            f"password_command={MASK if self.password_command else None!r}, "
            f"keyring={self.keyring!r}, layout={self.layout!r}, remote={self.remote!r})"
        )


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    archive: ArchiveConfig
    schedule: ScheduleConfig
    download: DownloadConfig
    remote: RemoteConfig
    state: StateConfig
    monitor: MonitorConfig
    accounts: tuple[AccountConfig, ...]

    def account(self, name: str) -> AccountConfig:
        """Return the account called ``name``; raise ConfigError listing the known names."""
        for acct in self.accounts:
            if acct.name == name:
                return acct
        known = ", ".join(a.name for a in self.accounts) or "none"
        raise ConfigError(f"no account named {name!r} (configured: {known})")


# ---------------------------------------------------------------------------- durations

_DURATION_RE = re.compile(
    r"(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?"
)
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str | int | float) -> float:
    """Return the number of seconds a duration stands for.

    Accepts ``"90s"``, ``"15m"``, ``"12h"``, ``"7d"``, combinations in that order
    (``"1h30m"``, ``"1d12h"``), and a bare number of seconds (``90``, ``"90"``, ``1.5``).
    Raise ValueError with a message meant for a person if ``text`` is none of those.
    """
    problem = f'expected a duration like "15m", "1h30m" or a number of seconds, got {_show(text)}'
    if isinstance(text, bool):
        raise ValueError(problem)
    if isinstance(text, int) and abs(text) > MAX_DURATION:
        value = math.inf if text > 0 else -math.inf  # float() of a huge int would overflow
    elif isinstance(text, int | float):
        value = float(text)
    elif isinstance(text, str):
        compact = text.strip().lower()
        if _NUMBER_RE.fullmatch(compact):
            value = float(compact)
        else:
            match = _DURATION_RE.fullmatch(compact)
            if not compact or match is None or not any(match.groupdict().values()):
                raise ValueError(problem)
            value = sum(
                float(number) * _UNIT_SECONDS[unit]
                for unit, number in match.groupdict().items()
                if number is not None
            )
    else:
        raise ValueError(problem)
    if math.isnan(value) or value < 0:
        raise ValueError(f"expected a duration of zero or more, got {_show(text)}")
    if value > MAX_DURATION:
        raise ValueError(f"duration {_show(text)} is longer than 100 years")
    return value


def format_duration(seconds: float) -> str:
    """Return ``seconds`` as the shortest duration string that ``parse_duration`` reads
    back (to the microsecond): ``5400`` -> ``"1h30m"``, ``90.5`` -> ``"1m30.5s"``."""
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    # Whole microseconds in integer arithmetic, so that 59.9999999 never prints as "60s".
    micros = round(seconds * 1_000_000)
    whole, frac = divmod(micros, 1_000_000)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
    ]
    if frac:
        parts.append(f"{secs}.{frac:06d}".rstrip("0") + "s")
    elif secs or not any(parts):
        parts.append(f"{secs}s")
    return "".join(parts)


# ---------------------------------------------------------------------------- schema


@dataclass(frozen=True, slots=True)
class _Key:
    kind: str
    default: Any  # as written in TOML; None means required
    doc: str
    low: float | None = None
    high: float | None = None
    sensitive: bool = False  # never echo the value in a problem


_D = "duration"
SCHEMA: dict[str, dict[str, _Key]] = {
    "archive": {
        "root": _Key("path", "", 'where sessions are stored; "" = the user data directory/archive'),
        "layout": _Key("layout", DEFAULT_LAYOUT, "path of each session file under root"),
        "timezone": _Key("timezone", "UTC", "IANA zone used for {start:...} in the layout"),
        "scrub_interval": _Key(
            "duration_off", "", 're-verify the whole archive this often; "" = off', low=1
        ),
    },
    "schedule": {
        "interval": _Key(_D, "15m", "time between sync passes of `e4sync run`", low=1),
        "jitter": _Key(_D, "1m", "random delay added to each pass, up to this", low=0),
    },
    "download": {
        "concurrency": _Key("int", 4, "downloads at once per account", low=1, high=64),
        "timeout": _Key(_D, "120s", "read timeout: longest silence from the server", low=0.001),
        "connect_timeout": _Key(_D, "10s", "timeout for opening a connection", low=0.001),
        "max_attempts": _Key("int", 10, "attempts before a session is 'failed'", low=1, high=10000),
        "backoff": _Key(_D, "1m", "wait after the first failure; doubles per attempt", low=0),
        "max_backoff": _Key(_D, "12h", "longest wait between attempts", low=0),
    },
    "remote": {
        "delete_after_verify": _Key("bool", False, "delete the remote copy once verified"),
        "delete_min_age": _Key(_D, "7d", "never delete a session that started less ago", low=0),
        "delete_grace": _Key(_D, "1d", "never delete a session verified less ago", low=0),
        "max_deletes_per_pass": _Key(
            "int", 50, "most remote deletions in one pass", low=0, high=1_000_000
        ),
    },
    "state": {
        "url": _Key("dburl", "", 'SQLAlchemy URL; "" = sqlite:///<dir>/state.db', sensitive=True),
        "dir": _Key("path", "", 'state directory; "" = $STATE_DIRECTORY or the user state dir'),
        "lease": _Key(_D, "5m", "how long a worker holds an account (multi-worker)", low=1),
    },
    "monitor": {
        "healthcheck_url": _Key("ping_url", "", 'dead-man\'s-switch ping URL; "" = off'),
        "metrics_textfile": _Key("prom_path", "", 'Prometheus textfile (*.prom); "" = off'),
    },
}

ACCOUNT_SCHEMA: dict[str, _Key] = {
    "name": _Key("name", None, "unique name, [A-Za-z0-9_.-]+; used in paths and --account"),
    "username": _Key("username", None, "the E4 Connect login (an e-mail address)"),
    "base_url": _Key("base_url", DEFAULT_BASE_URL, "E4 Connect address (http only on loopback)"),
    "password_file": _Key("path", "", "file holding the password (mode 600)"),
    "password_env": _Key("envname", "", "environment variable holding the password"),
    "password_command": _Key(
        "command", "", "command printing the password (no shell)", sensitive=True
    ),
    "keyring": _Key("bool", False, "read the password from the system keyring"),
    "layout": _Key("layout_opt", "", 'this account\'s layout; "" = archive.layout'),
}


def config_keys() -> dict[str, list[str]]:
    """Return every key by section (``account`` and ``account.remote`` included), in the
    order they are documented. The docs test checks example and docs against this."""
    keys = {section: list(table) for section, table in SCHEMA.items()}
    keys["account"] = list(ACCOUNT_SCHEMA)
    keys["account.remote"] = list(SCHEMA["remote"])
    return keys


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


def _show(value: object) -> str:
    """A short, printable rendering of a user's value for a problem message."""
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        shown = repr(text)
        return '"' + shown[1:-1].replace('"', '\\"') + '"' if shown[0] == "'" else shown
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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

    # -- helpers ---------------------------------------------------------------------

    def _path(self, text: str, base: Path | None) -> Path:
        _no_control(text)
        path = Path(os.path.expanduser(text))
        # Relative paths are taken from the config file's folder, so a daemon whose
        # working directory is / reads the same config as a person in a shell.
        if not path.is_absolute() and base is not None:
            path = base / path
        return path

    def convert(self, key: _Key, value: Any, base: Path | None) -> Any:
        """Convert one raw value; raise ValueError(message) if it is wrong."""
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
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(
                    f"expected true or false, got {_show(value)} ({_type_name(value)})"
                )
            return value
        # Every other kind is a string.
        if not isinstance(value, str):
            shown = "" if key.sensitive else f"{_show(value)} "
            raise ValueError(f"expected a string, got {shown}({_type_name(value)})")
        return getattr(self, "_kind_" + kind)(value, base)

    # -- string kinds: each returns the converted value or raises ValueError -----------

    def _kind_path(self, value: str, base: Path | None) -> Path | None:
        return self._path(value, base) if value else None

    def _kind_prom_path(self, value: str, base: Path | None) -> Path | None:
        if not value:
            return None
        if not value.endswith(".prom"):
            raise ValueError("must end in .prom (node_exporter reads only those files)")
        return self._path(value, base)

    def _kind_layout(self, value: str, base: Path | None) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        _no_control(value)
        try:
            from e4sync.archive import validate_layout
        except ImportError:
            # TODO(lead): e4sync.archive.validate_layout is written in parallel; once it
            # exists this check runs and this branch is dead.
            return value
        try:
            validate_layout(value)
        except ValueError as exc:
            raise ValueError(str(exc) or "is not a valid layout") from None
        except Exception as exc:  # a bug there must still not become a traceback here
            raise ValueError(f"is not a valid layout ({type(exc).__name__})") from None
        return value

    def _kind_layout_opt(self, value: str, base: Path | None) -> str:
        return self._kind_layout(value, base) if value else ""

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
        schema: dict[str, _Key],
        raw: Any,
        where: str,
        base: Path | None,
        section: str | None = None,
    ) -> dict[str, Any]:
        """Validate one table against ``schema``; return key -> converted value for the
        keys present (the caller fills in defaults). ``section`` is set for the top-level
        sections, whose values may come from environment overrides."""
        out: dict[str, Any] = {}
        if not isinstance(raw, dict):
            self.problems.add(where, "", f"expected a table, got {_type_name(raw)}")
            return out
        for key, value in raw.items():
            if key.lower() == "password":
                self.problems.add(where, key, PASSWORD_HELP)
                continue
            spec = schema.get(key)
            if spec is None:
                if key == "remote" and schema is ACCOUNT_SCHEMA:
                    continue  # the account's own [account.remote] table, checked by the caller
                self.problems.add(where, key, "unknown key" + _suggest(key, list(schema)))
                continue
            env_var = self.origin.get((section, key)) if section else None
            try:
                # An override's relative path is relative to the working directory.
                out[key] = self.convert(spec, value, None if env_var else base)
            except ValueError as exc:
                if env_var:
                    self.problems.add(env_var, "", str(exc))
                else:
                    self.problems.add(where, key, str(exc))
        return out

    def section(self, name: str, raw: dict[str, Any]) -> dict[str, Any]:
        schema = SCHEMA[name]
        where = f"{self.label}: [{name}]"
        got = self.table(schema, raw.get(name, {}), where, self.base, section=name)
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
        for key in raw:
            if key.lower() == "password":
                self.problems.add(f"{self.label}:", key, PASSWORD_HELP)
            elif key not in SCHEMA and key != "account":
                hint = _suggest(key, [*SCHEMA, "account"])
                self.problems.add(f"{self.label}:", f"[{key}]", "unknown section" + hint)

        sections = {name: self.section(name, raw) for name in SCHEMA}
        archive, state, remote = sections["archive"], sections["state"], sections["remote"]
        dl = sections["download"]
        if dl["backoff"] > dl["max_backoff"]:
            self.problems.add(
                f"{self.label}: [download]", "max_backoff", "must not be less than backoff"
            )

        # Under systemd (StateDirectory=, DynamicUser=) the user data dir is read-only:
        # the archive then defaults to the state directory systemd made for us.
        systemd_state = _first_dir(self.env.get("STATE_DIRECTORY"))
        root = archive["root"] or (
            Path(systemd_state) / "archive"
            if systemd_state
            else platformdirs.user_data_path(APP_NAME, appauthor=False) / "archive"
        )
        state_dir = state["dir"]
        if state_dir is None:
            from_systemd = _first_dir(self.env.get("STATE_DIRECTORY"))
            state_dir = (
                Path(from_systemd)
                if from_systemd
                else platformdirs.user_state_path(APP_NAME, appauthor=False)
            )
        url = state["url"] or "sqlite:///" + (state_dir / "state.db").as_posix()

        global_remote = RemoteConfig(**remote)
        accounts = self.accounts(raw.get("account"), archive["layout"], remote)

        if self.problems.items:
            raise _config_error(self.problems.items)
        return Config(
            path=self.path,
            archive=ArchiveConfig(
                root=root,
                layout=archive["layout"],
                timezone=archive["timezone"],
                scrub_interval=archive["scrub_interval"],
            ),
            schedule=ScheduleConfig(**sections["schedule"]),
            download=DownloadConfig(**dl),
            remote=global_remote,
            state=StateConfig(url=url, dir=state_dir, lease=state["lease"]),
            monitor=MonitorConfig(**sections["monitor"]),
            accounts=accounts,
        )

    def accounts(self, raw: Any, layout: str, remote: dict[str, Any]) -> tuple[AccountConfig, ...]:
        if raw is None or raw == []:
            user = self.env.get(ENV_USER, "")
            if user.strip():
                return (self.default_account(user, layout, remote),)
            if self.path is None:
                self.problems.items.append(
                    "no configuration file found and E4_USER is not set. Either write "
                    f"{platformdirs.user_config_path(APP_NAME, appauthor=False) / CONFIG_FILENAME}"
                    " (see config.example.toml), pass --config PATH, set E4SYNC_CONFIG=PATH, "
                    "or set E4_USER and E4_PWD for one account"
                )
                return ()
            self.problems.add(
                self.label,
                "",
                "no [[account]] table (add one, or set E4_USER and E4_PWD for one account)",
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
        seen_logins: dict[tuple[str, str], str] = {}
        for index, item in enumerate(raw, start=1):
            name = item.get("name") if isinstance(item, dict) else None
            where = (
                f"{self.label}: [account {_show(name)}]"
                if isinstance(name, str) and name
                else f"{self.label}: [[account]] #{index}"
            )
            got = self.table(ACCOUNT_SCHEMA, item, where, self.base)
            if not isinstance(item, dict):
                continue
            for key, spec in ACCOUNT_SCHEMA.items():
                if spec.default is None and key not in item:
                    self.problems.add(where, key, "required key is missing")
            acct_remote = dict(remote)
            if "remote" in item:
                acct_remote.update(
                    self.table(SCHEMA["remote"], item["remote"], where + ".remote", None)
                )
            if "name" not in got or "username" not in got:
                continue
            if got["name"] in seen_names:
                self.problems.add(
                    where, "name", f"duplicate: also used by [[account]] #{seen_names[got['name']]}"
                )
            seen_names.setdefault(got["name"], index)
            defaults = {
                k: self.convert(s, s.default, None)
                for k, s in ACCOUNT_SCHEMA.items()
                if s.default is not None and k not in got
            }
            values = {**defaults, **got}
            login = (values["base_url"], values["username"].lower())
            if login in seen_logins and seen_logins[login] != values["name"]:
                self.problems.add(
                    where,
                    "username",
                    f"same login as account {seen_logins[login]!r}; the platform allows one "
                    "live login per account, so two accounts would log each other out",
                )
            seen_logins.setdefault(login, values["name"])
            out.append(
                AccountConfig(
                    name=values["name"],
                    username=values["username"],
                    base_url=values["base_url"],
                    password_file=values["password_file"],
                    password_env=values["password_env"],
                    password_command=values["password_command"],
                    keyring=values["keyring"],
                    layout=values["layout"] or layout,
                    remote=RemoteConfig(**acct_remote),
                )
            )
        return tuple(out)

    def default_account(self, user: str, layout: str, remote: dict[str, Any]) -> AccountConfig:
        try:
            username = self._kind_username(user, None)
        except ValueError as exc:
            self.problems.add(ENV_USER, "", str(exc))
            username = user
        return AccountConfig(
            name=DEFAULT_ACCOUNT_NAME,
            username=username,
            base_url=DEFAULT_BASE_URL,
            password_file=None,
            password_env=ENV_PASSWORD,
            password_command=None,
            keyring=False,
            layout=layout,
            remote=RemoteConfig(**remote),
        )


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce_env(kind: str, text: str) -> Any:
    """Turn an environment string into the key's TOML type where it reads as one; a
    string that does not is left alone, so validation reports it against the variable."""
    stripped = text.strip()
    if kind == "int" and re.fullmatch(r"[+-]?\d{1,18}", stripped):
        return int(stripped)
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


# ---------------------------------------------------------------------------- show


def _mask_url_password(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return MASK
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:{MASK}@{netloc[1]}"))


def _mask_ping_url(url: str) -> str:
    # healthchecks.io-style URLs carry their token in the path: anyone with it can ping.
    if not url:
        return ""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + MASK if parts.path else "", "", ""))


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
