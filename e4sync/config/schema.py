"""e4sync.config.schema: every configuration key, its kind, default and one-line doc.

Owns: ``Key``, the section tables ``SCHEMA`` and ``ACCOUNT_SCHEMA``, and ``config_keys``
(what the docs test checks the example file and the docs against). The loader validates
against these tables; ``config show`` renders sections in their order.

Imports only ``e4sync.config.model`` (a default) and ``e4sync.sources.e4connect.settings``
(the source kind owns the default layout; it imports ``Key`` from here, so it is imported
after ``Key``). It must not import the loader or show modules, client, state, sync or cli.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from e4sync.config.model import DEFAULT_BASE_URL


@dataclass(frozen=True, slots=True)
class Key:
    kind: str
    default: Any  # as written in TOML; None means required
    doc: str
    low: float | None = None
    high: float | None = None
    sensitive: bool = False  # never echo the value in a problem


# The default layout is E4 Connect's; its settings import Key (above) from this module.
from e4sync.sources.e4connect.settings import DEFAULT_LAYOUT  # noqa: E402

_Key = Key  # the name the loader and show modules use
_D = "duration"
SCHEMA: dict[str, dict[str, Key]] = {
    "archive": {
        "root": Key("path", "", 'where sessions are stored; "" = the user data directory/archive'),
        "layout": Key("layout", DEFAULT_LAYOUT, "path of each session file under root"),
        "timezone": Key("timezone", "UTC", "IANA zone used for {start:...} in the layout"),
        "scrub_interval": Key(
            "duration_off", "", 're-verify the whole archive this often; "" = off', low=1
        ),
    },
    "schedule": {
        "interval": Key(_D, "15m", "time between sync passes of `e4sync run`", low=1),
        "jitter": Key(_D, "1m", "random delay added to each pass, up to this", low=0),
    },
    "download": {
        "concurrency": Key("int", 4, "downloads at once per account", low=1, high=64),
        "timeout": Key(_D, "120s", "read timeout: longest silence from the server", low=0.001),
        "connect_timeout": Key(_D, "10s", "timeout for opening a connection", low=0.001),
        "max_attempts": Key("int", 10, "attempts before a session is 'failed'", low=1, high=10000),
        "backoff": Key(_D, "1m", "wait after the first failure; doubles per attempt", low=0),
        "max_backoff": Key(_D, "12h", "longest wait between attempts", low=0),
    },
    "remote": {
        "delete_after_verify": Key("bool", False, "delete the remote copy once verified"),
        "delete_min_age": Key(_D, "7d", "never delete a session that started less ago", low=0),
        "delete_grace": Key(_D, "1d", "never delete a session verified less ago", low=0),
        "max_deletes_per_pass": Key(
            "int", 50, "most remote deletions in one pass", low=0, high=1_000_000
        ),
    },
    "state": {
        "url": Key("dburl", "", 'SQLAlchemy URL; "" = sqlite:///<dir>/state.db', sensitive=True),
        "dir": Key("path", "", 'state directory; "" = $STATE_DIRECTORY or the user state dir'),
        "lease": Key(_D, "5m", "how long a worker holds an account (multi-worker)", low=1),
    },
    "monitor": {
        "healthcheck_url": Key("ping_url", "", 'dead-man\'s-switch ping URL; "" = off'),
        "metrics_textfile": Key("prom_path", "", 'Prometheus textfile (*.prom); "" = off'),
    },
}

ACCOUNT_SCHEMA: dict[str, Key] = {
    "name": Key("name", None, "unique name, [A-Za-z0-9_.-]+; used in paths and --account"),
    "username": Key("username", None, "the E4 Connect login (an e-mail address)"),
    "base_url": Key("base_url", DEFAULT_BASE_URL, "E4 Connect address (http only on loopback)"),
    "password_file": Key("path", "", "file holding the password (mode 600)"),
    "password_env": Key("envname", "", "environment variable holding the password"),
    "password_command": Key(
        "command", "", "command printing the password (no shell)", sensitive=True
    ),
    "keyring": Key("bool", False, "read the password from the system keyring"),
    "layout": Key("layout_opt", "", 'this account\'s layout; "" = archive.layout'),
}


def config_keys() -> dict[str, list[str]]:
    """Return every key by section (``account`` and ``account.remote`` included), in the
    order they are documented. The docs test checks example and docs against this."""
    keys = {section: list(table) for section, table in SCHEMA.items()}
    keys["account"] = list(ACCOUNT_SCHEMA)
    keys["account.remote"] = list(SCHEMA["remote"])
    return keys
