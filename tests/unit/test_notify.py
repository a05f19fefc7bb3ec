"""Tests for e4sync.notify: sd_notify on real AF_UNIX datagram sockets, health-check pings
to a real loopback HTTP server, the Prometheus textfile on a real directory, and the
journald-aware logging setup. Nothing is mocked."""

from __future__ import annotations

import http.server
import io
import logging
import os
import queue
import re
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e4sync import notify
from e4sync.notify import (
    JournalFormatter,
    Metric,
    Notifier,
    check_metrics_path,
    journal_logging_wanted,
    ping_healthcheck,
    render_metrics,
    setup_logging,
    write_metrics_textfile,
)

# --- sd_notify ----------------------------------------------------------------------------


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # AF_UNIX paths are limited to 107 bytes; a short base keeps long test names safe.
    path = tmp_path_factory.mktemp("n")
    assert len(str(path)) < 90
    return path


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_path_socket_receives_every_message(short_tmp: Path) -> None:
    path = short_tmp / "notify.sock"
    with _receiver(str(path)) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.enabled
        notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.status("idle; next poll 12:05\n3 queued")
        # A newline would start a second assignment, so it becomes a space.
        assert sock.recv(4096) == b"STATUS=idle; next poll 12:05 3 queued"
        notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.watchdog_trigger()
        assert sock.recv(4096) == b"WATCHDOG=trigger"
        notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
        assert notifier.send("EXTEND_TIMEOUT_USEC=5000000", ready=True, status="x") is True
        assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=5000000\nREADY=1\nSTATUS=x"


def test_notify_abstract_socket() -> None:
    name = f"e4sync-test-{uuid.uuid4().hex}"
    with _receiver(b"\0" + name.encode()) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_unset_is_a_silent_no_op(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.send(ready=True) is False
    notifier.ready()
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()
    assert caplog.records == []


def test_notify_missing_socket_warns_once_and_never_raises(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(short_tmp / "gone.sock")})
    assert notifier.enabled
    with caplog.at_level(logging.DEBUG, logger="e4sync.notify"):
        assert notifier.send(ready=True) is False
        notifier.watchdog()
        notifier.stopping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "could not notify systemd" in warnings[0].getMessage()


def test_notify_unsupported_address_is_disabled() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    assert not Notifier({"NOTIFY_SOCKET": "@"}).enabled


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "300000000"}, 150.0),
        ({"WATCHDOG_USEC": "300000000", "WATCHDOG_PID": str(os.getpid())}, 150.0),
        ({"WATCHDOG_USEC": "300000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "300000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "5min"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(env).watchdog_interval == expected


# --- health-check pings ---------------------------------------------------------------------


class _PingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _PingHandler)
        self.requests: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
        self.status = 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _PingHandler(http.server.BaseHTTPRequestHandler):
    server: _PingServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.put((self.command, self.path, body))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def ping_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_PingServer]:
    # urllib honours proxy variables; the pings must go straight to loopback.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = _PingServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_ping_start_success_fail_paths(ping_server: _PingServer) -> None:
    url = ping_server.url + "/ping/0f1e2d3c"
    ping_healthcheck(url, "start")
    assert ping_server.requests.get(timeout=5) == ("GET", "/ping/0f1e2d3c/start", b"")
    ping_healthcheck(url + "/", "success")
    assert ping_server.requests.get(timeout=5) == ("GET", "/ping/0f1e2d3c", b"")
    ping_healthcheck(url, "fail", body="2 sessions failed: timeout")
    assert ping_server.requests.get(timeout=5) == (
        "POST",
        "/ping/0f1e2d3c/fail",
        b"2 sessions failed: timeout",
    )
    assert ping_server.requests.empty()


def test_ping_keeps_query_after_the_event_path(ping_server: _PingServer) -> None:
    ping_healthcheck(ping_server.url + "/p?create=1", "start")
    assert ping_server.requests.get(timeout=5)[1] == "/p/start?create=1"


def test_ping_http_error_only_warns_without_the_token(
    ping_server: _PingServer, caplog: pytest.LogCaptureFixture
) -> None:
    ping_server.status = 500
    with caplog.at_level(logging.WARNING, logger="e4sync.notify"):
        ping_healthcheck(ping_server.url + "/ping/SECRET-TOKEN?key=SECRET2", "success")
    assert ping_server.requests.get(timeout=5)[1] == "/ping/SECRET-TOKEN?key=SECRET2"
    (record,) = caplog.records
    message = record.getMessage()
    assert "HTTP 500" in message and "http://127.0.0.1" in message
    assert "SECRET" not in message


def test_ping_dead_url_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    # A port that was just free and is closed again: the connection is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with caplog.at_level(logging.WARNING, logger="e4sync.notify"):
        ping_healthcheck(f"http://127.0.0.1:{port}/ping/SECRET?t=SECRET", "start", timeout=2)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "start" in record.getMessage() and "SECRET" not in record.getMessage()


def test_ping_server_that_never_answers_times_out(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts into the backlog, never replies
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x"
        with caplog.at_level(logging.WARNING, logger="e4sync.notify"):
            ping_healthcheck(url, "success", timeout=0.3)
    assert "timed out" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("url", "event"),
    [("ftp://example.invalid/x", "start"), ("not a url", "start"), ("http://[::1", "start")],
)
def test_ping_bad_url_or_event_only_warns(
    url: str, event: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="e4sync.notify"):
        ping_healthcheck(url, event)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_ping_unknown_event_sends_nothing(
    ping_server: _PingServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="e4sync.notify"):
        ping_healthcheck(ping_server.url + "/p", "finished")
    assert "unknown event" in caplog.records[0].getMessage()
    assert ping_server.requests.empty()


# --- Prometheus textfile ----------------------------------------------------------------------

_HELP = re.compile(r"# HELP [a-zA-Z_:][a-zA-Z0-9_:]* [^\n]*")
_TYPE = re.compile(r"# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (gauge|counter|untyped)")
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)\}})? "
    r"(?P<value>NaN|[+-]Inf|-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)"
)


def _parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], str]:
    """Check every line against the exposition format; return the samples."""
    assert text.endswith("\n")
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP"):
            assert _HELP.fullmatch(line), line
        elif line.startswith("# TYPE"):
            assert _TYPE.fullmatch(line), line
        else:
            m = _SAMPLE.fullmatch(line)
            assert m, line
            labels = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m["labels"] or "")
            unescaped = tuple(
                (k, re.sub(r"\\(.)", lambda e: "\n" if e[1] == "n" else e[1], v)) for k, v in labels
            )
            samples[(m["name"], unescaped)] = m["value"]
    return samples


METRICS = [
    Metric("e4sync_up", "1 while e4sync runs.", "gauge", [({}, 1.0)]),
    Metric(
        "e4sync_sessions",
        "Sessions per account and state.\nSecond help line with a \\ backslash.",
        "gauge",
        [
            ({"account": "lab", "state": "verified"}, 12),
            ({"account": 'we"ird\\name\nx', "state": "new"}, 0.5),
        ],
    ),
    Metric(
        "e4sync_downloads_total",
        "Downloads by result.",
        "counter",
        [({"result": "ok"}, 3), ({"result": "nan"}, float("nan")), ({"result": "inf"}, 1e400)],
    ),
    Metric("e4sync_last_success_timestamp_seconds", "Last success.", "gauge", [({}, 1.7e9 + 0.25)]),
]


def test_metrics_textfile_parses_and_round_trips(tmp_path: Path) -> None:
    target = tmp_path / "e4sync.prom"
    write_metrics_textfile(target, METRICS)
    text = target.read_text(encoding="utf-8")
    samples = _parse(text)
    assert samples == {
        ("e4sync_up", ()): "1",
        ("e4sync_sessions", (("account", "lab"), ("state", "verified"))): "12",
        ("e4sync_sessions", (("account", 'we"ird\\name\nx'), ("state", "new"))): "0.5",
        ("e4sync_downloads_total", (("result", "ok"),)): "3",
        ("e4sync_downloads_total", (("result", "nan"),)): "NaN",
        ("e4sync_downloads_total", (("result", "inf"),)): "+Inf",
        ("e4sync_last_success_timestamp_seconds", ()): "1700000000.25",
    }
    assert "# TYPE e4sync_downloads_total counter" in text
    assert "# HELP e4sync_sessions Sessions per account and state.\\nSecond" in text
    # node_exporter runs as another user; it must be able to read the file.
    assert target.stat().st_mode & 0o777 == 0o644


def test_metrics_textfile_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "e4sync.prom"
    target.write_text("old content\n")
    old_inode = target.stat().st_ino
    with open(target) as reader:  # a collector that is reading the old file right now
        write_metrics_textfile(target, METRICS[:1])
        # Renamed into place, not rewritten in place: the open file still holds the old text.
        assert reader.read() == "old content\n"
    assert target.stat().st_ino != old_inode
    assert (
        target.read_text()
        == "# HELP e4sync_up 1 while e4sync runs.\n# TYPE e4sync_up gauge\ne4sync_up 1\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e4sync.prom"]


def test_metrics_textfile_failures_only_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "e4sync.prom"
    target.write_text("kept\n")
    with caplog.at_level(logging.WARNING, logger="e4sync.notify"):
        write_metrics_textfile(tmp_path / "missing-dir" / "e4sync.prom", METRICS)
        write_metrics_textfile(tmp_path / "e4sync.txt", METRICS)
        write_metrics_textfile(target, [METRICS[0], METRICS[0]])  # duplicate family
        write_metrics_textfile(target, [Metric("bad-name", "x", "gauge", [({}, 1)])])
        write_metrics_textfile(target, [Metric("ok", "x", "summary", [({}, 1)])])
        write_metrics_textfile(target, [Metric("ok", "x", "gauge", [({"__x": "1"}, 1)])])
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 6
    assert target.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e4sync.prom"]


def test_check_metrics_path() -> None:
    assert check_metrics_path("/var/lib/node_exporter/e4sync.prom") == Path(
        "/var/lib/node_exporter/e4sync.prom"
    )
    for bad in ("/x/e4sync.txt", "/x/e4sync.prom.tmp", "/x/.prom", "/x/e4sync"):
        with pytest.raises(ValueError, match=r"\.prom"):
            check_metrics_path(bad)


def test_render_empty() -> None:
    assert render_metrics([]) == ""
    assert render_metrics([Metric("e4sync_x", "no samples yet", "counter")]) == (
        "# HELP e4sync_x no samples yet\n# TYPE e4sync_x counter\n"
    )


# --- logging ------------------------------------------------------------------------------------


def _record(level: int, msg: str, exc_info: bool = False) -> logging.LogRecord:
    info = None
    if exc_info:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            info = sys.exc_info()
    return logging.LogRecord("e4sync.sync", level, __file__, 1, msg, None, info)


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.CRITICAL, "<2>"),
        (logging.ERROR, "<3>"),
        (logging.WARNING, "<4>"),
        (logging.INFO, "<6>"),
        (logging.DEBUG, "<7>"),
        (5, "<7>"),
    ],
)
def test_journal_formatter_prefix(level: int, prefix: str) -> None:
    assert JournalFormatter().format(_record(level, "hello")) == f"{prefix}e4sync.sync: hello"


def test_journal_formatter_prefixes_every_line_of_a_traceback() -> None:
    text = JournalFormatter().format(_record(logging.ERROR, "failed\nsecond", exc_info=True))
    lines = text.splitlines()
    assert lines[0] == "<3>e4sync.sync: failed"
    assert lines[1] == "<3>second"
    assert any("RuntimeError: boom" in line for line in lines)
    assert all(line.startswith("<3>") for line in lines)


def test_journal_logging_wanted_compares_the_inode(tmp_path: Path) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal_logging_wanted(env, a) is True
        assert journal_logging_wanted(env, b) is False  # stderr redirected elsewhere
        assert journal_logging_wanted({}, a) is False
        assert journal_logging_wanted({"JOURNAL_STREAM": "garbage"}, a) is False
        assert journal_logging_wanted({"JOURNAL_STREAM": "1:x"}, a) is False
        assert journal_logging_wanted(env, io.StringIO()) is False


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    noisy = {name: logging.getLogger(name).level for name in notify.NOISY_LOGGERS}
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in noisy.items():
        logging.getLogger(name).setLevel(level)


def _own_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_e4sync_handler", False)]


def test_setup_logging_journal_and_plain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    with open(tmp_path / "stderr", "w+") as fake_stderr:
        monkeypatch.setattr(sys, "stderr", fake_stderr)
        st = os.fstat(fake_stderr.fileno())
        setup_logging(0, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        logging.getLogger("e4sync.test").info("to the journal")
        logging.getLogger("e4sync.test").debug("hidden at verbosity 0")
        setup_logging(0, env={})
        assert len(_own_handlers()) == 1  # replaced, not added
        logging.getLogger("e4sync.test").warning("plain")
        fake_stderr.flush()
        lines = (tmp_path / "stderr").read_text().splitlines()
    assert lines[0] == "<6>e4sync.test: to the journal"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING e4sync.test: plain", lines[1]
    )
    assert len(lines) == 2


@pytest.mark.parametrize(
    ("verbosity", "root_level", "noisy_level"),
    [
        (-1, logging.WARNING, logging.WARNING),
        (0, logging.INFO, logging.WARNING),
        (1, logging.DEBUG, logging.WARNING),
        (2, logging.DEBUG, logging.NOTSET),
    ],
)
def test_setup_logging_levels(
    verbosity: int, root_level: int, noisy_level: int, restore_logging: None
) -> None:
    setup_logging(verbosity, env={})
    assert logging.getLogger().level == root_level
    for name in ("urllib3", "apscheduler"):
        assert logging.getLogger(name).level == noisy_level
    assert logging.getLogger("urllib3").getEffectiveLevel() == max(root_level, noisy_level)


@pytest.mark.parametrize(
    ("verbosity", "base", "level", "expected"),
    [
        (0, logging.WARNING, None, logging.WARNING),  # a command a person runs
        (1, logging.WARNING, None, logging.INFO),  # -v: the login line shows
        (2, logging.WARNING, None, logging.DEBUG),
        (0, logging.INFO, None, logging.INFO),  # run, run-once
        (-1, logging.INFO, None, logging.WARNING),  # -q
        (0, logging.INFO, "error", logging.ERROR),  # --log-level wins
        (1, logging.WARNING, "info", logging.INFO),
    ],
)
def test_setup_logging_base_and_log_level(
    verbosity: int, base: int, level: str | None, expected: int, restore_logging: None
) -> None:
    setup_logging(verbosity, env={}, base=base, level=level)
    assert logging.getLogger().level == expected


def test_json_log_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging) -> None:
    import json

    with open(tmp_path / "stderr", "w+") as fake_stderr:
        monkeypatch.setattr(sys, "stderr", fake_stderr)
        setup_logging(0, env={}, fmt="json")
        log = logging.getLogger("e4sync.test")
        log.info("two\nlines %s", "and an argument", extra={"password": "s3cret"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        st = os.fstat(fake_stderr.fileno())
        setup_logging(0, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fmt="json")
        log.warning("to the journal")
        fake_stderr.flush()
        lines = (tmp_path / "stderr").read_text().splitlines()
    assert len(lines) == 3
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["message"] == "two\nlines and an argument" and first["level"] == "INFO"
    assert first["logger"] == "e4sync.test" and first["time"].endswith("Z")
    assert "s3cret" not in lines[0]  # extras never go out
    assert second["exception"].startswith("Traceback") and "ValueError: boom" in second["exception"]
    assert lines[2].startswith("<4>{") and json.loads(lines[2][3:])["level"] == "WARNING"


def test_urllib3_retry_warning_becomes_one_e4sync_line() -> None:
    from urllib3.exceptions import NewConnectionError
    from urllib3.util.retry import Retry

    class Conn:
        pass

    err = NewConnectionError(Conn(), "Failed to establish a new connection: [Errno 111] refused")
    record = logging.LogRecord(
        "urllib3.connectionpool",
        logging.WARNING,
        __file__,
        1,
        "Retrying (%r) after connection broken by '%r': %s",
        (Retry(total=3), err, "/connect/download.php?id=1&X-Amz-Signature=abc"),
        None,
    )
    assert notify.RetryWarnings().filter(record)
    assert record.name == "e4sync.http"
    assert record.getMessage() == (
        "connection broken (NewConnectionError: Failed to establish a new connection: "
        "[Errno 111] refused); retrying /connect/download.php, 3 retries left"
    )
    other = logging.LogRecord(
        "urllib3.connectionpool", logging.WARNING, "", 1, "Pool full", (), None
    )
    assert notify.RetryWarnings().filter(other) and other.name == "urllib3.connectionpool"
