"""e4sync.sources.e4connect.simulator.server: the E4 Connect look-alike itself, on a loopback
HTTP server.

Owns :class:`Simulator`: accounts, cookies, sessions and devices in memory; session ZIPs from
:mod:`.zipgen` (small ones cached in memory, big ones built once into a temporary
file and streamed from disk; a session named by the ``extra_member_sessions`` fault gets its own
cached ZIP with one more member); fault settings from :mod:`.faults`; counters and
the request log; admin hooks as methods; and the lifecycle (start/stop) of the HTTP server. The wire
side (paths, redirects, cookies, JSON, the ``/_admin/`` JSON endpoints so another process can
drive ``e4sync simulate``, and the choices where the real platform is unknown) lives in
:mod:`e4sync.sources.e4connect.simulator.handler`, which this module imports.

Test hooks (methods only, off by default so the simulator stays faithful): ``request_log()``
and ``wait_requests()`` (when each request arrived and how it was answered, to measure
Retry-After and to wait for an event instead of sleeping), ``set_listing_hook()`` (serve
hostile listing rows: numbers, duplicates, NUL bytes, huge strings), ``replace_zip()`` (serve
other bytes for a session: foreign members, a ZIP bomb), ``issued_cookies()``.

Standard library only; must not import e4sync.state, e4sync.sync or the E4 client. The HTTP
module must not import this one at run time (it would be a cycle).
Must not import: e4sync.state, e4sync.sync, e4sync.sources.e4connect.client, e4sync.cli, requests.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import random
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e4sync.sources.e4connect.simulator import zipgen
from e4sync.sources.e4connect.simulator.faults import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    FaultDice,
    Faults,
)
from e4sync.sources.e4connect.simulator.handler import _Handler, _Server

log = logging.getLogger("e4sync.sources.e4connect.simulator")

MODELS = ("E4 2.1", "E4 2.2", "E4 3.3")
MEMORY_ZIP_LIMIT = 16 * 1024 * 1024
"""ZIPs estimated above this are built into a temporary file and streamed from disk."""
MEMORY_CACHE_BUDGET = 256 * 1024 * 1024
"""Total bytes of small ZIPs kept in memory; the oldest are dropped (and rebuilt on demand)."""
REQUEST_LOG_SIZE = 100_000
"""Requests remembered by ``request_log()``; the oldest are dropped."""


@dataclasses.dataclass
class _Account:
    user: str
    password: str
    uid: str
    devices: list[dict[str, str]]
    sessions: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    deleted: set[str] = dataclasses.field(default_factory=set)
    # sha256 of the ZIP the platform held when each session was deleted.
    deleted_sha256: dict[str, str] = dataclasses.field(default_factory=dict)
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


class Simulator:
    """An E4 Connect look-alike on loopback; see :mod:`.handler` for its choices.

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
        # Sessions whose bytes were changed under the same metadata: when, and every
        # sha256 served before (reprocessed or re-uploaded recordings).
        self._modified: dict[str, float] = {}
        self._versions: dict[str, list[str]] = {}
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
        None while in flight), ``fault`` (the injected fault's name, or None) and ``range``
        (the ``Range`` header asked for, or None)."""
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

    def change_content(self, session_id: str | int) -> str:
        """Serve new bytes for the session (another whole E4 recording of the same start and
        duration) under the same listed metadata, as a platform that reprocessed or had it
        re-uploaded would; its ETag and Last-Modified change with them. Returns the new
        sha256. The older versions' sha256 stay in :meth:`zip_versions`."""
        sid = str(session_id)
        # Outside the lock: building a ZIP takes its build lock, then this one.
        old = self.zip_sha256(sid)
        with self._lock:
            history = self._versions.setdefault(sid, [])
            history.append(old)
            meta = self._meta[sid]
            data = zipgen.zip_bytes(self.seed * 7919 + len(history), sid, meta.start_time,
                                    meta.duration)  # fmt: skip
            self._zip_override[sid] = data
            # HTTP dates have whole seconds: a change within the same second must still
            # show as a new Last-Modified.
            self._modified[sid] = max(time.time(), self._modified.get(sid, 0) + 1)
            return _sha256(data)

    def zip_versions(self, session_id: str | int) -> list[str]:
        """The sha256 of every version the session's ZIP has had, the current one last."""
        sid = str(session_id)
        current = self.zip_sha256(sid)
        with self._lock:
            return [*self._versions.get(sid, []), current]

    def last_modified(self, session_id: str | int) -> str:
        """The session ZIP's ``Last-Modified``: when its bytes were last changed, else when
        the simulator started."""
        with self._lock:
            when = self._modified.get(str(session_id), float(self._now))
        return email.utils.formatdate(when, usegmt=True)

    def deleted_sha256(self, user: str | None = None) -> dict[str, str]:
        """For every deleted session, the sha256 of the ZIP it had when it was deleted."""
        with self._lock:
            return dict(self._account(user).deleted_sha256)

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
            if sid in self._zip_override:
                key = f"{sid}-override-{sha[:16]}"  # never mistaken for the generated one
            else:
                key = self._cache_key(sid)
            path = self._cache_dir() / f"{key}.zip"
            if not path.exists():
                path.write_bytes(data)
            if sid not in self._zip_override:
                self._disk_cache[key] = (path, size, sha)
        return path

    def zip_sha256(self, session_id: str | int) -> str:
        """The sha256 (hex) of the session's ZIP; also its ETag."""
        return self._zip(str(session_id))[3]

    def _cache_key(self, sid: str) -> str:
        """The caches' key for the session's generated ZIP: the ``extra_member_sessions``
        fault makes other bytes, and switching it off must serve the genuine ones again."""
        extra = sid in self._faults.extra_member_sessions
        return f"{sid}-extra" if extra else sid

    def _cached(self, key: str) -> tuple[str, Any, int, str] | None:
        with self._lock:
            if key in self._mem_cache:
                self._mem_cache.move_to_end(key)
                data, sha = self._mem_cache[key]
                return "mem", data, len(data), sha
            if key in self._disk_cache:
                path, size, sha = self._disk_cache[key]
                if path.exists():
                    return "disk", path, size, sha
                del self._disk_cache[key]  # removed under us (or by stop()): build again
            return None

    def _zip(self, sid: str) -> tuple[str, Any, int, str]:
        with self._lock:
            override = self._zip_override.get(sid)
            if override is not None:
                return "mem", override, len(override), _sha256(override)
            if sid not in self._meta:
                raise KeyError(f"no session {sid!r}")
            meta = self._meta[sid]
            key = self._cache_key(sid)
            extra = key != sid
            build_lock = self._build_locks.setdefault(key, threading.Lock())
        with build_lock:  # one build per session even when many threads ask at once
            cached = self._cached(key)
            if cached is not None:
                return cached
            if zipgen.estimate_size(self.seed, meta.duration) <= MEMORY_ZIP_LIMIT:
                data = zipgen.zip_bytes(self.seed, sid, meta.start_time, meta.duration, extra)
                sha = _sha256(data)
                with self._lock:
                    self._remember(key, data, sha)
                return "mem", data, len(data), sha
            with self._lock:
                path = self._cache_dir() / f"{key}.zip"
            part = path.with_suffix(".part")
            with open(part, "wb") as out:
                size, sha = zipgen.write_zip(
                    out, self.seed, sid, meta.start_time, meta.duration, extra
                )
            part.replace(path)
            with self._lock:
                self._disk_cache[key] = (path, size, sha)
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

    # --- used by the request handler (simulator.handler) -----------------------------------

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
            if sid not in account.sessions:
                return False
        digest = self.zip_sha256(sid)  # outside the lock: see change_content
        with self._lock:
            if account.sessions.pop(sid, None) is None:
                return False
            account.deleted_sha256[sid] = digest
            account.deleted.add(sid)
            return True

    def _count(self, counter: str, key: str, n: int = 1) -> None:
        with self._lock:
            getattr(self, counter)[key] += n

    def _enter(
        self, endpoint: str, method: str = "", path: str = "", range_: str | None = None
    ) -> dict[str, Any]:
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
                "range": range_,
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
