"""e4sync.archive: the local archive on disk (SPEC section 4 "Layout placeholders" and 5).

Three modules, one per seam: ``layout`` (a layout template and an item's fields -> a safe
relative path; the names derived from a file: part, sidecar, collision and kept-aside
names), ``store`` (``Archive``: the durable writes, the clean-up after a crash, reading the
archive back) and ``sidecar`` (the one owner of the sidecar's format). The archive knows
files, not platforms: the placeholders a layout may name, and their example values, come
from the source kind; an item's file may have any suffix. Callers import from here.

Must not import: e4sync.sources, e4sync.client, e4sync.state, e4sync.sync, e4sync.cli.
"""

from e4sync.archive import sidecar
from e4sync.archive.layout import render_relpath, validate_layout, validate_timezone
from e4sync.archive.sidecar import session_key
from e4sync.archive.store import Archive, UnsafePathError

__all__ = [
    "Archive",
    "UnsafePathError",
    "render_relpath",
    "session_key",
    "sidecar",
    "validate_layout",
    "validate_timezone",
]
