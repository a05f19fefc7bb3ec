"""benchmarks.s3_get_loop: the floor of any botocore client on the loopback delivery.

``python -m benchmarks.s3_get_loop ENDPOINT BUCKET PREFIX THREADS`` lists the prefix and
GETs every object with ``THREADS`` threads, reading each body to its end and keeping
nothing: no file, no hash, no check, no database. The key id and secret come from
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (the delivery's read-only keys), never argv.
What it takes is what e4sync's requests alone cost through botocore (the same library,
settings and checksum mode), the rest of e4sync's time is its own work. Prints the number
of objects.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor


def main(argv: list[str]) -> int:
    import botocore.session
    from botocore.config import Config

    endpoint, bucket, prefix, threads = argv[0], argv[1], argv[2], int(argv[3])
    session = botocore.session.Session()
    session.set_credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    client = session.create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint,
        config=Config(
            s3={"addressing_style": "path"},
            max_pool_connections=threads * 2 + 2,
            retries={"mode": "standard", "max_attempts": 5},
            response_checksum_validation="when_supported",
        ),
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [obj["Key"] for page in pages for obj in page.get("Contents") or ()]

    def get(key: str) -> None:
        body = client.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")["Body"]
        while body.read(1 << 20):
            pass

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, keys))
    print(len(keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
