"""e4sync.sources.e4connect.simulator.handler: the HTTP side of the E4 Connect look-alike.

Owns the platform's wire behaviour (``shared/e4connect-protocol.md``): the routes, the HTML
pages, redirects, cookies, JSON, ranges, fault injection at request time, the admin endpoints, and
the threaded loopback server (``_Server``, ``_Handler``) that
:class:`~.server.Simulator` starts. The state it reads and changes (accounts,
sessions, ZIPs, counters) belongs to the simulator; the handler reaches it through
``self.server.sim``.

Choices where the real platform is unknown (documented here, tested in tests/unit):

- A data request for another user's id (``connect.php/users/{uid}/...``) answers 403 (HTML).
- A session of another account is 404 for GET, DELETE and download, as an unknown id is.
- ``DELETE connect.php/sessions/{id}`` answers 200 ``{}``; with an ``If-Match`` that is not the
  ZIP's current ETag, 412 (E4 Connect's own behaviour is unknown; e4sync proves the version
  with a ranged GET first and sends If-Match only as a second guard).
- ``download.php`` sends ``Last-Modified``: when the session's bytes last changed
  (``Simulator.change_content``), else when the simulator started.
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

Standard library only. Must not import the simulator's ``server`` at run time (the server imports
this module; the ``TYPE_CHECKING`` import is for type hints only), nor e4sync.state, e4sync.sync
or e4sync.sources.e4connect.client.
Must not import: e4sync.state, e4sync.sync, e4sync.sources.e4connect.client, e4sync.cli, requests.
"""

from __future__ import annotations

import dataclasses
import http.cookies
import json
import logging
import random
import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from e4sync.sources.e4connect.simulator import zipgen
from e4sync.sources.e4connect.simulator.faults import Faults

if TYPE_CHECKING:
    from e4sync.sources.e4connect.simulator.server import Simulator, _Account

log = logging.getLogger("e4sync.sources.e4connect.simulator")

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
        self._entry = sim._enter(endpoint, method, self.path, self.headers.get("Range"))
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
        if_match = self.headers.get("If-Match")
        if if_match and if_match.strip() not in ("*", f'"{sim.zip_sha256(sid)}"'):
            return _Reply(412, b"the session's ZIP has changed", "text/plain")
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
        if sid in sim.faults.extra_member_sessions:
            sim._injected(self._entry, "extra_member")
        etag = f'"{sha}"'
        name = zipgen.download_filename(row["start_time"], row["label"])
        headers = [
            ("Content-Disposition", f'attachment; filename="{name}"'),
            ("Accept-Ranges", "bytes"),
            ("ETag", etag),
            ("Last-Modified", sim.last_modified(sid)),
            ("Cache-Control", "private"),
        ]
        status, start, end = 200, 0, size
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and not sim.faults.hide_size and (if_range is None or if_range.strip() == etag):
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
        # A platform that never says a ZIP's size: the body ends with the connection.
        hidden = download and faults.hide_size and reply.status == 200 and not cut
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.ctype)
        if not hidden:
            self.send_header("Content-Length", "0" if cut == "empty_body" else str(size))
        for name, value in reply.headers:
            self.send_header(name, value)
        if cut or hidden:
            self.send_header("Connection", "close")
            self.close_connection = True
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
