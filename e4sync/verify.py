"""e4sync.verify: the content-blind checks every source shares: the sha256 of a file, read
in chunks (``e4sync.fsutil``'s, offered here too), and whether a body is an HTML page where
data was expected.

Imports only the standard library and ``e4sync.fsutil``.
Must not import: e4sync.sources, e4sync.state, e4sync.archive, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

from e4sync.fsutil import sha256_file as sha256_file  # callers import it from here

CHUNK = 1 << 18  # 256 KiB: as fast as 1 MiB here, and a smaller resident peak


def looks_like_html(first_bytes: bytes) -> bool:
    """True when a body starts like markup (``<``, possibly after whitespace or a BOM)."""
    head = first_bytes[:4096]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    return head.lstrip().startswith(b"<")
