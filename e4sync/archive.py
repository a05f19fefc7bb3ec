"""e4sync.archive: the local archive on disk (SPEC section 4 "Layout placeholders" and 5).

Owns: turning the ``[archive] layout`` template and a session's fields into a safe relative
path (whatever the platform sends as a label, the path stays inside the root); choosing a
collision-free path so that no session's file is ever overwritten by another's; the durable
commit ``X.zip.part`` -> fsync -> sidecar staged as ``X.json.tmp`` -> link into place ->
fsync the folder -> ``X.json`` named; keeping an earlier copy aside instead of overwriting
it; clean-up after a crash; reading sidecars back for ``reindex``.

Imports only the standard library, ``e4sync.errors``, ``e4sync.crashpoints`` and
``e4sync.verify`` (for ``sha256_file``); never client, source, state, sync or cli: the
archive knows files, not how sessions are fetched or recorded.
"""

from __future__ import annotations

import difflib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import secrets
import string
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path, PurePath, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from e4sync.crashpoints import crashpoint
from e4sync.errors import StorageError
from e4sync.verify import sha256_file

log = logging.getLogger(__name__)

PLACEHOLDERS = (
    "account",
    "user_id",
    "session_id",
    "device_id",
    "device_serial",
    "label",
    "device",
    "start_time",
    "start",
    "duration",
)
DEFAULT_LAYOUT = "{account}/{start:%Y}/{start:%m}/{start:%d}/{start_time}_{device_serial}.zip"
# {start} without a format: sortable, and free of ":" so it is valid on every filesystem.
DEFAULT_START_FORMAT = "%Y-%m-%dT%H-%M-%S"
UNKNOWN = "unknown"
SIDECAR_SCHEMA = 1

MAX_VALUE_CHARS = 100  # one placeholder's value, after formatting
MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux, macOS and Windows (in UTF-16 units there)
# X.zip.part and X.json.tmp are 5 bytes longer than X.zip; they must fit NAME_MAX too.
MAX_FILE_NAME_BYTES = MAX_COMPONENT_BYTES - len(".part")
# A rendered file name leaves room for a collision suffix ("_<session_id>_<n>").
MAX_RENDERED_STEM_BYTES = 200
MAX_SUFFIX_ID_CHARS = 40
MAX_COLLISIONS = 1000
MAX_SPEC_CHARS = 64
MAX_SPEC_NUMBER = 255  # widths and precisions: a huge width would allocate gigabytes
MAX_SIDECAR_BYTES = 1 << 20

# Separators, and what Windows, SMB shares and macOS Finder refuse or misread.
_UNSAFE_CHARS = frozenset('/\\<>:"|?*')
# Control, format (bidi overrides, zero-width), lone surrogates, line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_EDGE_JUNK = re.compile(r"^[\s.]+|[\s.]+$")
_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "nul", "conin$", "conout$"]
    + [f"{p}{n}" for p in ("com", "lpt") for n in [*"123456789", "¹", "²", "³"]]
)
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,30}")
_FLOAT_TEXT = re.compile(
    r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,3})?"
)
_LABEL_TEXT = re.compile(r"([0-9]{1,12})(?:\.0*)?")
# Filesystems without hard links (some FUSE, SMB, FAT) answer link() with one of these.
_NO_HARDLINK_ERRNOS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}
)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_ROOT_HINT = (
    "create it and give the user running e4sync write access (chown/chmod), or point "
    "[archive] root at a writable folder; under systemd, list it in ReadWritePaths="
)
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


class UnsafePathError(StorageError, ValueError):
    """A relative path would leave the archive root (a damaged database row, or a bug).
    Nothing was written."""


@dataclass(frozen=True)
class LayoutFields:
    """What a layout can name, for one session. Values may arrive as the platform sent them
    (ints, floats, None, hostile text): rendering coerces and sanitises every one.
    ``device_serial`` is derived from ``label`` (see :func:`device_serial`)."""

    account: str
    user_id: str
    session_id: str
    device_id: str
    label: str
    device: str
    start_time: int
    duration: float


def session_key(account: Any, session_id: Any) -> str:
    """The key that names a session across accounts: ``"<account>/<session_id>"``."""
    return f"{_text(account)}/{_text(session_id)}"


def device_serial(label: Any) -> str:
    """Return the serial printed on the wristband: ``"A"`` + the label as 5 uppercase hex
    digits (``2588`` -> ``"A00A1C"``), or ``"unknown"`` when the label is empty or not a
    whole number."""
    match = _LABEL_TEXT.fullmatch(_text(label).strip())
    if match is None:
        return UNKNOWN
    return f"A{int(match.group(1)):05X}"


def validate_layout(layout: str, timezone: str = "UTC") -> None:
    """Raise ``ValueError`` with a message a person can act on if ``layout`` (or
    ``timezone``) cannot be used: an unknown placeholder (with a did-you-mean), a bad format
    spec, an absolute path, a ``..``, an empty layout, or one that does not end in ``.zip``.
    A layout that passes renders for any field values."""
    _parse(layout)
    _zone(timezone)
    samples = (
        _SAMPLE_FIELDS,
        LayoutFields("", None, None, None, None, None, None, None),  # type: ignore[arg-type]
    )
    for fields in samples:
        render_relpath(layout, fields, timezone)


def render_relpath(layout: str, fields: LayoutFields, timezone: str = "UTC") -> PurePosixPath:
    """Render ``layout`` with ``fields`` into a relative, normalised path that cannot leave
    the archive root. ``{start:...}`` formats the start time in ``timezone`` (an IANA name)
    with strftime codes. Every placeholder value is made safe: no separators, no ``..``, no
    control characters, no leading dots or spaces, capped at 100 characters; an empty value
    becomes ``_``. Raise ``ValueError`` only for a bad layout or time zone."""
    pieces = _parse(layout)
    values = _typed_values(fields, _zone(timezone))
    text = "".join(
        piece.literal + ("" if piece.name is None else _safe_value(_render_piece(piece, values)))
        for piece in pieces
    )
    parts = [part for part in text.split("/") if part not in ("", ".")]
    last = len(parts) - 1
    return PurePosixPath(
        *(_safe_component(part, is_file=i == last) for i, part in enumerate(parts))
    )


def validate_timezone(timezone: str) -> None:
    """Raise ``ValueError`` if ``timezone`` is not a known IANA zone name."""
    _zone(timezone)


class Archive:
    """The archive under ``root``. Safe to share between download threads: path choice is
    serialised, and each file is written under a name no other session holds."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self._root_text = str(self.root)
        self._lock = threading.Lock()
        # Folders already proven to lie inside the real root, this pass (see resolve).
        self._inside: set[str] = set()
        # Paths handed out by choose_path in this process, so two threads never get one.
        self._reserved: dict[PurePosixPath, str] = {}

    def __repr__(self) -> str:
        return f"Archive({str(self.root)!r})"

    def check_writable(self) -> None:
        """Create the root (mode 0750) if it is missing and prove a file can be written and
        fsynced there. Raise ``StorageError`` with a fix if not."""
        probe = self.root / f".e4sync-probe-{os.getpid()}-{secrets.token_hex(4)}.zip.part"
        try:
            self._makedirs(self.root)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"e4sync write probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                _unlink_quietly(probe)
        except OSError as exc:
            raise StorageError(
                f"the archive root {self.root} is not writable: {_explain(exc)}. Fix: {_ROOT_HINT}"
            ) from exc

    def resolve(self, relpath: str | PurePath) -> Path:
        """Return ``root / relpath``; raise ``UnsafePathError`` if it would leave the root,
        by its text or through a symbolic link: a folder (or file) inside the archive that
        links elsewhere would send a session's file outside it. The root itself may be a
        link; what counts is where the path really is, against where the root really is."""
        rel = _relpath(relpath)
        path = self.root.joinpath(*rel.parts)
        if os.path.commonpath([self.root, os.path.normpath(path)]) != str(self.root):
            raise UnsafePathError(f"{str(rel)!r} leaves the archive root {self.root}")
        # The folder is resolved once per Archive (a pass): a realpath per call costs a
        # lstat per component, several times per session. The name itself is looked at
        # every time (one lstat): a file there may be a link too.
        folder = str(path.parent)
        if folder not in self._inside:
            self._check_inside(path.parent)
            if os.path.isdir(folder):
                self._inside.add(folder)
        if os.path.islink(path):
            self._check_inside(path)
        return path

    def _check_inside(self, path: Path) -> None:
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
            raise UnsafePathError(
                f"{path} really is {real}, outside the archive root {real_root} (a symbolic "
                "link inside the archive); nothing was written there. Replace the link with "
                "a real folder, or make the root itself the link"
            )

    def join(self, relpath: str) -> str:
        """``root/relpath`` as text, unchecked, for a quick look (one ``stat``) at each of
        many archived files: an idle pass over 20,000 sessions cannot afford a ``Path`` and
        a containment check for each. Anything that writes, hashes or deletes uses
        :meth:`resolve`, which refuses what this would let through."""
        return os.path.join(self._root_text, relpath)

    def part_path(self, relpath: str | PurePath) -> Path:
        """Return ``root/relpath`` + ``.part`` (``X.zip.part``), with its folders made and
        each new folder's parent fsynced."""
        final = self.resolve(relpath)
        try:
            self._makedirs(final.parent)
        except OSError as exc:
            raise _storage_error("create the folder", final.parent, exc) from exc
        return final.with_name(final.name + ".part")

    def sidecar_path(self, relpath: str | PurePath) -> Path:
        """Return ``X.json`` beside ``X.zip``."""
        final = self.resolve(relpath)
        return final.with_name(_stem(final.name) + ".json")

    def owner(self, relpath: str | PurePath) -> str | None:
        """Return the session key recorded in the sidecar at ``relpath``, if any."""
        data = self.read_sidecar(relpath)
        return None if data is None else _owner_of(data)

    def choose_path(
        self,
        relpath: str | PurePath,
        session_key: str,
        is_taken: Callable[[PurePosixPath], bool],
        *,
        session_id: str | None = None,
    ) -> PurePosixPath:
        """Return ``relpath`` if it is free for ``session_key``, else the first free of
        ``<stem>_<session_id>.zip``, ``<stem>_<session_id>_2.zip``, ... and log a warning
        naming both sessions. A path is free when ``is_taken`` says no, no other thread of
        this process holds it, and any file or sidecar there belongs to this session.
        ``session_id`` defaults to the part of ``session_key`` after the first ``/``."""
        rel = _relpath(relpath)
        sid = session_id if session_id is not None else session_key.split("/", 1)[-1]
        with self._lock:
            first_holder = None
            for candidate in _candidates(rel, sid):
                holder = self._holder(candidate, session_key, is_taken)
                if holder is None:
                    self._reserved[candidate] = session_key
                    if candidate != rel:
                        log.warning(
                            "%s is already used by %s; session %s goes to %s instead",
                            rel,
                            first_holder,
                            session_key,
                            candidate,
                        )
                    return candidate
                first_holder = first_holder or holder
        raise StorageError(
            f"no free file name for session {session_key} near {rel} after {MAX_COLLISIONS} tries"
        )

    def commit(self, part: Path | str, relpath: str | PurePath, sidecar: dict) -> Path:
        """Move a downloaded, verified ``part`` into place as ``relpath`` with its sidecar,
        durably, and return the final path.

        The order (SPEC section 5; docs/reliability.md): fsync the part; write the sidecar's
        text to ``X.json.tmp`` and fsync it; hard-link the part to the final name (which
        never replaces a file) or, on a filesystem without hard links, rename it after
        checking the name is free; fsync the folder; only then rename ``X.json.tmp`` to
        ``X.json`` and fsync the folder again; remove the part. So a sidecar never names a
        file that is not there: a crash before the link leaves only a part and a ``.tmp``
        (removed at the next start), one after it leaves the whole file with its sidecar
        staged beside it (finished by ``remove_stale_parts``).

        If the final name already holds the same bytes, only the sidecar is brought up to
        date. If it holds this session's own earlier copy, a version the platform has since
        replaced or a damaged one, that file is kept aside (:meth:`keep_aside`), never
        overwritten, and the new one takes the name. A file of another session, or one
        e4sync did not write, is never touched (``StorageError``; the part is left for the
        caller). Any ``OSError`` becomes ``StorageError`` naming the cause."""
        part = Path(part)
        rel = _relpath(relpath)
        final = self.resolve(rel)
        side = self.sidecar_path(rel)
        key = _owner_of(sidecar)
        try:
            _fsync_file(part)
            if os.path.lexists(side):
                holder = self.owner(rel)
                if holder != key:
                    raise StorageError(
                        f"{side} belongs to {holder or 'no e4sync session'}, not to {key}; "
                        "it was not overwritten"
                    )
            if os.path.lexists(final):
                return self._commit_over_existing(part, rel, final, sidecar)
            staged = self._stage_sidecar(rel, sidecar)
            try:
                _place(part, final)
            except FileExistsError:
                # Another process put a file there between our check and the link.
                _unlink_quietly(staged)
                return self._commit_over_existing(part, rel, final, sidecar)
            except BaseException:
                _unlink_quietly(staged)
                raise
            _fsync_dir(final.parent)
            crashpoint("before-sidecar")
            os.replace(staged, side)
            _fsync_dir(side.parent)
            _unlink_quietly(part)
        except OSError as exc:
            raise _storage_error("archive", final, exc) from exc
        return final

    def write_sidecar(self, relpath: str | PurePath, data: dict) -> None:
        """Write ``X.json`` atomically (``X.json.tmp``, fsync, rename, fsync the folder):
        sorted keys, indent 2, a trailing newline, ASCII only."""
        side = self.sidecar_path(relpath)
        try:
            staged = self._stage_sidecar(relpath, data)
            os.replace(staged, side)
            _fsync_dir(side.parent)
        except OSError as exc:
            raise _storage_error("write the sidecar", side, exc) from exc

    def keep_aside(self, relpath: str | PurePath, reason: str) -> Path:
        """Give the archived file at ``relpath`` a second, dated name beside it,
        ``<stem>.<reason>-<UTC time>.zip`` (``reason`` is ``replaced`` or ``damaged``), that
        e4sync never writes to, moves or deletes again, and return it. A ``replaced`` copy
        (whole, an older version) gets its sidecar copied too, marked ``kept_aside`` so
        that ``reindex`` does not take it for the session's current copy; a ``damaged`` one
        is kept as found, for a person to look at. The file keeps its current name until
        the caller replaces it: a crash in between leaves two names for one file."""
        rel = _relpath(relpath)
        final = self.resolve(rel)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        stem = _stem(final.name)
        for n in range(1, MAX_COLLISIONS):
            tail = f".{reason}-{stamp}" + ("" if n == 1 else f"-{n}") + ".zip"
            aside = final.with_name(
                _truncate_bytes(stem, MAX_COMPONENT_BYTES - len(tail.encode())) + tail
            )
            aside_rel = rel.with_name(aside.name)
            if os.path.lexists(aside) or os.path.lexists(self.sidecar_path(aside_rel)):
                continue
            # The same order as a commit: the sidecar staged, the file named, then the
            # sidecar named (a crash between leaves it staged, finished at the next start).
            staged = None
            old = self.read_sidecar(rel) if reason == "replaced" else None
            if old is not None:
                old["kept_aside"] = {"reason": reason, "at": stamp, "file": aside.name}
                old["file"] = aside.name
                staged = self._stage_sidecar(aside_rel, old)
            try:
                os.link(final, aside)
            except FileExistsError:
                if staged:
                    _unlink_quietly(staged)
                continue
            except OSError as exc:
                if exc.errno not in _NO_HARDLINK_ERRNOS:
                    if staged:
                        _unlink_quietly(staged)
                    raise
                os.rename(final, aside)  # no hard links here: the name moves instead
            _fsync_dir(final.parent)
            if staged:
                os.replace(staged, self.sidecar_path(aside_rel))
                _fsync_dir(final.parent)
            log.warning("kept the %s copy %s aside as %s", reason, final, aside)
            return aside
        raise StorageError(f"no free name to keep {final} aside after {MAX_COLLISIONS} tries")

    def read_sidecar(self, relpath: str | PurePath) -> dict | None:
        """Return the sidecar beside ``relpath`` as a dict, or None if there is none or it
        cannot be read as a JSON object (logged as a warning)."""
        side = self.sidecar_path(relpath)
        data, problem = _load_json(side)
        if problem is not None:
            log.warning("ignoring the sidecar %s: %s", side, problem)
        return data

    def remove_stale_parts(self, *, min_age: float = 0.0) -> list[Path]:
        """Clean up after a crash, at the start of a pass: finish or remove what a killed
        commit left, and return the files removed. Only files last modified at least
        ``min_age`` seconds ago are touched (another host may be writing the others).

        - ``X.zip.part``: removed. A part that is a second name of an archived file (a kill
          between link and unlink) loses only that name.
        - ``X.json.tmp`` beside an ``X.zip`` that has no sidecar, or whose sidecar describes
          other bytes of the same session: a commit killed between placing the file and
          naming its sidecar. The staged sidecar is renamed into place (where a sidecar is
          already named, only if it records the file's sha256).
        - any other ``X.json.tmp``: removed (its file never reached its name).
        - ``X.json`` whose ``X.zip`` is missing (written by an e4sync before 0.2, which
          named the sidecar first): logged as an orphan and left for ``reindex`` to report.
        Other files, even ones named ``*.part``, are not e4sync's and are left alone."""
        removed: list[Path] = []
        now = time.time()
        for dirpath, _dirnames, filenames in os.walk(self.root, onerror=_walk_error):
            names = set(filenames)
            for name in filenames:
                if not (name.endswith(".zip.part") or name.endswith(".json.tmp")):
                    continue
                path = Path(dirpath, name)
                try:
                    if min_age > 0 and now - os.lstat(path).st_mtime < min_age:
                        continue
                    if name.endswith(".json.tmp") and self._finish_staged_sidecar(path):
                        continue
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning("cannot remove the stale file %s: %s", path, _explain(exc))
                    continue
                removed.append(path)
            for name in filenames:
                if name.endswith(".json") and name[: -len(".json")] + ".zip" not in names:
                    log.warning(
                        "%s: a sidecar without its ZIP (run `e4sync verify`, or `e4sync "
                        "reindex` to rebuild the state database from the archive)",
                        Path(dirpath, name),
                    )
        return removed

    def _finish_staged_sidecar(self, tmp: Path) -> bool:
        """Rename a staged ``X.json.tmp`` into place if it describes the whole ``X.zip``
        beside it that no sidecar describes yet; return whether it did."""
        side = tmp.with_name(tmp.name[: -len(".tmp")])
        final = side.with_name(side.name[: -len(".json")] + ".zip")
        if not final.is_file() or final.is_symlink():
            return False
        staged, _ = _load_json(tmp)
        if staged is None or not staged.get("sha256") or _owner_of(staged) is None:
            return False
        current, _ = _load_json(side)
        if current is not None:
            if current.get("sha256") == staged["sha256"] or _owner_of(current) != _owner_of(staged):
                return False  # the sidecar in place already says it, or is another's
            if _sha256(final) != staged["sha256"]:
                return False  # the file is still the one the named sidecar describes
        # With no sidecar named, the staged one is named whatever the file's bytes: it
        # says whose file this is. A file damaged since is then found (its sha256 differs)
        # and kept aside by the next download, not left without an owner.
        os.replace(tmp, side)
        _fsync_dir(side.parent)
        log.info("finished the sidecar %s left by an interrupted commit", side)
        return True

    def iter_sidecars(self) -> Iterator[tuple[PurePosixPath, dict]]:
        """Yield ``(relpath of X.zip, sidecar dict)`` for every sidecar under the root, in
        path order. Unreadable or invalid ones, and JSON files that are not e4sync
        sidecars, are skipped with a warning."""
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=_walk_error):
            dirnames.sort()
            reldir = Path(dirpath).relative_to(self.root).parts
            for name in sorted(filenames):
                if not name.endswith(".json"):
                    continue
                path = Path(dirpath, name)
                if path.is_symlink():
                    log.warning("skipping %s: a symbolic link, not a sidecar", path)
                    continue
                data, problem = _load_json(path)
                if data is not None and ("session_id" not in data or "account" not in data):
                    data, problem = None, "no account or session_id: not an e4sync sidecar"
                if data is None:
                    log.warning("skipping %s: %s", path, problem)
                    continue
                if data.get("kept_aside"):
                    continue  # an older version kept beside the current copy, not the copy
                yield PurePosixPath(*reldir, name[: -len(".json")] + ".zip"), data

    # -- internals ------------------------------------------------------------------------

    def _holder(
        self,
        rel: PurePosixPath,
        key: str,
        is_taken: Callable[[PurePosixPath], bool],
    ) -> str | None:
        """Who holds ``rel`` against ``key`` (a description for the log), or None if free."""
        reserved = self._reserved.get(rel)
        if reserved is not None and reserved != key:
            return f"session {reserved}"
        if is_taken(rel):
            return "another session of this pass"
        final = self.resolve(rel)
        if os.path.lexists(final) or os.path.lexists(self.sidecar_path(rel)):
            holder = self.owner(rel)
            if holder != key:
                return f"session {holder}" if holder else "a file e4sync did not write"
        return None

    def _commit_over_existing(
        self, part: Path, rel: PurePosixPath, final: Path, sidecar: dict
    ) -> Path:
        """``final`` exists: if it is this very file, only its sidecar may need bringing up
        to date; if it is this session's own earlier copy, keep it aside and take the name;
        anything else is never touched."""
        want = sidecar.get("sha256") or _sha256(part)
        there = _sha256(final)  # read once: it decides both questions below
        if os.path.getsize(final) == os.path.getsize(part) and there == want:
            old = self.read_sidecar(rel)
            if old is None or old.get("sha256") != want:
                self.write_sidecar(rel, sidecar)
            os.unlink(part)
            _fsync_dir(final.parent)
            return final
        old = self.read_sidecar(rel)
        if old is None or _owner_of(old) != _owner_of(sidecar):
            raise StorageError(f"{final} already holds a different file; it was not overwritten")
        reason = "replaced" if there == old.get("sha256") else "damaged"
        self.keep_aside(rel, reason)
        staged = self._stage_sidecar(rel, sidecar)
        # The old bytes are safe under their second name: the new file may take this one.
        os.replace(part, final)
        _fsync_dir(final.parent)
        os.replace(staged, self.sidecar_path(rel))
        _fsync_dir(final.parent)
        return final

    def _stage_sidecar(self, relpath: str | PurePath, data: dict) -> Path:
        """Write the sidecar's text to ``X.json.tmp``, fsynced, and return that path; the
        caller renames it into place when the file it describes is."""
        side = self.sidecar_path(relpath)
        tmp = side.with_name(side.name + ".tmp")
        blob = (json.dumps(data, sort_keys=True, indent=2, default=str) + "\n").encode("ascii")
        self._makedirs(side.parent)
        _unlink_quietly(tmp)
        # O_EXCL | O_NOFOLLOW: never write through a link someone left under this name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def _makedirs(self, directory: Path) -> None:
        """mkdir -p, fsyncing the parent of every folder made so the new entry survives a
        crash. The root is made 0750 (health data); folders below follow the umask."""
        missing: list[Path] = []
        current = directory
        while not os.path.isdir(current) and current.parent != current:
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, 0o750 if path == self.root else 0o777)
            except FileExistsError:
                if os.path.isdir(path):
                    continue  # another thread made it
                raise
            _fsync_dir(path.parent)

    # -- read-only helpers for ``verify`` ---------------------------------------------------

    def load_sidecar(self, relpath: str | PurePath) -> tuple[dict | None, str | None]:
        """The sidecar beside ``relpath`` and, if it cannot be trusted as one, why:
        ``(data, None)``; ``(None, None)`` when there is none; ``(None, problem)`` when it
        is unreadable, too large, not a JSON object, or a symbolic link (which ``reindex``
        skips). Logs nothing: the caller reports it."""
        side = self.sidecar_path(relpath)
        if os.path.islink(side):
            return None, "a symbolic link, not a sidecar"
        return _load_json(side)


# -- layout parsing and rendering ----------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    literal: str
    name: str | None
    spec: str


_SAMPLE_FIELDS = LayoutFields(
    account="lab",
    user_id="25383",
    session_id="578634",
    device_id="c004bc",
    label="2588",
    device="E4 2.2",
    start_time=1541950248,
    duration=70847.0,
)
_SAMPLE_START = datetime.fromtimestamp(1541950248, UTC)
_SAMPLE_VALUES: dict[str, Any] = {
    "account": "lab",
    "user_id": "25383",
    "session_id": "578634",
    "device_id": "c004bc",
    "device_serial": "A00A1C",
    "label": "2588",
    "device": "E4 2.2",
    "start_time": 1541950248,
    "duration": 70847.0,
}


def _show(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "...")


def _parse(layout: str) -> tuple[_Piece, ...]:
    """Check ``layout`` and split it into literal text and placeholders."""
    if not isinstance(layout, str):
        raise ValueError(f"the layout must be text, not {type(layout).__name__}")
    return _parse_text(layout)


@functools.lru_cache(maxsize=64)
def _parse_text(layout: str) -> tuple[_Piece, ...]:
    if not layout.strip():
        raise ValueError("the layout is empty; the default is " + DEFAULT_LAYOUT)
    where = f"layout {_show(layout)}"
    try:
        parsed = list(string.Formatter().parse(layout))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc} (write {{{{ and }}}} for literal braces)") from None
    pieces: list[_Piece] = []
    skeleton = []
    for literal, name, spec, conversion in parsed:
        _check_literal(literal, where)
        skeleton.append(literal)
        if name is None:
            pieces.append(_Piece(literal, None, ""))
            continue
        _check_placeholder(name, spec or "", conversion, where)
        pieces.append(_Piece(literal, name, spec or ""))
        skeleton.append("\0")  # stands for a value: never a separator, never empty
    _check_structure("".join(skeleton), where)
    return tuple(pieces)


def _check_literal(literal: str, where: str) -> None:
    for ch in literal:
        if ch == "\\":
            raise ValueError(f"{where}: use / to separate folders, not \\")
        if ch in _UNSAFE_CHARS and ch != "/":
            raise ValueError(f"{where}: the character {ch!r} is not allowed in file names")
        if unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            raise ValueError(f"{where}: control or invisible character {ch!r} in the layout")


def _check_placeholder(name: str, spec: str, conversion: str | None, where: str) -> None:
    if name not in PLACEHOLDERS:
        hint = difflib.get_close_matches(name.strip().lower(), PLACEHOLDERS, n=1)
        shown = "{" + name + "}" if name else "{}"
        raise ValueError(
            f"{where}: unknown placeholder {shown}"
            + (f"; did you mean {{{hint[0]}}}?" if hint else "")
            + f" Known: {', '.join(PLACEHOLDERS)}"
        )
    if conversion is not None:
        raise ValueError(
            f"{where}: {{{name}!{conversion}}}: conversions (!r, !s, !a) are not supported"
        )
    if "{" in spec or "}" in spec:
        raise ValueError(
            f"{where}: {{{name}}}: nested placeholders in a format spec are not supported"
        )
    if len(spec) > MAX_SPEC_CHARS:
        raise ValueError(f"{where}: {{{name}}}: the format spec is longer than {MAX_SPEC_CHARS}")
    if name == "start":
        try:
            text = _SAMPLE_START.strftime(spec or DEFAULT_START_FORMAT)
        except (ValueError, UnicodeError) as exc:
            raise ValueError(f"{where}: {{start:{spec}}}: bad strftime format: {exc}") from None
        if "/" in text or "\\" in text:
            raise ValueError(
                f"{where}: {{start:{spec}}} makes a value with a path separator; put / between "
                "placeholders instead, e.g. {start:%Y}/{start:%m}"
            )
        return
    if any(int(number) > MAX_SPEC_NUMBER for number in re.findall(r"[0-9]+", spec)):
        raise ValueError(
            f"{where}: {{{name}:{spec}}}: widths and precisions above {MAX_SPEC_NUMBER} "
            "are not allowed"
        )
    try:
        format(_SAMPLE_VALUES[name], spec)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {{{name}:{spec}}}: bad format spec: {exc}") from None


def _check_structure(skeleton: str, where: str) -> None:
    if skeleton.startswith("/"):
        raise ValueError(f"{where}: must be relative to [archive] root, not an absolute path")
    if skeleton.startswith("~"):
        raise ValueError(f"{where}: must be relative to [archive] root; ~ is not expanded here")
    components = [c for c in skeleton.split("/") if c not in ("", ".")]
    if ".." in components:
        raise ValueError(f"{where}: '..' would leave the archive root")
    if skeleton.endswith("/") or not components or not components[-1].endswith(".zip"):
        raise ValueError(f"{where}: the file name must end with .zip")
    if components[-1] == ".zip":
        raise ValueError(f"{where}: the file name before .zip is empty")


def _zone(name: str) -> tzinfo:
    if not isinstance(name, str) or not name:
        raise ValueError("the time zone must be an IANA name such as UTC or Europe/Berlin")
    if name.upper() in ("UTC", "Z", "ETC/UTC"):
        return UTC  # works even where no tz database is installed
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
        raise ValueError(
            f"unknown time zone {_show(name)}; use an IANA name such as UTC or Europe/Berlin"
        ) from None


def _text(value: Any) -> str:
    """A platform value as text: None -> "", 2588.0 -> "2588"."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return str(value)
    except Exception:  # an int past Python's 4300-digit limit, an odd object
        return UNKNOWN


def _number(value: Any) -> int | float | None:
    """A platform number from an int, a float or their text; None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) < 10**30 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    text = _text(value).strip()
    if _INT_TEXT.fullmatch(text):
        return int(text)
    if _FLOAT_TEXT.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else None
    return None


def _typed_values(fields: LayoutFields, zone: tzinfo) -> dict[str, Any]:
    values: dict[str, Any] = {
        name: _text(getattr(fields, name))
        for name in ("account", "user_id", "session_id", "device_id", "label", "device")
    }
    values["device_serial"] = device_serial(fields.label)
    start = _number(fields.start_time)
    values["start_time"] = int(start) if start is not None else _text(fields.start_time)
    values["start"] = None
    if start is not None:
        try:
            values["start"] = datetime.fromtimestamp(int(start), zone)
        except (OverflowError, OSError, ValueError):
            pass  # beyond the calendar: rendered as "unknown"
    duration = _number(fields.duration)
    values["duration"] = float(duration) if duration is not None else _text(fields.duration)
    return values


def _render_piece(piece: _Piece, values: dict[str, Any]) -> str:
    name, spec = piece.name, piece.spec
    if name == "start":
        when = values["start"]
        if when is None:
            return UNKNOWN
        try:
            return when.strftime(spec or DEFAULT_START_FORMAT)
        except (ValueError, OverflowError, UnicodeError):
            return UNKNOWN
    value = values[name]
    if not spec:
        return _text(value)
    try:
        return format(value, spec)
    except (ValueError, TypeError, OverflowError):
        # A spec valid for the sample's type but not for this hostile value.
        return _text(value)


def _safe_value(text: str) -> str:
    """One placeholder value made safe inside a path component."""
    digest = ""
    if len(text) > MAX_VALUE_CHARS:
        # Keep long values apart: two labels that differ only past the cap differ here too.
        whole = text.encode("utf-8", "surrogatepass")
        digest = "~" + hashlib.sha256(whole).hexdigest()[:8]
        text = text[: MAX_VALUE_CHARS - len(digest)]
    text = unicodedata.normalize("NFC", text)
    text = "".join(
        "_" if ch in _UNSAFE_CHARS or unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
        for ch in text
    )
    text = _EDGE_JUNK.sub("", text)
    return (text or "_") + digest


def _truncate_bytes(text: str, limit: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


def _safe_component(component: str, *, is_file: bool) -> str:
    if component in (".", ".."):
        return "_"
    # Windows refuses CON, NUL, COM1 ... as a name, with any extension after them.
    if component.split(".", 1)[0].rstrip(" ").lower() in _WINDOWS_RESERVED:
        component = "_" + component
    if is_file:
        stem = _stem(component)
        component = _shorten(stem, MAX_RENDERED_STEM_BYTES) + component[len(stem) :]
    else:
        component = _shorten(component, MAX_COMPONENT_BYTES)
    return component


def _shorten(text: str, limit: int) -> str:
    """Cap ``text`` at ``limit`` UTF-8 bytes; a cut end loses its trailing dots and spaces
    (Windows drops them, so two names could meet)."""
    cut = _truncate_bytes(text, limit)
    if cut == text:
        return text
    return re.sub(r"[\s.]+$", "", cut) or "_"


def _stem(name: str) -> str:
    return name[: -len(".zip")] if name.endswith(".zip") else name


def _candidates(rel: PurePosixPath, session_id: str) -> Iterator[PurePosixPath]:
    yield rel
    name = rel.name
    ext = ".zip" if name.endswith(".zip") else rel.suffix
    stem = name[: len(name) - len(ext)]
    sid = _safe_value(session_id)
    if len(sid) > MAX_SUFFIX_ID_CHARS:
        sid = sid[: MAX_SUFFIX_ID_CHARS - 9] + "~" + hashlib.sha256(sid.encode()).hexdigest()[:8]
    for n in range(1, MAX_COLLISIONS):
        tail = f"_{sid}" + ("" if n == 1 else f"_{n}")
        room = MAX_FILE_NAME_BYTES - len((tail + ext).encode("utf-8"))
        yield rel.with_name(_truncate_bytes(stem, room) + tail + ext)


# -- paths, files and errors ---------------------------------------------------------------


def _relpath(relpath: str | PurePath) -> PurePosixPath:
    if isinstance(relpath, PurePath):
        rel = PurePosixPath(relpath.as_posix())
    elif isinstance(relpath, str):
        rel = PurePosixPath(relpath)
    else:
        raise TypeError(f"a relative path must be str or PurePath, not {type(relpath).__name__}")
    text = str(rel)
    if rel.is_absolute() or ".." in rel.parts or text in ("", ".") or "\0" in text:
        raise UnsafePathError(f"{_show(text)} is not a path inside the archive root")
    return rel


def _owner_of(data: dict) -> str | None:
    key = data.get("session_key")
    if key:
        return str(key)
    if data.get("account") is not None and data.get("session_id") is not None:
        return session_key(data["account"], data["session_id"])
    return None


def _load_json(path: Path) -> tuple[dict | None, str | None]:
    """Read a small JSON object: (data, None), (None, None) if absent, (None, problem)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SIDECAR_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read it: {_explain(exc)}"
    if len(raw) > MAX_SIDECAR_BYTES:
        return None, f"larger than {MAX_SIDECAR_BYTES} bytes"
    try:
        data = json.loads(raw)
    except ValueError as exc:  # also UnicodeDecodeError
        return None, f"not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, None


def _sha256(path: Path) -> str:
    return sha256_file(path)[1]


def _place(part: Path, final: Path) -> None:
    """Give ``part`` the name ``final`` without ever replacing a file already there."""
    try:
        os.link(part, final)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARDLINK_ERRNOS:
            raise
        # No hard links here: rename, after checking the name is free (a small race that
        # only another writer of this very path could lose).
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final)) from exc
        os.replace(part, final)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """fsync a folder so that names made or removed in it survive a crash."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return  # a folder we can write but not open (rare ACLs): nothing more to do
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some network and FUSE filesystems cannot fsync a folder; they sync on their own.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, _explain(exc))


def _walk_error(exc: OSError) -> None:
    log.warning("cannot read the folder %s: %s", exc.filename, _explain(exc))


def _explain(exc: OSError) -> str:
    code = exc.errno
    if code in _ERRNO_TEXT:
        return f"{_ERRNO_TEXT[code]} ({errno.errorcode.get(code, code)})"
    if code is not None:
        return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
    return str(exc)


def _storage_error(what: str, path: Path, exc: OSError) -> StorageError:
    return StorageError(f"cannot {what} {path}: {_explain(exc)}", errno=exc.errno)
