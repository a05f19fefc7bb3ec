"""e4sync.sources.embraceplus: Empatica's EmbracePlus data, delivered into an S3 bucket
(SPEC section 9).

``KIND`` is what the core knows of it: how to connect an account (``adapter``, which
imports botocore only then, so that E4 Connect users pay nothing for it at start-up), how to
rebuild an item from the raw metadata a sidecar kept and what a key a person gives must be
(``keys``), how to check a fetched object offline (``checks``: size, MD5 against a plain
ETag, an Avro recording's or a biomarker CSV's content), what the account points at, and
where ``doctor`` finds its secret access key. ``settings`` holds its account keys.

Must not import: e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli, boto3, botocore.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from e4sync.sources import Item, Kind, Source, Verdict
from e4sync.sources.embraceplus.keys import check_id, item_from_raw

if TYPE_CHECKING:
    from e4sync.config import AccountConfig, Config


def _connect(
    account: AccountConfig, cfg: Config, cancel: Any = None, interactive: bool | None = None
) -> Source:
    from e4sync.sources.embraceplus.adapter import connect

    return connect(account, cfg, cancel=cancel, interactive=interactive)


def verify(path: Path, item: Item) -> Verdict:
    """An archived object checked without S3: its size and MD5 against what was listed
    (where the ETag is an MD5), and its content (an Avro recording, a biomarker CSV)."""
    from e4sync.sources.embraceplus.checks import check

    return check(path, item)


def endpoint(account: AccountConfig) -> str:
    options = account.options
    where = f"s3://{options['bucket']}/{options['prefix']}"
    return f"{where} at {options['endpoint_url']}" if options["endpoint_url"] else where


def secret_source(account: AccountConfig) -> str:
    """Where the account's credentials come from (never the secret), for ``doctor``:
    AuthError when an access key id has no secret, ConfigError when one is set up wrongly."""
    options = account.options
    if options["access_key_id"]:
        from e4sync.credentials import secret_source as find
        from e4sync.errors import AuthError

        source = find(account, interactive=False)
        if source is None:
            raise AuthError(
                f"no secret access key found for access key id {options['access_key_id']} "
                "(secret_access_key_file, secret_access_key_command, secret_access_key_env, "
                "keyring, or $CREDENTIALS_DIRECTORY/e4sync-s3-secret)"
            )
        return f"{source.kind}: {source.detail} (access key id {options['access_key_id']})"
    if options["profile"]:
        return f"AWS profile {options['profile']!r}"
    return (
        "the AWS default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
        "~/.aws/credentials, an instance role)"
    )


KIND = Kind(
    name="embraceplus",
    connect=_connect,
    item_from_raw=item_from_raw,
    verify=verify,
    check_id=check_id,
    endpoint=endpoint,
    secret_source=secret_source,
    secret_name="secret access key",
    device_field="serial",
    timed_kinds=("raw",),  # a biomarker CSV's day is not time worn
    merge_spans=True,
)
