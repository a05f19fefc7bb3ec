"""e4sync.sources.e4connect.simulator.cli: the options and body of ``e4sync simulate``.

Owns the command-line face of the simulator: :func:`add_arguments` fills the subcommand's parser
(``e4sync.cli`` wires it in), :func:`run` starts the simulator, prints where it listens and the
credentials, and blocks until SIGINT or SIGTERM. Only loopback addresses are accepted.

Must not import: e4sync.state, e4sync.sync, e4sync.sources.e4connect.client.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
from typing import Any

from e4sync.sources.e4connect.simulator.faults import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    RATE_FIELDS,
    Faults,
)

_FAULT_HELP = {
    "error_5xx": "rate of 500/502/503 answers",
    "rate_429": "rate of 429 answers (with Retry-After)",
    "reset_mid_body": "rate of connections reset mid-body",
    "truncate_body": "rate of bodies cut short of Content-Length",
    "html_instead_of_zip": "rate of downloads answered with an HTML page",
    "expire_cookie": "rate of requests whose cookie dies (answered as logged out)",
    "missing_session": "rate of listed sessions that 404 on download or delete",
    "empty_body": "rate of 200 answers with an empty body",
    "delete_lingers": "rate of deletes that answer 200 but leave the session listed",
    "slow_first_byte_rate": "share of downloads delayed by --slow-first-byte (default 1.0)",
}


def _loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{host!r} is not a loopback address (use 127.0.0.1)")


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0.0 and 1.0")
    return value


def _session_id(text: str) -> str:
    if not text.strip().isdigit() or not text.strip().isascii():
        raise argparse.ArgumentTypeError(f"{text!r} is not a session id (a number)")
    return text.strip()


def _non_negative(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``e4sync simulate`` options (server, account, and one per fault) to ``parser``."""
    server = parser.add_argument_group("simulator")
    server.add_argument("--host", type=_loopback, default="127.0.0.1",
                        help="loopback address to listen on (default 127.0.0.1)")  # fmt: skip
    server.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    server.add_argument("--sessions", type=_non_negative(int), default=5,
                        help="sessions the account starts with (default 5)")  # fmt: skip
    server.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    server.add_argument("--user", default=DEFAULT_USER, help=f"user name (default {DEFAULT_USER})")
    server.add_argument("--password", default=DEFAULT_PASSWORD,
                        help=f"password (default {DEFAULT_PASSWORD})")  # fmt: skip
    server.add_argument("--session-size", type=_non_negative(int), metavar="BYTES",
                        help="make each initial session's ZIP about this many bytes")  # fmt: skip
    faults = parser.add_argument_group("faults (rates are per request, 0.0-1.0)")
    for name in RATE_FIELDS:
        faults.add_argument("--" + name.replace("_", "-"), type=_rate, metavar="RATE",
                            default=getattr(Faults(), name), help=_FAULT_HELP[name])  # fmt: skip
    faults.add_argument("--retry-after", type=_non_negative(float), default=1.0, metavar="S",
                        help="seconds sent in Retry-After with 429 (default 1)")  # fmt: skip
    faults.add_argument("--latency", type=_non_negative(float), default=0.0, metavar="S",
                        help="seconds added to every request")  # fmt: skip
    faults.add_argument("--bandwidth", type=_non_negative(int), default=0, metavar="BYTES_PER_S",
                        help="cap on each response's bytes per second (0: none)")  # fmt: skip
    faults.add_argument("--slow-first-byte", type=_non_negative(float), default=0.0, metavar="S",
                        help="seconds a download waits before its first byte")  # fmt: skip
    faults.add_argument("--hide-size", action="store_true",
                        help="send downloads without Content-Length and ignore Range")  # fmt: skip
    faults.add_argument("--string-numbers", action="store_true",
                        help="send some numbers as JSON numbers, not strings")  # fmt: skip
    faults.add_argument("--multi-login", dest="one_login", action="store_false",
                        help="allow several live logins per account (default: one)")  # fmt: skip
    faults.add_argument("--extra-member", dest="extra_member_sessions", action="append",
                        metavar="SESSION_ID", type=_session_id, default=[],
                        help="serve this session's ZIP with one more file that is not an E4 "
                        "file (notes.txt); repeat for more sessions")  # fmt: skip


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The :class:`Faults` the parsed options ask for."""
    names = (*RATE_FIELDS, "retry_after", "latency", "bandwidth", "slow_first_byte")
    values = {name: getattr(args, name) for name in names}
    return Faults(
        **values,
        string_numbers=args.string_numbers,
        one_login=args.one_login,
        hide_size=args.hide_size,
        extra_member_sessions=tuple(args.extra_member_sessions),
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; print the base URL and credentials first. Returns 0."""
    stop = threading.Event()
    from e4sync.sources.e4connect.simulator.server import Simulator

    sim = Simulator(
        port=args.port,
        seed=args.seed,
        sessions=args.sessions,
        user=args.user,
        password=args.password,
        faults=faults_from_args(args),
        host=args.host,
        session_size=args.session_size,
    )
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _SIGNALS}
    try:
        sim.start()
        # The password is printed on purpose: it is the simulator's own demo credential.
        print(f"E4 Connect simulator at {sim.base_url}", flush=True)
        print(f"user: {args.user} password: {args.password}", flush=True)
        print(f"admin: {sim.admin_url}", flush=True)
        if sim.faults.any_active():
            active = {k: v for k, v in sim.faults.to_dict().items() if v != getattr(Faults(), k)}
            print(f"faults: {active}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("simulator stopped", file=sys.stderr, flush=True)
    return 0


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
