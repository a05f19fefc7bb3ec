"""e4sync.fsutil: the few local-file helpers every writer of e4sync shares.

Owns: ``fsync_dir`` (the one way a new or removed name is made durable: the archive's
commit, the client's ``download_session``, the metrics textfile), ``fsync_file``,
``sha256_file`` and ``explain`` (an ``OSError`` in words a person can act on). Kept tiny
and dependency-free so that the client and ``notify`` can use it without loading the
archive.

Must not import: e4sync.archive, e4sync.sources, e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import errno
import hashlib
import os

CHUNK = 1 << 18  # 256 KiB: as fast as 1 MiB here, and a smaller resident peak

_ERRNO_TEXT = {
    errno.ENOSPC: "no space left on device; free some space or move [archive] root",
    errno.EROFS: "the filesystem is read-only; remount it read-write or move [archive] root",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large (a file-size limit such as `ulimit -f` or LimitFSIZE=, or the "
    "filesystem's largest file)",
    errno.EIO: "input/output error; the disk or network share may be failing",
    errno.ENAMETOOLONG: "file name too long; shorten [archive] layout",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder stands where a file should be",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "a file with that name already exists",
    errno.EMFILE: "too many open files",
}
if hasattr(errno, "EDQUOT"):
    _ERRNO_TEXT[errno.EDQUOT] = "disk quota exceeded; free some space or raise the quota"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a folder so that names made or removed in it survive a crash.

    A folder that cannot be opened for lack of permission (rare ACLs; platforms that do not
    open folders at all) and a filesystem that cannot fsync a folder (some network and FUSE
    filesystems, which sync on their own) are not errors; any other ``OSError`` is raised."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return  # a folder we can write but not open: nothing more to do
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync a file's data and metadata, by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """Return ``(size, sha256 hexdigest)`` of a file, read in 256 KiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def explain(exc: OSError) -> str:
    """``exc`` as a short cause with its errno name: ``"permission denied (EACCES)"``."""
    code = exc.errno
    if code in _ERRNO_TEXT:
        return f"{_ERRNO_TEXT[code]} ({errno.errorcode.get(code, code)})"
    if code is not None:
        return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
    return str(exc)
