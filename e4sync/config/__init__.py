"""e4sync.config: the TOML configuration, read into frozen dataclasses.

Owns: where the configuration file is looked for, the schema (every key, its type and
default), duration strings, ``E4SYNC_<SECTION>__<KEY>`` environment overrides, the
``E4_USER``/``E4_PWD`` fallback account, and the masked view printed by ``config show``.
Every problem found is reported at once in one ``ConfigError`` (exit 78) that names the
file (or the environment variable) and the key; no input, however malformed, gives a
traceback.

Passwords never live here: an account only says *where* its password comes from
(``e4sync.credentials`` reads it).

Four modules, one per concern: ``model`` (constants, the dataclasses, durations),
``schema`` (the key tables), ``loader`` (lookup, env overrides, validation,
``load_config``) and ``show`` (``config show``). Callers import from here.

Imports only the standard library, platformdirs, ``e4sync.errors``, ``e4sync.archive``
(layout validation; standard library only) and E4 Connect's cheap modules (its settings:
the default layout; its layout fields: what a layout is checked against). It must not
import client, state, sync or cli.
"""

from e4sync.config.loader import config_search_path, load_config
from e4sync.config.model import (
    DEFAULT_ACCOUNT_NAME,
    ENV_PASSWORD,
    MAX_DURATION,
    AccountConfig,
    ArchiveConfig,
    Config,
    DownloadConfig,
    MonitorConfig,
    RemoteConfig,
    ScheduleConfig,
    StateConfig,
    format_duration,
    parse_duration,
)
from e4sync.config.schema import ACCOUNT_SCHEMA, SCHEMA, config_keys
from e4sync.config.show import _toml_value as _toml_value  # the tests check its escaping
from e4sync.config.show import effective_config, render_toml
from e4sync.sources.e4connect.settings import DEFAULT_LAYOUT

__all__ = [
    "ACCOUNT_SCHEMA",
    "DEFAULT_ACCOUNT_NAME",
    "DEFAULT_LAYOUT",
    "ENV_PASSWORD",
    "MAX_DURATION",
    "SCHEMA",
    "AccountConfig",
    "ArchiveConfig",
    "Config",
    "DownloadConfig",
    "MonitorConfig",
    "RemoteConfig",
    "ScheduleConfig",
    "StateConfig",
    "config_keys",
    "config_search_path",
    "effective_config",
    "format_duration",
    "load_config",
    "parse_duration",
    "render_toml",
]
