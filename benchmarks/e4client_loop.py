"""benchmarks.e4client_loop: the baseline, a script written for the older ``e4client`` 1.12.

``python -m benchmarks.e4client_loop BASE_URL OUTDIR [ID ...]`` does what such scripts did:
log in, list the sessions, then download them one by one (all of them, or the given ids).
``--list-only`` in place of the ids stops after the listing: the fixed cost of the start-up,
the login and the listing, which no concurrency can shorten.
The credentials come from ``E4_USER``/``E4_PWD`` (e4client's own variables), never argv.
Only e4client's ``_URL_*`` class attributes are rewritten to the simulator's base URL.
"""

from __future__ import annotations

import os
import sys

REAL_BASE = "https://www.empatica.com/connect"


def main(argv: list[str]) -> int:
    from e4client import E4Connect

    base_url, outdir, *ids = argv
    for name in [n for n in vars(E4Connect) if n.startswith("_URL_")]:
        setattr(E4Connect, name, getattr(E4Connect, name).replace(REAL_BASE, base_url))
    os.makedirs(outdir, exist_ok=True)
    client = E4Connect(os.environ["E4_USER"], os.environ["E4_PWD"])
    listed = [row["id"] for row in client.sessions_list()]
    if ids == ["--list-only"]:
        return 0
    for sid in ids or listed:
        client.download_session(sid, outdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
