"""e4sync.download: `e4sync download ID [-o PATH] [--force]` — one item, checked, outside the
archive, never over an existing file.

The source's ``download`` writes the item into a private temporary folder beside the target
(same filesystem), under the platform's own name; only then is it placed: by a hard link,
which fails rather than replace anything, so a file that appeared meanwhile is not lost
either. ``--force`` replaces a file that is there (a rename, so the old bytes are never
half-overwritten), but never one inside the archive root: the archive's copies are
e4sync's, and a file there without its sidecar would be no copy at all. Nothing is ever
written inside the archive root. Refusals are ``CantCreate`` (exit 73), said before any
login when the target is known in advance.

Must not import: e4sync.cli, e4sync.sync, e4sync.sources.e4connect.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from e4sync.errors import CantCreate
from e4sync.fsutil import explain, fsync_dir

# Filesystems without hard links answer link() with one of these: placed by a rename there,
# after one more look that nothing is in the way.
_NO_HARDLINK = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK})


def _inside(path: Path, root: Path) -> bool:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _refuse_archive(target: Path, root: Path) -> None:
    if _inside(target, root):
        raise CantCreate(
            f"refusing to write {target}: it is inside the archive root {root}, whose files "
            "are e4sync's own (a damaged or missing copy is downloaded again by the next "
            "pass after `e4sync verify`); give -o a path outside the archive",
            str(target),
        )


def _refuse_existing(target: Path) -> None:
    raise CantCreate(
        f"refusing to overwrite {target}: it exists, and `e4sync download` never replaces "
        f"a file; choose another -o, move it away (mv {shlex.quote(str(target))} "
        f"{shlex.quote(str(target) + '.old')}), or add --force to replace it",
        str(target),
    )


def plan_target(output: str, archive_root: Path, force: bool) -> tuple[Path, Path | None]:
    """``(folder, file)``: where the item goes, decided before any login. ``file`` is the
    path ``-o`` named, None when it named a folder (the platform's name is used there). A
    path inside the archive root, or an existing file without ``force``, is refused; so is
    a folder that cannot be made or written."""
    as_folder = output.endswith(("/", os.sep)) or os.path.isdir(output)
    target = Path(os.path.abspath(os.path.expanduser(output)))
    _refuse_archive(target, archive_root)
    if as_folder:
        folder, file = target, None
        if os.path.lexists(folder) and not folder.is_dir():
            raise CantCreate(f"cannot write into {folder}: it is a file, not a folder", str(folder))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CantCreate(f"cannot create {folder}: {explain(exc)}", str(folder)) from None
    else:
        folder, file = target.parent, target
        if not folder.is_dir():
            raise CantCreate(
                f"cannot write {file}: the folder {folder} does not exist (end -o with / to "
                "have it made)",
                str(file),
            )
        if os.path.lexists(file):
            if not force:
                _refuse_existing(file)
            if os.path.isdir(file):
                raise CantCreate(f"cannot replace {file}: it is a folder", str(file))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CantCreate(f"cannot write into {folder}: permission denied", str(folder))
    return folder, file


def download_one(
    download: Callable[[str, Path], Path],
    item_id: str,
    output: str,
    archive_root: Path,
    *,
    force: bool = False,
) -> Path:
    """Download ``item_id`` with the source's ``download(item_id, folder)`` and place it at
    ``output`` (a file, or a folder for the platform's name) without overwriting anything
    (``force``: replacing a file outside the archive root). Returns the path written."""
    folder, file = plan_target(output, archive_root, force)
    scratch = Path(tempfile.mkdtemp(prefix=".e4sync-download-", dir=folder))
    try:
        fetched = Path(download(item_id, scratch))
        final = file if file is not None else folder / fetched.name
        _refuse_archive(final, archive_root)  # a symbolic link can lead into it
        if os.path.lexists(final) and not force:
            _refuse_existing(final)
        _place(fetched, final, force)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def _place(fetched: Path, final: Path, force: bool) -> None:
    if force:
        if os.path.isdir(final):
            raise CantCreate(f"cannot replace {final}: it is a folder", str(final))
        os.replace(fetched, final)  # replaces the name; no other link's bytes change
    else:
        try:
            os.link(fetched, final)  # fails, rather than replace, if anything is there
        except FileExistsError:
            _refuse_existing(final)
        except OSError as exc:
            if exc.errno not in _NO_HARDLINK:
                raise CantCreate(f"cannot write {final}: {explain(exc)}", str(final)) from None
            if os.path.lexists(final):
                _refuse_existing(final)
            os.rename(fetched, final)
        else:
            with contextlib.suppress(OSError):
                os.unlink(fetched)
    fsync_dir(final.parent)
