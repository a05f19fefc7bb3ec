"""e4sync.state.damage: what a damaged SQLite state database looks like, and the error for it.

Owns the one decision "does this error mean the file itself is damaged?" (SQLite's
``SQLITE_CORRUPT`` and ``SQLITE_NOTADB``, with their extended codes: garbage in place of the
file, a truncated file, a bad page met by a query or by ``PRAGMA quick_check``) and the
``StateDamaged`` error that says so: the file, SQLite's words, and the exact ``mv`` that puts
it aside for ``e4sync reindex`` to rebuild it. Both the SQLAlchemy engine
(``e4sync.state.db``) and the plain-sqlite3 fast path of ``status`` use it, so the two give
the same line.

Imports only the standard library and ``e4sync.errors``: never SQLAlchemy (``status`` must
answer without importing it).
Must not import: sqlalchemy, e4sync.state.db, e4sync.state.models.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
from collections.abc import Sequence
from typing import Any

from e4sync.errors import StateDamaged

# SQLite's primary result codes (sqlite3.h); an extended code keeps its primary code in the
# low byte (SQLITE_CORRUPT_INDEX is 779 = 11 | 3 << 8).
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26

# The same conditions in SQLite's words, for an error that carries no code.
_DAMAGE_WORDS = (
    "file is not a database",
    "database disk image is malformed",
    "malformed database schema",
)


def sqlite_damage_reason(exc: BaseException) -> str | None:
    """SQLite's message when ``exc`` (a ``sqlite3`` error, or one wrapping it as
    ``.orig``, as SQLAlchemy's do) says the database file is damaged; else None. A locked,
    full or unreadable file is not damage: those are other errors with other remedies."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, sqlite3.Error):
        exc = orig
    if not isinstance(exc, sqlite3.DatabaseError):
        return None
    text = str(exc).strip() or exc.__class__.__name__
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int) and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return text
    if any(words in text.lower() for words in _DAMAGE_WORDS):
        return text
    return None


def quick_check_problem(rows: Sequence[Sequence[Any]]) -> str | None:
    """The first problem in the rows of ``PRAGMA quick_check``, or None when it said ok."""
    if [tuple(r) for r in rows] == [("ok",)]:
        return None
    first = str(rows[0][0]) if rows and rows[0] else "no answer"
    more = f" and {len(rows) - 1} more problem(s)" if len(rows) > 1 else ""
    return f"integrity check: {first[:200]}{more}"


def move_aside_command(path: str) -> str:
    """The exact shell command that moves the database ``path`` aside with a ``.damaged``
    suffix, with its ``-wal`` and ``-shm`` when they exist: a WAL left beside the new, empty
    file would be replayed into it. They keep SQLite's pairing (``X.damaged-wal`` beside
    ``X.damaged``), so the damaged copy still opens with its WAL for whoever wants to
    salvage it. A name already taken (an earlier damage) is never overwritten:
    ``.damaged.2`` and so on."""
    present = [c for c in ("-wal", "-shm") if os.path.lexists(path + c)]
    suffix, n = ".damaged", 1
    while any(os.path.lexists(path + suffix + c) for c in ("", *present)):
        n += 1
        suffix = f".damaged.{n}"
    return " && ".join(
        f"mv {shlex.quote(path + c)} {shlex.quote(path + suffix + c)}" for c in ("", *present)
    )


def state_damaged(path: str | None, reason: str) -> StateDamaged:
    """The ``StateDamaged`` for the file at ``path`` (made absolute, as the ``mv`` needs).
    Which companion files the ``mv`` names depends on the moment: made again after the
    last connection closed (SQLite then removes an empty WAL), it says what is left."""
    if not path:
        return StateDamaged(None, reason)
    path = os.path.abspath(os.path.expanduser(path))
    return StateDamaged(path, reason, move_aside_command(path))


def damage_from(exc: BaseException, path: str | None) -> StateDamaged | None:
    """``exc`` itself when it is a ``StateDamaged`` already, the ``StateDamaged`` for
    ``path`` when it is SQLite saying the file is damaged, else None."""
    if isinstance(exc, StateDamaged):
        return exc
    reason = sqlite_damage_reason(exc)
    return None if reason is None else state_damaged(path, reason)
