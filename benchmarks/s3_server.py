"""benchmarks.s3_server: the loopback EmbracePlus delivery in its own process, for bench_s3.

``python -m benchmarks.s3_server --secret-file PATH [sizes]`` starts an ``S3Delivery`` (moto's
S3 on 127.0.0.1 behind the counting proxy) in the real layout, seeded as ``seed_benchmark``
seeds it (``--participants`` x ``--days`` x ``--raw-per-day`` raw files cut to
``--max-samples`` samples, and their per-minute CSVs), then optionally ``--fill-to N``
zero-length "other" objects spread over the participant-day folders (put straight into moto's
storage, about 13,000 a second) and one ``--big BYTES`` object of random bytes. It writes the
read-only secret into ``PATH`` (0600), prints one JSON line (endpoint, bucket, prefix, region,
key id, object count, seeding seconds) and then answers one JSON line per command read on
stdin:

- ``count OP [OP ...]``: how many requests of these S3 operations the proxy has logged
  (``{"n": 12}``); ``counts``: every operation's count; ``seconds [OP ...]``: the time the
  delivery took to answer them, summed; ``clear``: empty the log;
- ``sizes``: ``{key: size}`` of every object under the prefix; ``stop``: close and exit.

Running the delivery in its own process keeps moto's memory (it holds every object) out of
the clients' figures, as ``harness.SimProcess`` does for the E4 Connect simulator.

moto lists a bucket by sorting every key for every page (about 0.8 s a page at 100,000 keys,
80 s for one whole listing). This process replaces that with a sorted index built once per
change of the bucket and cut by bisection (a listing with a delimiter, rclone's folder by
folder, walks only its prefix's keys); pages, tokens, ``StartAfter``, ``Prefix`` and common
prefixes are moto's own. Only the server is faster: every client gets the same answers.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any


def _fast_listing(backend: Any) -> None:
    """Make ``backend``'s ListObjects and ListObjectsV2 cost a bisection and the keys they
    answer with, not a sort of the whole bucket; the answers are moto's own."""
    from moto.s3.models import FakeDeleteMarker

    cls = type(backend)
    generation = [0]
    lock = threading.Lock()
    cache: dict[str, tuple[int, list[Any], list[str]]] = {}

    def bump(original: Any) -> Any:
        def changed(self: Any, *args: Any, **kwargs: Any) -> Any:
            with lock:
                generation[0] += 1
            return original(self, *args, **kwargs)

        return changed

    for name in ("put_object", "delete_object", "delete_objects", "copy_object"):
        if hasattr(cls, name):
            setattr(cls, name, bump(getattr(cls, name)))

    def span(bucket: Any, prefix: str) -> tuple[list[Any], list[str], int, int]:
        """The bucket's keys sorted by name (built once per change), and where ``prefix``'s
        keys lie among them."""
        with lock:
            gen = generation[0]
            hit = cache.get(bucket.name)
        if hit is None or hit[0] != gen:
            keys = sorted(
                (k for k in list(bucket.keys.values()) if not isinstance(k, FakeDeleteMarker)),
                key=lambda key: key.name,
            )
            hit = (gen, keys, [key.name for key in keys])
            with lock:
                cache[bucket.name] = hit
        _, keys, names = hit
        lo = bisect.bisect_left(names, prefix)
        hi = bisect.bisect_left(names, prefix + "\U0010ffff") if prefix else len(names)
        return keys, names, lo, hi

    def split(bucket: Any, prefix: str, delimiter: str) -> tuple[list[Any], list[str]]:
        keys, names, lo, hi = span(bucket, prefix)
        found, folders = [], set()
        for n in range(lo, hi):
            rest = names[n][len(prefix) :]
            if delimiter in rest:
                folders.add(prefix + rest.split(delimiter)[0] + delimiter)
            else:
                found.append(keys[n])
        return found, sorted(folders)

    def list_objects_v2(
        self: Any,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        continuation_token: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> Any:
        limit = (
            self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        )
        if delimiter:
            found, folders = split(bucket, prefix or "", delimiter)
            every = sorted(found + folders, key=self._get_name)  # type: ignore[operator]
            if limit:
                every = self._get_results_from_token(every, limit)
            return self._truncate_result(every, max_keys)
        keys, names, lo, hi = span(bucket, prefix or "")
        start = max(lo, bisect.bisect_right(names, limit)) if limit else lo
        # One page and one key more: _truncate_result tells from it whether more follow.
        return self._truncate_result(keys[start : min(hi, start + max_keys + 1)], max_keys)

    def list_objects(
        self: Any,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        marker: str | None,
        max_keys: int | None,
    ) -> Any:
        limit = (self._pagination_tokens.get(marker) or marker) if marker else None
        if delimiter:
            found, folders = split(bucket, prefix or "", delimiter)
        else:
            keys, names, lo, hi = span(bucket, prefix or "")
            start = max(lo, bisect.bisect_right(names, limit)) if limit else lo
            end = hi if max_keys is None else min(hi, start + max_keys + 1)
            found, folders, limit = keys[start:end], [], None
        if limit:
            found = self._get_results_from_token(found, limit)
        if max_keys is None:
            return found, folders, False, None
        page, truncated, next_marker = self._truncate_result(found, max_keys)
        return page, folders, truncated, next_marker

    cls.list_objects_v2 = list_objects_v2
    cls.list_objects = list_objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s3_server")
    parser.add_argument("--secret-file", type=Path, required=True)
    parser.add_argument("--participants", type=int, default=3)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--raw-per-day", type=int, default=48)
    parser.add_argument("--max-samples", type=int, default=64)
    parser.add_argument("--fill-to", type=int, default=0, help="zero-length objects up to N")
    parser.add_argument("--big", type=int, default=0, help="one object of this many bytes")
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)

    import logging
    import time

    from e4sync.sources.embraceplus.demo import write_secret
    from e4sync.sources.embraceplus.simulator import Faults, seed_benchmark

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    started = time.perf_counter()
    delivery = seed_benchmark(
        participants=args.participants,
        days=args.days,
        raw_per_day=args.raw_per_day,
        max_samples=args.max_samples,
        faults=Faults(latency=args.latency),
    )
    try:
        backend = delivery._backend
        _fast_listing(backend)
        count = delivery.object_count
        people, days = delivery.participants, delivery.day_list
        folders = [delivery.folder_prefix(p, day) for day in days for p in people]
        for n in range(max(0, args.fill_to - count)):
            key = f"{folders[n % len(folders)]}other/filler-{n:07d}.dat"
            backend.put_object(delivery.bucket, key, b"", disable_notification=True)
            count += 1
        big_key = None
        if args.big:
            big_key = f"{folders[-1]}other/big-{args.big}.bin"
            delivery.put(big_key, os.urandom(args.big))
            count += 1
        write_secret(args.secret_file, delivery.readonly.secret_access_key)
        info = {
            **delivery.describe(),
            "objects": count,
            "seed_seconds": time.perf_counter() - started,
            "big_key": big_key,
        }
        print(json.dumps(info), flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "stop":
                break
            if words[0] == "count":
                answer: Any = {"n": sum(delivery.count(op) for op in words[1:])}
            elif words[0] == "counts":
                seen: dict[str, int] = {}
                for record in delivery.requests:
                    seen[record.operation] = seen.get(record.operation, 0) + 1
                answer = seen
            elif words[0] == "seconds":
                ops = set(words[1:])
                answer = {
                    "seconds": sum(
                        r.seconds for r in delivery.requests if not ops or r.operation in ops
                    )
                }
            elif words[0] == "clear":
                delivery.clear_requests()
                answer = {}
            elif words[0] == "sizes":
                bucket = backend.get_bucket(delivery.bucket)
                answer = {
                    name: key.size
                    for name, key in list(bucket.keys.items())
                    if name.startswith(delivery.prefix)
                }
            else:
                answer = {"error": f"unknown command {words[0]!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        delivery.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
