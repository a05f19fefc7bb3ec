"""e4sync.verify: the content-blind checks every source shares: the sha256 of a file, read
in chunks, and whether a body is an HTML page where data was expected.

Imports only the standard library.
Must not import: e4sync.
"""

from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 18  # 256 KiB: as fast as 1 MiB here, and a smaller resident peak


def sha256_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """Return ``(size, sha256 hexdigest)`` of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def looks_like_html(first_bytes: bytes) -> bool:
    """True when a body starts like markup (``<``, possibly after whitespace or a BOM)."""
    head = first_bytes[:4096]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    return head.lstrip().startswith(b"<")
