"""e4sync.sources.e4connect.settings: what an E4 Connect account is configured with.

Owns the account keys of ``source = "e4connect"`` (SPEC section 4), the default layout
(the file name E4 Connect gave its own downloads) and the layout placeholders an E4 session
offers. Read by the configuration, so it stays cheap: it imports only ``e4sync.config.schema``
and must not import the client, requests or the rest of this package.
Must not import: e4sync.sources.e4connect.client, requests, e4sync.state, e4sync.sync.
"""

from __future__ import annotations

from e4sync.config.schema import Key

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
)
# The older client's variables: with no configuration file they define the account
# named "default".
ENV_USER = "E4_USER"
ENV_PASSWORD = "E4_PWD"

ACCOUNT_KEYS: dict[str, Key] = {
    "username": Key("username", None, "the E4 Connect login (an e-mail address)"),
    "base_url": Key("base_url", DEFAULT_BASE_URL, "E4 Connect address (http only on loopback)"),
    "password_file": Key("path", "", "file holding the password (mode 600)"),
    "password_env": Key("envname", "", "environment variable holding the password"),
    "password_command": Key(
        "command", "", "command printing the password (no shell)", sensitive=True
    ),
    "keyring": Key("bool", False, "read the password from the system keyring"),
}
