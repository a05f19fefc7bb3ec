"""The source seam is real (SPEC section 7a): outside ``e4sync/sources/`` no module names
E4 Connect's client, its fields or file names, or its environment variables, so a second
source is a new folder there and an ``[[account]] source`` value, with no change elsewhere.
The "Must not import:" lines are rules about these names, not uses of them."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "e4sync"
E4_NAMES = re.compile(r"E4Connect|e4connect\.client|device_serial|\.zip\.part|E4_USER|E4_PWD")


def e4_mentions(text: str) -> list[str]:
    return [
        line.strip()
        for line in text.splitlines()
        if E4_NAMES.search(line) and not line.startswith("Must not import:")
    ]


def test_no_module_outside_the_sources_names_e4_connect() -> None:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "sources":
            continue
        mentions = e4_mentions(path.read_text())
        if mentions:
            found[str(rel)] = mentions
    assert not found, f"E4 names outside e4sync/sources/: {found}"


def test_the_check_sees_a_mention() -> None:
    assert e4_mentions('from e4sync.sources.e4connect.client import E4Connect\n"X.zip.part"')
    assert not e4_mentions("Must not import: e4sync.sources.e4connect.client.")
