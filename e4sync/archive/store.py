"""e4sync.archive.store: the archive's durable writes (SPEC section 5).

Owns ``Archive``: where a relative path lies under the root, and the proof that it stays
inside it (``resolve``, through symbolic links too); the collision-free choice of a path,
so that no item's file is ever overwritten by another's (``choose_path``); the durable
commit ``X<suffix>.part`` -> fsync -> sidecar staged as ``X.json.tmp`` -> link into place
-> fsync the folder -> crashpoint ``before-sidecar`` -> ``X.json`` named; keeping an
earlier copy aside under a dated name instead of overwriting it (``keep_aside``); the
clean-up after a crash (``remove_stale_parts``); walking the sidecars for ``reindex``
(``iter_sidecars``, which finds each sidecar's file by the name it records); and the
write probe (``check_writable``). The names come from ``layout``; what a sidecar says, and
its bytes, from ``sidecar``. Nothing here knows a platform: a file is an item's bytes under
any suffix.

Must not import: e4sync.sources, e4sync.client, e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePath, PurePosixPath

from e4sync.archive.layout import (
    MAX_COLLISIONS,
    PART,
    SIDECAR,
    STAGED,
    aside_names,
    collision_names,
    part_name,
    quoted,
    sidecar_name,
    suffix_of,
)
from e4sync.archive.sidecar import (
    dumps,
    is_kept_aside,
    load_sidecar,
    mark_kept_aside,
    not_a_sidecar,
    owner,
    read_sidecar,
)
from e4sync.crashpoints import crashpoint
from e4sync.errors import ArchiveUnwritable, StorageError
from e4sync.fsutil import explain, fsync_dir, fsync_file, sha256_file

__all__ = ["Archive", "UnsafePathError"]

log = logging.getLogger(__name__)

# Filesystems without hard links (some FUSE, SMB, FAT) answer link() with one of these.
_NO_HARDLINK_ERRNOS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}
)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_JOINED_MAX = 10_000  # relative paths ``resolve`` keeps joined (then it starts again)
_ROOT_HINT = (
    "create it and give the user running e4sync write access (chown/chmod), or point "
    "[archive] root at a writable folder; under systemd, list it in ReadWritePaths="
)


class UnsafePathError(StorageError, ValueError):
    """A relative path would leave the archive root (a damaged database row, or a bug).
    Nothing was written."""


class Archive:
    """The archive under ``root``. Safe to share between download threads: path choice is
    serialised, and each file is written under a name no other item holds."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self._root_text = str(self.root)
        self._lock = threading.Lock()
        # Folders already proven to lie inside the real root, this pass (see resolve).
        self._inside: set[str] = set()
        # Paths handed out by choose_path in this process, so two threads never get one.
        self._reserved: dict[PurePosixPath, str] = {}
        # Relative paths already checked by their text to lie inside the root, joined to
        # it (with their folder's text): a download resolves its path several times (its
        # part, sidecar, commit). What the file system holds is looked at on every call.
        self._joined: dict[str | PurePath, tuple[Path, str]] = {}

    def __repr__(self) -> str:
        return f"Archive({str(self.root)!r})"

    def check_writable(self) -> None:
        """Create the root (mode 0750) if it is missing and prove a file can be written and
        fsynced there. Raise ``StorageError`` with a fix if not. The probe is named like a
        partial file, so one a crash leaves behind is removed at the next start."""
        name = f".e4sync-probe-{os.getpid()}-{secrets.token_hex(4)}.probe"
        probe = self.root / part_name(name)
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
            raise ArchiveUnwritable(
                f"the archive root {self.root} is not writable: {explain(exc)}. Fix: {_ROOT_HINT}"
            ) from exc

    def resolve(self, relpath: str | PurePath) -> Path:
        """Return ``root / relpath``; raise ``UnsafePathError`` if it would leave the root,
        by its text or through a symbolic link: a folder (or file) inside the archive that
        links elsewhere would send an item's file outside it. The root itself may be a
        link; what counts is where the path really is, against where the root really is."""
        joined = self._joined.get(relpath)
        if joined is None:
            rel = _relpath(relpath)
            path = self.root.joinpath(*rel.parts)
            if os.path.commonpath([self.root, os.path.normpath(path)]) != str(self.root):
                raise UnsafePathError(f"{str(rel)!r} leaves the archive root {self.root}")
            if len(self._joined) >= _JOINED_MAX:
                self._joined.clear()
            joined = self._joined[relpath] = (path, str(path.parent))
        path, folder = joined
        # The folder is resolved once per Archive (a pass): a realpath per call costs a
        # lstat per component, several times per item. The name itself is looked at
        # every time (one lstat): a file there may be a link too.
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
        many archived files: an idle pass over 20,000 items cannot afford a ``Path`` and
        a containment check for each. Anything that writes, hashes or deletes uses
        :meth:`resolve`, which refuses what this would let through."""
        return os.path.join(self._root_text, relpath)

    def part_path(self, relpath: str | PurePath) -> Path:
        """Return ``root/relpath`` + ``.part`` (``X<suffix>.part``), with its folders made
        and each new folder's parent fsynced."""
        final = self.resolve(relpath)
        try:
            self._makedirs(final.parent)
        except OSError as exc:
            raise _storage_error("create the folder", final.parent, exc) from exc
        return final.with_name(part_name(final.name))

    def sidecar_path(self, relpath: str | PurePath) -> Path:
        """Return the sidecar beside the file at ``relpath``: ``X.json`` beside
        ``X<suffix>`` (see ``layout.sidecar_name``)."""
        final = self.resolve(relpath)
        return final.with_name(sidecar_name(final.name))

    def owner(self, relpath: str | PurePath) -> str | None:
        """Return the session key recorded in the sidecar at ``relpath``, if any."""
        data = self.read_sidecar(relpath)
        return None if data is None else owner(data)

    def choose_path(
        self,
        relpath: str | PurePath,
        key: str,
        is_taken: Callable[[PurePosixPath], bool],
        *,
        item_id: str | None = None,
    ) -> PurePosixPath:
        """Return ``relpath`` if it is free for the item whose session key is ``key``, else
        the first free of ``<stem>_<item id><suffix>``, ``<stem>_<item id>_2<suffix>``, ...
        and log a warning naming both items. A path is free when ``is_taken`` says no, no
        other thread of this process holds it, and any file or sidecar there belongs to
        this item. ``item_id`` defaults to the part of ``key`` after the first ``/``."""
        rel = _relpath(relpath)
        sid = item_id if item_id is not None else key.split("/", 1)[-1]
        with self._lock:
            first_holder = None
            for candidate in collision_names(rel, sid):
                holder = self._holder(candidate, key, is_taken)
                if holder is None:
                    self._reserved[candidate] = key
                    if candidate != rel:
                        log.warning(
                            "%s is already used by %s; session %s goes to %s instead",
                            rel,
                            first_holder,
                            key,
                            candidate,
                        )
                    return candidate
                first_holder = first_holder or holder
        raise StorageError(
            f"no free file name for session {key} near {rel} after {MAX_COLLISIONS} tries"
        )

    def commit(
        self,
        part: Path | str,
        relpath: str | PurePath,
        sidecar: dict,
        *,
        aside_root: PurePosixPath | None = None,
    ) -> Path:
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
        date. If it holds this item's own earlier copy, a version the platform has since
        replaced or a damaged one, that file is kept aside (:meth:`keep_aside`), never
        overwritten, and the new one takes the name. A file of another item, or one
        e4sync did not write, is never touched (``StorageError``; the part is left for the
        caller). Any ``OSError`` becomes ``StorageError`` naming the cause. ``aside_root``:
        where a kept-aside copy goes (see :meth:`keep_aside`)."""
        part = Path(part)
        rel = _relpath(relpath)
        final = self.resolve(rel)
        side = self.sidecar_path(rel)
        key = owner(sidecar)
        try:
            fsync_file(part)
            if os.path.lexists(side):
                holder = self.owner(rel)
                if holder != key:
                    raise StorageError(
                        f"{side} belongs to {holder or 'no e4sync session'}, not to {key}; "
                        "it was not overwritten"
                    )
            if os.path.lexists(final):
                return self._commit_over_existing(part, rel, final, sidecar, aside_root)
            staged = self._stage_sidecar(rel, sidecar)
            try:
                _place(part, final)
            except FileExistsError:
                # Another process put a file there between our check and the link.
                _unlink_quietly(staged)
                return self._commit_over_existing(part, rel, final, sidecar, aside_root)
            except BaseException:
                _unlink_quietly(staged)
                raise
            fsync_dir(final.parent)
            crashpoint("before-sidecar")
            os.replace(staged, side)
            fsync_dir(side.parent)
            _unlink_quietly(part)
        except OSError as exc:
            raise _storage_error("archive", final, exc) from exc
        return final

    def write_sidecar(self, relpath: str | PurePath, data: dict) -> None:
        """Write ``X.json`` atomically (``X.json.tmp``, fsync, rename, fsync the folder),
        in ``sidecar.dumps``'s form."""
        side = self.sidecar_path(relpath)
        try:
            staged = self._stage_sidecar(relpath, data)
            os.replace(staged, side)
            fsync_dir(side.parent)
        except OSError as exc:
            raise _storage_error("write the sidecar", side, exc) from exc

    def keep_aside(
        self, relpath: str | PurePath, reason: str, aside_root: PurePosixPath | None = None
    ) -> Path:
        """Give the archived file at ``relpath`` a second, dated name beside it,
        ``<stem>.<reason>-<UTC time><suffix>`` (``reason`` is ``replaced`` or ``damaged``),
        that e4sync never writes to, moves or deletes again, and return it. A ``replaced``
        copy (whole, an older version) gets its sidecar copied too, marked ``kept_aside``
        so that ``reindex`` does not take it for the item's current copy; a ``damaged`` one
        is kept as found, for a person to look at. The file keeps its current name until
        the caller replaces it: a crash in between leaves two names for one file, and the
        next call for it returns the name it has already instead of adding a third.

        With ``aside_root`` (``{account}/.versions``) the dated name is not beside the
        file but in the same place under that folder (``{account}/.versions/a/b/X.<reason>-
        <UTC>.avro`` for ``{account}/a/b/X.avro``), so a mirrored tree keeps only the
        platform's files. It must be on the same filesystem: the copy is a hard link."""
        rel = _relpath(relpath)
        final = self.resolve(rel)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        folder = _aside_folder(rel, aside_root)
        if aside_root is not None:
            self._makedirs(self.resolve(folder))
        earlier = self._kept_already(final, self.resolve(folder / rel.name).parent, reason)
        if earlier is not None:
            # A replacement killed between keeping the copy and naming the new file: the
            # copy is kept already, under the name that pass gave it.
            log.info("%s is kept aside already as %s", final, earlier)
            return earlier
        for beside in aside_names(rel, reason, stamp):
            aside_rel = folder / beside.name
            aside = self.resolve(aside_rel)
            if os.path.lexists(aside) or os.path.lexists(self.sidecar_path(aside_rel)):
                continue
            # The same order as a commit: the sidecar staged, the file named, then the
            # sidecar named (a crash between leaves it staged, finished at the next start).
            staged = None
            old = self.read_sidecar(rel) if reason == "replaced" else None
            if old is not None:
                marked = mark_kept_aside(old, reason, stamp, aside.name)
                staged = self._stage_sidecar(aside_rel, marked)
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
            fsync_dir(aside.parent)
            if staged:
                os.replace(staged, self.sidecar_path(aside_rel))
                fsync_dir(aside.parent)
            log.warning("kept the %s copy %s aside as %s", reason, final, aside)
            return aside
        raise StorageError(f"no free name to keep {final} aside after {MAX_COLLISIONS} tries")

    def keep_refused(
        self,
        part: Path,
        relpath: str | PurePath,
        data: dict,
        aside_root: PurePosixPath | None = None,
    ) -> Path:
        """Keep a fetched file that its checks refused, but whose bytes are the platform's
        own (its content is what is wrong, so fetching it again brings the same bytes), as
        ``<stem>.refused-<UTC time><suffix>`` where ``keep_aside`` would put a copy of
        ``relpath``, with ``data`` as its sidecar (marked ``kept_aside``, so ``reindex``
        never takes it for the item's copy), and return that path. The same bytes kept
        already (an earlier attempt) are not kept twice: that name is returned. The part
        keeps its name; the caller removes it. The same durable order as a commit."""
        rel = _relpath(relpath)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        folder = _aside_folder(rel, aside_root)
        where = self.resolve(folder / rel.name).parent
        self._makedirs(where)
        ext, marker = suffix_of(rel.name), ".refused-"
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(where)):
                if marker in name and name.endswith(ext):
                    earlier = self.read_sidecar(folder / name)
                    if earlier is not None and earlier.get("sha256") == data.get("sha256"):
                        return where / name
        for beside in aside_names(rel, "refused", stamp):
            aside_rel = folder / beside.name
            aside = self.resolve(aside_rel)
            if os.path.lexists(aside) or os.path.lexists(self.sidecar_path(aside_rel)):
                continue
            fsync_file(part)
            staged = self._stage_sidecar(
                aside_rel, mark_kept_aside(data, "refused", stamp, aside.name)
            )
            try:
                os.link(part, aside)
            except FileExistsError:
                _unlink_quietly(staged)
                continue
            except OSError as exc:
                if exc.errno not in _NO_HARDLINK_ERRNOS:
                    _unlink_quietly(staged)
                    raise _storage_error("keep the refused file", aside, exc) from exc
                os.rename(part, aside)  # no hard links here: the name moves instead
            fsync_dir(aside.parent)
            os.replace(staged, self.sidecar_path(aside_rel))
            fsync_dir(aside.parent)
            return aside
        raise StorageError(f"no free name to keep the refused {rel} after {MAX_COLLISIONS} tries")

    @staticmethod
    def _kept_already(final: Path, folder: Path, reason: str) -> Path | None:
        """A name ``keep_aside`` gave ``final`` earlier (the very same file: one inode),
        in ``folder``, or None."""
        ext = suffix_of(final.name)
        marker = f".{reason}-"
        try:
            names = [n for n in os.listdir(folder) if marker in n and n.endswith(ext)]
            if not names:
                return None
            here = os.stat(final)
        except OSError:
            return None
        for name in sorted(names):
            try:
                there = os.lstat(folder / name)
            except OSError:
                continue
            if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino) and name != final.name:
                return folder / name
        return None

    def read_sidecar(self, relpath: str | PurePath) -> dict | None:
        """Return the sidecar beside ``relpath`` as a dict, or None if there is none or it
        cannot be read as a JSON object (logged as a warning)."""
        return read_sidecar(self.sidecar_path(relpath))

    def remove_stale_parts(self, *, min_age: float = 0.0) -> list[Path]:
        """Clean up after a crash, at the start of a pass: finish or remove what a killed
        commit left, and return the files removed. Only files last modified at least
        ``min_age`` seconds ago are touched (another host may be writing the others).

        - ``X<suffix>.part``, for any suffix: removed. A part that is a second name of an
          archived file (a kill between link and unlink) loses only that name.
        - ``X.json.tmp`` beside the file it names that has no sidecar, or whose sidecar
          describes other bytes of the same item: a commit killed between placing the file
          and naming its sidecar. The staged sidecar is renamed into place (where a sidecar
          is already named, only if it records the file's sha256).
        - any other ``X.json.tmp``: removed (its file never reached its name).
        - ``X.json`` whose file is missing (written by an e4sync before 0.2, which named
          the sidecar first): logged as an orphan and left for ``reindex`` to report.
        Other files, even ones named ``*.part`` with no suffix before it (``notes.part``),
        are not e4sync's and are left alone."""
        removed: list[Path] = []
        now = time.time()
        for dirpath, _dirnames, filenames in os.walk(self.root, onerror=_walk_error):
            for name in filenames:
                staged = name.endswith(SIDECAR + STAGED)
                if not (staged or _is_part(name)):
                    continue
                path = Path(dirpath, name)
                try:
                    if min_age > 0 and now - os.lstat(path).st_mtime < min_age:
                        continue
                    if staged and self._finish_staged_sidecar(path, filenames):
                        continue
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning("cannot remove the stale file %s: %s", path, explain(exc))
                    continue
                removed.append(path)
            names = set(filenames)
            described = {sidecar_name(n) for n in filenames if not n.endswith((PART, STAGED))}
            for name in filenames:
                if (
                    name.endswith(SIDECAR)
                    and name not in described
                    and sidecar_name(name) not in names  # a JSON data file with its sidecar
                ):
                    _report_orphan(Path(dirpath, name))
        return removed

    def _finish_staged_sidecar(self, tmp: Path, filenames: Iterable[str]) -> bool:
        """Rename a staged ``X.json.tmp`` into place if it describes the whole file beside
        it (the one it names) that no sidecar describes yet; return whether it did."""
        side = tmp.with_name(tmp.name[: -len(STAGED)])
        staged, _ = load_sidecar(tmp)
        if staged is None or not staged.get("sha256") or owner(staged) is None:
            return False
        file = _data_file(side.name, staged, filenames)
        if file is None:
            return False
        final = side.with_name(file)
        if not final.is_file() or final.is_symlink():
            return False
        current, _ = load_sidecar(side)
        if current is not None:
            if current.get("sha256") == staged["sha256"] or owner(current) != owner(staged):
                return False  # the sidecar in place already says it, or is another's
            if _sha256(final) != staged["sha256"]:
                return False  # the file is still the one the named sidecar describes
        # With no sidecar named, the staged one is named whatever the file's bytes: it
        # says whose file this is. A file damaged since is then found (its sha256 differs)
        # and kept aside by the next download, not left without an owner.
        os.replace(tmp, side)
        fsync_dir(side.parent)
        log.info("finished the sidecar %s left by an interrupted commit", side)
        return True

    def iter_sidecars(self) -> Iterator[tuple[PurePosixPath, dict]]:
        """Yield ``(relpath of the file, sidecar dict)`` for every sidecar under the root,
        in path order; the file is the one the sidecar names (its ``file``). Unreadable or
        invalid ones, JSON files that are not e4sync sidecars, and sidecars that name no
        file beside them are skipped with a warning; a JSON data file beside its own
        sidecar is skipped quietly, and so are copies kept aside."""
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=_walk_error):
            dirnames.sort()
            reldir = Path(dirpath).relative_to(self.root).parts
            names = set(filenames)
            for name in sorted(filenames):
                if not name.endswith(SIDECAR):
                    continue
                path = Path(dirpath, name)
                if path.is_symlink():
                    log.warning("skipping %s: a symbolic link, not a sidecar", path)
                    continue
                data, problem = load_sidecar(path)
                if data is not None and (why := not_a_sidecar(data)) is not None:
                    data, problem = None, why
                if data is None:
                    if problem is None or sidecar_name(name) in names:
                        continue  # gone since the listing, or a JSON data file
                    log.warning("skipping %s: %s", path, problem)
                    continue
                if is_kept_aside(data):
                    continue  # an older version kept beside the current copy, not the copy
                file = _data_file(name, data, filenames)
                if file is None:
                    log.warning("skipping %s: it names no file beside it", path)
                    continue
                yield PurePosixPath(*reldir, file), data

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
        self,
        part: Path,
        rel: PurePosixPath,
        final: Path,
        sidecar: dict,
        aside_root: PurePosixPath | None = None,
    ) -> Path:
        """``final`` exists: if it is this very file, only its sidecar may need bringing up
        to date; if it is this item's own earlier copy, keep it aside and take the name;
        anything else is never touched."""
        want = sidecar.get("sha256") or _sha256(part)
        there = _sha256(final)  # read once: it decides both questions below
        if os.path.getsize(final) == os.path.getsize(part) and there == want:
            old = self.read_sidecar(rel)
            if old is None or old.get("sha256") != want:
                self.write_sidecar(rel, sidecar)
            os.unlink(part)
            fsync_dir(final.parent)
            return final
        old = self.read_sidecar(rel)
        if old is None or owner(old) != owner(sidecar):
            raise StorageError(f"{final} already holds a different file; it was not overwritten")
        reason = "replaced" if there == old.get("sha256") else "damaged"
        self.keep_aside(rel, reason, aside_root)
        staged = self._stage_sidecar(rel, sidecar)
        # The old bytes are safe under their second name: the new file may take this one.
        os.replace(part, final)
        fsync_dir(final.parent)
        os.replace(staged, self.sidecar_path(rel))
        fsync_dir(final.parent)
        return final

    def _stage_sidecar(self, relpath: str | PurePath, data: dict) -> Path:
        """Write the sidecar's text to ``X.json.tmp``, fsynced, and return that path; the
        caller renames it into place when the file it describes is."""
        side = self.sidecar_path(relpath)
        tmp = side.with_name(side.name + STAGED)
        blob = dumps(data)
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
            fsync_dir(path.parent)

    # -- read-only helpers for ``verify`` ---------------------------------------------------

    def load_sidecar(self, relpath: str | PurePath) -> tuple[dict | None, str | None]:
        """The sidecar beside ``relpath`` and, if it cannot be trusted as one, why:
        ``(data, None)``; ``(None, None)`` when there is none; ``(None, problem)`` when it
        is unreadable, too large, not a JSON object, or a symbolic link (which ``reindex``
        skips). Logs nothing: the caller reports it."""
        side = self.sidecar_path(relpath)
        if os.path.islink(side):
            return None, "a symbolic link, not a sidecar"
        return load_sidecar(side)


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
        raise UnsafePathError(f"{quoted(text)} is not a path inside the archive root")
    return rel


def _is_part(name: str) -> bool:
    """Whether ``name`` is a partial file e4sync writes: ``X<suffix>.part``, any suffix."""
    return name.endswith(PART) and bool(suffix_of(name[: -len(PART)]))


def _plain_name(file: object) -> bool:
    return (
        isinstance(file, str)
        and file not in ("", ".", "..")
        and not any(ch in file for ch in "/\\\0")
    )


def _data_file(side_name: str, data: dict, filenames: Iterable[str]) -> str | None:
    """The name of the file the sidecar ``side_name`` describes: the one it records
    (``file``) when that file's sidecar is this one; else the one file beside it whose
    sidecar this is (a sidecar that records none); else None."""
    file = data.get("file")
    if _plain_name(file) and sidecar_name(file) == side_name:
        return file
    matches = [
        n
        for n in filenames
        if n != side_name and not n.endswith((PART, STAGED)) and sidecar_name(n) == side_name
    ]
    return matches[0] if len(matches) == 1 else None


def _report_orphan(path: Path) -> None:
    data, _ = load_sidecar(path)
    file = data.get("file") if data else None
    ext = suffix_of(file) if isinstance(file, str) else ""
    log.warning(
        "%s: a sidecar without its %s (run `e4sync verify`, or `e4sync reindex` to rebuild "
        "the state database from the archive)",
        path,
        ext[1:].upper() if ext else "file",
    )


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


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, explain(exc))


def _walk_error(exc: OSError) -> None:
    log.warning("cannot read the folder %s: %s", exc.filename, explain(exc))


def _aside_folder(rel: PurePosixPath, aside_root: PurePosixPath | None) -> PurePosixPath:
    """Where a copy of ``rel`` is kept aside: its own folder, or the same place under
    ``aside_root`` (``{account}/.versions/a/b`` for ``{account}/a/b/X``)."""
    if aside_root is None:
        return rel.parent
    return _relpath(aside_root) / rel.parent.relative_to(_relpath(aside_root).parent)


def _storage_error(what: str, path: Path, exc: OSError) -> StorageError:
    return StorageError(f"cannot {what} {path}: {explain(exc)}", errno=exc.errno)
