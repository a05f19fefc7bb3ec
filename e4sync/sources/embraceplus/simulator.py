"""e4sync.sources.embraceplus.simulator: Empatica's S3 delivery on loopback, for tests,
the demo and the benchmarks.

Owns :class:`S3Delivery`: moto's S3 server (``ThreadedMotoServer`` on 127.0.0.1, a free
port) with one bucket seeded in the real layout (SPEC section 9, ``embraceplus-s3.md``)::

    v2/<org>/<study>/<site>/participant_data/<YYYY-MM-DD>/<participant>-<serial>/
        raw_data/v6/<study>-<site>-<participant>_<unix_s>.avro
        digital_biomarkers/aggregated_per_minute/<study>-<site>-<participant>_<YYYY-MM-DD>_<metric>.csv

from the real Avro file (``avrogen``), with moto's IAM auth on: read-only keys scoped to the
prefix (GetObject + ListBucket; DeleteObject is AccessDenied), full keys, and pairs that
must be refused (a wrong secret, an unknown key id). In front of moto sits a small threaded
proxy (:class:`Faults`, :class:`RequestRecord`): it passes every request and header through
unchanged (a client signs for the proxy's host:port, which moto then checks; only the
hop-by-hop ``Connection`` and ``Keep-Alive`` of moto's answers stay behind, so a client's
connection is kept alive as S3 keeps it, though moto closes each of its own), logs each one,
and on demand answers ``503 SlowDown`` or ``500 InternalError``, drops a connection, cuts
a GET body after N bytes, or adds latency. It also refuses a read-only key's listing outside
the prefix (moto ignores the policy's ``s3:prefix`` condition; S3 does not).

Admin hooks (:meth:`S3Delivery.add_late_file`, :meth:`~S3Delivery.grow_csv`,
:meth:`~S3Delivery.rewrite_same_size`, :meth:`~S3Delivery.remove`,
:meth:`~S3Delivery.put_multipart`, :meth:`~S3Delivery.put_with_checksum`,
:meth:`~S3Delivery.change_between_list_and_get`, :meth:`~S3Delivery.advance`) change the
bucket behind the client's back; they go to moto directly, never through the proxy, so they
are neither logged nor faulted. Seeding writes into moto's in-process backend (no HTTP): a
benchmark's 4,700 objects take about 3 s with ``max_samples`` set (a full-size raw file
costs about 17 ms to make, and moto keeps every object in memory).

moto keeps its state per process, so one delivery runs at a time in a process; starting one
resets moto. Everything listens on 127.0.0.1 only.

Must not import: e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import hashlib
import http.client
import http.server
import json
import logging
import math
import random
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from email.utils import formatdate
from typing import Any

from e4sync.sources.embraceplus.avrogen import (
    AvroTemplate,
    Enrollment,
    day_start,
    default_template,
    minute_csv,
    resync,
)

log = logging.getLogger(__name__)

DEFAULT_BUCKET = "empatica-us-east-1-prod-data"
DEFAULT_REGION = "us-east-1"
# Two of them hold a "-": the folder "<participant>-<serial>" splits on the last one.
DEFAULT_PARTICIPANTS = ("0010", "007-b", "TEST-3")
DEFAULT_METRICS = ("eda", "pulse-rate", "temperature", "step-counts")
MIB = 1024 * 1024

_ACTIVE = threading.Lock()  # moto's state is per process: one delivery at a time


# -- what the delivery hands out --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An access key id and its secret (never in ``repr``)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Participant:
    """A participant id (may hold ``-``) and the serial of the watch they wear."""

    id: str
    serial: str

    @property
    def folder(self) -> str:
        """The ``<participant>-<serial>`` folder name."""
        return f"{self.id}-{self.serial}"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object as S3 lists it: ``etag`` quoted, as S3 sends it (``'"…"'``,
    ``'"…-2"'`` for a multipart upload); the stored full-object checksum, base64."""

    key: str
    size: int
    etag: str
    last_modified: dt.datetime
    checksum_algorithm: str | None = None
    checksum: str | None = None


# -- the proxy's faults and log ---------------------------------------------------------------


@dataclass
class Faults:
    """What the proxy does wrong; change the attributes while it runs.

    ``*_next`` faults hit the next N requests that qualify (countdown, taken first);
    ``*_rate`` faults hit a share of them, decided by a hash of ``seed``, the request
    (method, path, query) and how often that request was seen, so a run repeats whatever
    the threads' order. Qualifying requests match ``operations`` (S3 names such as
    ``"GetObject"``, ``"ListObjectsV2"``; None: all) and ``key_glob`` (an fnmatch pattern
    on the object key; None: all). Cuts only hit GetObject answers with a body (200/206):
    the body stops after ``cut_after`` bytes (fewer if the body is no longer) and the
    connection closes. ``latency`` (seconds) is added to every request."""

    seed: int = 0
    latency: float = 0.0
    slowdown_rate: float = 0.0  # 503 SlowDown
    slowdown_next: int = 0
    error_rate: float = 0.0  # 500 InternalError
    error_next: int = 0
    drop_rate: float = 0.0  # the connection closed before any answer
    drop_next: int = 0
    cut_rate: float = 0.0  # a GET body cut short of its Content-Length
    cut_next: int = 0
    cut_after: int = 1024
    operations: tuple[str, ...] | None = None
    key_glob: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _seen: dict[tuple[str, str], int] = field(default_factory=dict, repr=False, compare=False)

    def active(self) -> bool:
        """Whether any fault or latency is set."""
        return any(
            getattr(self, f"{kind}_{how}") for kind in _KINDS for how in ("rate", "next")
        ) or bool(self.latency)

    def clear(self) -> None:
        """No faults and no latency (the seed, filters and ``cut_after`` stay)."""
        for kind in _KINDS:
            setattr(self, f"{kind}_rate", 0.0)
            setattr(self, f"{kind}_next", 0)
        self.latency = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def _qualifies(self, record: RequestRecord) -> bool:
        if self.operations is not None and record.operation not in self.operations:
            return False
        if self.key_glob is not None:
            return record.key is not None and fnmatch.fnmatchcase(record.key, self.key_glob)
        return True

    def _draw(self, kind: str, record: RequestRecord, seen: int) -> float:
        text = f"{self.seed}\x1f{kind}\x1f{record.method}\x1f{record.target}\x1f{seen}"
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest()) / 2**64

    def _take(self, kind: str, record: RequestRecord, seen: int) -> bool:
        # Called under the lock.
        if getattr(self, f"{kind}_next") > 0:
            setattr(self, f"{kind}_next", getattr(self, f"{kind}_next") - 1)
            return True
        rate = getattr(self, f"{kind}_rate")
        return rate > 0 and self._draw(kind, record, seen) < rate

    def _before(self, record: RequestRecord) -> str | None:
        """The fault answered instead of forwarding: "drop", "slowdown", "error" or None.
        Also counts the request (its ``seen``) for the cut decided later."""
        with self._lock:
            seen = self._seen.get((record.method, record.target), 0)
            self._seen[(record.method, record.target)] = seen + 1
            record._seen = seen
            if not self._qualifies(record):
                return None
            for kind in ("drop", "slowdown", "error"):
                if self._take(kind, record, seen):
                    return kind
        return None

    def _cut(self, record: RequestRecord, status: int, length: int | None) -> int | None:
        """Where to cut this answer's body, or None."""
        if record.operation != "GetObject" or status not in (200, 206):
            return None
        if length is not None and length == 0:
            return None
        with self._lock:
            if not self._qualifies(record) or not self._take("cut", record, record._seen):
                return None
        at = max(0, self.cut_after)
        return at if length is None else min(at, max(length - 1, 0))


_KINDS = ("slowdown", "error", "drop", "cut")


@dataclass
class RequestRecord:
    """One request the proxy saw. ``key`` is the object key (decoded), None for a bucket
    or service request; ``query`` the query string as sent; ``operation`` the S3 name
    (``ListObjectsV2``, ``GetObject``, ``HeadObject``, ``DeleteObject`` …, ``Other``);
    ``status`` what the client got (None: dropped before any answer); ``fault`` what the
    proxy did (``slowdown``, ``error``, ``drop``, ``cut``, ``access_denied``) or None;
    ``bytes_sent`` the body bytes the client got; ``seconds`` how long the answer took.
    A record is in the log from the request's arrival and is filled in before each part
    of the answer goes out, so a client holding its answer finds status and bytes set
    (``seconds`` only once the proxy has finished)."""

    at: float
    method: str
    path: str
    query: str
    operation: str
    key: str | None
    range: str | None
    if_match: str | None
    access_key_id: str | None
    status: int | None = None
    fault: str | None = None
    bytes_sent: int = 0
    seconds: float = 0.0
    _seen: int = field(default=0, repr=False, compare=False)

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    @property
    def params(self) -> dict[str, str]:
        """The query's parameters, decoded (``prefix``, ``continuation-token`` …)."""
        return dict(urllib.parse.parse_qsl(self.query, keep_blank_values=True))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("_seen")
        return out


def _operation(method: str, bucket: str | None, key: str | None, params: dict[str, str]) -> str:
    if bucket is None:
        return "ListBuckets" if method == "GET" else "Other"
    if key is None:
        if method == "GET":
            if "list-type" in params:
                return "ListObjectsV2"
            if "location" in params:
                return "GetBucketLocation"
            if "versions" in params:
                return "ListObjectVersions"
            if "uploads" in params:
                return "ListMultipartUploads"
            return "ListObjects"
        if method == "HEAD":
            return "HeadBucket"
        if method == "POST" and "delete" in params:
            return "DeleteObjects"
        return {"PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method, "Other")
    if "uploadId" in params:
        if method == "PUT":
            return "UploadPart"
        if method == "POST":
            return "CompleteMultipartUpload"
        return {"GET": "ListParts", "DELETE": "AbortMultipartUpload"}.get(method, "Other")
    if method == "POST" and "uploads" in params:
        return "CreateMultipartUpload"
    return {
        "GET": "GetObject",
        "HEAD": "HeadObject",
        "PUT": "PutObject",
        "DELETE": "DeleteObject",
    }.get(method, "Other")


def _access_key_of(headers: Any, params: dict[str, str]) -> str | None:
    auth = headers.get("Authorization") or ""
    credential = params.get("X-Amz-Credential", "")
    if "Credential=" in auth:
        credential = auth.split("Credential=", 1)[1]
    return credential.split("/", 1)[0].strip() or None if credential else None


def _describe(method: str, target: str, headers: Any) -> RequestRecord:
    """A record of a path-style S3 request (``/bucket/key?query``)."""
    path, _, query = target.partition("?")
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    parts = path.lstrip("/").split("/", 1)
    bucket = urllib.parse.unquote(parts[0]) if parts[0] else None
    key = urllib.parse.unquote(parts[1]) if len(parts) > 1 and parts[1] else None
    return RequestRecord(
        at=time.time(),
        method=method,
        path=path,
        query=query,
        operation=_operation(method, bucket, key, params),
        key=key,
        range=headers.get("Range"),
        if_match=headers.get("If-Match"),
        access_key_id=_access_key_of(headers, params),
    )


def s3_error_body(code: str, message: str, request_id: str) -> bytes:
    """S3's XML error document."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>{request_id}</HostId></Error>"
    ).encode()


_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "error": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
    "access_denied": (403, "Forbidden", "AccessDenied", "Access Denied"),
}


class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream`` (host, port).

    Requests, their headers (``Host`` too) and bodies pass unchanged, answers are streamed
    back unchanged, connections are kept alive on both sides. ``faults`` says what goes
    wrong, ``log`` holds a :class:`RequestRecord` per request (up to ``max_log``),
    ``list_scopes`` maps an access key id to the only prefix it may list, and hooks added
    with :meth:`before` run just before a matching request is forwarded."""

    def __init__(
        self,
        upstream: tuple[str, int],
        faults: Faults | None = None,
        port: int = 0,
        max_log: int = 1_000_000,
        timeout: float = 60.0,
    ):
        self.upstream = upstream
        self.faults = faults if faults is not None else Faults()
        self.max_log = max_log
        self.timeout = timeout
        self.list_scopes: dict[str, str] = {}
        self._log: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._hooks: list[tuple[Callable[[RequestRecord], bool], Callable[[], None]]] = []
        self._sockets: set[socket.socket] = set()
        self._server = _ProxyServer(("127.0.0.1", port), _ProxyHandler)
        self._server.proxy = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="s3-fault-proxy",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:  # wake the handlers blocked on a kept-alive connection
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def log(self) -> list[RequestRecord]:
        """A copy of the requests seen so far, in the order they arrived."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def count(self, operation: str | None = None, **where: Any) -> int:
        """How many logged requests have this ``operation`` and these attribute values
        (``count("ListObjectsV2")``, ``count(method="GET", status=503)``)."""
        return sum(
            1
            for r in self.log
            if (operation is None or r.operation == operation)
            and all(getattr(r, name) == value for name, value in where.items())
        )

    def before(self, match: Callable[[RequestRecord], bool], hook: Callable[[], None]) -> None:
        """Run ``hook`` once, just before the first request ``match`` accepts is
        forwarded (after the faults decided to forward it)."""
        with self._lock:
            self._hooks.append((match, hook))

    def _take_hooks(self, record: RequestRecord) -> list[Callable[[], None]]:
        with self._lock:
            due = [(m, h) for m, h in self._hooks if m(record)]
            for pair in due:
                self._hooks.remove(pair)
        return [h for _, h in due]

    def _arrived(self, record: RequestRecord) -> None:
        # Logged on arrival and filled in as the answer goes out (status before the first
        # byte, bytes before they are written), so a client that has its answer finds it.
        with self._lock:
            if len(self._log) < self.max_log:
                self._log.append(record)

    def _answered(self, record: RequestRecord) -> None:
        log.debug(
            "%s %s %s range=%s if-match=%s -> %s%s",
            record.method,
            record.target,
            record.operation,
            record.range,
            record.if_match,
            record.status,
            f" ({record.fault})" if record.fault else "",
        )

    def _denied(self, record: RequestRecord) -> bool:
        scope = self.list_scopes.get(record.access_key_id or "")
        if scope is None or record.operation not in ("ListObjectsV2", "ListObjects"):
            return False
        return not record.params.get("prefix", "").startswith(scope)


_HOP_BY_HOP = frozenset({"connection", "keep-alive"})


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away mid-answer (a killed pass): nothing to report
        super().handle_error(request, client_address)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        # An answer goes out as headers, then body: without TCP_NODELAY the body waits for
        # the client's delayed ACK of the headers (40 ms on Linux) on every request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._upstream: http.client.HTTPConnection | None = None
        with self.server.proxy._lock:
            self.server.proxy._sockets.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._close_upstream()
            with self.server.proxy._lock:
                self.server.proxy._sockets.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # each request is in the proxy's log

    def do_GET(self) -> None:
        self._relay()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _read_body(self) -> bytes:
        # Kept whole (S3 requests through the proxy carry small bodies), so that a request
        # can be sent again on a fresh upstream connection; a chunked body keeps its framing.
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raw = bytearray()
            while True:
                line = self.rfile.readline(65537)
                raw += line
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        trailer = self.rfile.readline(65537)
                        raw += trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return bytes(raw)
                raw += self.rfile.read(size + 2)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _relay(self) -> None:
        proxy = self.server.proxy
        started = time.monotonic()
        body = self._read_body()
        record = _describe(self.command, self.path, self.headers)
        proxy._arrived(record)
        try:
            self._serve(proxy, record, body)
        finally:
            record.seconds = time.monotonic() - started
            proxy._answered(record)

    def _serve(self, proxy: FaultProxy, record: RequestRecord, body: bytes) -> None:
        faults = proxy.faults
        if faults.latency > 0:
            time.sleep(faults.latency)
        fault = faults._before(record)
        if fault == "drop":
            record.fault = "drop"
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is None and proxy._denied(record):
            fault = "access_denied"
        if fault is not None:
            self._send_error(record, fault)
            return
        for hook in proxy._take_hooks(record):
            hook()
        try:
            response = self._forward(body)
        except OSError as exc:
            log.warning("upstream failed for %s %s: %s", record.method, record.target, exc)
            record.fault = "upstream"
            self._send_error(record, "error")
            return
        self._send_response(record, response)

    def _forward(self, body: bytes) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            if self._upstream is None:
                host, port = self.server.proxy.upstream
                self._upstream = http.client.HTTPConnection(
                    host, port, timeout=self.server.proxy.timeout
                )
                self._upstream.connect()
                self._upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = self._upstream
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    conn.putheader(name, value)
                conn.endheaders(body or None)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
                # A kept-alive upstream connection may have been closed: try a fresh one once.
                self._close_upstream()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _send_error(self, record: RequestRecord, fault: str) -> None:
        status, reason, code, message = _ERRORS[fault]
        request_id = hashlib.blake2b(f"{record.at}{record.target}".encode(), digest_size=8)
        payload = s3_error_body(code, message, request_id.hexdigest().upper())
        record.fault = record.fault or fault
        record.status = status
        self.send_response_only(status, reason)
        self.send_header("x-amz-request-id", request_id.hexdigest().upper())
        self.send_header("Date", formatdate(usegmt=True))
        self.send_header("Server", "AmazonS3")
        self.send_header("Content-Type", "application/xml")
        if self.command == "HEAD":  # S3 answers HEAD errors without a body
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(payload)))
        record.bytes_sent = len(payload)
        self.end_headers()
        self.wfile.write(payload)

    def _send_response(self, record: RequestRecord, response: http.client.HTTPResponse) -> None:
        record.status = response.status
        no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        length = None if no_body else response.length
        chunked = bool(response.chunked) and not no_body
        cut_at = None if no_body else self.server.proxy.faults._cut(record, response.status, length)
        if cut_at is not None:
            record.fault = "cut"
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            # Connection and Keep-Alive are hop-by-hop: moto's server closes each of its
            # connections, the client's stays open (S3 keeps connections alive).
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.end_headers()
        if no_body:
            response.read()
            return
        sent = 0
        while True:
            piece = response.read(64 * 1024)
            if not piece:
                break
            if cut_at is not None and sent + len(piece) > cut_at:
                piece = piece[: cut_at - sent]
            sent += len(piece)
            record.bytes_sent = sent
            if chunked and piece:
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            elif piece:
                self.wfile.write(piece)
            if cut_at is not None and sent >= cut_at:
                break
        if cut_at is not None:
            self.wfile.flush()
            self._close_upstream()  # the rest of the body is never read
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif chunked:
            self.wfile.write(b"0\r\n\r\n")
        elif length is None:
            self.close_connection = True  # the body ended with the upstream connection
        if response.will_close:
            self._close_upstream()


# -- the delivery -----------------------------------------------------------------------------


@dataclass
class _Csv:
    participant: Participant
    day: dt.date
    metric: str
    minutes: int


def serial_for(participant: str, seed: int = 0) -> str:
    """A watch serial shaped like the real ones (``3YK3K15223``, ``3YK3M1619H``)."""
    rng = random.Random(f"serial\x1f{seed}\x1f{participant}")
    alphabet = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    return "3YK3" + rng.choice("KLM") + "".join(rng.choice(alphabet) for _ in range(5))


def _utc(unix_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(unix_s, dt.UTC)


class S3Delivery:
    """An EmbracePlus S3 delivery on loopback; a context manager (or :meth:`start` /
    :meth:`close`).

    Parameters (all keyword):

    - ``participants``: ids (``str``) or :class:`Participant` (id and serial), or a count
      (``"P001"`` …); a serial is made up for a bare id. Default: ``DEFAULT_PARTICIPANTS``.
    - ``days``: day folders, the last one ``today`` (filled up to ``today_minutes``).
    - ``raw_per_day``: raw ``.avro`` files per participant and full day, spread evenly
      (48 is every 30 minutes, as the watch uploads).
    - ``metrics``: per-minute CSVs per participant-day (``avrogen.METRICS`` names).
    - ``seed``: every name, time and value derives from it.
    - ``today``: the last day (UTC); None: the real UTC date. ``today_minutes``: how much
      of it has arrived; None: the real time of day if ``today`` is None, else 720.
    - ``org``, ``study``, ``site``: the prefix ``v2/<org>/<study>/<site>/`` and the files'
      enrollment; ``bucket``, ``region``.
    - ``max_samples``: cut every sample array to this many entries (small files for big
      benchmarks); None keeps the real file's (about 190 KB a file).
    - ``late_share``: the share of seeded raw files whose ``LastModified`` is 2-24 h after
      their recording (a watch out of range); :meth:`add_late_file` makes one arrive now.
    - ``checksum``: the full-object checksum stored with seeded objects, as S3 adds one
      (``"CRC64NVME"``; None: none).
    - ``template``: an :class:`~avrogen.AvroTemplate`; default: the real file
      (``avrogen.default_template``).
    - ``proxy``: put the fault proxy in front (default); ``faults``: its initial
      :class:`Faults`; ``port``: the proxy's port (0: a free one).

    After :meth:`start`: ``endpoint_url`` (the proxy's URL, or moto's without the proxy),
    ``moto_url``, ``bucket``, ``prefix``, ``region``, ``readonly``, ``full``,
    ``wrong_secret``, ``unknown_key`` (:class:`KeyPair`), ``faults``, ``requests``,
    ``participants``, ``day_list``, ``now``; ``seed_seconds`` and ``object_count`` say what
    seeding took."""

    def __init__(
        self,
        *,
        participants: Sequence[str | Participant] | int = DEFAULT_PARTICIPANTS,
        days: int = 3,
        raw_per_day: int = 4,
        metrics: Sequence[str] = DEFAULT_METRICS,
        seed: int = 0,
        today: dt.date | None = None,
        today_minutes: int | None = None,
        org: str = "829",
        study: str = "1",
        site: str = "1",
        bucket: str = DEFAULT_BUCKET,
        region: str = DEFAULT_REGION,
        max_samples: int | None = None,
        late_share: float = 0.05,
        checksum: str | None = "CRC64NVME",
        template: AvroTemplate | None = None,
        proxy: bool = True,
        faults: Faults | None = None,
        port: int = 0,
    ):
        if days < 1 or raw_per_day < 0:
            raise ValueError("days must be at least 1 and raw_per_day not negative")
        if isinstance(participants, int):
            participants = [f"P{n:03d}" for n in range(1, participants + 1)]
        self.participants = [
            p if isinstance(p, Participant) else Participant(p, serial_for(p, seed))
            for p in participants
        ]
        if len({p.id for p in self.participants}) != len(self.participants):
            raise ValueError("participant ids repeat")
        self.seed = seed
        self.raw_per_day = raw_per_day
        self.metrics = tuple(metrics)
        self.org, self.study, self.site = str(org), str(study), str(site)
        self.bucket = bucket
        self.region = region
        self.prefix = f"v2/{self.org}/{self.study}/{self.site}/"
        self.max_samples = max_samples
        self.late_share = late_share
        self.checksum = checksum
        real_today = dt.datetime.now(dt.UTC)
        self.today = today or real_today.date()
        if today_minutes is None:
            today_minutes = real_today.hour * 60 + real_today.minute if today is None else 720
        self.today_minutes = max(0, min(1440, today_minutes))
        self.day_list = [self.today - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]
        self.now = day_start(self.today) + self.today_minutes * 60  # the delivery's clock
        self._template = template
        self._use_proxy = proxy
        self._port = port
        self.faults = faults if faults is not None else Faults(seed=seed)
        self._raws: dict[str, tuple[Participant, int]] = {}
        self._csvs: dict[str, _Csv] = {}
        self._late_count = 0
        self._rewrites = 0
        self._server: Any = None
        self._proxy: FaultProxy | None = None
        self._backend: Any = None
        self._admin_client: Any = None
        self._werkzeug_level: int | None = None
        self._auth_before: str | None = None
        self._locked = False
        self.moto_url = ""
        self.endpoint_url = ""
        self.readonly = self.full = self.wrong_secret = self.unknown_key = KeyPair("", "")
        self.seed_seconds = 0.0
        self.object_count = 0

    # -- lifecycle

    def __enter__(self) -> S3Delivery:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> S3Delivery:
        """Start moto (and the proxy), create the bucket and keys, seed the objects."""
        if not _ACTIVE.acquire(blocking=False):
            raise RuntimeError("an S3Delivery is already running in this process (moto's state)")
        self._locked = True
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        from moto import settings
        from moto.server import ThreadedMotoServer

        werkzeug = logging.getLogger("werkzeug")
        if werkzeug.level == logging.NOTSET:  # else moto's server prints every request
            self._werkzeug_level = werkzeug.level
            werkzeug.setLevel(logging.WARNING)
        self._auth_before = repr(float(settings.INITIAL_NO_AUTH_ACTION_COUNT))
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        self._moto_api("reset", b"")
        self._moto_api("reset-auth", b"inf")
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        self._backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        self._backend.create_bucket(self.bucket, self.region)
        started = time.perf_counter()
        self._seed()
        self.seed_seconds = time.perf_counter() - started
        self.object_count = len(self._raws) + len(self._csvs)
        self._make_keys()
        self._moto_api("reset-auth", b"0")  # from now on every request is signed and checked
        if self._use_proxy:
            self._proxy = FaultProxy((host, port), self.faults, port=self._port).start()
            self._proxy.list_scopes[self.readonly.access_key_id] = self.prefix
            self.endpoint_url = self._proxy.url
        else:
            self.endpoint_url = self.moto_url
        log.info(
            "S3 delivery at %s: %d objects under s3://%s/%s seeded in %.2fs",
            self.endpoint_url,
            self.object_count,
            self.bucket,
            self.prefix,
            self.seed_seconds,
        )

    def close(self) -> None:
        """Stop the proxy and moto; moto's state is reset and its auth switched off."""
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
        if self._server is not None:
            try:
                self._moto_api("reset-auth", (self._auth_before or "inf").encode())
                self._moto_api("reset", b"")
            except OSError:
                pass
            self._server.stop()
            self._server = None
        if self._werkzeug_level is not None:
            logging.getLogger("werkzeug").setLevel(self._werkzeug_level)
            self._werkzeug_level = None
        self._admin_client = None
        if self._locked:
            self._locked = False
            _ACTIVE.release()

    def _moto_api(self, what: str, body: bytes) -> None:
        request = urllib.request.Request(
            f"{self.moto_url}/moto-api/{what}",
            data=body,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()

    def _make_keys(self) -> None:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.moto_url,
            region_name=self.region,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        objects = f"arn:aws:s3:::{self.bucket}/{self.prefix}*"
        readonly = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": objects},
                {
                    "Effect": "Allow",
                    "Action": ["s3:ListBucket"],
                    "Resource": f"arn:aws:s3:::{self.bucket}",
                    "Condition": {"StringLike": {"s3:prefix": [f"{self.prefix}*"]}},
                },
            ],
        }
        full = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        pairs = {}
        for user, policy in (("lab-readonly", readonly), ("lab-full", full)):
            iam.create_user(UserName=user)
            iam.put_user_policy(
                UserName=user, PolicyName=f"{user}-s3", PolicyDocument=json.dumps(policy)
            )
            key = iam.create_access_key(UserName=user)["AccessKey"]
            pairs[user] = KeyPair(key["AccessKeyId"], key["SecretAccessKey"])
        self.readonly, self.full = pairs["lab-readonly"], pairs["lab-full"]
        wrong = hashlib.sha256(f"wrong{self.seed}".encode()).digest()
        self.wrong_secret = KeyPair(self.readonly.access_key_id, base64.b64encode(wrong).decode())
        unknown = hashlib.sha256(f"unknown{self.seed}".encode()).hexdigest().upper()[:16]
        self.unknown_key = KeyPair("AKIA" + unknown, self.readonly.secret_access_key)

    # -- names

    def enrollment(self, participant: Participant) -> Enrollment:
        return Enrollment(participant.id, self.site, self.study, self.org)

    def folder_prefix(self, participant: Participant, day: dt.date) -> str:
        """``<prefix>participant_data/<day>/<participant>-<serial>/``."""
        return f"{self.prefix}participant_data/{day.isoformat()}/{participant.folder}/"

    def day_prefix(self, day: dt.date) -> str:
        """``<prefix>participant_data/<day>/``: what a pass lists for one day."""
        return f"{self.prefix}participant_data/{day.isoformat()}/"

    def raw_key(self, participant: Participant, unix_s: int) -> str:
        """The raw file recorded from ``unix_s``; its folder is that second's UTC day."""
        day = _utc(unix_s).date()
        name = f"{self.study}-{self.site}-{participant.id}_{unix_s}.avro"
        return f"{self.folder_prefix(participant, day)}raw_data/v6/{name}"

    def csv_key(self, participant: Participant, day: dt.date, metric: str) -> str:
        name = f"{self.study}-{self.site}-{participant.id}_{day.isoformat()}_{metric}.csv"
        folder = self.folder_prefix(participant, day)
        return f"{folder}digital_biomarkers/aggregated_per_minute/{name}"

    def participant(self, pid: str) -> Participant:
        for p in self.participants:
            if p.id == pid:
                return p
        raise KeyError(pid)

    @property
    def raw_keys(self) -> list[str]:
        """Every raw file written so far (seeded and added), sorted."""
        return sorted(self._raws)

    @property
    def csv_keys(self) -> list[str]:
        return sorted(self._csvs)

    def csv_minutes(self, key: str) -> int:
        """How many minutes the CSV at ``key`` holds now."""
        return self._csvs[key].minutes

    # -- seeding

    def template(self) -> AvroTemplate:
        if self._template is None:
            self._template = default_template()
        return self._template

    def _raw_starts(self, participant: Participant, day: dt.date) -> list[int]:
        """The recording starts of a participant-day's raw files (all inside the day)."""
        if not self.raw_per_day:
            return []
        rng = random.Random(f"raw\x1f{self.seed}\x1f{participant.id}\x1f{day}")
        spacing = 86400 // self.raw_per_day
        slack = max(1, min(600, spacing - math.ceil(self.template().duration_s) - 1))
        base = day_start(day)
        return [base + n * spacing + rng.randrange(slack) for n in range(self.raw_per_day)]

    def _seed(self) -> None:
        template = self.template()
        real_now = time.time()
        rng = random.Random(f"arrival\x1f{self.seed}")
        duration = math.ceil(template.duration_s)
        for day in self.day_list:
            for p in self.participants:
                for start in self._raw_starts(p, day):
                    if start + duration > self.now:
                        continue  # still being recorded; advance() delivers it
                    arrival = start + duration + rng.uniform(60, 1200)
                    if rng.random() < self.late_share:
                        arrival += rng.uniform(2 * 3600, 24 * 3600)
                    self._put_raw(p, start, last_modified=min(arrival, real_now))
                minutes = min(1440, (self.now - day_start(day)) // 60)
                arrival = min(day_start(day) + minutes * 60 + rng.uniform(60, 1800), real_now)
                for metric in self.metrics if minutes > 0 else ():
                    self._put_csv(p, day, metric, minutes, last_modified=arrival)

    def _put_raw(self, p: Participant, start: int, last_modified: float | None = None) -> str:
        key = self.raw_key(p, start)
        data = self.template().render(
            self.enrollment(p), p.serial, start, max_samples=self.max_samples, seed=self.seed
        )
        self.put(key, data, last_modified=last_modified)
        self._raws[key] = (p, start)
        return key

    def _put_csv(
        self,
        p: Participant,
        day: dt.date,
        metric: str,
        minutes: int,
        last_modified: float | None = None,
    ) -> str:
        key = self.csv_key(p, day, metric)
        text = minute_csv(self.enrollment(p), day, metric, minutes, seed=self.seed)
        self.put(key, text.encode("ascii"), last_modified=last_modified)
        self._csvs[key] = _Csv(p, day, metric, minutes)
        return key

    # -- admin hooks (straight into moto: never logged, never faulted)

    def put(
        self,
        key: str,
        data: bytes,
        *,
        last_modified: float | None = None,
        checksum: str | None | bool = True,
    ) -> ObjectInfo:
        """Store ``data`` at ``key`` (replacing it): ``LastModified`` now, or the unix time
        ``last_modified``; ``checksum``: True stores the delivery's default full-object
        checksum, None or False none, a name (``"SHA256"``) that one."""
        from moto.s3.utils import compute_checksum

        new = self._backend.put_object(self.bucket, key, data, disable_notification=True)
        algorithm = self.checksum if checksum is True else (checksum or None)
        if algorithm:
            new.checksum_algorithm = algorithm
            new.checksum_value = compute_checksum(data, algorithm).decode()
            new.checksum_type = "FULL_OBJECT"
        if last_modified is not None:
            new.last_modified = _utc(last_modified).replace(tzinfo=None)  # moto keeps naive UTC
        return self._info(new)

    def _info(self, key: Any) -> ObjectInfo:
        return ObjectInfo(
            key=key.name,
            size=key.size,
            etag=key.etag,
            last_modified=key.last_modified.replace(tzinfo=dt.UTC),
            checksum_algorithm=key.checksum_algorithm,
            checksum=key.checksum_value,
        )

    def info(self, key: str) -> ObjectInfo | None:
        """The object at ``key`` as stored now, or None."""
        found = self._backend.get_object(self.bucket, key)
        return None if found is None else self._info(found)

    def read(self, key: str) -> bytes:
        """The object's bytes as stored now (KeyError if there is none)."""
        found = self._backend.get_object(self.bucket, key)
        if found is None:
            raise KeyError(key)
        return found.value

    def keys(self, prefix: str = "") -> list[str]:
        """Every key in the bucket under ``prefix``, sorted, as stored now."""
        bucket = self._backend.get_bucket(self.bucket)
        return sorted(k for k in list(bucket.keys.keys()) if k.startswith(prefix))

    def add_raw_file(
        self, participant: Participant | str, unix_s: int, *, max_samples: int | None = -1
    ) -> str:
        """A raw file recorded from ``unix_s`` arriving now (in that second's day folder).
        ``max_samples`` -1: the delivery's own."""
        p = participant if isinstance(participant, Participant) else self.participant(participant)
        if max_samples == -1:
            return self._put_raw(p, unix_s)
        key = self.raw_key(p, unix_s)
        data = self.template().render(
            self.enrollment(p), p.serial, unix_s, max_samples=max_samples, seed=self.seed
        )
        self.put(key, data)
        self._raws[key] = (p, unix_s)
        return key

    def add_late_file(
        self,
        day: dt.date | int,
        participant: Participant | str | None = None,
        *,
        unix_s: int | None = None,
    ) -> str:
        """A raw file recorded on ``day`` (a date, or how many days before today) that
        arrives only now, into that old day folder. Returns its key."""
        if isinstance(day, int):
            day = self.today - dt.timedelta(days=day)
        p = self.participants[0] if participant is None else participant
        p = p if isinstance(p, Participant) else self.participant(p)
        if unix_s is None:
            self._late_count += 1
            rng = random.Random(f"late\x1f{self.seed}\x1f{p.id}\x1f{day}\x1f{self._late_count}")
            last = 86400 - math.ceil(self.template().duration_s) - 1
            while True:
                unix_s = day_start(day) + rng.randrange(max(1, last))
                if self.raw_key(p, unix_s) not in self._raws:
                    break
        elif _utc(unix_s).date() != day:
            raise ValueError(f"{unix_s} is not on {day}")
        return self.add_raw_file(p, unix_s)

    def grow_csv(self, key: str, minutes: int) -> ObjectInfo:
        """Rewrite the CSV at ``key`` in place with its day's first ``minutes`` minutes
        (more than it holds: a day filling up). New ETag, new size, LastModified now."""
        csv = self._csvs[key]
        if not csv.minutes < minutes <= 1440:
            raise ValueError(f"{key} holds {csv.minutes} minutes; grow to more (up to 1440)")
        self._put_csv(csv.participant, csv.day, csv.metric, minutes)
        return self.info(key)  # type: ignore[return-value]

    def rewrite_same_size(self, key: str) -> ObjectInfo:
        """Rewrite ``key`` with other bytes of the same length (a new ETag, the same
        size): an Avro file gets a new sync marker (still valid, same records), a CSV one
        value's last digit changed, anything else its last byte flipped."""
        data = self.read(key)
        self._rewrites += 1
        if key.endswith(".avro"):
            new = resync(data, f"{self.seed}-{self._rewrites}")
        elif key.endswith(".csv"):
            new = _change_a_digit(data)
        else:
            new = data[:-1] + bytes([data[-1] ^ 1]) if data else b"\0"
        return self.put(key, new)

    def remove(self, key: str) -> None:
        """Delete ``key`` (as Empatica support does on request)."""
        self._backend.delete_object(self.bucket, key)
        self._raws.pop(key, None)
        self._csvs.pop(key, None)

    def put_multipart(self, key: str, data: bytes, part_size: int = 5 * MIB) -> ObjectInfo:
        """Upload ``data`` to ``key`` in parts of ``part_size`` bytes through moto's own
        multipart API (its ETag ends in ``-<parts>``). Any part size is allowed here (S3's
        5 MiB minimum is lifted for the call)."""
        import moto.s3.models as s3_models

        if part_size < 1:
            raise ValueError("part_size must be positive")
        client = self._admin()
        with _PART_SIZE_LOCK:
            before = s3_models.S3_UPLOAD_PART_MIN_SIZE
            s3_models.S3_UPLOAD_PART_MIN_SIZE = 1
            try:
                upload = client.create_multipart_upload(Bucket=self.bucket, Key=key)
                parts = []
                for number, at in enumerate(range(0, max(len(data), 1), part_size), 1):
                    answer = client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload["UploadId"],
                        PartNumber=number,
                        Body=data[at : at + part_size],
                    )
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload["UploadId"],
                    MultipartUpload={"Parts": parts},
                )
            finally:
                s3_models.S3_UPLOAD_PART_MIN_SIZE = before
        return self.info(key)  # type: ignore[return-value]

    def put_with_checksum(self, key: str, data: bytes, algorithm: str = "SHA256") -> ObjectInfo:
        """Upload ``data`` with a checksum the client computes (``SHA256``, ``SHA1``,
        ``CRC32``, ``CRC32C``, ``CRC64NVME``) through moto's PutObject; S3 keeps it and
        returns it on a GET with checksum mode on."""
        self._admin().put_object(
            Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm=algorithm.upper()
        )
        return self.info(key)  # type: ignore[return-value]

    def change_between_list_and_get(self, key: str, how: str = "same_size") -> None:
        """Change ``key`` just before the next GetObject of it reaches moto, i.e. after
        the client listed it: ``how`` is ``"same_size"`` (:meth:`rewrite_same_size`),
        ``"grow"`` (a CSV gains a minute; other objects gain a byte) or ``"remove"``.
        A GET pinned by ``If-Match`` to the listed ETag then gets 412 (404 if removed).
        Needs the proxy."""
        if self._proxy is None:
            raise RuntimeError("change_between_list_and_get needs the proxy (proxy=True)")

        def change() -> None:
            if how == "same_size":
                self.rewrite_same_size(key)
            elif how == "remove":
                self.remove(key)
            elif how == "grow" and key in self._csvs:
                self.grow_csv(key, min(1440, self._csvs[key].minutes + 1))
            elif how == "grow":
                self.put(key, self.read(key) + b"\n")
            else:
                raise ValueError(f"unknown change {how!r}")

        self._proxy.before(lambda r: r.operation == "GetObject" and r.key == key, change)

    def advance(self, minutes: int) -> list[str]:
        """Move the delivery's clock (``now``) on by ``minutes``: raw files whose
        recording has ended arrive, the CSVs of the days it passes grow (rewritten in
        place), a new day gets its folders. Returns the keys written, in order."""
        if minutes <= 0:
            return []
        before, self.now = self.now, self.now + minutes * 60
        duration = math.ceil(self.template().duration_s)
        written: list[str] = []
        day = _utc(before).date()
        while day_start(day) <= self.now:
            if day not in self.day_list:
                self.day_list.append(day)
            for p in self.participants:
                for start in self._raw_starts(p, day):
                    if before < start + duration <= self.now:
                        written.append(self._put_raw(p, start))
                filled = min(1440, (self.now - day_start(day)) // 60)
                for metric in self.metrics:
                    key = self.csv_key(p, day, metric)
                    held = self._csvs[key].minutes if key in self._csvs else 0
                    if filled > held:
                        written.append(self._put_csv(p, day, metric, filled))
            day += dt.timedelta(days=1)
        self.today = _utc(self.now).date()
        return written

    def _admin(self) -> Any:
        """A boto3 client with the full keys, straight to moto (no proxy)."""
        if self._admin_client is None:
            self._admin_client = self.client(self.full, direct=True)
        return self._admin_client

    # -- what a test's client needs

    def client(
        self,
        keys: KeyPair | None = None,
        *,
        direct: bool = False,
        retries: int = 0,
        **config: Any,
    ) -> Any:
        """A boto3 S3 client for the delivery: ``keys`` (default the read-only pair),
        through the proxy unless ``direct``, with ``retries`` retries (default none, so a
        test sees each fault) and other ``botocore.config.Config`` options."""
        import boto3
        from botocore.config import Config

        keys = keys or self.readonly
        options = {
            "retries": {"total_max_attempts": retries + 1, "mode": "standard"},
            "s3": {"addressing_style": "path"},
            "connect_timeout": 5,
            "read_timeout": 30,
            **config,
        }
        return boto3.client(
            "s3",
            endpoint_url=self.moto_url if direct else self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key,
            config=Config(**options),
        )

    @property
    def proxy(self) -> FaultProxy | None:
        return self._proxy

    @property
    def requests(self) -> list[RequestRecord]:
        """The requests the proxy saw (empty without the proxy)."""
        return self._proxy.log if self._proxy is not None else []

    def count(self, operation: str | None = None, **where: Any) -> int:
        """:meth:`FaultProxy.count` (0 without the proxy)."""
        return self._proxy.count(operation, **where) if self._proxy is not None else 0

    def clear_requests(self) -> None:
        if self._proxy is not None:
            self._proxy.clear_log()

    def describe(self) -> dict[str, Any]:
        """What a configuration needs (no secret): endpoint, bucket, prefix, region, key id."""
        return {
            "endpoint_url": self.endpoint_url,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": self.region,
            "access_key_id": self.readonly.access_key_id,
            "objects": self.object_count,
        }


_PART_SIZE_LOCK = threading.Lock()


def _change_a_digit(data: bytes) -> bytes:
    """The same CSV with the last digit of one value changed (the first row that has a
    numeric value; else one timestamp's last millisecond digit)."""
    lines = data.split(b"\n")
    for column in (3, 0):
        for n, line in enumerate(lines[1:], 1):
            cells = line.split(b",")
            if len(cells) > column and cells[column][-1:].isdigit():
                last = cells[column][-1] - ord("0")
                cells[column] = cells[column][:-1] + str((last + 1) % 10).encode()
                lines[n] = b",".join(cells)
                return b"\n".join(lines)
    return data[:-1] + bytes([data[-1] ^ 1]) if data else b"\0"


def seed_benchmark(
    participants: int = 3, days: int = 30, raw_per_day: int = 48, **options: Any
) -> S3Delivery:
    """A started delivery of benchmark size (by default 3 × 30 × 48 raw files and their
    CSVs, about 4,700 objects) with small files (``max_samples`` 64 unless given); the
    caller closes it."""
    options.setdefault("max_samples", 64)
    options.setdefault("today_minutes", 1440)
    return S3Delivery(
        participants=participants, days=days, raw_per_day=raw_per_day, **options
    ).start()
