"""e4sync.folders: are the state folder, the state database and the archive root usable?

Found before any login, in one line each that names the path and the fix (exit 73,
``CantCreate``): a state folder or archive root that is a file, a folder that cannot be
written (permissions, a read-only filesystem), a database path that is a folder or a file
that cannot be written. Every command that opens the state database asks first
(``ensure_state``), so none of them meets a ``FileExistsError`` later; ``config check`` and
``doctor`` list the problems without creating anything (``state_problems``,
``archive_problems``).

The checks are what the kernel says, not what the mode bits suggest: a folder is probed by
creating (and removing) a hidden file in it, an existing database file by opening it for
writing (which changes nothing), so root on a read-only filesystem is caught too. A folder
that does not exist yet is fine when its nearest existing parent is a folder this user can
write; ``ensure_state`` then makes it (0700, as the state database's folder is made).

Must not import: sqlalchemy, e4sync.state.db, e4sync.sync, e4sync.cli, e4sync.sources.
"""

from __future__ import annotations

import errno
import os
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path

from e4sync.config import Config
from e4sync.errors import CantCreate
from e4sync.fsutil import explain


@dataclass(frozen=True)
class FolderProblem:
    """One unusable path: ``what`` it is for, the ``path``, the ``problem`` and the ``fix``."""

    what: str  # "state folder", "state database", "archive root"
    path: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"the {self.what} {self.path} {self.problem}; {self.fix}"

    def error(self) -> CantCreate:
        return CantCreate(str(self), self.path)


def _uid() -> str:
    return f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "this user"


def _why(exc: OSError) -> str:
    """The cause in a few words and its errno name: ``permission denied (EACCES)``."""
    code = exc.errno
    if code is None:
        return explain(exc)
    return f"{os.strerror(code).lower()} ({errno.errorcode.get(code, code)})"


def _fix(exc: OSError, point: str) -> str:
    if exc.errno == errno.EROFS:
        return f"remount it read-write, {point}"
    return (
        f"give {_uid()} write access (chown/chmod; under systemd list it in "
        f"ReadWritePaths=), {point}"
    )


def _probe(folder: Path) -> OSError | None:
    """None when a file can be created in ``folder`` (it is removed at once), else why not."""
    probe = folder / f".e4sync-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return exc
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return None


def folder_problem(what: str, path: Path, key: str) -> FolderProblem | None:
    """Whether ``path`` can be used (or made) as a folder e4sync writes in; ``key`` is the
    configuration key that names it, for the fix."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    point = f"or point {key} at a folder this user ({_uid()}) can write"
    if os.path.lexists(path) and not path.is_dir():
        return FolderProblem(
            what,
            str(path),
            "is a file, not a folder",
            f"move it away (mv {shlex.quote(str(path))} {shlex.quote(str(path) + '.old')}) {point}",
        )
    if path.is_dir():
        failed = _probe(path)
        if failed is None:
            return None
        return FolderProblem(
            what, str(path), f"cannot be written ({_why(failed)})", _fix(failed, point)
        )
    # Missing: made on first use, so its nearest existing parent must take a new folder.
    parent = path.parent
    while not os.path.lexists(parent) and parent.parent != parent:
        parent = parent.parent
    if not parent.is_dir():
        return FolderProblem(
            what,
            str(path),
            f"cannot be created: {parent} is a file, not a folder",
            f"move {parent} away {point}",
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        reason = "permission denied"
    else:
        failed = _probe(parent)
        reason = _why(failed) if failed is not None else ""
    if reason:
        return FolderProblem(
            what,
            str(path),
            f"cannot be created in {parent} ({reason})",
            f"create it (mkdir -p {shlex.quote(str(path))}) and give {_uid()} write access {point}",
        )
    return None


def _default_url(cfg: Config) -> str:
    return f"sqlite:///{(Path(cfg.state.dir).expanduser() / 'state.db').as_posix()}"


def _database_file(cfg: Config) -> Path | None:
    """The SQLite file of the state database, or None (PostgreSQL, an in-memory database)."""
    url = cfg.state.url or _default_url(cfg)
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    path = url[len(prefix) :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(os.path.abspath(Path(path).expanduser()))


def state_problems(cfg: Config) -> list[FolderProblem]:
    """What keeps the state folder or the SQLite state database from being used: the folder
    that holds the database (and its lock) and the database file itself. A PostgreSQL
    database has no folder here to check."""
    db_file = _database_file(cfg)
    if db_file is None:
        return []
    folder = db_file.parent
    default = not cfg.state.url or cfg.state.url == _default_url(cfg)
    key = "[state] dir" if default else "[state] url"
    problem = folder_problem("state folder", folder, key)
    if problem is not None:
        return [problem]
    if os.path.lexists(db_file):
        if db_file.is_dir():
            return [
                FolderProblem(
                    "state database",
                    str(db_file),
                    "is a folder, not a database file",
                    f"move it away or point {key} elsewhere",
                )
            ]
        try:
            # Opening for writing changes nothing, and says what the kernel will say.
            fd = os.open(db_file, os.O_RDWR)
        except OSError as exc:
            return [
                FolderProblem(
                    "state database",
                    str(db_file),
                    f"cannot be written ({_why(exc)})",
                    _fix(exc, f"or point {key} at a database this user can write"),
                )
            ]
        os.close(fd)
    return []


def archive_problems(cfg: Config) -> list[FolderProblem]:
    """What keeps the archive root from being used (made if missing, written)."""
    problem = folder_problem("archive root", Path(cfg.archive.root), "[archive] root")
    return [problem] if problem is not None else []


def ensure_state(cfg: Config) -> None:
    """Raise ``CantCreate`` (73) naming the path and the fix when the state folder or the
    SQLite state database cannot be used; a missing folder is fine (it is made 0700 when
    the database is opened)."""
    problems = state_problems(cfg)
    if problems:
        raise problems[0].error()


def ensure_archive(cfg: Config) -> None:
    """Raise ``CantCreate`` (73) when the archive root cannot be made or written."""
    problems = archive_problems(cfg)
    if problems:
        raise problems[0].error()
