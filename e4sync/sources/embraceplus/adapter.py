"""e4sync.sources.embraceplus.adapter: Empatica's S3 delivery behind the ``Source`` protocol.

One botocore S3 client per account (thread-safe, shared by the pass's download threads), made
at the first request: the credentials (an access key id with its secret from
``e4sync.credentials``, or an AWS profile, or the standard AWS chain), the configuration's
timeouts, a connection pool for every download thread, botocore's "standard" retries
(500, 503 SlowDown, throttling and cut connections, with backoff) and an optional
S3-compatible ``endpoint_url``. The only module of e4sync that imports botocore (boto3's
core: boto3 itself adds only what a pass does not use, at 0.2 s of start-up).

- ``identity()`` says nothing ("") but makes one cheap request (a ListObjectsV2 of one key
  under the prefix), so that a wrong secret fails before any work: refused credentials
  are AuthError (77), and so is AccessDenied on the listing; a bucket that does not exist,
  a bucket in another region and an unknown profile are ConfigError (78), naming the
  bucket and the prefix, and so is a prefix that holds nothing at the account's first
  whole listing (most likely mistyped; an account whose objects were all deleted later
  is not wrong, and a new study's first file ends it); an endpoint that cannot be reached,
  5xx and timeouts after botocore's retries are TransientError (75): a network outage and
  a mistyped host cannot be told apart, and only the first heals by itself.
- ``list_items(last_complete)``: the whole prefix (``complete``) when it was never listed
  whole or ``full_listing`` has passed since; otherwise the day folders from ``lookback``
  ago (UTC) on, in one paginated ListObjectsV2 that starts after the first of them
  (``participant_data/`` with ``StartAfter=participant_data/<first day>``: keys sort by
  their bytes, so this is every day folder from that day on, later ones and any dated in
  the future included, in as few requests as the objects need). Such a listing
  ``covers`` exactly the keys it could have listed, so nothing outside it is taken for gone.
- ``fetch``: GetObject with ``If-Match`` (the listed ETag) and ``ChecksumMode=ENABLED``,
  streamed to the part file in 1 MiB chunks while hashing (sha256, MD5 where the ETag is
  one, S3's full-object checksum); ``progress`` per chunk, ``cancel`` between chunks
  (Interrupted). A body cut mid-stream is taken up with ``Range: bytes=<n>-`` pinned by
  the same ``If-Match``, with backoff, up to ``MAX_CUTS`` times in a row without progress
  (then TransientError). A 412 is VersionChanged: the object changed since the listing,
  so nothing half old is kept and the next pass lists it again.
- ``remote_version``: HeadObject. ``delete``: DeleteObject with ``If-Match``;
  AccessDenied is NotPermitted (the core records it once; Empatica's keys are read-only).
- ``verify``: ``checks.check`` with what the fetch saw. ``download`` (``e4sync download``):
  one object, checked the same way, to a file outside the archive. ``pinned_version``: the
  listing's size and ETag where the ETag is an MD5, so that a copy another tool made
  (``aws s3 sync``) can be adopted once verified, not fetched again.

No message says the secret: botocore's never hold it, and the ones made here name the
account, the bucket, the prefix and S3's error code only.
Must not import: e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.session
import urllib3.exceptions
from botocore import exceptions as boto_errors
from botocore.config import Config as BotoConfig
from botocore.utils import parse_timestamp

from e4sync.errors import (
    AuthError,
    ConfigError,
    E4SyncError,
    Interrupted,
    NotPermitted,
    RemoteError,
    SessionNotFound,
    TransientError,
    UsageError,
    VersionChanged,
)
from e4sync.sources import Capabilities, Fetched, Item, Listing, RemoteVersion, Verdict
from e4sync.sources.embraceplus.checks import CHUNK, Digests, Received, check, pick_checksum
from e4sync.sources.embraceplus.keys import (
    RAW,
    day_folders_from,
    is_plain_md5,
    key_problem,
    make_item,
)

if TYPE_CHECKING:
    from e4sync.config import AccountConfig, Config
    from e4sync.credentials import SecretProvider

log = logging.getLogger("e4sync.source")

NAME = "embraceplus"
PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's largest)
MAX_ATTEMPTS = 5  # botocore's, per request
MAX_CUTS = 5  # a cut body taken up again this many times in a row without progress
MAX_RESUMES = 100  # and at most this many times in all
CUT_BACKOFF = 0.5  # seconds before the first resume; doubled per cut in a row, capped
MAX_CUT_BACKOFF = 8.0
LISTING_COLUMNS = (
    "key",
    "kind",
    "start",
    "size",
    "last_modified",
    "etag",
    "local_state",
    "local_path",
)
# S3's answers that say the credentials themselves are wrong.
AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidSecurity",
    }
)
REGION_CODES = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
    }
)
# What reading a body may raise when the connection is cut or stalls (a local write error
# is never among them: the part file is written outside the read).
_CUT_ERRORS = (
    boto_errors.ResponseStreamingError,
    boto_errors.IncompleteReadError,
    boto_errors.ReadTimeoutError,
    boto_errors.ConnectionClosedError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
_UNREACHABLE = (
    boto_errors.EndpointConnectionError,
    boto_errors.ConnectTimeoutError,
    boto_errors.ReadTimeoutError,
    boto_errors.ConnectionClosedError,
    boto_errors.ProxyConnectionError,
    boto_errors.HTTPClientError,
)


def connect(
    account: AccountConfig,
    cfg: Config,
    cancel: threading.Event | None = None,
    interactive: bool | None = None,
) -> S3Source:
    """The source of ``account`` with the configuration's timeouts and pool size: the
    pass, the CLI and ``doctor`` all get theirs here. Nothing is asked of S3 yet."""
    from e4sync.credentials import secret_provider

    options = account.options
    secret = None
    if options["access_key_id"]:
        secret = secret_provider(account, interactive=interactive)
    return S3Source(
        account=account.name,
        bucket=options["bucket"],
        prefix=options["prefix"],
        region=options["region"],
        access_key_id=options["access_key_id"],
        secret=secret,
        profile=options["profile"],
        endpoint_url=options["endpoint_url"],
        lookback=options["lookback"],
        full_listing=options["full_listing"],
        timeout=cfg.download.timeout,
        connect_timeout=cfg.download.connect_timeout,
        pool_size=max(10, cfg.download.concurrency * 2 + 2),
        cancel=cancel,
    )


def _timestamp(text: str) -> datetime:
    """A time S3 sends, as botocore's default parser gives it (an aware datetime), read with
    the standard library where it is ISO 8601 (every listed ``LastModified``): botocore's
    dateutil parser takes about 0.2 ms each, most of an idle pass over a few thousand
    objects), or an HTTP date (``Last-Modified`` on every GET); anything else goes to
    botocore's parser."""
    try:
        parsed = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        try:
            parsed = parsedate_to_datetime(text)  # an HTTP date: Last-Modified on a GET
        except (TypeError, ValueError, IndexError):
            parsed = None
    if parsed is None or parsed.tzinfo is None:
        return parse_timestamp(text)
    return parsed


def _botocore_session(profile: str | None = None) -> Any:
    """A botocore session (of an AWS ``profile``, or the default chain) whose answers' times
    are read by ``_timestamp``. botocore alone: boto3 adds nothing a pass uses and costs
    about 0.2 s to import (its transfer manager), a fifth of an idle pass."""
    session = botocore.session.Session(profile=profile)
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=_timestamp
    )
    return session


def _iso(value: Any) -> str | None:
    """An S3 time (a datetime) as ISO 8601 UTC with a Z; None when there is none."""
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class S3Source:
    """One account's S3 delivery behind the ``Source`` protocol."""

    name = NAME
    capabilities = Capabilities(
        can_delete=True,
        listing_columns=LISTING_COLUMNS,
        refetch_changed=True,
        versions_folder=".versions",
        write_once=(RAW,),  # SPEC 9: a changed raw file is also reported as a warning
    )

    def __init__(
        self,
        *,
        account: str,
        bucket: str,
        prefix: str,
        region: str = "us-east-1",
        access_key_id: str = "",
        secret: SecretProvider | Callable[[], str] | None = None,
        profile: str = "",
        endpoint_url: str = "",
        lookback: float = 14 * 86400.0,
        full_listing: float = 86400.0,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        pool_size: int = 10,
        cancel: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.account = account
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.access_key_id = access_key_id
        self._secret = secret
        self.profile = profile
        self.endpoint_url = endpoint_url
        self.lookback = lookback
        self.full_listing = full_listing
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        self.cancel = cancel
        self.clock = clock
        self._lock = threading.Lock()
        self._s3: Any = None
        self._whitespace_hint: str | None = None
        self._prefix_was_empty = False  # what identity() found
        self._received: dict[str, Received] = {}

    def __repr__(self) -> str:
        return f"S3Source(account={self.account!r}, where={self.where()!r})"

    def where(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{key if key is not None else self.prefix}"

    # -- the client ---------------------------------------------------------------------

    def client(self) -> Any:
        """The botocore S3 client, made at the first call (the secret is read then)."""
        with self._lock:
            if self._s3 is None:
                self._s3 = self._make_client()
            return self._s3

    def _make_client(self) -> Any:
        config = BotoConfig(
            region_name=self.region,
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
            connect_timeout=self.connect_timeout,
            read_timeout=self.timeout,
            max_pool_connections=self.pool_size,
            tcp_keepalive=True,
            # A checksum is sent on uploads only where S3 requires one (we make none);
            # every answer that carries one is checked.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_supported",
            user_agent_appid="e4sync",
            **({"s3": {"addressing_style": "path"}} if self.endpoint_url else {}),
        )
        try:
            session = _botocore_session(self.profile or None)
            if self.access_key_id:
                secret = self._secret() if self._secret is not None else ""
                hint = getattr(self._secret, "whitespace_hint", None)
                self._whitespace_hint = hint(secret) if hint is not None else None
                session.set_credentials(self.access_key_id, secret)
                del secret
            return session.create_client(
                "s3",
                region_name=self.region,
                endpoint_url=self.endpoint_url or None,
                config=config,
            )
        except boto_errors.ProfileNotFound:
            raise ConfigError(
                f"account {self.account!r}: no AWS profile {self.profile!r} (profile) in the "
                "shared config or credentials file"
            ) from None
        except boto_errors.BotoCoreError as exc:
            raise ConfigError(
                f"account {self.account!r}: cannot set up S3 for {self.where()}: "
                f"{type(exc).__name__}"
            ) from None

    def _call(self, action: str, key: str | None, request: Callable[[Any], Any]) -> Any:
        """``request(client)``, its failure as e4sync's error (see ``_error``)."""
        try:
            return request(self.client())
        except E4SyncError:
            raise
        except Exception as exc:
            raise self._error(exc, action, key) from None

    def _error(self, exc: BaseException, action: str, key: str | None = None) -> E4SyncError:
        """The error an S3 failure means for e4sync (the module docstring says which)."""
        where = self.where(key)
        whose = f"account {self.account!r}"
        if isinstance(exc, boto_errors.ClientError):
            error = exc.response.get("Error", {}) or {}
            code = str(error.get("Code") or "")
            status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            said = f"{code or status}" + (
                f": {str(error.get('Message'))[:200]}" if error.get("Message") else ""
            )
            if code in AUTH_CODES:
                hint = f"; {self._whitespace_hint}" if self._whitespace_hint else ""
                return AuthError(
                    f"{whose}: S3 refused the credentials of access key id "
                    f"{self.access_key_id or '(from the AWS chain)'} ({said}){hint}"
                )
            if code == "NoSuchBucket":
                return ConfigError(
                    f"{whose}: there is no bucket {self.bucket!r} (bucket) at "
                    f"{self.endpoint_url or 'AWS S3'}; prefix {self.prefix!r} cannot be listed"
                )
            if code in REGION_CODES or status == 301:
                return ConfigError(
                    f"{whose}: bucket {self.bucket!r} is not in region {self.region!r} "
                    f"(region) ({said})"
                )
            if code == "PreconditionFailed" or status == 412:
                return VersionChanged(
                    f"{where} changed on S3 since it was listed ({action} with If-Match "
                    "refused); it is listed again at the next pass"
                )
            if code in ("NoSuchKey", "NotFound", "404") or status == 404:
                return SessionNotFound(f"{where} is not on S3 ({action}: {code or status})")
            if code == "AccessDenied" or status == 403:
                if action == "delete":
                    return NotPermitted(
                        f"S3 refused to delete {where} (AccessDenied): these keys may not "
                        "delete (Empatica's Data Access Keys are read-only; deletion goes "
                        "through Empatica)"
                    )
                if action == "list":
                    return AuthError(
                        f"{whose}: S3 refused to list {where} (AccessDenied): the keys may not "
                        "read this bucket and prefix; check bucket, prefix and the keys"
                    )
                return RemoteError(f"{action} {where}: S3 refused access ({said})")
            if (
                code in TRANSIENT_CODES
                or (isinstance(status, int) and status >= 500)
                or status == 429
            ):
                return TransientError(f"{action} {where}: S3 answered {said} after retries")
            return RemoteError(f"{action} {where}: S3 answered {said}")
        if isinstance(exc, boto_errors.NoCredentialsError | boto_errors.PartialCredentialsError):
            return AuthError(
                f"{whose}: no AWS credentials found: set access_key_id and its secret "
                "(secret_access_key_file, _env, _command, keyring, or the systemd credential "
                "e4sync-s3-secret), or profile, or the AWS chain (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials)"
            )
        if isinstance(exc, boto_errors.CredentialRetrievalError):
            return AuthError(
                f"{whose}: the AWS credentials could not be read ({type(exc).__name__})"
            )
        if isinstance(exc, boto_errors.ProfileNotFound):
            return ConfigError(f"{whose}: no AWS profile {self.profile!r} (profile)")
        if isinstance(exc, _UNREACHABLE):
            return TransientError(
                f"{whose}: cannot reach S3 at {self.endpoint_url or 'AWS'} to {action} {where} "
                f"({type(exc).__name__}); is endpoint_url right and the network up?"
            )
        if isinstance(exc, boto_errors.BotoCoreError):
            return RemoteError(f"{action} {where}: {type(exc).__name__}: {exc}"[:500])
        return RemoteError(f"{action} {where}: {type(exc).__name__}")

    # -- the Source protocol --------------------------------------------------------------

    def identity(self) -> str:
        """ "": S3 keys name no user. One cheap request proves the keys and the bucket
        before any work."""
        found = self._call(
            "list",
            None,
            lambda s3: s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1),
        )
        self._prefix_was_empty = not found.get("KeyCount") and not found.get("Contents")
        return ""

    def _empty_prefix(self) -> ConfigError:
        return ConfigError(
            f"account {self.account!r}: bucket {self.bucket!r} holds no object under prefix "
            f"{self.prefix!r} (prefix): check it is the organisation/study/site folder the "
            'keys open, such as "v2/829/1/1/" (a study with no data yet has none: this stops '
            "when the first file arrives)"
        )

    def list_items(self, last_complete: float | None = None) -> Listing:
        now = self.clock()
        full = (
            last_complete is None
            or now - last_complete >= self.full_listing
            or last_complete > now + 3600  # the clock went back: trust no old timing
        )
        if full:
            items, pages = self._list(Prefix=self.prefix)
            if not items and last_complete is None and self._prefix_was_empty:
                # Never listed whole, and empty at the login check too: most likely a
                # mistyped prefix. An account whose objects were all deleted later is not
                # wrong (its listing is just empty), nor one emptied by this very pass.
                raise self._empty_prefix()
            log.info(
                "account %s: listed all of %s: %d objects in %d requests",
                self.account,
                self.where(),
                len(items),
                pages,
            )
            return Listing(items, complete=True)
        first = datetime.fromtimestamp(now - self.lookback, UTC).date()
        days, start_after = day_folders_from(self.prefix, first)
        items, pages = self._list(Prefix=days, StartAfter=start_after)
        log.info(
            "account %s: listed the day folders of %s from %s on: %d objects in %d requests",
            self.account,
            self.where(days),
            first,
            len(items),
            pages,
        )

        def covers(item_id: str) -> bool:
            return item_id.startswith(days) and item_id > start_after

        return Listing(items, complete=False, covers=covers)

    def _list(self, **query: str) -> tuple[list[Item], int]:
        items: dict[str, Item] = {}
        pages = 0
        try:
            paginator = self.client().get_paginator("list_objects_v2")
            for page in paginator.paginate(
                Bucket=self.bucket, PaginationConfig={"PageSize": PAGE_SIZE}, **query
            ):
                pages += 1
                if self.cancel is not None and self.cancel.is_set():
                    raise Interrupted("stopped while listing")
                for obj in page.get("Contents") or ():
                    item = self._item(obj)
                    if item is not None:
                        items.setdefault(item.id, item)
        except E4SyncError:
            raise
        except Exception as exc:
            raise self._error(exc, "list", query.get("Prefix")) from None
        return list(items.values()), pages

    def _item(self, obj: dict) -> Item | None:
        key = str(obj.get("Key") or "")
        if key.endswith("/") and not obj.get("Size"):
            return None  # a folder marker (the console makes them): no file to mirror
        problem = key_problem(key, self.prefix)
        if problem is not None:
            log.warning("account %s: ignoring the object %.120r: %s", self.account, key, problem)
            return None
        return make_item(
            self.prefix,
            key,
            etag=str(obj.get("ETag") or ""),
            size=int(obj.get("Size") or 0),
            last_modified=_iso(obj.get("LastModified")) or "",
            checksum_algorithm=obj.get("ChecksumAlgorithm"),
            storage_class=obj.get("StorageClass"),
        )

    def _key(self, item: Item) -> str:
        problem = key_problem(item.id, self.prefix)
        if problem is not None:
            raise UsageError(f"{item.id[:120]!r}: {problem}")
        return item.id

    def fetch(
        self,
        item: Item,
        part_path: Path,
        cancel: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Fetched:
        key = self._key(item)
        etag = str(item.raw.get("etag") or "") or None
        cancel = cancel or self.cancel
        answer = self._get(key, etag)
        algorithm, value = pick_checksum(answer)
        checkable = algorithm if value and "-" not in value else None
        received = Received(
            Digests(md5=is_plain_md5(etag), algorithm=checkable),
            content_length=answer.get("ContentLength"),
            checksum_algorithm=algorithm,
            checksum_value=value,
            checksum_type=answer.get("ChecksumType"),
        )
        expected = item.size if item.size is not None else answer.get("ContentLength")
        try:
            # A new file, never the old one truncated: a part left by a kill between link and
            # unlink is a second name of an archived or kept-aside file, which "wb" would empty.
            part_path.unlink(missing_ok=True)
            with open(part_path, "xb") as out:
                self._stream(answer, out, received, key, etag, expected, cancel, progress)
        except BaseException:
            # Nothing half-fetched is of use later: the next attempt starts from byte 0.
            part_path.unlink(missing_ok=True)
            raise
        with self._lock:
            self._received[str(part_path)] = received
        return Fetched(
            path=part_path,
            size=received.digests.size,
            sha256=received.digests.sha256,
            etag=answer.get("ETag"),
            last_modified=_iso(answer.get("LastModified")),
        )

    def _get(self, key: str, etag: str | None, start: int = 0) -> dict:
        query: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if etag:
            query["IfMatch"] = etag
        if start:
            query["Range"] = f"bytes={start}-"
        else:
            query["ChecksumMode"] = "ENABLED"
        return self._call("get", key, lambda s3: s3.get_object(**query))

    def _stream(
        self,
        answer: dict,
        out: Any,
        received: Received,
        key: str,
        etag: str | None,
        expected: int | None,
        cancel: threading.Event | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        """Copy the body to ``out``, taking a cut body up again where it stopped."""
        body = answer["Body"]
        digests = received.digests
        in_a_row = 0
        while True:
            before = digests.size
            try:
                self._copy(body, out, digests, cancel, progress)
                return
            except _Cut as cut:
                body.close()
                in_a_row = 1 if digests.size > before else in_a_row + 1
                received.resumed += 1
                if in_a_row > MAX_CUTS or received.resumed > MAX_RESUMES:
                    raise TransientError(
                        f"the download of {self.where(key)} was cut {received.resumed} times "
                        f"(last: {type(cut.cause).__name__}); the next attempt starts again"
                    ) from None
                if expected is not None and digests.size >= expected:
                    return  # every byte is here; only the end of the answer was lost
                delay = min(MAX_CUT_BACKOFF, CUT_BACKOFF * 2 ** (in_a_row - 1))
                log.info(
                    "%s: the body was cut after %d bytes (%s); resuming in %.1f s",
                    key,
                    digests.size,
                    type(cut.cause).__name__,
                    delay,
                )
                self._wait(delay * random.uniform(0.8, 1.2), cancel)
                answer = self._get(key, etag, start=digests.size)
                where = _range_start(answer)
                if where != digests.size:
                    if where != 0:
                        answer["Body"].close()
                        raise TransientError(
                            f"{self.where(key)}: S3 answered a resume from byte "
                            f"{digests.size} with bytes from {where}"
                        ) from None
                    # The server sent the whole object, not the range: start over.
                    out.seek(0)
                    out.truncate()
                    digests.reset()
                body = answer["Body"]

    @staticmethod
    def _copy(
        body: Any,
        out: Any,
        digests: Digests,
        cancel: threading.Event | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        while True:
            if cancel is not None and cancel.is_set():
                raise Interrupted("stopped during a download")
            try:
                chunk = body.read(CHUNK)
            except boto_errors.FlexibleChecksumError:
                # botocore read to the end and found S3's checksum differs: so will the
                # check of the same bytes, which refuses the file (with both values).
                return
            except _CUT_ERRORS as exc:
                raise _Cut(exc) from exc
            if not chunk:
                return
            out.write(chunk)
            digests.update(chunk)
            if progress is not None:
                progress(len(chunk))

    def _wait(self, seconds: float, cancel: threading.Event | None) -> None:
        if cancel is not None:
            if cancel.wait(seconds):
                raise Interrupted("stopped while waiting to resume a download")
        else:
            time.sleep(seconds)

    def remote_version(self, item: Item) -> RemoteVersion:
        key = self._key(item)
        head = self._call("head", key, lambda s3: s3.head_object(Bucket=self.bucket, Key=key))
        size = head.get("ContentLength")
        return RemoteVersion(
            size=int(size) if size is not None else None,
            etag=head.get("ETag"),
            last_modified=_iso(head.get("LastModified")),
        )

    def delete(self, item: Item, if_match: str | None = None) -> None:
        key = self._key(item)
        query: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if if_match:
            query["IfMatch"] = if_match
        self._call("delete", key, lambda s3: s3.delete_object(**query))

    def download(self, item_id: str, target: Path) -> Path:
        """One object, checked as the pass checks it, to the file ``target`` or into the
        existing folder ``target`` under its own name (``e4sync download``): fetched to a
        ``.part`` beside it, then renamed into place; nothing is left when it is refused."""
        problem = key_problem(item_id, self.prefix)
        if problem is not None:
            raise UsageError(f"{item_id[:120]!r}: {problem}")
        head = self._call(
            "head", item_id, lambda s3: s3.head_object(Bucket=self.bucket, Key=item_id)
        )
        item = make_item(
            self.prefix,
            item_id,
            etag=str(head.get("ETag") or ""),
            size=int(head.get("ContentLength") or 0),
            last_modified=_iso(head.get("LastModified")) or "",
        )
        final = target / str(item.fields["file"]) if target.is_dir() else target
        part = final.with_name(final.name + ".part")
        self.fetch(item, part)
        verdict = self.verify(part, item)
        if verdict.problems:
            part.unlink(missing_ok=True)
            raise RemoteError(f"{self.where(item_id)} is refused: {'; '.join(verdict.problems)}")
        for warning in verdict.warnings:
            log.warning("%s: %s", item_id, warning)
        os.replace(part, final)
        return final

    def pinned_version(self, item: Item) -> RemoteVersion | None:
        """The listed size, ETag and LastModified when the ETag is the object's MD5 (which
        ``verify`` checks a file against): a copy another tool made is then known to be the
        object's bytes without a GET. None for a multipart or encrypted upload's ETag."""
        etag = str(item.raw.get("etag") or "")
        if item.size is None or not is_plain_md5(etag):
            return None
        return RemoteVersion(
            size=item.size,
            etag=etag,
            last_modified=str(item.raw.get("last_modified") or "") or None,
        )

    def verify(self, path: Path, item: Item) -> Verdict:
        with self._lock:
            received = self._received.pop(str(path), None)
        return check(path, item, received)

    def close(self) -> None:
        with self._lock:
            client, self._s3 = self._s3, None
            self._received.clear()
        if client is not None:
            client.close()


class _Cut(Exception):
    """A body stopped before its end (a cut connection, a stall)."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def _range_start(answer: dict) -> int | None:
    """Where the bytes of a ranged answer start: its Content-Range's first byte, 0 for a
    whole-object answer (200), None when it cannot be told."""
    status = (answer.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    content_range = str(answer.get("ContentRange") or "")
    if status == 206 and content_range.startswith("bytes "):
        try:
            return int(content_range[6:].split("-", 1)[0])
        except ValueError:
            return None
    return 0 if status == 200 else None
