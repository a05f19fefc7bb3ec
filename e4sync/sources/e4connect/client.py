"""e4sync.sources.e4connect.client: the E4 Connect client (SPEC section 1, GUIDE section 3).

Owns: login and the one shared cookie per account, re-login when the cookie dies (once,
under a lock), the thread-local ``requests.Session`` objects with urllib3 retries, the
streaming download with resume, the waits between retries (urllib3's included: they end
with ``Interrupted`` when the client's ``cancel`` event is set), and the translation of
requests/urllib3 exceptions into e4sync errors, which happens here and nowhere else. It
speaks the wire protocol of ``e4connect-protocol.md`` and offers every operation of the
older ``e4client`` package under the same names.

Must not import: e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli.
It knows nothing of the archive or the database; it imports e4sync.errors and e4sync.verify
only.

Secrets: the password is held in a private attribute, sent only in the login POST body,
and never logged, put in an exception message or shown by ``repr``; cookie values are
never logged either.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar
from urllib3.util.retry import Retry

from e4sync.errors import (
    AuthError,
    E4SyncError,
    Interrupted,
    NotAZipError,
    RemoteError,
    SessionNotFound,
    StorageError,
    TransientError,
    UsageError,
    VersionChanged,
)
from e4sync.fsutil import fsync_dir
from e4sync.sources import RemoteVersion
from e4sync.sources.e4connect.checks import ZIP_MAGIC, check_zip
from e4sync.verify import looks_like_html

DEFAULT_BASE_URL = "https://www.empatica.com/connect"
ALL_FROM = 0
ALL_TO = 999999999999
CHUNK = 1 << 18  # 256 KiB: as fast as 1 MiB here, and a smaller resident peak
_HTML_PEEK = 1 << 16
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

log = logging.getLogger("e4sync.sources.e4connect.client")

_USER_ID = re.compile(r"""\buserId\s*=\s*["']?(\d+)["']?\s*;""")
_SESSION_ID = re.compile(r"[0-9]{1,20}", re.ASCII)
# What tells the platform's login form apart from any other HTML page (protocol file:
# inputs username/password, a button login-button, posting to authenticate.php).
_LOGIN_FORM = re.compile(
    rb"""login-button|action\s*=\s*["'][^"']*authenticate\.php|name\s*=\s*["']?password\b""",
    re.IGNORECASE,
)
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_FILENAME = re.compile(r"""filename\s*=\s*(?:"([^"]*)"|([^;\s]+))""", re.IGNORECASE)
_FILENAME_STAR = re.compile(r"filename\*\s*=\s*[^']*'[^']*'([^;\s]+)", re.IGNORECASE)
_NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError)


def _body_cut(exc: BaseException) -> bool:
    """True for a body cut after the response headers (which urllib3 does not retry), false
    for a failure urllib3 gave up on after its own retries (``MaxRetryError``)."""
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | urllib3.exceptions.ProtocolError):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = exc.args[0] if exc.args else None
        return not isinstance(reason, urllib3.exceptions.MaxRetryError)
    return isinstance(exc, ConnectionError)


@dataclass(frozen=True)
class FetchResult:
    """What ``fetch`` wrote: the file, its size and sha256 (hashed while streaming), the
    length the server announced (plus any resume offset), and the server's file name."""

    path: Path
    size: int
    sha256: str
    content_length: int | None
    filename: str | None
    etag: str | None = None  # the validators the platform sent with these bytes
    last_modified: str | None = None


@dataclass(frozen=True)
class _ResumeInfo:
    validator: str | None  # ETag, else Last-Modified: sent as If-Range
    accept_ranges: bool


@dataclass
class _Reply:
    """A response whose first chunk has been read (to recognise the login page)."""

    response: requests.Response
    first: bytes
    rest: Iterator[bytes]


class _Progress:
    """Turns "bytes on disk so far" into the increments a progress callback expects,
    never counting a byte twice across resumes and restarts within one fetch."""

    def __init__(self, callback: Callable[[int], None] | None):
        self._callback = callback
        self._high = 0

    def __call__(self, total: int) -> None:
        if self._callback is not None and total > self._high:
            self._callback(total - self._high)
            self._high = total


class _BodyCut(Exception):
    """The body stopped early (reset, short read, timeout between bytes); the ``.part``
    keeps every byte received, so the next attempt can resume."""


class _StoppableRetry(Retry):
    """urllib3's ``Retry`` whose waits (backoff, ``Retry-After``) go through ``pause``.

    urllib3 waits in ``time.sleep``, where no event reaches it; the client's ``pause`` waits
    on its cancel event instead and raises ``Interrupted`` out of the request when it is
    set. Only the public hooks ``sleep`` and ``sleep_for_retry`` are replaced, and the
    times are urllib3's own (``get_retry_after``, capped at ``retry_after_max``, and
    ``get_backoff_time``), so the semantics stay urllib3's.
    """

    def __init__(self, *args: Any, pause: Callable[[float], None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._pause = pause or time.sleep

    def new(self, **kw: Any) -> _StoppableRetry:
        # urllib3 makes a new Retry per attempt from its known fields only.
        retry = super().new(**kw)
        retry._pause = self._pause
        return retry

    def sleep_for_retry(self, response: Any) -> bool:
        seconds = self.get_retry_after(response)
        if seconds:
            self._pause(seconds)
            return True
        return False

    def sleep(self, response: Any = None) -> None:
        if self.respect_retry_after_header and response and self.sleep_for_retry(response):
            return
        backoff = self.get_backoff_time()
        if backoff > 0:
            self._pause(backoff)


class _AnyEvent:
    """Set when either of two events is: a fetch's own ``cancel`` and the client's."""

    def __init__(self, first: threading.Event, second: threading.Event):
        self._events = (first, second)

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._events[0].wait(min(left, 0.1))
        return True


def _either(
    first: threading.Event | None, second: threading.Event | None
) -> threading.Event | _AnyEvent | None:
    if first is None or second is None or first is second:
        return first or second
    return _AnyEvent(first, second)


def check_base_url(base_url: str) -> str:
    """Return ``base_url`` without its trailing slash, or raise ``UsageError``.

    Only http and https; plain http only to a loopback host (the simulator), because the
    login sends the password in the clear; no user or password inside the URL.
    """
    if not isinstance(base_url, str) or not base_url.strip():
        raise UsageError("base_url is empty: give the E4 Connect address, e.g. " + DEFAULT_BASE_URL)
    url = base_url.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise UsageError(f"base_url is not a valid URL: {url!r}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise UsageError(f"base_url must be an http:// or https:// address: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise UsageError("base_url must not hold a user name or password")
    if parts.query or parts.fragment:
        raise UsageError(f"base_url must not have a query or fragment: {url!r}")
    if parts.scheme == "http" and not _is_loopback(host):
        raise UsageError(
            f"base_url {url!r} uses plain http:// to a host that is not loopback;"
            " use https:// (plain http is only for 127.0.0.1, ::1 or localhost)"
        )
    return url.rstrip("/")


def check_session_id(session_id: Any) -> str:
    """Return the session id as a string of digits, or raise ``UsageError``: nothing
    unchecked ever goes into a URL."""
    text = str(session_id).strip()
    if isinstance(session_id, bool) or not _SESSION_ID.fullmatch(text):
        raise UsageError(f"session id must be a number: {_shorten(str(session_id))!r}")
    return text


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(exc: BaseException) -> str:
    """A short, secret-free reason for a network failure (the innermost cause's type
    and message; urllib3 puts only host, port and path in its messages)."""
    seen: set[int] = set()
    inner: BaseException = exc
    while id(inner) not in seen:
        seen.add(id(inner))
        nxt = getattr(inner, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = inner.__cause__ or (inner.args[0] if inner.args else None)
        if not isinstance(nxt, BaseException):
            break
        inner = nxt
    text = str(inner)
    # urllib3 prefixes "<HTTPConnection object at 0x...>: "; keep the meaningful end.
    text = text.rsplit(">: ", 1)[-1]
    return f"{type(inner).__name__}: {_shorten(text, 160)}" if text else type(inner).__name__


def _sanitize_filename(raw: str | None) -> str | None:
    """A bare, harmless file name from Content-Disposition, or None."""
    if not raw:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip().strip(".")
    name = name.replace(":", "_")
    if not name or name in (".", ".."):
        return None
    return name[:200]


def _content_disposition_filename(header: str | None) -> str | None:
    if not header:
        return None
    star = _FILENAME_STAR.search(header)
    if star:
        return _sanitize_filename(unquote(star.group(1)))
    plain = _FILENAME.search(header)
    if plain:
        return _sanitize_filename(plain.group(1) if plain.group(1) is not None else plain.group(2))
    return None


class E4Connect:
    """A client for one E4 Connect account, safe to share between download threads.

    Usage::

        with E4Connect("lab@example.org", "secret") as e4:
            for row in e4.sessions_list():
                e4.download_session(row["id"], "archive/")

    Every method logs in first when needed. One login is shared by every thread (the
    platform keeps one live login per account); when the platform answers with its
    login page, one thread logs in again while the others wait, then all retry.

    ``cancel`` stops the client: once it is set, every wait (a ``Retry-After`` of up to
    ``retry_after_max``, a backoff, a download between chunks) ends within a fraction of a
    second with ``Interrupted``, so a daemon told to stop is not held by a wait.
    """

    def __init__(
        self,
        user: str | None = None,
        pwd: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        *,
        password_provider: Callable[[], str] | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        retries: int = 5,
        backoff_factor: float = 1.0,
        retry_after_max: float = 300.0,
        pool_size: int = 8,
        cancel: threading.Event | None = None,
    ):
        self._base_url = check_base_url(base_url)
        self._user = user
        self._pwd = pwd
        self._password_provider = password_provider
        self._timeout = (float(connect_timeout), float(timeout))
        self._retries = max(0, int(retries))
        self._backoff_factor = max(0.0, float(backoff_factor))
        self._retry_after_max = retry_after_max
        self._pool_size = max(1, int(pool_size))
        self._cancel = cancel

        self._login_lock = threading.Lock()  # held for a whole login
        self._state_lock = threading.Lock()  # guards the fields below, briefly
        self._jar = RequestsCookieJar()
        self._generation = 0  # bumped by each successful login
        self._user_id: str | None = None
        self._resume: dict[str, _ResumeInfo] = {}
        self._sessions: dict[threading.Thread, requests.Session] = {}
        self._local = threading.local()
        self._epoch = 0  # bumped by close(): thread-local sessions of an older epoch are dead

        if user and (pwd or password_provider):
            self.auth()

    # -- public API ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The platform's address, without a trailing slash."""
        return self._base_url

    def __repr__(self) -> str:
        return f"E4Connect(user={self._user!r}, base_url={self._base_url!r})"

    def __enter__(self) -> E4Connect:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def auth(self, user: str | None = None, pwd: str | None = None) -> None:
        """Log in (again), keep the cookie and learn the user id.

        :raises AuthError: the platform refused the credentials, or none were given.
        :raises TransientError: the platform could not be reached or answered 5xx.
        """
        if user is not None:
            self._user = user
        if pwd is not None:
            self._pwd = pwd
        with self._login_lock:
            self._login()

    def user_id(self) -> str:
        """The account's numeric user id, as a string (logs in first if needed)."""
        self._snapshot()
        with self._state_lock:
            return str(self._user_id)

    def sessions_list(self, start: int | None = None, end: int | None = None) -> list[dict]:
        """The sessions whose start_time lies in [start, end] (unix seconds; all when None).

        Rows are returned as the platform sent them (values usually strings, sometimes
        numbers): the caller coerces. Order and uniqueness are not guaranteed.
        """
        params = {
            "from": str(ALL_FROM if start is None else _as_int(start, "start")),
            "to": str(ALL_TO if end is None else _as_int(end, "end")),
        }
        uid = self.user_id()
        rows = self._get_json(f"connect.php/users/{uid}/sessions", params=params)
        return _list_of_dicts(rows, "the session list")

    def session(self, session_id: Any) -> dict:
        """One session's metadata. :raises SessionNotFound: the platform has no such session."""
        sid = check_session_id(session_id)
        row = self._get_json(f"connect.php/sessions/{sid}")
        if not isinstance(row, dict):
            raise RemoteError(
                f"E4 Connect sent a {type(row).__name__} for session {sid}, not an object"
            )
        return row

    def purchased_devices(self) -> list[dict]:
        """The account's devices (device_id, label, model, hardware_code, purchase_code,
        purchase_id), as the platform sent them."""
        uid = self.user_id()
        rows = self._get_json(f"connect.php/users/{uid}/api/purchasedDevices")
        return _list_of_dicts(rows, "the device list")

    def remove_session(self, session_id: Any, *, if_match: str | None = None) -> None:
        """Delete a session on the platform. 404/410 mean it is already gone: not an error
        (a retried DELETE whose first answer was lost gets exactly that). ``if_match`` (the
        ETag the archived bytes came with) is sent as ``If-Match``, so a server that honours
        it refuses (412, ``VersionChanged``) to delete bytes that changed since."""
        sid = check_session_id(session_id)
        path = f"connect.php/sessions/{sid}"
        headers = {"If-Match": if_match} if if_match else None
        reply = self._send("DELETE", path, headers=headers)
        with reply.response as r:
            if r.status_code in (404, 410):
                log.info("session %s was already gone from E4 Connect", sid)
                return
            if r.status_code == 412:
                raise VersionChanged(
                    f"E4 Connect refused to delete session {sid}: its ZIP is no longer the "
                    "version that was archived (If-Match failed)"
                )
            self._raise_for_status(r, path, sid)
        with self._state_lock:
            self._resume.pop(sid, None)
        log.info("removed session %s from E4 Connect", sid)

    def remote_version(self, session_id: Any) -> RemoteVersion:
        """Ask what the platform holds for one session's ZIP now, reading one byte of it:
        ``GET download.php`` with ``Range: bytes=0-0``. The size is the total of
        ``Content-Range`` (a 206), else ``Content-Length`` (a server that ignores ranges
        answers 200 with the whole length; the body is not read). A GET, not a HEAD, so an
        expired login shows as the login page and is handled as everywhere else."""
        sid = check_session_id(session_id)
        path = "download.php"
        headers = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}
        cuts = 0
        while True:
            try:
                reply = self._send("GET", path, params={"id": sid}, headers=headers, stream=True)
                break
            except _BodyCut as exc:  # its one byte was cut off: ask again, like a listing
                cuts += 1
                if cuts > self._retries:
                    raise TransientError(
                        f"E4 Connect's answer to a probe of session {sid} broke off {cuts} "
                        f"times ({exc})"
                    ) from None
                self._pause(self._backoff(cuts))
        with reply.response as r:
            self._raise_for_status(r, path, sid)
            # Only the ZIP's own first byte(s) make this an answer about the ZIP: an empty
            # body or a page says nothing of its size, and must not pass for "it changed".
            if r.status_code not in (200, 206) or not reply.first.startswith(ZIP_MAGIC[:1]):
                raise RemoteError(
                    f"E4 Connect answered HTTP {r.status_code} without the ZIP to a probe of "
                    f"session {sid}"
                )
            size = None
            if r.status_code == 206:
                match = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", "").strip())
                if match is not None and match.group(3) != "*":
                    size = int(match.group(3))
            else:
                size = _content_length(r)
            return RemoteVersion(
                size=size,
                etag=r.headers.get("ETag") or None,
                last_modified=r.headers.get("Last-Modified") or None,
            )

    def download_session(
        self,
        session_id: Any,
        file_path: str | os.PathLike[str] = ".",
        *,
        platform_name: bool = False,
    ) -> str:
        """Download one session's ZIP, as ``e4client`` did, and return the path written.

        If ``file_path`` is a directory the file is ``<id>.zip`` in it, the name e4client
        gave, so its scripts find it; with ``platform_name`` it is the name of the platform's
        Content-Disposition (``<start_time>_<SERIAL>.zip``, ``<id>.zip`` without one). The body
        goes to ``<target>.part``, must open as a ZIP whose CRCs all pass, and only then is
        renamed into place. A member that is not an E4 file is kept, with a logged warning.
        """
        sid = check_session_id(session_id)
        target = Path(file_path)
        if target.is_dir():
            probe = target / f"{sid}.zip.part"
            result = self.fetch(sid, probe)
            named = result.filename if platform_name else None
            final = target / (named or f"{sid}.zip")
            part = final.with_name(final.name + ".part")
            if part != probe:
                os.replace(probe, part)
        else:
            final = target
            part = final.with_name(final.name + ".part")
            self.fetch(sid, part)
        check = check_zip(part, e4_members=False)
        if not check.ok:
            part.unlink(missing_ok=True)
            raise NotAZipError(
                f"session {sid}: the download is not a valid ZIP: " + "; ".join(check.problems)
            )
        for warning in check.warnings:
            # Saved as sent (it is the platform's file), but the odd member is said.
            log.warning("session %s: %s", sid, warning)
        os.replace(part, final)
        fsync_dir(final.parent)
        return str(final)

    def fetch(
        self,
        session_id: Any,
        part_path: str | os.PathLike[str],
        *,
        cancel: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
        fsync: bool = True,
    ) -> FetchResult:
        """Stream one session's ZIP into ``part_path`` and return its size and sha256.
        ``fsync=False`` leaves durability to a caller that fsyncs before it renames (the
        archive's commit), keeping the fsync off the download thread.

        Checks only what HTTP can tell: status, an HTML page or empty body instead of a ZIP
        (``NotAZipError``, the ``.part`` removed), the ``PK\\x03\\x04`` magic, and the
        length against Content-Length. The caller verifies the content (``check_zip``), so
        the file is read back once. A body cut short is resumed with ``Range`` when the
        server allows it, up to ``retries`` times, then ``TransientError`` (the ``.part``
        is kept for a later resume). ``cancel`` (and the client's own) is checked between
        chunks: ``Interrupted``, the ``.part`` kept (this client can resume it).
        ``progress(n)`` gets the bytes newly on disk (tqdm's ``update``), and once the
        resumed offset.
        """
        sid = check_session_id(session_id)
        part = Path(part_path)
        report = _Progress(progress)
        cancel = _either(cancel, self._cancel)
        cuts = 0
        while True:
            _check_cancel(cancel, sid)
            try:
                return self._fetch_once(sid, part, cancel, report, fsync)
            except _BodyCut as exc:
                cuts += 1
                if cuts > self._retries:
                    raise TransientError(
                        f"the download of session {sid} was cut short {cuts} times ({exc});"
                        " the partial file is kept for a later resume"
                    ) from None
                delay = self._backoff(cuts)
                log.warning(
                    "download of session %s cut short (%s); retrying in %.1f s", sid, exc, delay
                )
                if cancel is not None:
                    if cancel.wait(delay):
                        raise Interrupted(f"download of session {sid} stopped") from None
                elif delay > 0:
                    time.sleep(delay)

    def close(self) -> None:
        """Close every connection pool this client opened. Safe to call twice."""
        with self._state_lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
            self._epoch += 1
        for s in sessions:
            s.close()

    # -- login ----------------------------------------------------------------------

    def _password(self) -> str | None:
        if self._password_provider is not None:
            try:
                return self._password_provider()
            except E4SyncError:
                # e4sync.credentials' own errors name the source and the fix, never the secret.
                raise
            except Exception as exc:
                # The provider's own message may hold nothing secret, but its type is enough.
                raise AuthError(
                    f"could not get the E4 Connect password for {self._user}: {type(exc).__name__}"
                ) from None
        return self._pwd

    def _login(self) -> None:
        """Log in and publish the new cookie. Caller holds ``_login_lock``."""
        user = self._user
        pwd = self._password()
        if not user or not pwd:
            raise AuthError("no E4 Connect user name and password to log in with")
        # The POST is never retried once sent (a login is not idempotent: it can kill the
        # cookie of a login that just succeeded). Its only retry is one on a failed
        # *connect*, where urllib3 guarantees nothing reached the server.
        post_session = self._new_session(
            Retry(
                total=1, connect=1, read=0, status=0, other=0, redirect=False, raise_on_status=False
            )
        )
        uid: str | None = None
        try:
            try:
                r = post_session.post(
                    self._url("authenticate.php"),
                    data={"username": user, "password": pwd},
                    timeout=self._timeout,
                    allow_redirects=True,
                )
            except _NETWORK_ERRORS as exc:
                raise TransientError(
                    f"E4 Connect could not be reached to log in ({self._path('authenticate.php')}):"
                    f" {_describe(exc)}"
                ) from None
            with r:
                self._raise_for_login_status(r, "authenticate.php")
                # A good login's redirects end on dashboard.php, a refused one on login.php.
                accepted = urlsplit(r.url).path.endswith("/dashboard.php")
            jar = post_session.cookies.copy()
            # The session-list page proves the login; it is an idempotent GET, so it
            # gets the normal retries.
            s = self._thread_session()
            s.cookies = jar
            try:
                page = s.get(self._url("sessions.php"), timeout=self._timeout)
            except _NETWORK_ERRORS as exc:
                raise TransientError(
                    f"E4 Connect could not be reached to log in ({self._path('sessions.php')}):"
                    f" {_describe(exc)}"
                ) from None
            with page:
                self._raise_for_login_status(page, "sessions.php")
                match = _USER_ID.search(page.text)
            if match is None and accepted:
                # The password was accepted, then the cookie died before sessions.php:
                # another login to this account (one live login each). Temporary.
                raise TransientError(
                    f"E4 Connect accepted the login for {user} but ended the session at once;"
                    " another login to this account is probably active"
                )
            if match is None:
                raise AuthError(
                    f"E4 Connect refused the login for {user}: wrong username or password"
                    + self._refused_hint(pwd)
                )
            uid = match.group(1)
            jar = s.cookies.copy()
        finally:
            post_session.close()
        with self._state_lock:
            self._jar = jar
            self._user_id = uid
            self._generation += 1
            generation = self._generation
        log.info(
            "logged in to E4 Connect as %s (user id %s, login #%d of this client)",
            user,
            uid,
            generation,
        )

    def _refused_hint(self, pwd: str) -> str:
        """``"; <hint>"`` when the password provider can say why a refused password may be
        wrong (``credentials.PasswordProvider.whitespace_hint``: stray whitespace, counted,
        never the password), else ``""``. Duck-typed: this module does not import
        credentials, and a bare function or a plain ``pwd`` gives no hint."""
        hint_of = getattr(self._password_provider, "whitespace_hint", None)
        if not callable(hint_of):
            return ""
        try:
            hint = hint_of(pwd)
        except Exception:  # a hint must never hide the refusal itself
            return ""
        return f"; {hint}" if hint else ""

    def _raise_for_login_status(self, r: requests.Response, path: str) -> None:
        if r.status_code in RETRY_STATUSES:
            raise TransientError(
                f"E4 Connect answered HTTP {r.status_code} to the login ({self._path(path)})"
            )
        if r.status_code in (401, 403):
            raise AuthError(f"E4 Connect refused the login for {self._user}: HTTP {r.status_code}")
        if r.status_code >= 400:
            raise RemoteError(
                f"E4 Connect answered HTTP {r.status_code} to the login ({self._path(path)})"
            )

    def _snapshot(self) -> tuple[int, RequestsCookieJar]:
        """The login generation and a private copy of the shared cookie; logs in first
        if this client never has."""
        with self._state_lock:
            if self._generation:
                return self._generation, self._jar.copy()
        with self._login_lock:
            with self._state_lock:
                logged_in = bool(self._generation)
            if not logged_in:
                self._login()
        with self._state_lock:
            return self._generation, self._jar.copy()

    def _relogin(self, seen_generation: int) -> None:
        """Log in again, unless another thread already did since ``seen_generation``
        (that thread's cookie is the new live one: logging in again would kill it)."""
        with self._login_lock:
            with self._state_lock:
                if self._generation != seen_generation:
                    log.debug("the cookie was renewed by another thread; retrying with it")
                    return
            log.info("the E4 Connect cookie has expired; logging in again")
            self._login()

    # -- requests -------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self._base_url}/{path}"

    def _path(self, path: str) -> str:
        """The URL's path, for messages (no host, no query)."""
        return urlsplit(self._url(path)).path

    def _retry(self) -> Retry:
        return _StoppableRetry(
            total=self._retries,
            connect=self._retries,
            # A read timeout costs a whole ``timeout`` (120 s) each time: two are enough.
            read=min(2, self._retries),
            status=self._retries,
            backoff_factor=self._backoff_factor,
            # 1 s of jitter in production (backoff_factor 1); scaled down with the
            # factor so that tests with a tiny backoff stay fast.
            backoff_jitter=min(1.0, self._backoff_factor),
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "DELETE"}),
            respect_retry_after_header=True,
            retry_after_max=self._retry_after_max,
            raise_on_status=False,
            pause=self._pause,
        )

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` before a retry, or raise ``Interrupted`` as soon as the client's
        ``cancel`` is set (a stopping daemon must not sit out a ``Retry-After: 300``)."""
        if self._cancel is None:
            if seconds > 0:
                time.sleep(seconds)
        elif self._cancel.wait(max(0.0, seconds)):
            raise Interrupted(f"stopped while waiting {seconds:.0f} s to retry a request")

    def _new_session(self, retry: Retry) -> requests.Session:
        s = requests.Session()
        adapter = HTTPAdapter(
            pool_connections=self._pool_size, pool_maxsize=self._pool_size, max_retries=retry
        )
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        s.headers["User-Agent"] = "e4sync"
        return s

    def _thread_session(self) -> requests.Session:
        """This thread's own Session (a Session is not documented as thread-safe)."""
        with self._state_lock:
            epoch = self._epoch
        mine = getattr(self._local, "session", None)
        if mine is not None and mine[0] == epoch:
            return mine[1]
        # First use in this thread, or first since close(): a closed client stays usable.
        s = self._new_session(self._retry())
        me = threading.current_thread()
        with self._state_lock:
            # Sessions of threads that have ended (an earlier pass's pool) are closed here,
            # so a long-running daemon does not collect connection pools.
            stale = [self._sessions.pop(t) for t in list(self._sessions) if not t.is_alive()]
            self._sessions[me] = s
        for old in stale:
            old.close()
        self._local.session = (epoch, s)
        return s

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> _Reply:
        """Send with the shared cookie and re-login once if the answer is the login page.

        Returns the response with its first chunk read. Connection failures after the
        retries become ``TransientError``.
        """
        relogged = False
        cuts = 0
        while True:
            generation, jar = self._snapshot()
            s = self._thread_session()
            s.cookies = jar
            try:
                r = s.request(
                    method,
                    self._url(path),
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                    stream=stream,
                    allow_redirects=True,
                )
            except _NETWORK_ERRORS as exc:
                # urllib3 retries up to the response headers; a body cut after them (a list,
                # a DELETE's answer) is asked for again here: both requests are idempotent.
                # A failure urllib3 already retried is not asked again (retries squared).
                cut = _body_cut(exc)
                if cut and method in ("GET", "DELETE") and not stream and cuts < self._retries:
                    cuts += 1
                    self._pause(self._backoff(cuts))
                    continue
                raise TransientError(
                    f"E4 Connect could not be reached ({method} {self._path(path)}):"
                    f" {_describe(exc)}"
                ) from None
            reply = self._first_chunk(r, method, path, stream)
            if not _is_login_page(reply):
                return reply
            r.close()
            if relogged:
                # The fresh login proved the password; a cookie that dies again at once is
                # another login elsewhere (one live login per account): temporary, not 77.
                raise TransientError(
                    f"E4 Connect still answers {self._path(path)} with its login page right after"
                    f" a fresh login for {self._user}"
                )
            self._relogin(generation)
            relogged = True

    def _first_chunk(self, r: requests.Response, method: str, path: str, stream: bool) -> _Reply:
        if not stream:
            try:
                body = r.content
            except _NETWORK_ERRORS as exc:
                r.close()
                raise TransientError(
                    f"E4 Connect's answer broke off ({method} {self._path(path)}): {_describe(exc)}"
                ) from None
            return _Reply(r, body, iter(()))
        chunks = _read_chunks(r)
        first = b""
        try:
            # Enough to tell a ZIP (4 magic bytes) from an HTML page, and for a page, enough
            # to find the login form in it, however the server slices its writes.
            while len(first) < len(ZIP_MAGIC) or (
                looks_like_html(first) and len(first) < _HTML_PEEK
            ):
                piece = next(chunks, b"")
                if not piece:
                    break
                first += piece
        except _NETWORK_ERRORS as exc:
            r.close()
            raise _BodyCut(_describe(exc)) from None
        return _Reply(r, first, chunks)

    def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        reply = self._send("GET", path, params=params)
        with reply.response as r:
            self._raise_for_status(r, path, None)
            if looks_like_html(reply.first):
                raise RemoteError(
                    f"E4 Connect answered {self._path(path)} with an HTML page, not JSON"
                )
            try:
                return r.json()
            except ValueError:
                raise RemoteError(
                    f"E4 Connect answered {self._path(path)} with something that is not JSON"
                ) from None

    def _raise_for_status(self, r: requests.Response, path: str, sid: str | None) -> None:
        code = r.status_code
        if code < 400:
            return
        where = self._path(path)
        if code in (404, 410):
            what = f"session {sid}" if sid else where
            raise SessionNotFound(f"E4 Connect has no {what} (HTTP {code})")
        if code in RETRY_STATUSES:
            raise TransientError(
                f"E4 Connect answered HTTP {code} to {where} after {self._retries} retries"
            )
        raise RemoteError(f"E4 Connect answered HTTP {code} to {where}")

    def _backoff(self, attempt: int) -> float:
        base = self._backoff_factor * (2 ** (attempt - 1))
        return min(120.0, base + random.uniform(0, min(1.0, self._backoff_factor)))

    # -- download -------------------------------------------------------------------

    def _fetch_once(
        self,
        sid: str,
        part: Path,
        cancel: threading.Event | None,
        report: _Progress,
        fsync: bool = True,
    ) -> FetchResult:
        path = "download.php"
        headers = {"Accept-Encoding": "identity"}
        try:
            have = part.stat().st_size
        except FileNotFoundError:
            have = 0
        with self._state_lock:
            info = self._resume.get(sid)
        if have > 0 and info is not None and info.accept_ranges:
            headers["Range"] = f"bytes={have}-"
            if info.validator:
                headers["If-Range"] = info.validator

        reply = self._send("GET", path, params={"id": sid}, headers=headers, stream=True)
        r = reply.response
        with r:
            if r.status_code == 416 and "Range" in headers:
                self._restart(sid, part)
                raise _BodyCut("the server refused to resume the partial file; starting again")
            self._raise_for_status(r, path, sid)
            if r.status_code not in (200, 206):
                raise RemoteError(
                    f"E4 Connect answered HTTP {r.status_code} to a download of session {sid}"
                )
            offset = 0
            etag = r.headers.get("ETag") or None
            last_modified = r.headers.get("Last-Modified") or None
            if r.status_code == 206:
                offset = self._resume_offset(r, sid, part, have, "Range" in headers)
            else:
                validator = r.headers.get("ETag") or r.headers.get("Last-Modified")
                ranges = "bytes" in r.headers.get("Accept-Ranges", "").lower()
                with self._state_lock:
                    self._resume[sid] = _ResumeInfo(validator, ranges)
                if "Range" in headers:
                    log.info("session %s: the server sent the whole file again; restarting", sid)
            expected = _content_length(r)
            if offset == 0:
                self._refuse_non_zip(r, reply.first, sid, part)
            filename = _content_disposition_filename(r.headers.get("Content-Disposition"))
            size, digest = self._write_body(reply, part, offset, sid, cancel, report, fsync)

        total = None if expected is None else expected + offset
        if total is not None and size != total:
            # urllib3 normally raises on a short body first; this catches the rest.
            raise _BodyCut(f"got {size} of {total} bytes")
        return FetchResult(
            path=part,
            size=size,
            sha256=digest,
            content_length=total,
            filename=filename,
            etag=etag,
            last_modified=last_modified,
        )

    def _resume_offset(
        self, r: requests.Response, sid: str, part: Path, have: int, asked: bool
    ) -> int:
        match = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", "").strip())
        if not asked or match is None or int(match.group(1)) != have:
            self._restart(sid, part)
            raise _BodyCut("a partial answer that does not continue the partial file")
        log.info("session %s: resuming the download at byte %d", sid, have)
        return have

    def _restart(self, sid: str, part: Path) -> None:
        part.unlink(missing_ok=True)
        with self._state_lock:
            self._resume.pop(sid, None)

    def _refuse_non_zip(self, r: requests.Response, first: bytes, sid: str, part: Path) -> None:
        ctype = r.headers.get("Content-Type", "").lower()
        problem = None
        if "text/html" in ctype or looks_like_html(first):
            problem = "an HTML page"
        elif not first:
            problem = "an empty body"
        elif not first.startswith(ZIP_MAGIC):
            problem = "a body that does not start like a ZIP (PK\\x03\\x04)"
        if problem:
            part.unlink(missing_ok=True)
            raise NotAZipError(f"session {sid}: E4 Connect sent {problem} instead of a ZIP")

    def _write_body(
        self,
        reply: _Reply,
        part: Path,
        offset: int,
        sid: str,
        cancel: threading.Event | None,
        report: _Progress,
        fsync: bool = True,
    ) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        try:
            if offset:
                with open(part, "rb") as old:
                    while size < offset and (chunk := old.read(min(CHUNK, offset - size))):
                        digest.update(chunk)
                        size += len(chunk)
                if size != offset:
                    self._restart(sid, part)
                    raise _BodyCut("the partial file changed under the download")
                report(offset)
            part.parent.mkdir(parents=True, exist_ok=True)
            if not offset:
                # A new file, never the old one truncated: a part left by a kill between
                # link and unlink is a second name of an archived ZIP, which "wb" would empty.
                part.unlink(missing_ok=True)
            with open(part, "ab" if offset else "xb") as f:
                try:
                    for chunk in itertools.chain((reply.first,), reply.rest):
                        _check_cancel(cancel, sid)
                        if not chunk:
                            continue
                        f.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        report(size)
                except _NETWORK_ERRORS as exc:
                    raise _BodyCut(_describe(exc)) from None
                finally:
                    # Whatever arrived is kept: it is the resume point.
                    f.flush()
                    if fsync:
                        os.fsync(f.fileno())
        except OSError as exc:
            raise StorageError(
                f"cannot write {part}: {exc.strerror or exc}", errno=exc.errno
            ) from None
        return size, digest.hexdigest()


def _read_chunks(r: requests.Response) -> Iterator[bytes]:
    """The body in pieces of at most 1 MiB, handed over as soon as they arrive (read1),
    so a cut keeps what came and ``cancel`` is seen often even on a slow line."""
    raw = r.raw
    while True:
        data = raw.read1(CHUNK, decode_content=True)
        if not data:
            return
        yield data


def _is_login_page(reply: _Reply) -> bool:
    r = reply.response
    for hop in (*r.history, r):
        if urlsplit(hop.headers.get("Location", "") or "").path.endswith("login.php"):
            return True
    if urlsplit(r.url).path.endswith("login.php"):
        return True
    if r.status_code == 200 and looks_like_html(reply.first):
        return _LOGIN_FORM.search(reply.first[:_HTML_PEEK]) is not None
    return False


def _content_length(r: requests.Response) -> int | None:
    value = r.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _check_cancel(cancel: threading.Event | None, sid: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Interrupted(f"download of session {sid} stopped; the partial file is kept")


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise UsageError(f"{name} must be unix seconds, not {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be unix seconds, not {_shorten(repr(value))}") from None
    if number < 0:
        raise UsageError(f"{name} must not be negative: {number}")
    return number


def _list_of_dicts(rows: Any, what: str) -> list[dict]:
    if not isinstance(rows, list):
        # An answer that is no list at all (an {"error": ...} object from a platform in
        # trouble) is the platform's problem and likely to pass: 75, not a failed pass (1).
        # Never read as an empty list, which would make every session look vanished.
        raise TransientError(
            f"E4 Connect sent {what} as {_json_kind(rows)}, not a list{_said(rows)}"
        )
    if not all(isinstance(row, dict) for row in rows):
        raise RemoteError(f"E4 Connect sent {what} in an unexpected shape (not a list of objects)")
    return rows


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, bool):
        return "a JSON boolean"
    if isinstance(value, int | float):
        return "a JSON number"
    return "JSON null" if value is None else "something else"


def _said(value: Any) -> str:
    """What an error object says, if it says something: repr'd and cut short, so the
    platform's text can neither forge a log line nor flood one."""
    if not isinstance(value, dict):
        return ""
    for key in ("error", "message", "msg"):
        text = value.get(key)
        if isinstance(text, str) and text.strip():
            return f", with {key} {text.strip()[:200]!r}"
    return ""
