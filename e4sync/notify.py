"""e4sync.notify: everything e4sync tells the world outside its archive and database.

Owns: the systemd notification protocol (``sd_notify`` without a dependency: READY, STATUS,
WATCHDOG, STOPPING), healthchecks.io-style dead-man's-switch pings, the Prometheus textfile
for node_exporter, and the stderr logging setup (journald priority prefixes when stderr is
the journal, ``--log-level``, ``--log-format json``, urllib3's retry warnings as one line).

Nothing here ever raises to its caller once the configuration has been checked: a monitoring
side channel that fails must not fail a sync pass, so every failure is logged (WARNING) and
swallowed. The only exceptions are deliberate config-time checks (``check_metrics_path``).

Standard library and ``e4sync.fsutil`` (``fsync_dir``) only. Must not import any other
e4sync module (in particular never ``sync`` or ``state``): the daemon and the CLI call into
this module, never the other way round.
Must not import: e4sync.sync, e4sync.state, e4sync.archive, e4sync.cli, requests, sqlalchemy.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from e4sync.fsutil import fsync_dir

log = logging.getLogger(__name__)

HEALTHCHECK_EVENTS = ("start", "success", "fail")
# healthchecks.io keeps the first 100 kB of a ping body; a summary needs far less.
HEALTHCHECK_MAX_BODY = 10_000
METRIC_TYPES = ("gauge", "counter", "untyped")
# Third-party loggers that are chatty at INFO (apscheduler logs every job run).
NOISY_LOGGERS = ("urllib3", "apscheduler", "alembic")

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


# --- systemd notification protocol ------------------------------------------------------


class Notifier:
    """Send ``sd_notify`` datagrams to ``$NOTIFY_SOCKET``; a no-op when it is unset.

    The protocol is one ``AF_UNIX``/``SOCK_DGRAM`` datagram of newline-separated
    ``KEY=value`` lines; systemd documents it as stable and recommends reimplementing it
    rather than linking libsystemd. A socket address starting with ``@`` is in the Linux
    abstract namespace.

    Usage::

        notifier = Notifier()
        notifier.ready()
        notifier.status("idle; next poll 12:05")
        if notifier.watchdog_interval:   # ping at least this often, while healthy
            notifier.watchdog()
    """

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: bytes | None = None
        if raw.startswith("/"):
            self._address = os.fsencode(raw)
        elif raw.startswith("@") and len(raw) > 1:
            self._address = b"\0" + os.fsencode(raw[1:])
        elif raw:
            # e.g. systemd 253+'s "vsock:" addresses, which a host daemon never gets.
            log.warning("NOTIFY_SOCKET has an unsupported address form; not notifying systemd")
        self.enabled: bool = self._address is not None
        self.watchdog_interval: float | None = _watchdog_interval(env)
        self._warned = False

    def __repr__(self) -> str:
        return f"Notifier(enabled={self.enabled}, watchdog_interval={self.watchdog_interval})"

    def send(self, *lines: str, **fields: object) -> bool:
        """Send one notification; return True if the datagram was delivered.

        Positional arguments are raw ``"KEY=value"`` lines; keyword arguments are upper-cased
        into keys, with ``True`` meaning ``1``: ``send(ready=True, status="idle")`` sends
        ``READY=1`` and ``STATUS=idle``. Newlines inside a value would start a new assignment,
        so they are replaced by spaces.
        """
        if self._address is None:
            return False
        try:
            items = list(lines)
            for key, value in fields.items():
                text = "1" if value is True else "0" if value is False else str(value)
                items.append(f"{key.upper()}={text}")
            items = [item.replace("\n", " ") for item in items]
        except Exception as exc:  # a bad argument must not take the daemon down either
            log.warning("bad systemd notification skipped: %s", type(exc).__name__)
            return False
        if not items:
            return False
        payload = "\n".join(items).encode("utf-8", "replace")
        try:
            # A fresh socket per message, as libsystemd does: nothing to keep across fork()
            # and nothing to reconnect when systemd restarts. (Python sockets are already
            # non-inheritable, so a child never gets it.)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            # Warn once: a watchdog ping every minute into a dead socket must not flood the log.
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "could not notify systemd: %s", exc.strerror or type(exc).__name__)
            return False
        return True

    def ready(self) -> None:
        """Tell systemd start-up is complete (``Type=notify`` waits for this)."""
        self.send(ready=True)

    def status(self, text: str) -> None:
        """Set the free-form line that ``systemctl status`` shows."""
        self.send(status=text)

    def watchdog(self) -> None:
        """Keep-alive ping; call only while healthy, at least every ``watchdog_interval``."""
        self.send(watchdog=True)

    def stopping(self) -> None:
        """Tell systemd shutdown has begun."""
        self.send(stopping=True)

    def watchdog_trigger(self) -> None:
        """Ask systemd to act as if the watchdog expired (an internal deadlock was found)."""
        self.send(watchdog="trigger")


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, as ``sd_watchdog_enabled`` decides it; None
    when no watchdog is asked for, or when it is meant for another process (a child that
    inherited the environment must not ping for its parent)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


# --- health-check pings -------------------------------------------------------------------


def ping_healthcheck(url: str, event: str, body: str = "", timeout: float = 5.0) -> None:
    """Ping a healthchecks.io-style URL: ``<url>/start``, ``<url>`` (success) or
    ``<url>/fail``. GET without a body, POST with one (a short run summary).

    Never raises: a failed ping is logged as a WARNING naming only scheme and host, because
    the rest of such a URL (path or query) is the check's secret token.
    """
    where = "?"
    try:
        parts = urllib.parse.urlsplit(url)
        where = f"{parts.scheme}://{parts.hostname or '?'}"
        if event not in HEALTHCHECK_EVENTS:
            log.warning("health-check ping to %s skipped: unknown event %r", where, event)
            return
        if parts.scheme not in ("http", "https") or not parts.hostname:
            log.warning("health-check ping to %s skipped: not an http(s) URL", where)
            return
        path = parts.path.rstrip("/")
        if event != "success":
            path = f"{path}/{event}"
        target = urllib.parse.urlunsplit(parts._replace(path=path, fragment=""))
        data = body.encode("utf-8", "replace")[:HEALTHCHECK_MAX_BODY] if body else None
        request = urllib.request.Request(
            target,
            data=data,
            method="POST" if data is not None else "GET",
            headers={"User-Agent": "e4sync", "Content-Type": "text/plain; charset=utf-8"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(1024)
        log.debug("health-check %s ping to %s sent", event, where)
    except Exception as exc:  # a ping must never fail the pass, whatever went wrong
        log.warning("health-check %s ping to %s failed: %s", event, where, _describe(exc))


def _describe(exc: BaseException) -> str:
    """A reason for a failed ping that cannot contain the URL (urllib puts the full URL,
    token included, into some messages, e.g. ValueError("unknown url type: ...")."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return _describe(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


# --- Prometheus textfile --------------------------------------------------------------------


@dataclass
class Metric:
    """One metric family: ``samples`` holds (labels, value) pairs, ``{}`` for no labels."""

    name: str
    help: str
    type: str = "gauge"
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def check_metrics_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path if it can be a node_exporter textfile; raise ValueError
    otherwise (called at config time). The collector reads only ``*.prom`` files."""
    p = Path(path)
    if p.suffix != ".prom" or p.name == ".prom":
        raise ValueError(f"metrics textfile must end in '.prom' (got {p.name!r})")
    return p


def render_metrics(metrics: Sequence[Metric]) -> str:
    """Render metric families in the Prometheus text exposition format (0.0.4).
    Raise ValueError on a bad name, type or duplicate family."""
    out: list[str] = []
    seen: set[str] = set()
    for metric in metrics:
        if not _METRIC_NAME.match(metric.name):
            raise ValueError(f"bad metric name {metric.name!r}")
        if metric.name in seen:
            raise ValueError(f"metric {metric.name!r} listed twice")
        if metric.type not in METRIC_TYPES:
            raise ValueError(f"metric {metric.name!r}: bad type {metric.type!r}")
        seen.add(metric.name)
        help_text = metric.help.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {metric.name} {help_text}")
        out.append(f"# TYPE {metric.name} {metric.type}")
        for labels, value in metric.samples:
            out.append(f"{metric.name}{_render_labels(labels)} {_render_value(value)}")
    return "\n".join(out) + "\n" if out else ""


def _render_labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    pairs = []
    for key in sorted(labels):
        if not _LABEL_NAME.match(key) or key.startswith("__"):
            raise ValueError(f"bad label name {key!r}")
        value = str(labels[key]).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        pairs.append(f'{key}="{value}"')
    return "{" + ",".join(pairs) + "}"


def _render_value(value: float) -> str:
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(v)


def write_metrics_textfile(path: Path, metrics: Sequence[Metric]) -> None:
    """Atomically replace ``path`` with ``metrics`` in Prometheus text format.

    The temp file lives in the same directory (a rename is atomic only within one
    filesystem) and does not end in ``.prom``, so node_exporter never reads half a file.
    Never raises: failures are logged.
    """
    tmp_name: str | None = None
    try:
        target = check_metrics_path(path)
        text = render_metrics(metrics)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            # mkstemp makes 0600; node_exporter runs as another user and metrics are not secret.
            os.fchmod(fh.fileno(), 0o644)
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
        tmp_name = None
        fsync_dir(target.parent)
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.warning("could not write metrics textfile %s: %s", path, detail)
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


# --- logging ----------------------------------------------------------------------------------


def journal_logging_wanted(
    env: Mapping[str, str] = os.environ, stream: TextIO | None = None
) -> bool:
    """True when ``stream`` (default: the current ``sys.stderr``) is connected to journald:
    ``$JOURNAL_STREAM`` is ``"<st_dev>:<st_ino>"`` of that very file. Checking the inode,
    not just the variable's presence, keeps a child whose stderr was redirected (to a file,
    a pipe) from writing priority prefixes into it."""
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((stream if stream is not None else sys.stderr).fileno())
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (AttributeError, OSError, ValueError):
        # pytest capture and io.StringIO have no usable fileno(): not the journal.
        return False


class JournalFormatter(logging.Formatter):
    """``<N>name: message`` with the sd-daemon priority prefix and no timestamp (journald
    adds its own). Every line of a multi-line record (a traceback) gets the prefix, since
    journald makes each line a separate entry."""

    def __init__(self, fmt: str = "%(name)s: %(message)s") -> None:
        super().__init__(fmt)

    @staticmethod
    def prefix(levelno: int) -> str:
        if levelno >= logging.CRITICAL:
            return "<2>"
        if levelno >= logging.ERROR:
            return "<3>"
        if levelno >= logging.WARNING:
            return "<4>"
        if levelno >= logging.INFO:
            return "<6>"
        return "<7>"

    def format(self, record: logging.LogRecord) -> str:
        prefix = self.prefix(record.levelno)
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


_HANDLER_MARK = "_e4sync_handler"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record, not the one it was made with
    (tests and embedding programs swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
_LADDER = (logging.WARNING, logging.INFO, logging.DEBUG)


def setup_logging(
    verbosity: int,
    env: Mapping[str, str] = os.environ,
    *,
    base: int = logging.INFO,
    level: str | None = None,
    fmt: str = "text",
) -> None:
    """Send the root logger to stderr: journald style when stderr is the journal, else
    ``"%(asctime)s %(levelname)s %(name)s: %(message)s"``; ``fmt="json"``: one JSON object
    per line (``JsonFormatter``), after the journal's priority prefix when stderr is the
    journal. ``verbosity`` -1 (or less) shows warnings, 0 ``base`` (INFO for a pass, WARNING
    for a command a person runs), each step above it one level more (WARNING, INFO, DEBUG),
    and 2+ debug for urllib3 and apscheduler too. ``level`` (``--log-level``, one of
    ``LOG_LEVELS``) decides the level instead. urllib3's retry warnings become one e4sync
    line (``RetryWarnings``). Calling it again replaces the handler it installed before
    (tests, repeated ``main()``)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    setattr(handler, _HANDLER_MARK, True)
    journal = journal_logging_wanted(env, sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(journal=journal))
    elif journal:
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if level is not None:
        root.setLevel(getattr(logging, level.upper()))
    elif verbosity < 0:
        root.setLevel(logging.WARNING)
    else:
        start = _LADDER.index(base) if base in _LADDER else 1
        root.setLevel(_LADDER[min(start + verbosity, len(_LADDER) - 1)])
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity >= 2 else logging.WARNING)
    # Apprise names a URL it cannot read with part of its password ("user:S...W@"): its
    # own lines only at -vv; e4sync.alerts says what failed, naming schemes only.
    logging.getLogger("apprise").setLevel(logging.NOTSET if verbosity >= 2 else logging.CRITICAL)
    retries = logging.getLogger(URLLIB3_POOL_LOGGER)
    if not any(isinstance(f, RetryWarnings) for f in retries.filters):
        retries.addFilter(RetryWarnings())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
    ``logger``, ``message``, and ``exception`` when the record has one. Nothing else of
    the record goes out (not its arguments, not its extras): a message is the only text
    e4sync writes for a person, and it never holds a secret. Under journald the line
    starts with the priority prefix, which journald strips (``journalctl -p`` works)."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        import datetime as dt
        import json

        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        data = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        line = json.dumps(data, ensure_ascii=False)
        return JournalFormatter.prefix(record.levelno) + line if self.journal else line


URLLIB3_POOL_LOGGER = "urllib3.connectionpool"
_OBJECT_REPR = re.compile(r"<\S+ object at 0x[0-9a-fA-F]+>:?\s*")


class RetryWarnings(logging.Filter):
    """urllib3's raw ``Retrying (Retry(total=4, connect=None, read=None, redirect=None,
    status=None)) after connection broken by 'NewConnectionError("<...HTTPConnection object
    at 0x7f...>: Failed to establish a new connection: [Errno 111] Connection refused")':
    /connect/...`` as one e4sync line: ``e4sync.http: connection broken (NewConnectionError:
    Failed to establish a new connection: [Errno 111] Connection refused); retrying
    /connect/..., 4 retries left``. The path loses its query (a signed URL's signature is
    there). Installed on urllib3's pool logger, so it rewrites the record before any
    handler sees it; other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            isinstance(record.msg, str)
            and record.msg.startswith("Retrying (")
            and isinstance(args, tuple)
            and len(args) == 3
        ):
            retries, err, url = args
            left = getattr(retries, "total", None)
            record.name = "e4sync.http"
            record.msg = "connection broken (%s); retrying %s%s"
            record.args = (
                _reason(err),
                str(url).split("?", 1)[0] or "/",
                ""
                if not isinstance(left, int)
                else f", {left} {'retry' if left == 1 else 'retries'} left",
            )
        return True


def _reason(err: object) -> str:
    """An exception urllib3 retried after, in words: its type and its text without the
    object reprs urllib3 puts in (``<...HTTPConnection object at 0x...>``)."""
    if not isinstance(err, BaseException):
        return str(err)[:200]
    inner = [a for a in err.args if isinstance(a, BaseException)]
    text = " ".join(str(a) for a in err.args if not isinstance(a, BaseException))
    if inner:
        text = f"{text} {_reason(inner[0])}".strip()
    text = _OBJECT_REPR.sub("", text).strip(" :")
    name = type(err).__name__
    return (f"{name}: {text}" if text else name)[:200]
