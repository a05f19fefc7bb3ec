"""Never lose a recording when the disk misbehaves: a real file-size limit (RLIMIT_FSIZE in a
`python -m e4sync run-once` child), a real full filesystem and a real read-only remount (tmpfs,
mounted as root), and a state database locked by another process (a real sqlite3 connection
in a child holding ``BEGIN EXCLUSIVE``).

Each must give a clear error and its exit code (SPEC section 3), leave the archive as it was
(no file under a final name that is not whole; earlier files unchanged), keep the database
consistent, and let the next pass recover once the cause is gone. The exit codes, decided
here and in docs/reliability.md: a session that cannot be written is a per-session failure
(1, retried next pass); an archive root that cannot be written at all is 73 (EX_CANTCREAT:
found before any login, nothing listed or changed, recorded as a failed pass; the next pass
tries again); a locked state database is temporary (75).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e4sync.sources.e4connect.simulator import Simulator
from tests.conftest import write_config

MB = 1 << 20


def run_once_child(config: Path, fsize_limit: int | None = None) -> subprocess.CompletedProcess:
    """A real `python -m e4sync run-once`; with ``fsize_limit``, under RLIMIT_FSIZE (Python
    ignores SIGXFSZ, so an oversized write fails with EFBIG instead of killing it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E4SYNC_", "E4_"))}
    env.pop("CREDENTIALS_DIRECTORY", None)

    def limit() -> None:
        if fsize_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.run(
        [sys.executable, "-m", "e4sync", "run-once", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )


def snapshot(archive: Path) -> dict[str, str]:
    """Every file under the archive -> its sha256."""
    return {
        str(p.relative_to(archive)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(archive.rglob("*"))
        if p.is_file()
    }


def db_rows(state: Path) -> list[tuple]:
    db = sqlite3.connect(state / "state.db")
    try:
        return db.execute(
            "select remote_id, state, attempts, local_path, sha256, size "
            "from sessions order by remote_id"
        ).fetchall()
    finally:
        db.close()


def check_consistent(tmp_path: Path, sim: Simulator) -> dict[str, str]:
    """Archive and database agree, and nothing partial or damaged is under a final name.
    Returns remote id -> state."""
    archive, state = tmp_path / "archive", tmp_path / "state"
    db = sqlite3.connect(state / "state.db")
    try:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    rows = db_rows(state)
    by_path = {}
    for remote_id, st, _attempts, local_path, sha256, size in rows:
        final = archive / local_path if local_path else None
        if st == "verified":
            data = final.read_bytes()
            assert data == sim.zip_bytes(remote_id), f"{final} is not whole"
            assert hashlib.sha256(data).hexdigest() == sha256 and len(data) == size
            by_path[final] = remote_id
        elif final is not None:
            assert not final.exists(), f"{final} is under its final name but {st}"
    for zip_path in archive.rglob("*.zip"):
        assert zip_path in by_path, f"{zip_path} is in the archive but not verified"
        sidecar = json.loads(zip_path.with_suffix(".json").read_text())
        assert sidecar["session_id"] == by_path[zip_path]
    assert not list(archive.rglob("*.part")), "a partial file was left behind"
    assert not list(archive.rglob("*.tmp")), "a temporary sidecar was left behind"
    return {r[0]: r[1] for r in rows}


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real, small filesystem at tmp_path/archive (needs root: mount -t tmpfs)."""
    mountpoint = tmp_path / "archive"
    mountpoint.mkdir()
    # CI runs as root and sets E4SYNC_REQUIRE_ROOT=1: there these tests must run, never skip.
    give_up = pytest.fail if os.environ.get("E4SYNC_REQUIRE_ROOT") == "1" else pytest.skip
    if os.geteuid() != 0:
        give_up("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0750", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        give_up(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def remount(mountpoint: Path, options: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,{options}", str(mountpoint)], check=True, capture_output=True
    )


def test_a_file_size_limit_fails_the_big_sessions_cleanly_and_the_next_pass_recovers(tmp_path):
    with Simulator(port=0, seed=31, sessions=2, session_size=100_000) as sim:
        config = write_config(tmp_path, sim.base_url, download={"concurrency": 2})
        assert run_once_child(config).returncode == 0
        before = snapshot(tmp_path / "archive")
        big = {sim.add_session(size_bytes=3 * MB)["id"] for _ in range(2)}
        small = sim.add_session(size_bytes=100_000)["id"]

        limited = run_once_child(config, fsize_limit=MB)
        assert limited.returncode == 1, limited.stdout + limited.stderr
        assert "Traceback" not in limited.stderr
        assert "file too large" in limited.stdout.lower(), limited.stdout
        after = snapshot(tmp_path / "archive")
        assert {k: after[k] for k in before} == before, "an earlier archived file changed"
        states = check_consistent(tmp_path, sim)
        assert states[small] == "verified"
        assert all(states[b] != "verified" for b in big)
        assert all(st != "failed" for st in states.values()), "one attempt is not the last"

        recovered = run_once_child(config)
        assert recovered.returncode == 0, recovered.stdout + recovered.stderr
        states = check_consistent(tmp_path, sim)
        assert set(states.values()) == {"verified"}
        assert snapshot(tmp_path / "archive").items() >= before.items()


def test_a_folder_that_cannot_be_made_fails_its_sessions_not_the_account(tmp_path):
    import datetime as dt

    with Simulator(port=0, seed=32, sessions=6, session_size=50_000) as sim:
        config = write_config(tmp_path, sim.base_url, download={"concurrency": 1})

        def day(row: dict) -> str:
            start = dt.datetime.fromtimestamp(int(row["start_time"]), dt.UTC)
            return start.strftime("lab/%Y/%m/%d")

        rows = sim.sessions()
        blocked_day = day(rows[0])
        blocked = {r["id"] for r in rows if day(r) == blocked_day}
        assert len(blocked) < len(rows)
        # A regular file where the day's folder should be: mkdir fails, even for root.
        (tmp_path / "archive" / blocked_day).parent.mkdir(parents=True)
        (tmp_path / "archive" / blocked_day).write_text("not a folder")

        result = run_once_child(config)
        assert result.returncode == 1, result.stdout + result.stderr
        by_id = {r[0]: r for r in db_rows(tmp_path / "state")}
        for rid, (_, st, attempts, *_rest) in by_id.items():
            if rid in blocked:
                # Its own failure: counted and backed off, so it cannot block the others.
                assert (st, attempts) == ("downloading", 1), by_id[rid]
            else:
                assert st == "verified", by_id[rid]
        check_consistent(tmp_path, sim)


def test_a_full_filesystem_fails_what_does_not_fit_and_the_next_pass_recovers(
    tmp_path, tmpfs, run_cli
):
    with Simulator(port=0, seed=32, sessions=2, session_size=120_000) as sim:
        config = write_config(tmp_path, sim.base_url, download={"concurrency": 1})
        run_cli("run-once", "--config", str(config))
        before = snapshot(tmpfs)
        big = {sim.add_session(size_bytes=700_000)["id"] for _ in range(2)}

        full = run_cli("run-once", "--config", str(config), exit_code=1)
        assert "no space left on device" in full.out.lower(), full.out
        assert "Traceback" not in full.err
        after = snapshot(tmpfs)
        assert {k: after[k] for k in before} == before, "an earlier archived file changed"
        states = check_consistent(tmp_path, sim)
        assert any(states[b] != "verified" for b in big), "both fitted: the test proves nothing"

        remount(tmpfs, "size=20m")
        run_cli("run-once", "--config", str(config))
        assert set(check_consistent(tmp_path, sim).values()) == {"verified"}
        assert snapshot(tmpfs).items() >= before.items()


def test_a_weekend_of_a_full_disk_spends_no_attempts_and_says_so_once_per_pass(
    tmp_path, tmpfs, run_cli
):
    """Issue 11 item 8: without the pause, every pass of a full disk counts an attempt
    against each due session, and after max_attempts they are all 'failed' until someone
    runs `retry --all`."""
    with Simulator(port=0, seed=34, sessions=0) as sim:
        config = write_config(
            tmp_path,
            sim.base_url,
            download={"concurrency": 1, "max_attempts": 2},
            monitor={"metrics_textfile": tmp_path / "e4sync.prom"},
        )
        due = {sim.add_session(size_bytes=600_000)["id"] for _ in range(4)}
        for _ in range(4):  # more passes than max_attempts
            full = run_cli("run-once", "--config", str(config), exit_code=1)
            said = (full.out + full.err).lower()
            assert said.count("no attempt is counted against the sessions") == 1, said
            assert "no space left on device" in said
        by_id = {r[0]: r for r in db_rows(tmp_path / "state")}
        assert {by_id[i][1] for i in due} <= {"new", "downloading", "verified"}, by_id
        assert all(by_id[i][2] == 0 for i in due), "no attempt was counted"
        db = sqlite3.connect(tmp_path / "state" / "state.db")
        try:
            paused = db.execute("select paused from passes order by id desc").fetchone()[0]
        finally:
            db.close()
        assert "no space left on device" in paused
        status = run_cli("status", "--config", str(config), exit_code=1)
        assert "downloads paused in the last pass: no space left on device" in status.out
        assert "why: the last pass paused its downloads: no space left on device" in status.out
        as_json = run_cli("status", "--json", "--config", str(config), exit_code=1).out
        (lab,) = json.loads(as_json)["accounts"]
        assert "no space left on device" in lab["last_pass"]["paused"]
        text = (tmp_path / "e4sync.prom").read_text()  # the textfile says so too
        assert 'e4sync_pass_downloads_paused{account="lab"} 1' in text

        remount(tmpfs, "size=20m")
        run_cli("run-once", "--config", str(config))
        assert set(check_consistent(tmp_path, sim).values()) == {"verified"}


def test_a_read_only_archive_is_reported_and_changes_nothing(tmp_path, tmpfs, run_cli):
    with Simulator(port=0, seed=33, sessions=2, session_size=60_000) as sim:
        config = write_config(tmp_path, sim.base_url, download={"concurrency": 2})
        run_cli("run-once", "--config", str(config))
        before, rows_before = snapshot(tmpfs), db_rows(tmp_path / "state")
        new = sim.add_session(size_bytes=60_000)["id"]
        downloads = sim.stats()["requests"]["download"]

        logins = sim.login_count()
        remount(tmpfs, "ro")
        result = run_cli("run-once", "--config", str(config), exit_code=73)
        (line,) = [x for x in result.err.splitlines() if x.startswith("e4sync:")]
        assert f"the archive root {tmpfs} cannot be written (read-only file system (EROFS))" in line
        assert "remount it read-write, or point [archive] root at" in line
        assert "Traceback" not in result.err
        assert snapshot(tmpfs) == before
        assert db_rows(tmp_path / "state") == rows_before
        assert sim.stats()["requests"]["download"] == downloads
        assert sim.login_count() == logins, "found before any login"
        # Recorded as a failed pass: status is NOT OK and says why; `config check` (which
        # never logs in) and `doctor` find it too.
        status = run_cli("status", "--config", str(config), exit_code=1).out
        assert f"why: the last pass failed: the archive root {tmpfs} cannot be written" in status
        check = run_cli("config", "check", "--config", str(config), exit_code=73)
        assert f"the archive root {tmpfs} cannot be written" in check.out + check.err
        doctor = run_cli("doctor", "--config", str(config), exit_code=1).out
        assert f"[FAIL] archive root: the archive root {tmpfs} cannot be written" in doctor

        remount(tmpfs, "rw")
        run_cli("run-once", "--config", str(config))
        states = check_consistent(tmp_path, sim)
        assert states[new] == "verified" and set(states.values()) == {"verified"}


# -- a state database locked by another process ----------------------------------------------

LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
db.close()
"""


@pytest.fixture(scope="module")
def locked_pass(tmp_path_factory):
    """One pass while another process holds the state database's write lock for longer than
    e4sync's busy timeout (10 s: so this fixture runs once for the tests below), and one
    more after the lock is released."""
    tmp_path = tmp_path_factory.mktemp("locked")
    with Simulator(port=0, seed=34, sessions=2, session_size=60_000) as sim:
        config = write_config(tmp_path, sim.base_url, download={"concurrency": 2})
        assert run_once_child(config).returncode == 0
        before, rows_before = snapshot(tmp_path / "archive"), db_rows(tmp_path / "state")
        new = sim.add_session(size_bytes=60_000)["id"]
        downloads = sim.stats()["requests"].get("download", 0)
        holder = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "state" / "state.db")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "locked"
            locked = run_once_child(config)
            during = {
                "archive": snapshot(tmp_path / "archive"),
                "downloads": sim.stats()["requests"].get("download", 0),
            }
        finally:
            holder.communicate("\n", timeout=30)
        rows_during = db_rows(tmp_path / "state")
        recovered = run_once_child(config)
        yield {
            "locked": locked,
            "recovered": recovered,
            "before": before,
            "rows_before": rows_before,
            "rows_during": rows_during,
            "during": during,
            "downloads": downloads,
            "new": new,
            "states": check_consistent(tmp_path, sim),
        }


def test_a_locked_database_changes_nothing_and_the_next_pass_recovers(locked_pass):
    p = locked_pass
    assert p["locked"].returncode != 0, "a pass cannot have worked without its database"
    assert p["during"]["archive"] == p["before"]
    assert p["during"]["downloads"] == p["downloads"], "downloaded with no database to record it"
    assert p["rows_during"] == p["rows_before"]
    assert p["recovered"].returncode == 0, p["recovered"].stdout + p["recovered"].stderr
    assert p["states"][p["new"]] == "verified" and set(p["states"].values()) == {"verified"}


def test_a_locked_database_is_temporary_exit_75_with_a_clear_message(locked_pass):
    locked = locked_pass["locked"]
    assert "Traceback" not in locked.stderr, locked.stderr[-3000:]
    assert locked.returncode == 75
    assert "locked" in locked.stderr and "state" in locked.stderr
