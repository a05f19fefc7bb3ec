"""Tests for e4sync.archive.Archive: the durable commit, collisions, stale parts, sidecars,
and storage faults on real filesystems.

Real files in tmp_path throughout. Faults are real too: a read-only or full tmpfs mounted for
the test (we run as root in CI; the test is skipped where mount is refused) and a real
RLIMIT_FSIZE in a child process. The only stand-in is a filesystem without hard links, which
cannot be mounted here: os.link is made to fail as such a filesystem's would.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from e4sync.archive import Archive, UnsafePathError, session_key
from e4sync.errors import StorageError

REPO = Path(__file__).resolve().parents[2]
REL = PurePosixPath("lab/2018/11/11/1541950248_A00A1C.zip")


def sidecar_for(
    data: bytes, account: str = "lab", session_id: str = "578634", file: str = REL.name
) -> dict:
    return {
        "schema": 1,
        "session_key": session_key(account, session_id),
        "account": account,
        "user_id": "25383",
        "session_id": session_id,
        "remote": {"id": session_id, "label": "2588", "start_time": "1541950248"},
        "file": file,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "downloaded_at": "2024-01-01T00:00:00Z",
        "verified_at": "2024-01-01T00:00:01Z",
        "e4sync_version": "0.1.0",
    }


def download(archive: Archive, rel: PurePosixPath, data: bytes) -> Path:
    """What the downloader does: write the bytes to the part path the archive hands out."""
    part = archive.part_path(rel)
    part.write_bytes(data)
    return part


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(Path(d, n).relative_to(root)): Path(d, n).read_bytes()
        for d, _dirs, names in os.walk(root)
        for n in names
    }


def test_commit_fsyncs_before_each_name_is_given_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC section 5's order, watched at the system calls (a spy: the real calls run). A
    power cut must find either no file or a whole one; only the order of these calls makes
    that so, and no file comparison after the fact could show it."""
    archive = Archive(tmp_path / "archive")
    data = b"PK\x03\x04 session bytes"
    part = download(archive, REL, data)
    final = archive.resolve(REL)
    side = archive.sidecar_path(REL)
    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_replace = os.fsync, os.link, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(src, dst, **kwargs) -> None:
        events.append(("link", str(dst)))
        real_link(src, dst, **kwargs)

    def replace(src, dst, **kwargs) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    archive.commit(part, REL, sidecar_for(data))

    def first(event: tuple[str, str]) -> int:
        return events.index(event)

    def last(event: tuple[str, str]) -> int:
        return len(events) - 1 - events[::-1].index(event)

    folder = str(final.parent)
    # The data is on disk before it gets its name; the sidecar is whole before its name.
    assert first(("fsync", str(part))) < first(("link", str(final)))
    tmp = str(side) + ".tmp"
    assert first(("fsync", tmp)) < first(("replace", str(side)))
    # Both names are made durable by fsyncing their folder after they were given.
    assert last(("fsync", folder)) > first(("link", str(final)))
    assert last(("fsync", folder)) > first(("replace", str(side)))
    # The file has its name, durably, before its sidecar gets one: a sidecar never names
    # a file that is not there (issue 16: an orphan sidecar after a kill).
    link_at, side_at = first(("link", str(final))), first(("replace", str(side)))
    assert link_at < side_at
    assert any(events[i] == ("fsync", folder) for i in range(link_at, side_at))


def test_commit_places_file_and_sidecar_and_leaves_no_part(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    data = b"PK\x03\x04 session bytes"
    part = download(archive, REL, data)
    assert part == tmp_path / "archive" / (str(REL) + ".part")

    final = archive.commit(part, REL, sidecar_for(data))

    assert final == archive.resolve(REL) == tmp_path / "archive" / REL
    assert final.read_bytes() == data
    assert sorted(all_files(tmp_path / "archive")) == [
        "lab/2018/11/11/1541950248_A00A1C.json",
        "lab/2018/11/11/1541950248_A00A1C.zip",
    ]
    text = archive.sidecar_path(REL).read_text()
    assert text == json.dumps(sidecar_for(data), sort_keys=True, indent=2) + "\n"
    assert archive.read_sidecar(REL) == sidecar_for(data)
    assert archive.owner(REL) == "lab/578634"
    assert os.stat(final).st_nlink == 1, "the part's second name must be gone"


def test_owner_falls_back_to_account_and_session_id(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.write_sidecar(REL, {"schema": 1, "account": "lab", "session_id": 7})
    assert archive.owner(REL) == "lab/7"
    assert archive.owner("nothing/here.zip") is None


def test_collision_gets_the_session_id_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = Archive(tmp_path)
    first = b"first session"
    archive.commit(download(archive, REL, first), REL, sidecar_for(first, session_id="1"))

    caplog.set_level(logging.WARNING, logger="e4sync.archive")
    chosen = archive.choose_path(REL, "lab/2", lambda p: False)
    assert chosen == REL.with_name("1541950248_A00A1C_2.zip")
    assert "lab/1" in caplog.text and "lab/2" in caplog.text and str(chosen) in caplog.text

    second = b"second session, same start and wristband"
    archive.commit(download(archive, chosen, second), chosen, sidecar_for(second, session_id="2"))
    assert archive.resolve(REL).read_bytes() == first
    assert archive.resolve(chosen).read_bytes() == second
    assert archive.owner(chosen) == "lab/2"

    # Session 2 of another account: its "_2" name is taken as well, so it counts on.
    third = archive.choose_path(REL, "other/2", lambda p: False)
    assert third == REL.with_name("1541950248_A00A1C_2_2.zip")
    # The owner itself keeps its path.
    assert archive.choose_path(REL, "lab/1", lambda p: False) == REL


def test_collision_with_a_foreign_file_a_sidecar_or_a_taken_path(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    foreign = archive.part_path(REL).with_suffix("")  # X.zip, not written by e4sync
    foreign.write_bytes(b"a copy somebody saved from E4 Connect")
    assert archive.choose_path(REL, "lab/9", lambda p: False).name == "1541950248_A00A1C_9.zip"

    orphan = PurePosixPath("lab/orphan.zip")  # a crash left another session's sidecar only
    archive.write_sidecar(orphan, sidecar_for(b"x", session_id="5"))
    assert archive.choose_path(orphan, "lab/9", lambda p: False).name == "orphan_9.zip"
    assert archive.choose_path(orphan, "lab/5", lambda p: False) == orphan

    free = PurePosixPath("lab/free.zip")
    taken = {free}
    assert archive.choose_path(free, "lab/9", lambda p: p in taken).name == "free_9.zip"


def test_threads_never_get_the_same_path(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    barrier = threading.Barrier(8)
    chosen: list[PurePosixPath] = []

    def choose(n: int) -> None:
        barrier.wait()
        chosen.append(archive.choose_path(REL, f"lab/{n}", lambda p: False))

    threads = [threading.Thread(target=choose, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(chosen)) == 8 and REL in chosen


def test_long_collision_names_fit_the_filesystem(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    rel = PurePosixPath("lab/" + "é" * 100 + ".zip")  # 200 bytes of name
    archive.resolve(rel).parent.mkdir(parents=True)
    archive.resolve(rel).write_bytes(b"taken")
    chosen = archive.choose_path(rel, "lab/" + "9" * 500, lambda p: False)
    assert len((chosen.name + ".part").encode()) <= 255
    download(archive, chosen, b"fits")  # the filesystem takes the name and its .part


def test_commit_never_overwrites_another_sessions_file(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    first = b"first"
    archive.commit(download(archive, REL, first), REL, sidecar_for(first, session_id="1"))
    before = all_files(tmp_path)

    other = b"other bytes"
    part = download(archive, REL, other)
    with pytest.raises(StorageError, match="belongs to lab/1"):
        archive.commit(part, REL, sidecar_for(other, session_id="2"))
    assert archive.resolve(REL).read_bytes() == first
    assert archive.owner(REL) == "lab/1"
    assert part.read_bytes() == other, "the verified download is kept for the caller"
    part.unlink()
    assert all_files(tmp_path) == before


def test_commit_never_overwrites_a_file_without_sidecar(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    part = download(archive, REL, b"new")
    archive.resolve(REL).write_bytes(b"somebody's own file")
    with pytest.raises(StorageError, match="already holds a different file"):
        archive.commit(part, REL, sidecar_for(b"new"))
    assert archive.resolve(REL).read_bytes() == b"somebody's own file"
    assert not archive.sidecar_path(REL).exists()


def test_same_session_identical_recommit_is_a_noop(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    data = b"the same bytes twice"
    archive.commit(download(archive, REL, data), REL, sidecar_for(data))
    before = all_files(tmp_path)
    side_mtime = archive.sidecar_path(REL).stat().st_mtime_ns
    ino = archive.resolve(REL).stat().st_ino

    again = dict(sidecar_for(data), verified_at="2030-01-01T00:00:00Z")
    part = download(archive, REL, data)
    assert archive.commit(part, REL, again) == archive.resolve(REL)
    assert not part.exists()
    assert all_files(tmp_path) == before
    assert archive.sidecar_path(REL).stat().st_mtime_ns == side_mtime
    assert archive.resolve(REL).stat().st_ino == ino


def aside_files(root: Path, reason: str) -> list[Path]:
    return sorted(root.rglob(f"*.{reason}-*.zip"))


def test_own_damaged_copy_is_kept_aside_when_the_verified_download_takes_its_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = Archive(tmp_path)
    data = b"good bytes"
    archive.commit(download(archive, REL, data), REL, sidecar_for(data))
    archive.resolve(REL).write_bytes(b"bit rot!!!")  # no longer matches its sidecar
    caplog.set_level(logging.WARNING, logger="e4sync.archive")
    archive.commit(download(archive, REL, data), REL, sidecar_for(data))
    assert archive.resolve(REL).read_bytes() == data
    assert archive.read_sidecar(REL) == sidecar_for(data)
    (aside,) = aside_files(tmp_path, "damaged")
    assert aside.read_bytes() == b"bit rot!!!", "the damaged file is kept as found"
    assert not aside.with_suffix(".json").exists(), "its sidecar never described those bytes"
    assert "damaged" in caplog.text and str(aside) in caplog.text


def test_own_whole_older_version_is_kept_aside_with_its_sidecar(tmp_path: Path) -> None:
    """The platform replaced a session's bytes: the archived version stays, under a dated
    name with its own sidecar, and reindex does not take it for the current copy."""
    archive = Archive(tmp_path)
    archive.commit(download(archive, REL, b"v1"), REL, sidecar_for(b"v1"))
    part = download(archive, REL, b"v2, changed remotely")
    archive.commit(part, REL, sidecar_for(b"v2, changed remotely"))
    assert archive.resolve(REL).read_bytes() == b"v2, changed remotely"
    assert archive.read_sidecar(REL) == sidecar_for(b"v2, changed remotely")
    (aside,) = aside_files(tmp_path, "replaced")
    assert aside.read_bytes() == b"v1"
    kept = json.loads(aside.with_suffix(".json").read_text())
    assert kept["sha256"] == sidecar_for(b"v1")["sha256"]
    assert kept["kept_aside"]["reason"] == "replaced" and kept["file"] == aside.name
    assert [str(rel) for rel, _ in archive.iter_sidecars()] == [str(REL)]
    # A third version keeps both earlier ones.
    archive.commit(download(archive, REL, b"v3"), REL, sidecar_for(b"v3"))
    assert sorted(p.read_bytes() for p in aside_files(tmp_path, "replaced")) == [
        b"v1",
        b"v2, changed remotely",
    ]


def test_a_file_of_another_session_is_never_kept_aside_or_replaced(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.commit(download(archive, REL, b"v1"), REL, sidecar_for(b"v1", session_id="1"))
    part = download(archive, REL, b"mine")
    with pytest.raises(StorageError, match="not overwritten"):
        archive.commit(part, REL, sidecar_for(b"mine", session_id="2"))
    assert archive.resolve(REL).read_bytes() == b"v1"
    assert not aside_files(tmp_path, "replaced") and not aside_files(tmp_path, "damaged")


def test_commit_without_hard_links_renames_after_a_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in: a filesystem without hard links (FAT, some SMB/FUSE) cannot be mounted here,
    # so link() fails the way theirs does.
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    archive = Archive(tmp_path)
    part = download(archive, REL, b"data")
    assert archive.commit(part, REL, sidecar_for(b"data")).read_bytes() == b"data"
    assert not part.exists()

    other = PurePosixPath("lab/other.zip")
    archive.resolve(other).write_bytes(b"someone else")
    part = download(archive, other, b"mine")
    with pytest.raises(StorageError):
        archive.commit(part, other, sidecar_for(b"mine"))
    assert archive.resolve(other).read_bytes() == b"someone else"


def test_failed_link_leaves_neither_file_nor_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in: a disk that fails with EIO at the very link() cannot be made on demand.
    def failing_disk(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "link", failing_disk)
    archive = Archive(tmp_path)
    part = download(archive, REL, b"data")
    with pytest.raises(StorageError, match="input/output error"):
        archive.commit(part, REL, sidecar_for(b"data"))
    assert not archive.resolve(REL).exists()
    assert not archive.sidecar_path(REL).exists()
    assert part.read_bytes() == b"data"


def test_resolve_refuses_paths_that_leave_the_root(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "root")
    for bad in ("../x.zip", "/etc/passwd", "a/../../x.zip", "", ".", "a\x00b.zip"):
        with pytest.raises(UnsafePathError):
            archive.resolve(bad)
        with pytest.raises(ValueError):  # UnsafePathError is both a ValueError ...
            archive.part_path(bad)
        with pytest.raises(StorageError):  # ... and a StorageError, so a pass records it
            archive.commit(tmp_path / "p", bad, {})
    assert not (tmp_path / "root").exists()
    assert archive.resolve("a/b.zip") == tmp_path / "root" / "a" / "b.zip"


def test_remove_stale_parts(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    stale = download(archive, PurePosixPath("a/1.zip"), b"half")
    tmp_json = archive.sidecar_path("b/3.zip").with_suffix(".json.tmp")
    tmp_json.parent.mkdir(parents=True)
    tmp_json.write_text("{")
    fresh = download(archive, PurePosixPath("c/4.zip"), b"being written")
    old = time.time() - 3600
    for path in (stale, tmp_json):
        os.utime(path, (old, old))
    users = [tmp_path / "notes.part", tmp_path / "a" / "1.zip", tmp_path / "a" / "x.json"]
    for path in users:
        path.write_bytes(b"not e4sync's")

    # With min_age (a shared archive), a part written recently may be another worker's.
    removed = archive.remove_stale_parts(min_age=600)

    assert sorted(removed) == sorted([stale, tmp_json])
    assert not stale.exists() and not tmp_json.exists()
    assert fresh.exists()
    assert all(path.exists() for path in users)
    assert archive.remove_stale_parts() == [fresh]
    assert Archive(tmp_path / "missing").remove_stale_parts() == []


def run_commit_killed(tmp_path: Path, point: str, rel: PurePosixPath = REL) -> Archive:
    """A child process commits a download and is killed with SIGKILL at ``point``."""
    child = (
        "import sys, json; from pathlib import Path; from e4sync.archive import Archive\n"
        "a = Archive(sys.argv[1]); rel = sys.argv[2]; side = json.loads(sys.argv[3])\n"
        "part = a.part_path(rel); part.write_bytes(b'PK\\x03\\x04 data')\n"
        "a.commit(part, rel, side)\n"
    )
    side = sidecar_for(b"PK\x03\x04 data", file=rel.name)
    env = {**os.environ, "E4SYNC_CRASHPOINT": point}
    proc = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path), str(rel), json.dumps(side)],
        env=env,
        cwd=REPO,
        capture_output=True,
    )
    assert proc.returncode == -9, proc.stderr
    return Archive(tmp_path)


def test_a_kill_between_the_file_and_its_sidecar_is_finished_at_the_next_start(
    tmp_path: Path,
) -> None:
    archive = run_commit_killed(tmp_path, "before-sidecar")
    final, side = archive.resolve(REL), archive.sidecar_path(REL)
    assert final.read_bytes() == b"PK\x03\x04 data"
    assert not side.exists(), "the sidecar is named only after the file"
    staged = side.with_name(side.name + ".tmp")
    assert json.loads(staged.read_text()) == sidecar_for(b"PK\x03\x04 data")
    removed = archive.remove_stale_parts()
    assert archive.read_sidecar(REL) == sidecar_for(b"PK\x03\x04 data")
    assert not staged.exists()
    assert removed == [Path(str(final) + ".part")], "only the part's second name goes"
    assert final.read_bytes() == b"PK\x03\x04 data"


def test_a_staged_sidecar_that_does_not_describe_the_file_is_removed(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    data = b"PK\x03\x04 data"
    archive.commit(download(archive, REL, data), REL, sidecar_for(data))
    side = archive.sidecar_path(REL)
    staged = side.with_name(side.name + ".tmp")
    staged.write_text(json.dumps(sidecar_for(b"other bytes")))  # a killed write_sidecar
    lonely = archive.sidecar_path("lab/2019/x.zip").with_suffix(".json.tmp")
    lonely.parent.mkdir(parents=True)
    lonely.write_text(json.dumps(sidecar_for(b"never placed")))
    assert sorted(archive.remove_stale_parts()) == sorted([staged, lonely])
    assert archive.read_sidecar(REL) == sidecar_for(data)


def test_an_orphan_sidecar_is_reported_at_the_clean_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = Archive(tmp_path)
    data = b"PK\x03\x04 data"
    archive.commit(download(archive, REL, data), REL, sidecar_for(data))
    archive.resolve(REL).unlink()
    caplog.set_level(logging.WARNING, logger="e4sync.archive")
    assert archive.remove_stale_parts() == []
    assert "a sidecar without its ZIP" in caplog.text
    assert str(archive.sidecar_path(REL)) in caplog.text
    assert archive.sidecar_path(REL).exists(), "reported, not removed: it is evidence"


def test_a_symlinked_folder_inside_the_archive_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "archive", tmp_path / "elsewhere"
    outside.mkdir()
    (root / "lab" / "2018").mkdir(parents=True)
    (root / "lab" / "2018" / "11").symlink_to(outside)
    archive = Archive(root)
    with pytest.raises(UnsafePathError, match="outside the archive root"):
        archive.part_path(REL)
    with pytest.raises(StorageError, match="symbolic link"):
        archive.commit(tmp_path / "p", REL, sidecar_for(b"x"))
    assert list(outside.iterdir()) == [], "nothing was written outside the archive"


def test_the_archive_root_itself_may_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    archive = Archive(tmp_path / "link")
    data = b"PK\x03\x04 data"
    archive.commit(download(archive, REL, data), REL, sidecar_for(data))
    assert (real / REL).read_bytes() == data
    # A link inside the archive to another place inside it stays inside: allowed.
    (real / "lab" / "alias").symlink_to(real / "lab" / "2018")
    assert archive.resolve("lab/alias/11/11/x.zip") == tmp_path / "link/lab/alias/11/11/x.zip"


def test_iter_sidecars_skips_bad_ones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = Archive(tmp_path)
    for n, rel in enumerate(["b/2.zip", "a/1.zip", "a/z/3.zip"]):
        side = sidecar_for(b"x", session_id=str(n), file=PurePosixPath(rel).name)
        archive.write_sidecar(rel, side)
    (tmp_path / "a" / "broken.json").write_text('{"account": ')
    (tmp_path / "a" / "list.json").write_text("[1, 2]")
    (tmp_path / "a" / "foreign.json").write_text('{"some": "tool"}')
    (tmp_path / "a" / "big.json").write_bytes(b" " * (2 << 20))
    (tmp_path / "a" / "1.json.tmp").write_text("{}")
    caplog.set_level(logging.WARNING, logger="e4sync.archive")

    found = list(archive.iter_sidecars())

    assert [rel for rel, _ in found] == [
        PurePosixPath("a/1.zip"),
        PurePosixPath("a/z/3.zip"),
        PurePosixPath("b/2.zip"),
    ]
    assert [data["session_id"] for _, data in found] == ["1", "2", "0"]
    for name in ("broken.json", "list.json", "foreign.json", "big.json"):
        assert name in caplog.text
    assert list(Archive(tmp_path / "missing").iter_sidecars()) == []


def test_sidecar_is_ascii_json_for_any_value(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    data = {"label": "ü\udc80\x00../", "when": time, "n": 1}
    archive.write_sidecar(REL, data)
    text = archive.sidecar_path(REL).read_bytes()
    assert text.isascii() and text.endswith(b"}\n")
    assert archive.read_sidecar(REL)["label"] == "ü\udc80\x00../"
    assert not list(archive.resolve(REL).parent.glob("*.tmp"))


def test_check_writable_creates_the_root(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "archive"
    Archive(root).check_writable()
    assert root.is_dir() and os.listdir(root) == []
    assert root.stat().st_mode & 0o007 == 0, "health data: no access for others"


def test_check_writable_on_a_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not writable.*already exists.*Fix:"):
        Archive(tmp_path / "file").check_writable()


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real small filesystem, for disk-full and read-only faults (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    # CI runs as root and sets E4SYNC_REQUIRE_ROOT=1: there these tests must run, never skip.
    give_up = pytest.fail if os.environ.get("E4SYNC_REQUIRE_ROOT") == "1" else pytest.skip
    if os.geteuid() != 0 or shutil.which("mount") is None:
        give_up("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        give_up(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_check_writable_on_a_read_only_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o500)
        try:
            with pytest.raises(StorageError, match="permission denied.*Fix:"):
                Archive(root).check_writable()
        finally:
            root.chmod(0o700)
        return
    # Root ignores file modes, so as root the read-only fault is a read-only filesystem.
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        with pytest.raises(StorageError, match="read-only.*Fix:.*ReadWritePaths"):
            Archive(mount).check_writable()
        with pytest.raises(StorageError, match="read-only"):
            Archive(mount / "archive").check_writable()
        with pytest.raises(StorageError, match="read-only"):
            Archive(mount).part_path(REL)


def test_disk_full_commit_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=64k") as mount:
        archive = Archive(mount / "archive")
        archive.check_writable()
        data = b"PK\x03\x04" + os.urandom(8192)
        part = download(archive, REL, data)  # the download itself fitted
        filler = mount / "filler"
        with open(filler, "wb", buffering=0) as fh:
            with contextlib.suppress(OSError):
                while True:  # fill the filesystem to the last block
                    fh.write(b"\0" * 4096)
        with pytest.raises(OSError, match="No space"):
            (mount / "probe").write_bytes(b"x")

        with pytest.raises(StorageError, match="no space left on device"):
            archive.commit(part, REL, sidecar_for(data))
        assert not archive.resolve(REL).exists()
        assert not archive.sidecar_path(REL).exists()
        assert not list(archive.resolve(REL).parent.glob("*.tmp"))
        with pytest.raises(StorageError, match="no space left"):
            archive.check_writable()

        filler.unlink()  # the cause is gone: the same part commits
        assert archive.commit(part, REL, sidecar_for(data)).read_bytes() == data
        assert archive.read_sidecar(REL) == sidecar_for(data)


def test_file_size_limit_commit_fails_cleanly(tmp_path: Path) -> None:
    """A real RLIMIT_FSIZE (``ulimit -f``) in a child: the sidecar cannot be written."""
    archive = Archive(tmp_path)
    data = b"PK" + b"z" * 5000
    part = download(archive, REL, data)
    sidecar = sidecar_for(data)
    script = f"""
import json, resource, sys
from pathlib import Path
from e4sync.archive import Archive
from e4sync.errors import StorageError
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
try:
    Archive({str(tmp_path)!r}).commit(Path({str(part)!r}), {str(REL)!r}, json.loads(sys.argv[1]))
except StorageError as exc:
    print(exc)
    sys.exit(3)
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.run(
        [sys.executable, "-c", script, json.dumps(sidecar)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert child.returncode == 3, child.stderr
    assert "file too large" in child.stdout
    assert not archive.resolve(REL).exists()
    assert not archive.sidecar_path(REL).exists()
    assert part.read_bytes() == data
    assert archive.commit(part, REL, sidecar).read_bytes() == data  # no limit: it commits


# -- files of any suffix: the archive knows no platform ------------------------------------


@pytest.mark.parametrize(
    ("rel", "side", "stem", "suffix"),
    [
        ("p/day/a.avro", "p/day/a.json", "a", ".avro"),
        ("p/notes.json", "p/notes.json.json", "notes", ".json"),
        ("p/README", "p/README.json", "README", ""),
    ],
)
def test_a_file_of_any_suffix_commits_is_found_again_and_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, rel: str, side: str, stem: str, suffix: str
) -> None:
    archive = Archive(tmp_path)
    name = PurePosixPath(rel).name
    part = download(archive, PurePosixPath(rel), b"v1")
    assert part == tmp_path / (rel + ".part")
    archive.commit(part, rel, sidecar_for(b"v1", file=name))
    assert sorted(all_files(tmp_path)) == sorted([rel, side])
    assert archive.sidecar_path(rel) == tmp_path / side

    v2 = sidecar_for(b"v2", file=name)
    archive.commit(download(archive, PurePosixPath(rel), b"v2"), rel, v2)
    assert archive.resolve(rel).read_bytes() == b"v2"
    pattern = re.escape(stem) + r"\.replaced-\d{8}T\d{6}Z" + re.escape(suffix)
    (aside,) = [p for p in all_files(tmp_path) if re.fullmatch(pattern, PurePosixPath(p).name)]
    aside_name = PurePosixPath(aside).name
    assert (tmp_path / aside).read_bytes() == b"v1"
    kept = archive.read_sidecar(aside)
    assert kept["file"] == aside_name and kept["kept_aside"]["reason"] == "replaced"
    assert archive.sidecar_path(aside) != archive.sidecar_path(rel)

    caplog.set_level(logging.WARNING, logger="e4sync.archive")
    caplog.clear()
    assert list(archive.iter_sidecars()) == [(PurePosixPath(rel), v2)]
    assert archive.remove_stale_parts() == []
    assert not caplog.text, "a JSON data file beside its sidecar is neither skipped nor orphan"


def test_stale_parts_of_any_suffix_go_and_an_orphan_names_its_kind_of_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = Archive(tmp_path)
    for rel in ("a/x.avro", "a/notes.json", "a/y.zip", "a/.e4sync-probe-1-ab.probe"):
        download(archive, PurePosixPath(rel), b"half")
    users = [tmp_path / "a" / "notes.part", tmp_path / "a" / "README"]
    for path in users:
        path.write_bytes(b"not e4sync's")
    archive.write_sidecar("a/gone.avro", sidecar_for(b"x", file="gone.avro"))
    caplog.set_level(logging.WARNING, logger="e4sync.archive")

    removed = archive.remove_stale_parts()

    assert sorted(p.name for p in removed) == [
        ".e4sync-probe-1-ab.probe.part",
        "notes.json.part",
        "x.avro.part",
        "y.zip.part",
    ]
    assert all(path.exists() for path in users)
    assert "gone.json: a sidecar without its AVRO" in caplog.text


def test_a_kill_before_a_json_files_sidecar_is_finished_from_the_file_it_names(
    tmp_path: Path,
) -> None:
    rel = PurePosixPath("p/notes.json")
    archive = run_commit_killed(tmp_path, "before-sidecar", rel)
    staged = tmp_path / "p" / "notes.json.json.tmp"
    assert staged.exists() and not archive.sidecar_path(rel).exists()
    archive.remove_stale_parts()
    assert not staged.exists()
    data = archive.read_sidecar(rel)
    assert data is not None and data["file"] == "notes.json"
    assert list(archive.iter_sidecars()) == [(rel, data)]


def test_a_sidecar_that_records_no_file_is_matched_by_name_or_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = Archive(tmp_path)
    nameless = {k: v for k, v in sidecar_for(b"x").items() if k != "file"}
    archive.write_sidecar("a/1.avro", nameless)
    archive.resolve("a/1.avro").write_bytes(b"x")
    archive.write_sidecar("b/2.zip", nameless)  # nothing beside it to describe
    caplog.set_level(logging.WARNING, logger="e4sync.archive")
    assert [rel for rel, _ in archive.iter_sidecars()] == [PurePosixPath("a/1.avro")]
    assert "2.json: it names no file beside it" in caplog.text


def test_the_longest_collision_name_is_kept_aside_with_its_sidecar(tmp_path: Path) -> None:
    """A collision name is at most 250 bytes; its kept-aside copy and that copy's staged
    sidecar must fit NAME_MAX too, or a replaced version could never be archived."""
    archive = Archive(tmp_path)
    rel = PurePosixPath("lab/" + "x" * 246 + ".zip")
    archive.commit(download(archive, rel, b"v1"), rel, sidecar_for(b"v1", file=rel.name))
    archive.commit(download(archive, rel, b"v2"), rel, sidecar_for(b"v2", file=rel.name))
    (aside,) = aside_files(tmp_path, "replaced")
    assert aside.read_bytes() == b"v1"
    assert archive.read_sidecar(aside.relative_to(tmp_path))["file"] == aside.name
