"""e4sync.config.model: the typed configuration the rest of e4sync reads, and its keys.

Owns: the constants (file name, environment variable names, ``MAX_DURATION``), ``Key``
(one key's kind, default and one-line doc), the frozen ``Config`` dataclass and its
sections, whose fields *are* the schema: each field declares its key with ``setting()``,
and ``e4sync.config.schema`` reads the tables from them, so a key is declared once.
Also ``Options`` (an account's source-specific keys, read-only), duration strings
(``parse_duration``, ``format_duration``), and the URL masks the dataclasses' reprs use so
that no secret shows in a repr (``e4sync.config.show`` reuses them for ``config show``).

Imports only the standard library, ``e4sync.errors`` and ``e4sync.sources`` (the default
kind's name), and lazily the schema when an account is built by hand from a plain mapping
and must learn which of its options to mask: this is the cheap part of the configuration.
It must not import the other ``e4sync.config`` modules at import time, platformdirs,
``e4sync.archive``, client, state, sync or cli.
Must not import: platformdirs, e4sync.archive, e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from e4sync.errors import ConfigError
from e4sync.sources import DEFAULT_SOURCE

APP_NAME = "e4sync"
CONFIG_FILENAME = "config.toml"
ENV_CONFIG = "E4SYNC_CONFIG"
ENV_PREFIX = "E4SYNC_"
# A century: longer is surely a typo, and it keeps timedelta/datetime arithmetic safe.
MAX_DURATION = 100 * 365 * 86400.0
MASK = "***"
KEY = "e4sync.key"  # the field metadata entry that holds a field's Key


# ---------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key. ``kind`` names its converter in the loader (``duration``,
    ``path``, ``layout``, ...); ``default`` is written as in TOML (None: required);
    ``doc`` is the one line ``config.example.toml`` shows beside it; ``example`` the value
    the example file shows instead of the default (None: the default)."""

    kind: str
    default: Any  # as written in TOML; None means required
    doc: str
    low: float | None = None
    high: float | None = None
    sensitive: bool = False  # never echoed in a problem; masked in reprs and `config show`
    example: Any = None


def setting(
    kind: str,
    default: Any,
    doc: str,
    *,
    low: float | None = None,
    high: float | None = None,
    sensitive: bool = False,
    example: Any = None,
) -> Any:
    """A dataclass field that is also a configuration key (see ``Key``)."""
    key = Key(kind, default, doc, low=low, high=high, sensitive=sensitive, example=example)
    return field(metadata={KEY: key})


_D = "duration"


# ---------------------------------------------------------------------------- dataclasses
# The first line of a section's docstring is its comment in config.example.toml.


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """Where the archive is and how its files are named."""

    root: Path = setting(
        "path",
        "",
        'where files are stored; "" = $STATE_DIRECTORY/archive under systemd, else '
        "<user data dir>/e4sync/archive",
    )
    layout: str = setting(
        "layout_opt",
        "",
        "path of each file under root, for every account that sets none; "
        "\"\" = each account's source's default",
    )
    timezone: str = setting(
        "timezone", "UTC", 'IANA zone used for {start:...} in the layout, e.g. "Europe/Rome"'
    )
    scrub_interval: float | None = setting(  # None: periodic re-verification is off
        "duration_off", "", 're-verify the whole archive this often, e.g. "7d"; "" = off', low=1
    )


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """When `e4sync run` makes its passes."""

    interval: float = setting(_D, "15m", "time between sync passes of `e4sync run`", low=1)
    jitter: float = setting(_D, "1m", "random delay (0..jitter) added to each pass", low=0)


@dataclass(frozen=True, slots=True)
class DownloadConfig:
    """How files are fetched, and how failures are retried."""

    concurrency: int = setting("int", 4, "downloads at once per account (1..64)", low=1, high=64)
    timeout: float = setting(
        _D, "120s", "read timeout: the longest silence allowed from the server", low=0.001
    )
    connect_timeout: float = setting(_D, "10s", "timeout for opening a connection", low=0.001)
    max_attempts: int = setting(
        "int", 10, "then the session is 'failed' until `e4sync retry`", low=1, high=10000
    )
    backoff: float = setting(
        _D, "1m", "wait after the first failure; doubles per attempt, with jitter", low=0
    )
    max_backoff: float = setting(_D, "12h", "longest wait between two attempts", low=0)


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """When remote copies are deleted (every account; [account.remote] overrides it)."""

    delete_after_verify: bool = setting(
        "bool", False, "delete the remote copy once the local one is verified"
    )
    delete_min_age: float = setting(
        _D, "7d", "never delete a session that started less than this ago", low=0
    )
    delete_grace: float = setting(
        _D, "1d", "... or that was verified locally less than this ago", low=0
    )
    max_deletes_per_pass: int = setting(
        "int", 50, "most remote deletions in one pass (0 = none)", low=0, high=1_000_000
    )


@dataclass(frozen=True, slots=True)
class StateConfig:
    """The state database (SQLite by default; PostgreSQL for several workers)."""

    url: str = setting(
        "dburl",
        "",
        'SQLAlchemy URL, e.g. "postgresql+psycopg://e4sync@db/e4sync"; '
        '"" = sqlite:///<dir>/state.db',
        sensitive=True,
    )
    dir: Path = setting(
        "path",
        "",
        'state dir (database and lock; cookies stay in memory); "" = $STATE_DIRECTORY or '
        "<user state dir>/e4sync",
    )
    lease: float = setting(
        _D, "5m", "how long a worker holds an account before another may take it", low=1
    )

    def __repr__(self) -> str:
        # A PostgreSQL URL may carry the database password.
        url = _mask_url_password(self.url)
        return f"StateConfig(url={url!r}, dir={self.dir!r}, lease={self.lease!r})"


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Monitoring: a dead-man's-switch ping and a Prometheus textfile."""

    healthcheck_url: str = setting(
        "ping_url", "", 'dead-man\'s-switch ping (healthchecks.io style) per pass; "" = off'
    )
    metrics_textfile: Path | None = setting(
        "prom_path", "", 'Prometheus node_exporter textfile, must end in .prom; "" = off'
    )

    def __repr__(self) -> str:
        # Whoever has a ping URL's token can fake this daemon's heartbeat.
        return (
            f"MonitorConfig(healthcheck_url={_mask_ping_url(self.healthcheck_url)!r}, "
            f"metrics_textfile={self.metrics_textfile!r})"
        )


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """Notifications: a pass failing, damage found, the deletion cap reached, recovery."""

    urls: tuple[str, ...] = setting(
        "url_list",
        (),
        "Apprise URLs told of each change, once (mailtos://, ntfy://, matrix://, slack://, "
        "json://, ...; pip install 'e4sync[notify]'); [] = off",
        sensitive=True,
    )
    on_error: str | None = setting(
        "command",
        "",
        "command run (no shell) when a pass starts failing, damage is found or the deletion "
        'cap is reached; the summary as JSON on stdin; "" = off',
        sensitive=True,
    )
    hook_timeout: float = setting(_D, "1m", "longest on_error may run; then it is killed", low=1)

    def __repr__(self) -> str:
        # An Apprise URL holds its service's credentials; a hook's command line may too.
        return (
            f"NotifyConfig(urls={tuple(_mask_apprise_url(u) for u in self.urls)!r}, "
            f"on_error={MASK if self.on_error else self.on_error!r}, "
            f"hook_timeout={self.hook_timeout!r})"
        )


class Options(Mapping[str, Any]):
    """An account's source-specific keys (``username``, ``base_url``, ... for E4 Connect),
    converted, read-only. Its repr masks the values of the sensitive keys (``hidden``); an
    ``Options`` built from a plain mapping learns them from the account's source."""

    __slots__ = ("_values", "_hidden")

    def __init__(self, values: Mapping[str, Any] | None = None, hidden: Iterable[str] = ()):
        self._values = dict(values or {})
        self._hidden = frozenset(hidden)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(frozenset(self._values.items()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return self._values == dict(other.items())

    def __repr__(self) -> str:
        shown = {k: MASK if k in self._hidden and v else v for k, v in self._values.items()}
        return f"Options({shown!r})"


def _sensitive_options(source: str, names: Iterable[str]) -> frozenset[str]:
    """The keys of an account of ``source`` whose values a repr must mask (all of them
    when the source is unknown: a repr never guesses a value safe)."""
    from e4sync.config.schema import kind_keys

    try:
        keys = kind_keys(source)
    except Exception:  # an unknown or broken kind: mask everything
        return frozenset(names)
    return frozenset(name for name in names if name not in keys or keys[name].sensitive)


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One [[account]]: the keys every source has (``name``, ``source``, ``layout``, its
    ``remote`` rules), and the keys of its source kind in ``options``
    (``account.options["username"]``). The source's keys take the place of ``options`` in
    the account's table, between ``source`` and ``layout``."""

    name: str = setting(
        "name",
        None,
        "unique; letters, digits, _ . - (used in paths, logs and --account)",
        example="lab",
    )
    source: str = setting(
        "source", DEFAULT_SOURCE, "the platform the account is on, which says its other keys"
    )
    options: Mapping[str, Any]  # the source's keys: an Options (a plain mapping is wrapped)
    layout: str = setting(
        "layout_opt", "", "this account's layout; \"\" = archive.layout, else its source's default"
    )
    remote: RemoteConfig

    def __post_init__(self) -> None:
        if not isinstance(self.options, Options):
            hidden = _sensitive_options(self.source, self.options)
            object.__setattr__(self, "options", Options(self.options, hidden))

    def __repr__(self) -> str:
        return (
            f"AccountConfig(name={self.name!r}, source={self.source!r}, "
            f"options={self.options!r}, layout={self.layout!r}, remote={self.remote!r})"
        )


@dataclass(frozen=True, slots=True)
class ParticipantsConfig:
    """Who wore which wristband when, for `e4sync report --by participant`."""

    file: Path | None = setting(
        "path",
        "",
        'e.g. "participants.csv": columns serial,participant,from,to (ISO dates, to empty '
        'while ongoing); "" = none',
    )


@dataclass(frozen=True, slots=True)
class ReportConfig:
    """What `e4sync report` marks."""

    target_hours: float = setting(
        "hours", 0, "daily wear target: days with fewer hours are marked; 0 = none", low=0, high=24
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
    notify: NotifyConfig
    participants: ParticipantsConfig
    report: ReportConfig
    accounts: tuple[AccountConfig, ...]

    def account(self, name: str) -> AccountConfig:
        """Return the account called ``name``; raise ConfigError listing the known names."""
        for acct in self.accounts:
            if acct.name == name:
                return acct
        known = ", ".join(a.name for a in self.accounts) or "none"
        raise ConfigError(f"no account named {name!r} (configured: {known})")


# ---------------------------------------------------------------------------- masks


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


def _mask_apprise_url(url: str) -> str:
    # Apprise URLs carry the service's user, password or token anywhere after the scheme.
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://{MASK}" if sep else MASK


def _mask_ping_url(url: str) -> str:
    # healthchecks.io-style URLs carry their token in the path: anyone with it can ping.
    if not url:
        return ""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + MASK if parts.path else "", "", ""))


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


def _show(value: object) -> str:
    """A short, printable rendering of a user's value for a problem message."""
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        shown = repr(text)
        return '"' + shown[1:-1].replace('"', '\\"') + '"' if shown[0] == "'" else shown
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
