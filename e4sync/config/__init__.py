"""e4sync.config: the TOML configuration, read into frozen dataclasses.

Owns: where the configuration file is looked for, the schema (every key, its type, default
and doc, declared once), duration strings, ``E4SYNC_<SECTION>__<KEY>`` environment
overrides, the masked view printed by ``config show`` and the generated
``config.example.toml``. Every problem found is reported at once in one ``ConfigError``
(exit 78) that names the file (or the environment variable) and the key; no input, however
malformed, gives a traceback.

An account's keys are the ones every account has (``name``, ``source``, ``layout``,
``[account.remote]``) plus those of its source kind, read from
``e4sync.sources.<kind>.settings`` (``ACCOUNT_KEYS``, ``DEFAULT_LAYOUT``, ``PLACEHOLDERS``,
and the account its variables define when none is written). This package names no
source's keys or variables.

Secrets never live here: an account only says *where* its secret comes from
(``e4sync.credentials`` reads it).

Five modules, one per concern: ``model`` (constants, ``Key``, the dataclasses whose fields
declare the keys, durations), ``schema`` (the key tables read from them and from the
kinds), ``loader`` (lookup, env overrides, validation, ``load_config``), ``show``
(``config show``) and ``example`` (``python -m e4sync.config.example``). Callers import
from here.

Imports only the standard library, platformdirs, ``e4sync.errors``, ``e4sync.sources`` (the
registry of kinds; a kind's settings module is imported when an account names it) and
``e4sync.archive`` (layout validation; standard library only). It must not import client,
state, sync or cli.
Must not import: e4sync.sources.e4connect, e4sync.state, e4sync.sync, e4sync.cli.
"""

from e4sync.config.loader import config_search_path, load_config
from e4sync.config.model import (
    MAX_DURATION,
    AccountConfig,
    ArchiveConfig,
    Config,
    DownloadConfig,
    Key,
    MonitorConfig,
    NotifyConfig,
    Options,
    RemoteConfig,
    ScheduleConfig,
    StateConfig,
    format_duration,
    parse_duration,
)
from e4sync.config.schema import (
    ACCOUNT_SCHEMA,
    SCHEMA,
    EnvAccount,
    SecretKeys,
    UniqueLogin,
    account_schema,
    config_keys,
)
from e4sync.config.show import _toml_value as _toml_value  # the tests check its escaping
from e4sync.config.show import effective_config, render_toml

__all__ = [
    "ACCOUNT_SCHEMA",
    "MAX_DURATION",
    "SCHEMA",
    "AccountConfig",
    "ArchiveConfig",
    "Config",
    "DownloadConfig",
    "EnvAccount",
    "Key",
    "MonitorConfig",
    "NotifyConfig",
    "Options",
    "RemoteConfig",
    "ScheduleConfig",
    "SecretKeys",
    "StateConfig",
    "UniqueLogin",
    "account_schema",
    "config_keys",
    "config_search_path",
    "effective_config",
    "format_duration",
    "load_config",
    "parse_duration",
    "render_toml",
]
