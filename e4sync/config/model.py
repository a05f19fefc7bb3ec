"""e4sync.config.model: the typed configuration the rest of e4sync reads.

Owns: the constants (file name, environment variable names, defaults, ``MAX_DURATION``),
the frozen ``Config`` dataclass and its sections, duration strings (``parse_duration``,
``format_duration``), and the URL masks the dataclasses' reprs use so that no secret
shows in a repr (``e4sync.config.show`` reuses them for ``config show``).

Imports only the standard library and ``e4sync.errors``: this is the cheap part of the
configuration. It must not import the other ``e4sync.config`` modules, platformdirs,
``e4sync.archive``, client, state, sync or cli.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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
    source: str = "e4connect"

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
