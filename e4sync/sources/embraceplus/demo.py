"""e4sync.sources.embraceplus.demo: EmbracePlus's part of ``e4sync demo`` and ``e4sync simulate``.

Owns what the demo needs to know of Empatica's S3 delivery: ``demo_account`` starts an
``S3Delivery`` (moto on loopback, seeded from the real Avro file) sized by ``sessions``,
writes the read-only secret into a 0600 file in the demo's folder and yields the
``[[account]]`` block that points at it; ``add_simulate_arguments`` and ``simulate`` are
``e4sync simulate``'s options and body for this kind: a delivery whose clock runs (raw
files arrive, today's CSVs are rewritten as the day fills up, late files land in old
folders), with the proxy's faults. The secret goes only into a 0600 file, never to stdout.
The CLI and ``e4sync.demo`` reach this module by the kind's name
(``e4sync.sources.kind_module``). Cheap to import: moto and boto3 load when a delivery starts.

Must not import: e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DemoAccount:
    """What the demo's configuration needs of the running platform: the ``[[account]]``
    block (TOML) and the line that says what runs."""

    account_toml: str
    banner: str


def _toml_string(value: object) -> str:
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(str(value))


def write_secret(path: Path, secret: str) -> Path:
    """Write ``secret`` and a newline into ``path``, created 0600 (replacing a file)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{secret}\n")
    return path


def account_toml(delivery: Any, name: str, secret_file: Path, keys: Any = None) -> str:
    """The ``[[account]]`` block for ``delivery`` (an ``S3Delivery``), its secret in
    ``secret_file``; ``keys`` default the read-only pair."""
    keys = keys or delivery.readonly
    return (
        "[[account]]\n"
        f"name = {_toml_string(name)}\n"
        'source = "embraceplus"\n'
        f"bucket = {_toml_string(delivery.bucket)}\n"
        f"prefix = {_toml_string(delivery.prefix)}\n"
        f"region = {_toml_string(delivery.region)}\n"
        f"access_key_id = {_toml_string(keys.access_key_id)}\n"
        f"secret_access_key_file = {_toml_string(secret_file)}\n"
        f"endpoint_url = {_toml_string(delivery.endpoint_url)}\n"
    )


@contextmanager
def demo_account(root: Path, sessions: int, name: str = "demo") -> Iterator[DemoAccount]:
    """Run a delivery while the block is in use: 3 participants (two ids with ``-``),
    yesterday and today (filled up to now, UTC), about ``sessions`` raw files in all and
    two CSVs per participant-day; the read-only secret in ``root / "<name>.secret"``."""
    from e4sync.sources.embraceplus.simulator import S3Delivery

    participants = ("0010", "007-b", "TEST-3")
    per_day = max(1, math.ceil(sessions / (2 * len(participants))))
    with S3Delivery(
        participants=participants,
        days=2,
        raw_per_day=per_day,
        metrics=("eda", "pulse-rate"),
        seed=4,
    ) as delivery:
        secret_file = write_secret(root / f"{name}.secret", delivery.readonly.secret_access_key)
        yield DemoAccount(
            account_toml=account_toml(delivery, name, secret_file),
            banner=(
                f"EmbracePlus S3 delivery (moto) at {delivery.endpoint_url}: "
                f"{delivery.object_count} objects under s3://{delivery.bucket}/{delivery.prefix}"
            ),
        )


# -- e4sync simulate --------------------------------------------------------------------------


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0.0 and 1.0")
    return value


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


def _at_least_one(text: str) -> int:
    value = _non_negative(int)(text)
    if value < 1:
        raise argparse.ArgumentTypeError("give at least 1")
    return value


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _participants(text: str) -> Any:
    if text.strip().isdigit():
        return int(text)
    ids = tuple(p.strip() for p in text.split(",") if p.strip())
    if not ids or any("/" in p for p in ids):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number or comma-separated ids")
    return ids


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one metric")
    return names


_FAULTS = {
    "slowdown_rate": "rate of requests answered 503 SlowDown",
    "error_rate": "rate of requests answered 500 InternalError",
    "drop_rate": "rate of connections closed before any answer",
    "cut_rate": "rate of object downloads cut short of Content-Length",
}


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """``e4sync simulate``'s options for an EmbracePlus delivery: layout, clock, faults."""
    from e4sync.sources.embraceplus.simulator import (
        DEFAULT_BUCKET,
        DEFAULT_METRICS,
        DEFAULT_PARTICIPANTS,
        DEFAULT_REGION,
    )

    s3 = parser.add_argument_group("EmbracePlus S3 delivery")
    s3.add_argument("--port", type=int, default=0,
                    help="the endpoint's TCP port on 127.0.0.1 (default: a free one)")  # fmt: skip
    s3.add_argument("--participants", type=_participants, default=DEFAULT_PARTICIPANTS,
                    help="a number, or comma-separated ids (default "
                    f"{','.join(DEFAULT_PARTICIPANTS)})")  # fmt: skip
    s3.add_argument("--days", type=_at_least_one, default=3,
                    help="day folders, the last one today (default 3)")  # fmt: skip
    s3.add_argument("--raw-per-day", type=_non_negative(int), default=4,
                    help="raw .avro files per participant-day (default 4; 48 is real)")  # fmt: skip
    s3.add_argument("--metrics", type=_names, default=DEFAULT_METRICS,
                    help=f"per-minute CSVs (default {','.join(DEFAULT_METRICS)})")  # fmt: skip
    s3.add_argument("--today", type=_day, default=None,
                    help="the last day folder, YYYY-MM-DD (default: today, UTC)")  # fmt: skip
    s3.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s3.add_argument("--max-samples", type=_non_negative(int), default=None, metavar="N",
                    help="cut each sample array to N entries (smaller files)")  # fmt: skip
    s3.add_argument("--org", default="829", help="organisation id in the prefix (default 829)")
    s3.add_argument("--study", default="1", help="study id (default 1)")
    s3.add_argument("--site", default="1", help="site id (default 1)")
    s3.add_argument("--bucket", default=DEFAULT_BUCKET, help=f"bucket (default {DEFAULT_BUCKET})")
    s3.add_argument("--region", default=DEFAULT_REGION, help=f"region (default {DEFAULT_REGION})")
    s3.add_argument("--secret-file", type=Path, default=None, metavar="PATH",
                    help="where to write the secret (0600; default: a temp folder)")  # fmt: skip
    s3.add_argument("--full-keys", action="store_true",
                    help="hand out keys that may delete, not the read-only ones")  # fmt: skip
    s3.add_argument("--avro", type=Path, default=None, metavar="PATH",
                    help="the real Avro file to seed from (default: beside the checkout, "
                    "$E4SYNC_EMBRACEPLUS_AVRO, or a synthetic stand-in)")  # fmt: skip
    clock = parser.add_argument_group("the delivery's clock")
    clock.add_argument("--tick", type=_non_negative(float), default=60.0, metavar="S",
                       help="every S seconds the delivery's clock moves on (0: frozen; "
                       "default 60)")  # fmt: skip
    clock.add_argument("--tick-minutes", type=_non_negative(int), default=None, metavar="M",
                       help="minutes the clock moves each tick (default: the tick)")  # fmt: skip
    clock.add_argument("--late-rate", type=_rate, default=0.2, metavar="RATE",
                       help="chance per tick of a raw file arriving late in an old day folder "
                       "(default 0.2)")  # fmt: skip
    faults = parser.add_argument_group("faults (rates are per request, 0.0-1.0)")
    for name, text in _FAULTS.items():
        faults.add_argument("--" + name.replace("_", "-"), type=_rate, default=0.0,
                            metavar="RATE", help=text)  # fmt: skip
    faults.add_argument("--cut-after", type=_non_negative(int), default=1024, metavar="BYTES",
                        help="bytes sent before a cut (default 1024)")  # fmt: skip
    faults.add_argument("--latency", type=_non_negative(float), default=0.0, metavar="S",
                        help="seconds added to every request")  # fmt: skip
    faults.add_argument("--log-requests", action="store_true",
                        help="print each request the endpoint sees to stderr")  # fmt: skip


def simulate(args: argparse.Namespace) -> int:
    """Serve a delivery until SIGINT or SIGTERM (``e4sync simulate``); print the endpoint,
    bucket, prefix, region, key id and the secret's file, never the secret. Returns 0."""
    import logging

    from e4sync.sources.embraceplus.avrogen import AvroTemplate
    from e4sync.sources.embraceplus.simulator import Faults, S3Delivery

    faults = Faults(
        seed=args.seed,
        latency=args.latency,
        cut_after=args.cut_after,
        **{name: getattr(args, name) for name in _FAULTS},
    )
    delivery = S3Delivery(
        participants=args.participants,
        days=args.days,
        raw_per_day=args.raw_per_day,
        metrics=args.metrics,
        seed=args.seed,
        today=args.today,
        org=args.org,
        study=args.study,
        site=args.site,
        bucket=args.bucket,
        region=args.region,
        max_samples=args.max_samples,
        template=AvroTemplate.load(args.avro) if args.avro else None,
        faults=faults,
        port=args.port,
    )
    if args.log_requests:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        proxy_log = logging.getLogger("e4sync.sources.embraceplus.simulator")
        proxy_log.addHandler(handler)
        proxy_log.setLevel(logging.DEBUG)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _SIGNALS}
    try:
        delivery.start()
        keys = delivery.full if args.full_keys else delivery.readonly
        secret_file = args.secret_file
        if secret_file is None:
            secret_file = Path(tempfile.mkdtemp(prefix="e4sync-embraceplus-")) / "secret"
        secret_file = write_secret(secret_file.expanduser().resolve(), keys.secret_access_key)
        print(f"EmbracePlus S3 delivery (moto) at {delivery.endpoint_url}", flush=True)
        print(f"bucket: {delivery.bucket}", flush=True)
        print(f"prefix: {delivery.prefix}", flush=True)
        print(f"region: {delivery.region}", flush=True)
        kind = "full" if args.full_keys else "read-only"
        print(f"access key id ({kind}): {keys.access_key_id}", flush=True)
        print(f"secret access key in: {secret_file}", flush=True)
        print(
            f"objects: {delivery.object_count} ({len(delivery.participants)} participants, "
            f"{len(delivery.day_list)} days up to {delivery.today}, seeded in "
            f"{delivery.seed_seconds:.1f}s)",
            flush=True,
        )
        if faults.active():
            active = {k: v for k, v in faults.to_dict().items() if v != getattr(Faults(), k)}
            print(f"faults: {active}", flush=True)
        print("\n" + account_toml(delivery, "embraceplus", secret_file, keys), flush=True)
        _run_clock(delivery, args, stop)
    finally:
        delivery.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("simulator stopped", file=sys.stderr, flush=True)
    return 0


def _run_clock(delivery: Any, args: argparse.Namespace, stop: threading.Event) -> None:
    """Until ``stop``: each tick move the delivery's clock on and maybe drop a late file."""
    if not args.tick:
        stop.wait()
        return
    minutes = args.tick_minutes if args.tick_minutes is not None else math.ceil(args.tick / 60)
    rng = random.Random(f"simulate\x1f{args.seed}")
    while not stop.wait(args.tick):
        written = delivery.advance(minutes)
        old_days = delivery.day_list[:-1]
        if old_days and rng.random() < args.late_rate:
            participant = rng.choice(delivery.participants)
            written.append(delivery.add_late_file(rng.choice(old_days), participant))
        if written:
            stamp = f"{dt.datetime.now(dt.UTC):%H:%M:%S}"
            print(f"{stamp} {len(written)} objects written", file=sys.stderr, flush=True)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
