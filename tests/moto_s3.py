"""A real S3 on loopback for the EmbracePlus tests (SPEC section 9), and objects like
Empatica's to put in it.

- ``serve_moto`` (for a session fixture): moto's ``ThreadedMotoServer`` on 127.0.0.1, a
  random port. Its state is the process's (moto keeps one set of backends), so each test
  gets its own bucket and resets moto first.
- ``fresh_bucket`` (for a test's fixture): a fresh bucket, an ``admin`` boto3 client that
  talks to moto directly (the test's own puts are never counted), and a ``Proxy`` in front
  of moto that e4sync is pointed at (``s3.url``). The proxy forwards every request
  unchanged (the Host header too, so SigV4 signatures still hold), records what was asked
  (moto keeps no request log) and injects the faults a test queues: an S3 error answer
  (503 SlowDown, 500), a body cut after N bytes, a body altered in transit, or a callback
  run just before a request is forwarded (to change an object between a listing and its
  GET).
- ``S3.enable_auth``: moto's IAM checks on (``/moto-api/reset-auth``), with a user whose
  policy a test chooses; the keys it returns are the only ones S3 then accepts.
- ``avro_variant``: the one real EmbracePlus file (``shared/realdata/embraceplus``, found
  as ``tests/conftest.py``'s ``REALDATA`` is, never copied into the repository), rewritten
  with fastavro for another participant, device or start time; ``csv_bytes``: a per-minute
  biomarker CSV of a day.

Nothing here is e4sync code: this is the platform side.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import http.client
import io
import json
import logging
import socket
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.conftest import REALDATA

PREFIX = "v2/621/1/1/"
REAL_PARTICIPANT = "TEST"
REAL_SERIAL = "3YK3M1619H"
REAL_DAY = date(2023, 9, 15)
REAL_START = 1694798477  # the real file's first sample, in whole seconds
REAL_SPAN = 346.998933  # seconds from its first sample to its last stream's end


def realdata() -> Path:
    """The shared real-data folder: ``tests/conftest.py``'s ``REALDATA``, or the first
    ``shared/realdata`` above the repository (a git worktree sits one level deeper)."""
    if REALDATA.is_dir():
        return REALDATA
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "realdata"
        if candidate.is_dir():
            return candidate
    pytest.skip("the shared real data (shared/realdata) is not on this machine")


def real_avro() -> bytes:
    return (realdata() / "embraceplus" / "test_file.avro").read_bytes()


def raw_key(day: date, participant: str, serial: str, start: int, prefix: str = PREFIX) -> str:
    return (
        f"{prefix}participant_data/{day.isoformat()}/{participant}-{serial}/raw_data/v6/"
        f"1-1-{participant}_{start}.avro"
    )


def csv_key(
    day: date, participant: str, serial: str, metric: str = "eda", prefix: str = PREFIX
) -> str:
    return (
        f"{prefix}participant_data/{day.isoformat()}/{participant}-{serial}/digital_biomarkers/"
        f"aggregated_per_minute/1-1-{participant}_{day.isoformat()}_{metric}.csv"
    )


@functools.cache
def _real_session() -> tuple[dict, dict]:
    import fastavro

    reader = fastavro.reader(io.BytesIO(real_avro()))
    return reader.writer_schema, next(iter(reader))


def avro_variant(
    participant: str = REAL_PARTICIPANT, serial: str = REAL_SERIAL, start: int | None = None
) -> bytes:
    """The real recording as another participant's, device's, or starting at ``start``
    (unix seconds: every stream, tag and peak moved by the same amount)."""
    import fastavro

    schema, session = _real_session()
    record = copy.deepcopy(session)
    record["enrollment"]["participantID"] = participant
    record["deviceSn"] = serial
    if start is not None:
        shift = start * 1_000_000 - REAL_START * 1_000_000
        for stream in record["rawData"].values():
            if stream.get("timestampStart"):
                stream["timestampStart"] += shift
        record["rawData"]["tags"]["tagsTimeMicros"] = [
            t + shift for t in record["rawData"]["tags"]["tagsTimeMicros"]
        ]
        record["rawData"]["systolicPeaks"]["peaksTimeNanos"] = [
            t + shift * 1000 for t in record["rawData"]["systolicPeaks"]["peaksTimeNanos"]
        ]
    out = io.BytesIO()
    fastavro.writer(out, schema, [record], codec="deflate")
    return out.getvalue()


def csv_bytes(day: date, minutes: int, participant: str = "621-1-1-TEST", bump: int = 0) -> bytes:
    """A per-minute EDA CSV of ``day`` with ``minutes`` rows; ``bump`` changes the values,
    not the length (a day rewritten in place with the same size)."""
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000
    lines = [
        "timestamp_unix,timestamp_iso,participant_full_id,eda_scl_usiemens,missing_value_reason"
    ]
    for minute in range(minutes):
        stamp = start + minute * 60_000
        iso = datetime.fromtimestamp(stamp / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        value = f"{0.1 + (minute % 50) * 0.01 + bump * 0.001:.3f}"
        lines.append(f"{stamp},{iso},{participant},{value},")
    return ("\n".join(lines) + "\n").encode()


# -- the proxy ------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request e4sync sent, as the proxy saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def key(self) -> str:
        """The object key of a path-style request (``/bucket/key``), "" for the bucket."""
        parts = unquote(self.path).split("/", 2)
        return parts[2] if len(parts) > 2 else ""

    @property
    def op(self) -> str:
        if self.method == "GET" and "list-type" in self.query:
            return "list"
        if self.method == "GET" and self.key:
            return "get"
        return {"HEAD": "head", "DELETE": "delete"}.get(self.method, self.method.lower())


@dataclass
class Fault:
    """What to do to the next ``times`` requests of ``op`` (for ``key``, if given)."""

    op: str
    key: str | None = None
    times: int = 1
    status: int | None = None  # answer this instead of forwarding
    code: str = "SlowDown"
    cut_after: int | None = None  # send only this many body bytes, then close
    flip_byte: int | None = None  # change this byte of the body in transit
    before: Callable[[], None] | None = None  # run before forwarding
    hits: int = 0

    def matches(self, seen: Seen) -> bool:
        return self.hits < self.times and seen.op == self.op and self.key in (None, seen.key)


class Proxy:
    """A counting, fault-injecting HTTP proxy in front of moto (see the module docstring)."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.seen: list[Seen] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                proxy._handle(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, **fault: Any) -> Fault:
        made = Fault(**fault)
        with self._lock:
            self.faults.append(made)
        return made

    def ops(self, since: int = 0) -> list[str]:
        with self._lock:
            return [s.op for s in self.seen[since:]]

    def counts(self, since: int = 0) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops(since):
            counts[op] = counts.get(op, 0) + 1
        return counts

    def mark(self) -> int:
        with self._lock:
            return len(self.seen)

    def requests(self, since: int = 0) -> list[Seen]:
        with self._lock:
            return list(self.seen[since:])

    def _take(self, seen: Seen) -> Fault | None:
        with self._lock:
            self.seen.append(seen)
            for fault in self.faults:
                if fault.matches(seen):
                    fault.hits += 1
                    return fault
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        seen = Seen(
            handler.command,
            parts.path,
            parse_qs(parts.query, keep_blank_values=True),
            {k: v for k, v in handler.headers.items()},
        )
        fault = self._take(seen)
        if fault is not None and fault.before is not None:
            fault.before()
        if fault is not None and fault.status is not None:
            error = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                f"{fault.code}</Code><Message>injected by the test proxy</Message></Error>"
            ).encode()
            handler.send_response_only(fault.status)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(error)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(error)
            return
        upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            upstream.request(handler.command, handler.path, body or None, dict(seen.headers))
            answer = upstream.getresponse()
            data = answer.read()
            headers = answer.getheaders()
            status, reason = answer.status, answer.reason
        finally:
            upstream.close()
        if fault is not None and fault.flip_byte is not None and data:
            changed = bytearray(data)
            changed[min(fault.flip_byte, len(changed) - 1)] ^= 0x01
            data = bytes(changed)
        handler.send_response_only(status, reason)
        declared = None
        for name, value in headers:
            if name.lower() == "content-length":
                declared = value
            if name.lower() in ("content-length", "transfer-encoding", "connection"):
                continue
            handler.send_header(name, value)
        if handler.command == "HEAD":
            handler.send_header("Content-Length", declared or "0")
        else:
            handler.send_header("Content-Length", str(len(data)))
        cut = fault.cut_after if fault is not None else None
        if cut is not None:
            handler.send_header("Connection", "close")
        handler.end_headers()
        if handler.command == "HEAD":
            return
        if cut is None:
            handler.wfile.write(data)
            return
        handler.wfile.write(data[:cut])
        handler.wfile.flush()
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# -- the server and a bucket ------------------------------------------------------------------


class MotoServer:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def post(self, path: str, body: bytes = b"") -> None:
        request = urllib.request.Request(
            self.url + path, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()

    def client(self, service: str = "s3", key: str = "admin", secret: str = "admin") -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
        )

    def stop(self) -> None:
        self.server.stop()


@dataclass
class S3:
    """One test's bucket on moto, and the proxy e4sync talks to."""

    moto: MotoServer
    bucket: str
    proxy: Proxy
    admin: Any
    auth_on: bool = False
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proxy.url

    def put(self, key: str, data: bytes, **kwargs: Any) -> dict:
        return self.admin.put_object(Bucket=self.bucket, Key=key, Body=data, **kwargs)

    def put_unchecksummed(self, key: str, data: bytes) -> dict:
        """An object S3 keeps no checksum of (a client that sends none)."""
        import boto3
        from botocore.config import Config

        plain = boto3.client(
            "s3",
            endpoint_url=self.moto.url,
            region_name="us-east-1",
            aws_access_key_id="admin",
            aws_secret_access_key="admin",
            config=Config(request_checksum_calculation="when_required"),
        )
        return plain.put_object(Bucket=self.bucket, Key=key, Body=data)

    def put_multipart(self, key: str, parts: list[bytes]) -> dict:
        upload = self.admin.create_multipart_upload(Bucket=self.bucket, Key=key)
        done = []
        for number, data in enumerate(parts, start=1):
            part = self.admin.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=data,
            )
            done.append({"ETag": part["ETag"], "PartNumber": number})
        return self.admin.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": done},
        )

    def get(self, key: str) -> bytes:
        return self.admin.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def delete(self, key: str) -> None:
        self.admin.delete_object(Bucket=self.bucket, Key=key)

    def keys_now(self) -> set[str]:
        pages = self.admin.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {obj["Key"] for page in pages for obj in page.get("Contents", [])}

    def enable_auth(self, actions: list[str]) -> tuple[str, str]:
        """Turn moto's IAM checks on. Returns the keys of a user allowed ``actions`` on
        this bucket; the test's admin client keeps working with its own full keys."""
        iam = self.moto.client("iam")
        keys = {}
        for user, allowed in (("admin", ["s3:*", "iam:*"]), ("lab", actions)):
            iam.create_user(UserName=user)
            made = iam.create_access_key(UserName=user)["AccessKey"]
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": allowed, "Resource": "*"}],
            }
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
            keys[user] = (made["AccessKeyId"], made["SecretAccessKey"])
        self.moto.post("/moto-api/reset-auth", b"0")
        self.auth_on = True
        self.admin = self.moto.client("s3", *keys["admin"])
        self.keys = keys
        return keys["lab"]


def serve_moto() -> Iterator[MotoServer]:
    """What a test module's ``moto_server`` fixture yields (session scope)."""
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


def fresh_bucket(moto_server: MotoServer) -> Iterator[S3]:
    """What a test module's ``s3`` fixture yields: moto reset, a new bucket, a proxy."""
    moto_server.post("/moto-api/reset")
    bucket = f"e4sync-{uuid.uuid4().hex[:12]}"
    admin = moto_server.client()
    admin.create_bucket(Bucket=bucket)
    proxy = Proxy(moto_server.url)
    made = S3(moto_server, bucket, proxy, admin)
    try:
        yield made
    finally:
        proxy.close()
        if made.auth_on:
            moto_server.post("/moto-api/reset-auth", b"inf")


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
