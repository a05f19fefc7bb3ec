"""e4sync.sources.embraceplus.settings: what an EmbracePlus S3 account is configured with.

Owns the account keys of ``source = "embraceplus"`` (SPEC section 9): the bucket and the
prefix Empatica's Data Access Keys open, the region, the credentials (an access key id with
its secret, read by ``e4sync.credentials`` by the same rules as a password: ``SECRET``; or
an AWS profile; or, with neither, the standard AWS chain), an S3-compatible
``endpoint_url``, and how much is listed each pass (``lookback``, ``full_listing``). Also the
rules between those keys (``check_options``: a secret needs its key id; a profile and a key
id exclude each other), the rule that two accounts do not mirror one prefix twice, the
default layout (the bucket's own tree below the prefix, as ``aws s3 sync`` makes it) and
the layout placeholders an object offers, with an example of each.

Read by the configuration, so it stays cheap: the standard library and
``e4sync.config.schema`` only (the package's ``__init__``, imported first, is cheap too).
Must not import: e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli, boto3, botocore.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import PurePosixPath
from typing import Any

from e4sync.config.schema import Key, SecretKeys, UniqueLogin

DEFAULT_LAYOUT = "{account}/{key}"
PLACEHOLDERS = ("account", "key", "participant", "serial", "date", "kind", "metric", "file")
SUFFIX = ""  # any: the delivery's files are .avro and .csv, and others are mirrored too
# The values of one real object (embraceplus-s3.md: the public example key), the types a
# layout's format specs are checked against: {date:%Y} takes strftime codes, {key} no spec.
LAYOUT_EXAMPLES: dict[str, Any] = {
    "account": "study-829",
    "key": PurePosixPath(
        "participant_data/2025-02-18/007-3YK3K15223/raw_data/v6/1-1-007_1739855451.avro"
    ),
    "participant": "007",
    "serial": "3YK3K15223",
    "date": date(2025, 2, 18),
    "kind": "raw",
    "metric": "",
    "file": "1-1-007_1739855451.avro",
}

ACCOUNT_DOC = (
    'An EmbracePlus account (source = "embraceplus"): the S3 bucket Empatica delivers a '
    "study's data into, read with the Care Portal's Data Access Keys."
)

SECRET_WHAT = "secret access key"

ACCOUNT_KEYS: dict[str, Key] = {
    "bucket": Key(
        "s3_bucket", None, "the S3 bucket of the delivery", example="empatica-us-east-1-prod-data"
    ),
    "prefix": Key(
        "s3_prefix",
        None,
        'the organisation/study/site folder the keys open, ending in "/"',
        example="v2/829/1/1/",
    ),
    "region": Key("aws_region", "us-east-1", "the bucket's AWS region"),
    "access_key_id": Key(
        "token_opt",
        "",
        'the Data Access Key id (not a secret); "" = profile, else the AWS chain',
        example="AKIA...",
    ),
    "secret_access_key_file": Key(
        "path",
        "",
        "file holding only the secret access key, chmod 600",
        example="/etc/e4sync/study-829.secret",
    ),
    "secret_access_key_env": Key(
        "envname", "", 'environment variable holding the secret access key; "" = none'
    ),
    "secret_access_key_command": Key(
        "command",
        "",
        'command printing the secret access key, no shell, e.g. "pass show s3/study-829"',
        sensitive=True,
    ),
    "keyring": Key(
        "bool",
        False,
        "read the secret access key from the system keyring (pip install 'e4sync[keyring]')",
    ),
    "profile": Key("text_opt", "", 'an AWS profile instead of the two keys; "" = none'),
    "endpoint_url": Key(
        "url_opt",
        "",
        'an S3-compatible store; plain http:// only for loopback; "" = AWS S3',
    ),
    "lookback": Key("duration", "14d", "the day folders listed every pass", low=0),
    "full_listing": Key("duration", "1d", "a whole-prefix listing at most this often", low=0),
}

SECRET = SecretKeys(
    what=SECRET_WHAT,
    file="secret_access_key_file",
    env="secret_access_key_env",
    command="secret_access_key_command",
    keyring="keyring",
    keyring_user="access_key_id",
    credential="e4sync-s3-secret",
    key="secret_access_key",
    platform="EmbracePlus S3",
)

UNIQUE_LOGIN = UniqueLogin(
    key="prefix",
    of=lambda options: (options["endpoint_url"], options["bucket"], options["prefix"]),
    why="two accounts would mirror the same objects twice",
)

_SECRET_KEYS = ("secret_access_key_file", "secret_access_key_env", "secret_access_key_command")


def check_options(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The problems between an account's keys, as (key, problem): a secret with no key id
    to go with it, or a key id and a profile both (which one would be used?)."""
    found = []
    given = [key for key in _SECRET_KEYS if options.get(key)]
    if options.get("keyring"):
        given.append("keyring")
    if given and not options.get("access_key_id"):
        found.append(
            (
                "access_key_id",
                f"required with {', '.join(given)}: the {SECRET_WHAT} belongs to a key id",
            )
        )
    if options.get("profile") and options.get("access_key_id"):
        found.append(
            ("profile", "give either a profile or access_key_id with its secret, not both")
        )
    return found
