"""A source kind that exists only in the tests, ``fakes3`` (an S3-like delivery), to show
that the configuration and the credentials take a kind's keys, layout and secret from its
settings module and from nothing else. ``install(monkeypatch)`` registers it for one test."""

from __future__ import annotations

import sys
import types

import pytest

from e4sync import sources
from e4sync.config import Key, SecretKeys

NAME = "fakes3"


def install(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    settings = types.ModuleType(f"e4sync.sources.{NAME}.settings")
    settings.ACCOUNT_KEYS = {  # type: ignore[attr-defined]
        "bucket": Key("username", None, "the bucket"),
        "access_key_id": Key("username", None, "the access key id (not a secret)"),
        "secret_access_key_file": Key("path", "", "file holding the secret access key"),
        "secret_access_key_env": Key("envname", "", "variable holding the secret access key"),
        "secret_access_key_command": Key(
            "command", "", "command printing the secret access key", sensitive=True
        ),
        "keyring": Key("bool", False, "read the secret access key from the keyring"),
    }
    settings.DEFAULT_LAYOUT = "{account}/{key}"  # type: ignore[attr-defined]
    settings.PLACEHOLDERS = ("account", "key")  # type: ignore[attr-defined]
    settings.SECRET = SecretKeys(  # type: ignore[attr-defined]
        what="secret access key",
        file="secret_access_key_file",
        env="secret_access_key_env",
        command="secret_access_key_command",
        keyring="keyring",
        keyring_user="access_key_id",
        credential="e4sync-s3-secret",
        key="secret_access_key",
    )
    monkeypatch.setitem(sys.modules, settings.__name__, settings)
    monkeypatch.setattr(sources, "KINDS", (*sources.KINDS, NAME))
    return settings
