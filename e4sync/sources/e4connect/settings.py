"""e4sync.sources.e4connect.settings: what an E4 Connect account is configured with.

Owns the account keys of ``source = "e4connect"`` (SPEC section 4), where its password
comes from (``SECRET``, read by ``e4sync.credentials``), the account the older client's
variables define when no [[account]] is written (``env_account``: ``E4_USER``/``E4_PWD``),
the rule that two accounts may not share a login, the default layout (the file name
E4 Connect gave its own downloads) and the layout placeholders an E4 session offers. Read
by the configuration, so it stays cheap: it imports only ``e4sync.config.schema`` and must
not import the client, requests or the rest of this package.
Must not import: e4sync.sources.e4connect.client, requests, e4sync.state, e4sync.sync.
It offers ``LAYOUT_EXAMPLES`` and ``SUFFIX`` from the (standard-library) ``layout`` module.
"""

from __future__ import annotations

from collections.abc import Mapping

from e4sync.config.schema import EnvAccount, Key, SecretKeys, UniqueLogin

DEFAULT_BASE_URL = "https://www.empatica.com/connect"
DEFAULT_LAYOUT = "{account}/{start:%Y}/{start:%m}/{start:%d}/{start_time}_{device_serial}.zip"
PLACEHOLDERS = (
    "account",
    "user_id",
    "session_id",
    "device_id",
    "device_serial",
    "label",
    "device",
    "start_time",
    "start",
    "duration",
    "participant",  # who had the wristband on the start day ([participants] file; "" none)
)
# The older client's variables: with no [[account]] written they define the account
# named "default".
ENV_USER = "E4_USER"
ENV_PASSWORD = "E4_PWD"
DEFAULT_ACCOUNT_NAME = "default"
ENV_ACCOUNT_HELP = f"set {ENV_USER} and {ENV_PASSWORD} for one account"

# Said above an E4 Connect [[account]] block in config.example.toml.
ACCOUNT_DOC = (
    'An E4 Connect account (source = "e4connect"). With no [[account]] at all, '
    f'{ENV_USER} and {ENV_PASSWORD} define one account named "{DEFAULT_ACCOUNT_NAME}".'
)

ACCOUNT_KEYS: dict[str, Key] = {
    "username": Key(
        "username", None, "the E4 Connect login (an e-mail address)", example="lab@example.org"
    ),
    "base_url": Key(
        "base_url",
        DEFAULT_BASE_URL,
        "E4 Connect address; plain http:// only for loopback (the simulator)",
    ),
    "password_file": Key(
        "path",
        "",
        "file holding only the password, chmod 600",
        example="/etc/e4sync/lab.password",
    ),
    "password_env": Key(
        "envname",
        "",
        f'environment variable holding the password; "" = none ({ENV_PASSWORD} for '
        f'"{DEFAULT_ACCOUNT_NAME}")',
    ),
    "password_command": Key(
        "command",
        "",
        'command printing the password, no shell, e.g. "pass show e4/lab"',
        sensitive=True,
    ),
    "keyring": Key(
        "bool", False, "read the password from the system keyring (pip install 'e4sync[keyring]')"
    ),
}

SECRET = SecretKeys(
    what="password",
    file="password_file",
    env="password_env",
    command="password_command",
    keyring="keyring",
    keyring_user="username",
    credential="e4sync-password",
    key="password",
    platform="E4 Connect",
    env_default=(DEFAULT_ACCOUNT_NAME, ENV_PASSWORD),
    env_note=f"{ENV_PASSWORD} for the {ENV_USER} account",
)

UNIQUE_LOGIN = UniqueLogin(
    key="username",
    of=lambda options: (options["base_url"], options["username"].lower()),
    why="the platform allows one live login per account, so two accounts would log each other out",
)


def env_account(env: Mapping[str, str]) -> EnvAccount | None:
    """The account ``E4_USER`` and ``E4_PWD`` define (named ``default``, its password in
    ``E4_PWD``), used when no [[account]] is written; None when ``E4_USER`` is unset or
    blank."""
    user = env.get(ENV_USER, "")
    if not user.strip():
        return None
    return EnvAccount(
        keys={"name": DEFAULT_ACCOUNT_NAME, "username": user, "password_env": ENV_PASSWORD},
        origin={"username": ENV_USER},
    )
