"""e4sync.simulator.server: the E4 Connect look-alike itself, on a loopback HTTP server.

Owns :class:`Simulator`: accounts, cookies, sessions and devices in memory; the platform's paths,
redirects, cookies and JSON (``shared/e4connect-protocol.md``); session ZIPs from
:mod:`e4sync.simulator.zipgen` (small ones cached in memory, big ones built once into a temporary
file and streamed from disk); fault injection from :mod:`e4sync.simulator.faults`; and admin hooks,
both as methods and as JSON under ``/_admin/`` so another process can drive ``e4sync simulate``.

Choices where the real platform is unknown (documented here, tested in tests/unit):

- A data request for another user's id (``connect.php/users/{uid}/...``) answers 403 (HTML).
- A session of another account is 404 for GET, DELETE and download, as an unknown id is.
- ``DELETE connect.php/sessions/{id}`` answers 200 ``{}``.
- Only ``Range: bytes=N-`` / ``bytes=N-M`` (one range) is honoured; ``If-Range`` with another
  ETag gets the whole ZIP. The ETag is the ZIP's quoted sha256.
- Cookies are ``PHPSESSID=<26 hex>; path=/; HttpOnly``; they never expire on their own.

Admin endpoints (JSON in, JSON out; never faulted, never counted in ``stats()["requests"]``)::

    GET  /_admin/state                  stats() (accounts, counts, faults injected ...)
    GET  /_admin/sessions?user=U        the account's current session rows
    POST /_admin/accounts               {"user", "password", "sessions"?} -> {"user_id"}
    POST /_admin/sessions               {"user"?, "count"?, "start_time"?, "duration"?,
                                         "label"?, "size_bytes"?} -> {"sessions": [rows]}
    POST /_admin/publish_late           {"user"?, "days_ago"?} -> row
    POST /_admin/expire_cookies         {} -> {"expired": n}
    GET  /_admin/faults                 the current Faults as a dict
    POST /_admin/faults                 {field: value ...} merged into the current faults
    PUT  /_admin/faults                 {field: value ...} replaces them (missing = default)
    GET  /_admin/zip/{id}               the session's ZIP exactly as served (X-SHA256 header)

Test hooks (methods only, off by default so the simulator stays faithful): ``request_log()``
and ``wait_requests()`` (when each request arrived and how it was answered, to measure
Retry-After and to wait for an event instead of sleeping), ``set_listing_hook()`` (serve
hostile listing rows: numbers, duplicates, NUL bytes, huge strings), ``replace_zip()`` (serve
other bytes for a session: foreign members, a ZIP bomb), ``issued_cookies()``.

Standard library only; must not import e4sync.state, e4sync.sync or e4sync.client.
"""

from __future__ import annotations

import dataclasses
import http.cookies
import json
import logging
import random
import re
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from e4sync.simulator import zipgen
from e4sync.simulator.faults import DEFAULT_PASSWORD, DEFAULT_USER, FaultDice, Faults

log = logging.getLogger("e4sync.simulator")

MODELS = ("E4 2.1", "E4 2.2", "E4 3.3")
MEMORY_ZIP_LIMIT = 16 * 1024 * 1024
"""ZIPs estimated above this are built into a temporary file and streamed from disk."""
MEMORY_CACHE_BUDGET = 256 * 1024 * 1024
"""Total bytes of small ZIPs kept in memory; the oldest are dropped (and rebuilt on demand)."""
REQUEST_LOG_SIZE = 100_000
"""Requests remembered by ``request_log()``; the oldest are dropped."""

_LOGIN_FLOW = frozenset({"authenticate", "login_page", "dashboard", "sessions_page", "index"})
_ROUTES = [
    ("POST", re.compile(r"authenticate\.php"), "authenticate"),
    ("GET", re.compile(r"login\.php"), "login_page"),
    ("GET", re.compile(r"(?:index\.php)?"), "index"),
    ("GET", re.compile(r"dashboard\.php"), "dashboard"),
    ("GET", re.compile(r"sessions\.php"), "sessions_page"),
    ("GET", re.compile(r"download\.php"), "download"),
    ("GET", re.compile(r"connect\.php/users/(\d+)/sessions"), "sessions_list"),
    ("GET", re.compile(r"connect\.php/users/(\d+)/api/purchasedDevices"), "devices"),
    ("GET", re.compile(r"connect\.php/sessions/(\d+)"), "session"),
    ("DELETE", re.compile(r"connect\.php/sessions/(\d+)"), "session_delete"),
    ("GET", re.compile(r"connect\.php/studies"), "studies"),
    ("GET", re.compile(r"connect\.php/studies/(\d+)/sessions"), "study_sessions"),
]
_HTML = "text/html; charset=UTF-8"
_JSON = "application/json"


def _page(title: str, body: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    ).encode()


LOGIN_PAGE = _page(
    "E4 connect - Login",
    '<div class="login">\n<h1>E4 connect</h1>\n'
    '<form id="login-form" action="/connect/authenticate.php" method="post">\n'
    '<input type="text" id="username" name="username" placeholder="Email">\n'
    '<input type="password" id="password" name="password" placeholder="Password">\n'
    '<button type="submit" id="login-button" name="login-button">Log in</button>\n'
    "</form>\n</div>",
)
DASHBOARD_PAGE = _page(
    "E4 connect - Dashboard", '<div id="dashboard"><a href="sessions.php">Sessions</a></div>'
)
MAINTENANCE_PAGE = _page(
    "E4 connect - Maintenance",
    "<h1>We'll be back soon</h1>\n<p>E4 connect is under maintenance.</p>",
)


def _sessions_page(uid: str) -> bytes:
    return _page(
        "E4 connect - Sessions",
        '<div id="sessions-table"></div>\n<script type="text/javascript">\n'
        f"    var userId = {uid};\n    var sessionsUrl = 'connect.php/users/' + userId;\n"
        "</script>",
    )


@dataclasses.dataclass
class _Account:
    user: str
    password: str
    uid: str
    devices: list[dict[str, str]]
    sessions: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    deleted: set[str] = dataclasses.field(default_factory=set)
    cookies: set[str] = dataclasses.field(default_factory=set)
    logins: int = 0
    failed_logins: int = 0
    max_cookies: int = 0

    def __repr__(self) -> str:  # never show the password
        return f"_Account(user={self.user!r}, uid={self.uid!r}, sessions={len(self.sessions)})"


@dataclasses.dataclass(frozen=True)
class _Meta:
    """What the ZIP of a session depends on; kept after the session is deleted."""

    start_time: int
    duration: float


@dataclasses.dataclass
class _Reply:
    status: int
    body: bytes | memoryview = b""
    ctype: str = _HTML
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    path: Path | None = None  # stream this file's [offset, offset + length) instead of body
    offset: int = 0
    length: int = 0

    @property
    def size(self) -> int:
        return self.length if self.path is not None else len(self.body)


class Simulator:
    """An E4 Connect look-alike on loopback; see the module docstring for its choices.

    :param port: TCP port on ``host``; 0 picks a free one.
    :param seed: makes session lists, ZIP bytes and fault decisions reproducible.
    :param sessions: how many sessions the default account starts with.
    :param user: the default account's user name; ``password`` its password.
    :param faults: initial :class:`Faults` (default: none).
    :param one_login: overrides ``faults.one_login`` when given.
    :param host: a loopback address to bind.
    :param now: the unix time the initial sessions are dated back from (default: now).
    :param session_size: if given, the initial sessions' ZIPs are about this many bytes.

    Usage::

        with Simulator(sessions=3) as sim:
            requests.post(sim.base_url + "/authenticate.php", {...})
    """

    def __init__(
        self,
        port: int = 0,
        seed: int = 0,
        sessions: int = 5,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        faults: Faults | None = None,
        one_login: bool | None = None,
        *,
        host: str = "127.0.0.1",
        now: float | None = None,
        session_size: int | None = None,
    ) -> None:
        faults = faults or Faults()
        if one_login is not None:
            faults = dataclasses.replace(faults, one_login=one_login)
        self.seed = seed
        self.user = user
        self.password = password
        self.host = host
        self._port = port
        self._now = int(time.time() if now is None else now)
        self._faults = faults
        self._dice = FaultDice(seed)
        self._rng = random.Random(f"{seed}:simulator")
        self._lock = threading.RLock()
        self._accounts: dict[str, _Account] = {}
        self._cookies: dict[str, str] = {}  # cookie -> user
        self._owner: dict[str, str] = {}  # session id -> user, deleted ones included
        self._meta: dict[str, _Meta] = {}
        self._next_id = self._rng.randint(400_000, 600_000)
        self._requests: Counter[str] = Counter()
        self._responses: Counter[str] = Counter()
        self._fault_counts: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()
        self._max_in_flight: Counter[str] = Counter()
        self._bytes_sent = 0
        self._request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._arrived = threading.Condition(self._lock)
        self._issued: dict[str, set[str]] = {}  # user -> every cookie ever issued
        self._listing_hook: Callable[[str, list[dict[str, Any]]], Any] | None = None
        self._zip_override: dict[str, bytes] = {}
        self._mem_cache: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._mem_bytes = 0
        self._disk_cache: dict[str, tuple[Path, int, str]] = {}
        self._build_locks: dict[str, threading.Lock] = {}
        self._tmpdir: Path | None = None
        self._tmp_finalizer: weakref.finalize | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.add_account(user, password, sessions=0)
        self._seed_sessions(user, sessions, session_size)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Simulator:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        self.stopping.clear()
        self._server = _Server((self.host, self._port), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"e4sim-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("E4 Connect simulator at %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections, and remove the ZIP cache files."""
        server, self._server = self._server, None
        if server is not None:
            self.stopping.set()
            server.shutdown()
            server.close_all()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
        with self._lock:
            self._disk_cache.clear()
            if self._tmp_finalizer is not None:
                self._tmp_finalizer()
            self._tmpdir = self._tmp_finalizer = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/connect``: what a client takes as its base URL."""
        return f"http://{self._url_host()}:{self.port}/connect"

    @property
    def admin_url(self) -> str:
        """``http://127.0.0.1:PORT/_admin``: the JSON admin hooks."""
        return f"http://{self._url_host()}:{self.port}/_admin"

    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    # --- accounts and sessions --------------------------------------------------------------------

    def add_account(self, user: str, password: str, sessions: int = 0) -> str:
        """Add an account with ``sessions`` generated sessions; returns its user id."""
        with self._lock:
            if user in self._accounts:
                raise ValueError(f"account {user!r} exists already")
            used = {a.uid for a in self._accounts.values()}
            uid = str(self._rng.randint(10_000, 99_999))
            while uid in used:
                uid = str(self._rng.randint(10_000, 99_999))
            devices = [self._new_device() for _ in range(self._rng.randint(1, 2))]
            self._accounts[user] = _Account(user, password, uid, devices)
        self._seed_sessions(user, sessions, None)
        return uid

    def _new_device(self, label: str | None = None) -> dict[str, str]:
        device_id = f"{self._rng.getrandbits(24):06x}"
        return {
            "device_id": device_id,
            "label": label if label is not None else str(self._rng.randint(1_000, 40_000)),
            "model": self._rng.choice(MODELS),
            "hardware_code": device_id,
            "purchase_code": "".join(self._rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ23456789", k=8)),
            "purchase_id": str(self._rng.randint(1_000, 9_999)),
        }

    def _seed_sessions(self, user: str, count: int, size_bytes: int | None) -> None:
        # Initial sessions lie over the three weeks before `now`, ids growing with start time.
        offsets = sorted(
            (self._rng.uniform(3_600, 21 * 86_400) for _ in range(count)), reverse=True
        )
        for offset in offsets:
            if size_bytes is None:
                duration = self._random_duration()
            else:
                duration = zipgen.duration_for_size(self.seed, size_bytes)
            # A session has ended before the platform lists it.
            start = int(self._now - max(offset, duration + 60))
            self.add_session(user, start_time=start, duration=duration)

    def _random_duration(self) -> float:
        seconds = self._rng.uniform(60, 5_400)
        if self._rng.random() < 0.25:
            return round(seconds * 32) / 32  # real durations can be fractional ("62.46875")
        return float(int(seconds))

    def add_session(
        self,
        user: str | None = None,
        start_time: int | None = None,
        duration: float | None = None,
        label: str | int | None = None,
        size_bytes: int | None = None,
    ) -> dict[str, str]:
        """Publish a new session for ``user`` (default account); returns its row.

        ``start_time`` defaults to a recording that ended shortly before now. ``label`` picks
        the account's device with that label (one is added if none has it). ``size_bytes`` makes
        the ZIP about that size by choosing the duration, so it excludes ``duration``.
        """
        if size_bytes is not None and duration is not None:
            raise ValueError("give duration or size_bytes, not both")
        with self._lock:
            account = self._account(user)
            if size_bytes is not None:
                duration = zipgen.duration_for_size(self.seed, int(size_bytes))
            if duration is None:
                duration = self._random_duration()
            duration = float(duration)
            if start_time is None:
                start_time = int(time.time() - duration - self._rng.uniform(300, 7_200))
            device = self._device_for(account, label)
            self._next_id += self._rng.randint(1, 40)
            sid = str(self._next_id)
            row = {
                "id": sid,
                "start_time": str(int(start_time)),
                "duration": _fmt_duration(duration),
                "device_id": device["device_id"],
                "label": device["label"],
                "device": device["model"],
                "status": "0",
                "exit_code": "0",
            }
            account.sessions[sid] = row
            self._owner[sid] = account.user
            self._meta[sid] = _Meta(int(start_time), duration)
            return dict(row)

    def _device_for(self, account: _Account, label: str | int | None) -> dict[str, str]:
        if label is None:
            return self._rng.choice(account.devices)
        for device in account.devices:
            if device["label"] == str(label):
                return device
        device = self._new_device(str(label))
        account.devices.append(device)
        return device

    def publish_late(self, user: str | None = None, days_ago: float = 30) -> dict[str, str]:
        """Publish a session recorded ``days_ago`` days ago (the platform processed it late)."""
        return self.add_session(user, start_time=int(time.time() - days_ago * 86_400))

    def sessions(self, user: str | None = None) -> list[dict[str, str]]:
        """The account's current session rows, by id."""
        with self._lock:
            rows = self._account(user).sessions.values()
            return [dict(r) for r in sorted(rows, key=lambda r: int(r["id"]))]

    def devices(self, user: str | None = None) -> list[dict[str, str]]:
        """The account's purchased devices."""
        with self._lock:
            return [dict(d) for d in self._account(user).devices]

    def user_id(self, user: str | None = None) -> str:
        with self._lock:
            return self._account(user).uid

    def deleted_ids(self, user: str | None = None) -> set[str]:
        """Ids of sessions removed by a DELETE that took effect."""
        with self._lock:
            return set(self._account(user).deleted)

    def login_count(self, user: str | None = None) -> int:
        """Successful logins of the account so far."""
        with self._lock:
            return self._account(user).logins

    def expire_cookies(self) -> int:
        """Kill every live cookie of every account; returns how many died."""
        with self._lock:
            count = len(self._cookies)
            self._cookies.clear()
            for account in self._accounts.values():
                account.cookies.clear()
            return count

    @property
    def faults(self) -> Faults:
        return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault settings; takes effect for the next request."""
        self._faults = faults

    def stats(self) -> dict[str, Any]:
        """Counts for tests and benchmarks (JSON-ready; no secrets).

        Keys: ``requests`` (per endpoint: authenticate, login_page, dashboard, sessions_page,
        sessions_list, session, session_delete, devices, studies, study_sessions, download,
        not_found ...), ``responses`` (per status code, as strings), ``faults`` (injections per
        fault name), ``max_in_flight`` (per endpoint and ``all``), ``bytes_sent`` (response body
        bytes), ``internal_errors`` (simulator bugs answered 500; should stay 0), ``accounts``
        (per user: user_id, sessions, session_ids, deleted, logins, failed_logins,
        valid_cookies, max_valid_cookies).
        """
        with self._lock:
            return {
                "requests": dict(self._requests),
                "responses": dict(self._responses),
                "faults": dict(self._fault_counts),
                "max_in_flight": dict(self._max_in_flight),
                "bytes_sent": self._bytes_sent,
                "internal_errors": self._errors["internal"],
                "accounts": {
                    a.user: {
                        "user_id": a.uid,
                        "sessions": len(a.sessions),
                        "session_ids": sorted(a.sessions, key=int),
                        "deleted": sorted(a.deleted, key=int),
                        "logins": a.logins,
                        "failed_logins": a.failed_logins,
                        "valid_cookies": len(a.cookies),
                        "max_valid_cookies": a.max_cookies,
                    }
                    for a in self._accounts.values()
                },
            }

    # --- test hooks -------------------------------------------------------------------------------

    def request_log(self) -> list[dict[str, Any]]:
        """Every platform request (admin ones excepted) in arrival order: ``t`` (time.monotonic()
        at arrival), ``method``, ``path`` (with its query), ``endpoint``, ``status`` (as answered;
        None while in flight) and ``fault`` (the injected fault's name, or None)."""
        with self._lock:
            return [dict(e) for e in self._request_log]

    def wait_requests(self, endpoint: str, count: int, timeout: float = 30.0) -> bool:
        """Block until ``count`` requests to ``endpoint`` (a ``stats()["requests"]`` key, or
        ``"all"``) have arrived; False on timeout. An event to wait on, instead of a sleep."""

        def arrived() -> bool:
            total = sum(self._requests.values()) if endpoint == "all" else self._requests[endpoint]
            return total >= count

        with self._arrived:
            return self._arrived.wait_for(arrived, timeout)

    def set_listing_hook(self, hook: Callable[[str, list[dict[str, Any]]], Any] | None) -> None:
        """Serve ``hook(user, rows)`` as the session list instead of ``rows`` (the account's
        sessions, already filtered and shuffled). Whatever the hook returns is sent as JSON:
        hostile rows, numbers for strings, duplicates, an empty list. None restores the
        faithful list."""
        with self._lock:
            self._listing_hook = hook

    def replace_zip(self, session_id: str | int, data: bytes | None) -> None:
        """Serve ``data`` as the session's ZIP (foreign members, a ZIP bomb, garbage) from
        now on; None restores the generated one. ``zip_bytes`` follows, as it is "as served"."""
        with self._lock:
            if data is None:
                self._zip_override.pop(str(session_id), None)
            else:
                self._zip_override[str(session_id)] = bytes(data)

    def issued_cookies(self, user: str | None = None) -> set[str]:
        """Every session cookie value ever issued to the account, live or dead (to prove
        that no client writes one to disk or to a log)."""
        with self._lock:
            return set(self._issued.get(self._account(user).user, ()))

    def _account(self, user: str | None) -> _Account:
        try:
            return self._accounts[self.user if user is None else user]
        except KeyError:
            raise KeyError(f"no account {user!r}") from None

    # --- ZIPs -------------------------------------------------------------------------------------

    def zip_bytes(self, session_id: str | int) -> bytes:
        """The session's ZIP, byte for byte as ``download.php`` serves it."""
        kind, data, _size, _sha = self._zip(str(session_id))
        return data if kind == "mem" else Path(data).read_bytes()

    def zip_path(self, session_id: str | int) -> Path:
        """A file holding the session's ZIP (built once into the cache directory)."""
        sid = str(session_id)
        kind, data, size, sha = self._zip(sid)
        if kind == "disk":
            return data
        with self._lock:
            path = self._cache_dir() / f"{sid}.zip"
            if not path.exists():
                path.write_bytes(data)
            self._disk_cache[sid] = (path, size, sha)
        return path

    def zip_sha256(self, session_id: str | int) -> str:
        """The sha256 (hex) of the session's ZIP; also its ETag."""
        return self._zip(str(session_id))[3]

    def _cached(self, sid: str) -> tuple[str, Any, int, str] | None:
        with self._lock:
            if sid in self._mem_cache:
                self._mem_cache.move_to_end(sid)
                data, sha = self._mem_cache[sid]
                return "mem", data, len(data), sha
            if sid in self._disk_cache:
                path, size, sha = self._disk_cache[sid]
                if path.exists():
                    return "disk", path, size, sha
                del self._disk_cache[sid]  # removed under us (or by stop()): build again
            return None

    def _zip(self, sid: str) -> tuple[str, Any, int, str]:
        with self._lock:
            override = self._zip_override.get(sid)
            if override is not None:
                return "mem", override, len(override), _sha256(override)
            if sid not in self._meta:
                raise KeyError(f"no session {sid!r}")
            meta = self._meta[sid]
            build_lock = self._build_locks.setdefault(sid, threading.Lock())
        with build_lock:  # one build per session even when many threads ask at once
            cached = self._cached(sid)
            if cached is not None:
                return cached
            if zipgen.estimate_size(self.seed, meta.duration) <= MEMORY_ZIP_LIMIT:
                data = zipgen.zip_bytes(self.seed, sid, meta.start_time, meta.duration)
                sha = _sha256(data)
                with self._lock:
                    self._remember(sid, data, sha)
                return "mem", data, len(data), sha
            with self._lock:
                path = self._cache_dir() / f"{sid}.zip"
            part = path.with_suffix(".part")
            with open(part, "wb") as out:
                size, sha = zipgen.write_zip(out, self.seed, sid, meta.start_time, meta.duration)
            part.replace(path)
            with self._lock:
                self._disk_cache[sid] = (path, size, sha)
            return "disk", path, size, sha

    def _remember(self, sid: str, data: bytes, sha: str) -> None:
        self._mem_cache[sid] = (data, sha)
        self._mem_bytes += len(data)
        while self._mem_bytes > MEMORY_CACHE_BUDGET and len(self._mem_cache) > 1:
            _, (old, _) = self._mem_cache.popitem(last=False)
            self._mem_bytes -= len(old)

    def _cache_dir(self) -> Path:
        if self._tmpdir is None or not self._tmpdir.exists():
            self._tmpdir = Path(tempfile.mkdtemp(prefix="e4sim-"))
            self._tmp_finalizer = weakref.finalize(
                self, shutil.rmtree, str(self._tmpdir), ignore_errors=True
            )
        return self._tmpdir

    # --- used by the request handler --------------------------------------------------------------

    def _login(self, user: str, password: str) -> str | None:
        with self._lock:
            account = self._accounts.get(user)
            if account is None or not secrets.compare_digest(
                account.password.encode(), password.encode()
            ):
                if account is not None:
                    account.failed_logins += 1
                return None
            if self._faults.one_login:
                for old in account.cookies:
                    self._cookies.pop(old, None)
                account.cookies.clear()
            cookie = secrets.token_hex(13)
            account.cookies.add(cookie)
            self._issued.setdefault(user, set()).add(cookie)
            self._cookies[cookie] = user
            account.logins += 1
            account.max_cookies = max(account.max_cookies, len(account.cookies))
            return cookie

    def _cookie_user(self, cookie: str | None) -> _Account | None:
        with self._lock:
            user = self._cookies.get(cookie or "")
            return self._accounts[user] if user else None

    def _kill_cookie(self, cookie: str) -> None:
        with self._lock:
            user = self._cookies.pop(cookie, None)
            if user:
                self._accounts[user].cookies.discard(cookie)

    def _owned(self, account: _Account, sid: str) -> dict[str, str] | None:
        with self._lock:
            row = account.sessions.get(sid)
            return dict(row) if row else None

    def _delete(self, account: _Account, sid: str) -> bool:
        with self._lock:
            if account.sessions.pop(sid, None) is None:
                return False
            account.deleted.add(sid)
            return True

    def _count(self, counter: str, key: str, n: int = 1) -> None:
        with self._lock:
            getattr(self, counter)[key] += n

    def _enter(self, endpoint: str, method: str = "", path: str = "") -> dict[str, Any]:
        with self._lock:
            self._requests[endpoint] += 1
            for key in (endpoint, "all"):
                self._in_flight[key] += 1
                self._max_in_flight[key] = max(self._max_in_flight[key], self._in_flight[key])
            entry: dict[str, Any] = {
                "t": time.monotonic(),
                "method": method,
                "path": path,
                "endpoint": endpoint,
                "status": None,
                "fault": None,
            }
            self._request_log.append(entry)
            self._arrived.notify_all()
            return entry

    def _answered(self, entry: dict[str, Any], status: int) -> None:
        with self._lock:
            entry["status"] = status

    def _injected(self, entry: dict[str, Any] | None, fault: str) -> None:
        with self._lock:
            self._fault_counts[fault] += 1
            if entry is not None and entry["fault"] is None:
                entry["fault"] = fault

    def _leave(self, endpoint: str) -> None:
        with self._lock:
            self._in_flight[endpoint] -= 1
            self._in_flight["all"] -= 1

    def _sent(self, status: int) -> None:
        with self._lock:
            self._responses[str(status)] += 1

    def _sent_bytes(self, body_bytes: int) -> None:
        with self._lock:
            self._bytes_sent += body_bytes


def _fmt_duration(duration: float) -> str:
    return str(int(duration)) if float(duration).is_integer() else repr(float(duration))


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _numeric(row: dict[str, str]) -> dict[str, Any]:
    # The string_numbers fault: the fields a client must coerce, sent as JSON numbers.
    out: dict[str, Any] = dict(row)
    for key in ("id", "start_time", "duration", "label", "status", "exit_code", "purchase_id"):
        value = out.get(key)
        if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value):
            out[key] = float(value) if "." in value else int(value)
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, sim: Simulator) -> None:
        self.sim = sim
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request (a killed e4sync, a cut download) is normal
        # here; anything else is a simulator bug and is logged with its traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        log.exception("simulator: error while serving %s", client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        """Cut every open connection so that stop() does not wait on a slow client."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body waits for the
    # client's delayed ACK (40 ms a response on Linux).
    disable_nagle_algorithm = True
    server_version = "Apache"
    server: _Server
    _entry: dict[str, Any] | None = None  # this request's request_log() entry

    def version_string(self) -> str:
        return "Apache"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        # The request line holds no secret (credentials come in the POST body, never the URL).
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    # --- dispatch ---------------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        sim = self.server.sim
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length > 0 else b""
        if url.path.startswith("/_admin/"):
            self._send(self._admin(method, url.path[len("/_admin/") :]))
            return
        if not url.path.startswith("/connect/"):
            self._send(_Reply(404, _page("Not Found", "<h1>Not Found</h1>")))
            return
        rel = url.path[len("/connect/") :]
        endpoint, args = self._match(method, rel)
        self._entry = sim._enter(endpoint, method, self.path)
        try:
            try:
                reply, cut = self._connect(method, endpoint, args)
            except Exception:
                # A simulator bug must not pass for an injected fault: log it, count it, 500.
                log.exception("simulator error on %s %s", method, url.path)
                sim._count("_errors", "internal")
                reply, cut = _Reply(500, _page("Error", "<h1>simulator error</h1>")), ""
            sim._answered(self._entry, 503 if cut == "close" else reply.status)
            self._send(reply, cut=cut, download=endpoint == "download")
        finally:
            sim._leave(endpoint)

    def _match(self, method: str, rel: str) -> tuple[str, tuple[str, ...]]:
        known_path = False
        for route_method, pattern, name in _ROUTES:
            m = pattern.fullmatch(rel)
            if m:
                known_path = True
                if route_method == ("GET" if method == "HEAD" else method):
                    return name, m.groups()
        return ("method_not_allowed" if known_path else "not_found"), ()

    def _connect(self, method: str, endpoint: str, args: tuple[str, ...]) -> tuple[_Reply, str]:
        sim = self.server.sim
        faults = sim.faults
        key = f"{method} {self.path}"
        if faults.latency and self.server.sim.stopping.wait(faults.latency):
            return _Reply(503, MAINTENANCE_PAGE), "close"
        if endpoint in ("not_found", "method_not_allowed"):
            status = 404 if endpoint == "not_found" else 405
            return _Reply(status, _page("Error", f"<h1>{status}</h1>")), ""
        if sim._dice.roll("error_5xx", key, faults.error_5xx):
            status = sim._dice.pick("error_5xx", key, (500, 502, 503))
            sim._injected(self._entry, "error_5xx")
            return _Reply(status, _page("Error", f"<h1>{status}</h1>")), ""
        if endpoint in _LOGIN_FLOW:
            return getattr(self, f"_ep_{endpoint}")(*args), ""

        cookie = self._cookie()
        account = sim._cookie_user(cookie)
        if account is None:
            return self._to_login(), ""
        if sim._dice.roll("expire_cookie", key, faults.expire_cookie):
            sim._kill_cookie(cookie or "")
            sim._injected(self._entry, "expire_cookie")
            return self._to_login(), ""
        if sim._dice.roll("rate_429", key, faults.rate_429):
            sim._injected(self._entry, "rate_429")
            retry = str(max(0, int(-(-faults.retry_after // 1))))
            return _Reply(429, _page("Too Many Requests", "<h1>429</h1>"),
                          headers=[("Retry-After", retry)]), ""  # fmt: skip
        reply = getattr(self, f"_ep_{endpoint}")(account, *args)
        cut = ""
        if reply.status in (200, 206):
            for fault in ("empty_body", "truncate_body", "reset_mid_body"):
                if sim._dice.roll(fault, key, getattr(faults, fault)):
                    sim._injected(self._entry, fault)
                    cut = fault
                    break
        return reply, cut

    def _cookie(self) -> str | None:
        jar = http.cookies.SimpleCookie()
        for header in self.headers.get_all("Cookie") or []:
            try:
                jar.load(header)
            except http.cookies.CookieError:
                continue
        morsel = jar.get("PHPSESSID")
        return morsel.value if morsel else None

    def _to_login(self) -> _Reply:
        return _Reply(
            302, _page("Found", '<a href="/connect/login.php">login</a>'),
            headers=[("Location", "/connect/login.php")],
        )  # fmt: skip

    # --- login flow -------------------------------------------------------------------------------

    def _ep_authenticate(self) -> _Reply:
        form = parse_qs(self.body.decode("utf-8", "replace"))
        user = (form.get("username") or [""])[0]
        password = (form.get("password") or [""])[0]
        cookie = self.server.sim._login(user, password)
        if cookie is None:
            return self._to_login()
        return _Reply(
            302,
            _page("Found", '<a href="/connect/dashboard.php">dashboard</a>'),
            headers=[
                ("Set-Cookie", f"PHPSESSID={cookie}; path=/; HttpOnly"),
                ("Location", "/connect/dashboard.php"),
            ],
        )

    def _ep_login_page(self) -> _Reply:
        return _Reply(200, LOGIN_PAGE)

    def _ep_index(self) -> _Reply:
        return self._to_login()

    def _ep_dashboard(self) -> _Reply:
        if self.server.sim._cookie_user(self._cookie()) is None:
            return self._to_login()
        return _Reply(200, DASHBOARD_PAGE)

    def _ep_sessions_page(self) -> _Reply:
        account = self.server.sim._cookie_user(self._cookie())
        if account is None:
            return self._to_login()
        return _Reply(200, _sessions_page(account.uid))

    # --- data -------------------------------------------------------------------------------------

    def _json(self, value: Any) -> _Reply:
        return _Reply(200, json.dumps(value).encode(), _JSON)

    def _forbidden(self) -> _Reply:
        return _Reply(403, _page("Forbidden", "<h1>Forbidden</h1>"))

    def _not_found(self) -> _Reply:
        return _Reply(404, _page("Not Found", "<h1>Not Found</h1>"))

    def _rows(self, rows: list[dict[str, str]]) -> list[dict[str, Any]]:
        if not self.server.sim.faults.string_numbers:
            return rows
        return [_numeric(r) if i % 2 == 0 else r for i, r in enumerate(rows)]

    def _ep_sessions_list(self, account: _Account, uid: str) -> _Reply:
        if uid != account.uid:
            return self._forbidden()
        try:
            low = int(float(self.query["from"][0])) if "from" in self.query else None
            high = int(float(self.query["to"][0])) if "to" in self.query else None
        except ValueError:
            return _Reply(400, _page("Bad Request", "<h1>from and to must be numbers</h1>"))
        sim = self.server.sim
        rows = [
            r
            for r in sim.sessions(account.user)
            if (low is None or int(r["start_time"]) >= low)
            and (high is None or int(r["start_time"]) <= high)
        ]
        # The platform never promised an order: shuffle, reproducibly for the same list.
        random.Random(f"{sim.seed}:{uid}:{[r['id'] for r in rows]}").shuffle(rows)
        with sim._lock:
            hook = sim._listing_hook
        if hook is not None:
            return self._json(hook(account.user, self._rows(rows)))
        return self._json(self._rows(rows))

    def _ep_session(self, account: _Account, sid: str) -> _Reply:
        row = self.server.sim._owned(account, sid)
        return self._json(self._rows([row])[0]) if row else self._not_found()

    def _ep_session_delete(self, account: _Account, sid: str) -> _Reply:
        sim = self.server.sim
        key = f"DELETE {self.path}"
        if sim._owned(account, sid) is None:
            return self._not_found()
        if sim._dice.roll("missing_session", key, sim.faults.missing_session):
            sim._injected(self._entry, "missing_session")
            return self._not_found()
        if sim._dice.roll("delete_lingers", key, sim.faults.delete_lingers):
            sim._injected(self._entry, "delete_lingers")
        else:
            sim._delete(account, sid)
        return self._json({})

    def _ep_devices(self, account: _Account, uid: str) -> _Reply:
        if uid != account.uid:
            return self._forbidden()
        return self._json(self._rows(self.server.sim.devices(account.user)))

    def _ep_studies(self, account: _Account) -> _Reply:
        return self._json([])

    def _ep_study_sessions(self, account: _Account, study: str) -> _Reply:
        return self._not_found()

    def _ep_download(self, account: _Account) -> _Reply:
        sim = self.server.sim
        key = f"GET {self.path}"
        sid = (self.query.get("id") or [""])[0]
        row = sim._owned(account, sid)
        if row is None:
            return self._not_found()
        if sim._dice.roll("missing_session", key, sim.faults.missing_session):
            sim._injected(self._entry, "missing_session")
            return self._not_found()
        if sim._dice.roll("html_instead_of_zip", key, sim.faults.html_instead_of_zip):
            sim._injected(self._entry, "html_instead_of_zip")
            return _Reply(200, MAINTENANCE_PAGE)
        kind, data, size, sha = sim._zip(sid)
        etag = f'"{sha}"'
        name = zipgen.download_filename(row["start_time"], row["label"])
        headers = [
            ("Content-Disposition", f'attachment; filename="{name}"'),
            ("Accept-Ranges", "bytes"),
            ("ETag", etag),
            ("Cache-Control", "private"),
        ]
        status, start, end = 200, 0, size
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range.strip() == etag):
            m = re.fullmatch(r"\s*bytes=(\d+)-(\d*)\s*", wanted)
            if m:
                first = int(m.group(1))
                last = int(m.group(2)) if m.group(2) else size - 1
                if first >= size or last < first:
                    headers.append(("Content-Range", f"bytes */{size}"))
                    return _Reply(416, b"", "text/plain", headers)
                status, start, end = 206, first, min(last, size - 1) + 1
                headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
        if kind == "mem":
            return _Reply(status, memoryview(data)[start:end], "application/zip", headers)
        return _Reply(status, b"", "application/zip", headers, path=data, offset=start,
                      length=end - start)  # fmt: skip

    # --- admin ------------------------------------------------------------------------------------

    def _admin(self, method: str, rel: str) -> _Reply:
        sim = self.server.sim
        try:
            payload = json.loads(self.body) if self.body else {}
            if not isinstance(payload, dict):
                raise ValueError("the body must be a JSON object")
            user = payload.get("user") or (self.query.get("user") or [None])[0]
            if (method, rel) == ("GET", "state"):
                return self._json(sim.stats())
            if (method, rel) == ("GET", "sessions"):
                return self._json(sim.sessions(user))
            if (method, rel) == ("POST", "accounts"):
                uid = sim.add_account(
                    payload["user"], payload["password"], int(payload.get("sessions", 0))
                )
                return self._json({"user_id": uid})
            if (method, rel) == ("POST", "sessions"):
                fields = {
                    k: payload.get(k) for k in ("start_time", "duration", "label", "size_bytes")
                }
                rows = [
                    sim.add_session(user, **fields) for _ in range(int(payload.get("count", 1)))
                ]
                return self._json({"sessions": rows})
            if (method, rel) == ("POST", "publish_late"):
                return self._json(sim.publish_late(user, float(payload.get("days_ago", 30))))
            if (method, rel) == ("POST", "expire_cookies"):
                return self._json({"expired": sim.expire_cookies()})
            if rel == "faults" and method in ("GET", "POST", "PUT"):
                if method != "GET":
                    base = sim.faults if method == "POST" else Faults()
                    sim.set_faults(base.merged(payload))
                return self._json(sim.faults.to_dict())
            m = re.fullmatch(r"zip/(\d+)", rel)
            if method == "GET" and m:
                kind, data, size, sha = sim._zip(m.group(1))
                headers = [("X-SHA256", sha)]
                if kind == "mem":
                    return _Reply(200, data, "application/zip", headers)
                return _Reply(200, b"", "application/zip", headers, path=data, length=size)
            return _Reply(404, json.dumps({"error": f"no admin endpoint {method} {rel}"}).encode(),
                          _JSON)  # fmt: skip
        except KeyError as e:
            return _Reply(404, json.dumps({"error": str(e.args[0])}).encode(), _JSON)
        except (ValueError, TypeError) as e:
            return _Reply(400, json.dumps({"error": str(e)}).encode(), _JSON)

    # --- sending ----------------------------------------------------------------------------------

    def _send(self, reply: _Reply, cut: str = "", download: bool = False) -> None:
        sim = self.server.sim
        faults = sim.faults
        stopping = sim.stopping
        if cut == "close":  # the simulator is stopping
            self.close_connection = True
            return
        if download and faults.slow_first_byte and reply.status in (200, 206):
            key = f"GET {self.path}"
            if sim._dice.roll("slow_first_byte", key, faults.slow_first_byte_rate):
                sim._injected(self._entry, "slow_first_byte")
                if stopping.wait(faults.slow_first_byte):
                    self.close_connection = True
                    return
        size = reply.size
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.ctype)
        self.send_header("Content-Length", "0" if cut == "empty_body" else str(size))
        for name, value in reply.headers:
            self.send_header(name, value)
        if cut:
            self.send_header("Connection", "close")
        self.end_headers()
        sim._sent(reply.status)
        if cut == "empty_body" or self.command == "HEAD":
            return
        limit = size
        if cut == "truncate_body":
            limit = size // 2
        elif cut == "reset_mid_body":
            # Small enough to sit in the client's receive buffer before the reset arrives.
            limit = min(size // 2, 32 * 1024)
        try:
            sent = self._write_body(reply, limit, faults.bandwidth, stopping)
        except OSError:  # the client went away (or stop() cut the connection)
            self.close_connection = True
            return
        sim._sent_bytes(sent)
        if cut == "reset_mid_body":
            self._reset()
        elif cut:
            self.close_connection = True

    def _write_body(
        self, reply: _Reply, limit: int, bandwidth: int, stopping: threading.Event
    ) -> int:
        chunk = 256 * 1024 if not bandwidth else max(1024, bandwidth // 20)
        began = time.monotonic()
        sent = 0
        if reply.path is not None:
            with open(reply.path, "rb") as f:
                f.seek(reply.offset)
                if not bandwidth and limit == reply.length:
                    return self.connection.sendfile(f, reply.offset, limit)
                while sent < limit and not stopping.is_set():
                    data = f.read(min(chunk, limit - sent))
                    if not data:
                        break
                    self.wfile.write(data)
                    sent += len(data)
                    self._throttle(began, sent, bandwidth, stopping)
            return sent
        body = memoryview(reply.body)
        while sent < limit and not stopping.is_set():
            piece = body[sent : min(limit, sent + chunk)]
            self.wfile.write(piece)
            sent += len(piece)
            self._throttle(began, sent, bandwidth, stopping)
        return sent

    @staticmethod
    def _throttle(began: float, sent: int, bandwidth: int, stopping: threading.Event) -> None:
        if bandwidth:
            ahead = sent / bandwidth - (time.monotonic() - began)
            if ahead > 0:
                stopping.wait(ahead)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN: an abrupt reset.
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
