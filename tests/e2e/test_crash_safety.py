"""Never lose a recording: real `e4sync run-once` processes, remote deletion on, killed with
SIGKILL at random moments and at every named crash point; after each kill the invariants
hold, and a last uninterrupted pass finishes the work.

The number of kills is in the test names and printed; `E4SYNC_SOAK_KILLS=500` runs the long
soak (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e4sync.simulator import Faults, Simulator
from tests.conftest import write_secret

RANDOM_KILLS = int(os.environ.get("E4SYNC_SOAK_KILLS", "12"))
CRASHPOINTS = ["after-fetch", "after-commit", "after-ledger", "after-delete"]


def write_config(tmp_path: Path, base_url: str) -> Path:
    pw = write_secret(tmp_path / "pw", "demo")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[archive]\nroot = "{tmp_path / "archive"}"\n[state]\ndir = "{tmp_path / "state"}"\n'
        '[download]\nbackoff = "0s"\nconcurrency = 3\ntimeout = "20s"\n'
        '[remote]\ndelete_after_verify = true\ndelete_min_age = "0s"\ndelete_grace = "0s"\n'
        f'[[account]]\nname = "lab"\nusername = "demo@example.org"\npassword_file = "{pw}"\n'
        f'base_url = "{base_url}"\n'
    )
    return config


def run_once(config: Path, crashpoint: str = "") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E4SYNC_", "E4_"))}
    if crashpoint:
        env["E4SYNC_CRASHPOINT"] = crashpoint
    return subprocess.Popen(
        [sys.executable, "-m", "e4sync", "run-once", "-q", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_invariants(sim: Simulator, archive: Path, all_ids: set[str]) -> None:
    """No damaged file under a final name; no remote copy gone without a whole local one."""
    whole: set[str] = set()
    for zip_path in archive.rglob("*.zip"):
        sidecar = zip_path.with_suffix(".json")
        assert sidecar.exists(), f"{zip_path} has no sidecar"
        meta = json.loads(sidecar.read_text())
        data = zip_path.read_bytes()
        assert data == sim.zip_bytes(meta["session_id"]), f"{zip_path} is damaged"
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
        whole.add(meta["session_id"])
    gone = sim.deleted_ids()
    assert gone <= whole, f"remote copies deleted without a whole local copy: {gone - whole}"
    assert gone <= all_ids


def finish_and_check(sim: Simulator, config: Path, archive: Path, all_ids: set[str]) -> None:
    for _ in range(3):  # a deletion left unconfirmed by a kill is confirmed by a later pass
        proc = run_once(config)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0 and sim.deleted_ids() == all_ids:
            break
    assert proc.returncode == 0, err
    check_invariants(sim, archive, all_ids)
    archived = {json.loads(p.read_text())["session_id"] for p in archive.rglob("*.json")}
    assert archived == all_ids, "every session ends up archived"
    assert sim.deleted_ids() == all_ids, "and then removed remotely"
    assert not list(archive.rglob("*.part")), "no partial file is left once all is done"


@pytest.mark.parametrize("point", CRASHPOINTS)
def test_kill_9_at_each_named_crash_point(tmp_path, point):
    with Simulator(port=0, seed=11, sessions=4) as sim:
        all_ids = {r["id"] for r in sim.sessions()}
        config = write_config(tmp_path, sim.base_url)
        proc = run_once(config, crashpoint=point)
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"the crash point {point} was never reached"
        check_invariants(sim, tmp_path / "archive", all_ids)
        finish_and_check(sim, config, tmp_path / "archive", all_ids)


def test_a_file_adopted_after_a_kill_keeps_the_metadata_it_was_downloaded_under(tmp_path):
    """Killed after the commit, before the database knew: the next pass adopts the file.
    If the session's metadata changed meanwhile, the adopted copy is of the old one, so the
    remote copy must not be deleted (SPEC section 6: metadata unchanged since download)."""
    with Simulator(port=0, seed=12, sessions=3) as sim:
        all_ids = {r["id"] for r in sim.sessions()}
        config = write_config(tmp_path, sim.base_url)
        proc = run_once(config, crashpoint="after-commit")
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL
        # Finishers run side by side: one or more files may have been committed.
        adopted = {
            json.loads(p.read_text())["session_id"] for p in (tmp_path / "archive").rglob("*.json")
        }
        assert adopted

        def relabelled(_user, rows):
            return [{**r, "duration": str(int(r["duration"]) + 1)} for r in rows]

        sim.set_listing_hook(relabelled)
        proc = run_once(config)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        check_invariants(sim, tmp_path / "archive", all_ids)
        # The others were downloaded under the new metadata and may go; the adopted may not.
        assert sim.deleted_ids() == all_ids - adopted


def test_a_file_damaged_after_a_kill_is_not_adopted(tmp_path):
    """Killed after the commit, before the database knew; then a byte of that file rots.
    The next pass must not adopt it (its sha256 is not the sidecar's): it downloads the
    session again, and deletes the remote copy only once the local one is whole."""
    with Simulator(port=0, seed=13, sessions=3) as sim:
        all_ids = {r["id"] for r in sim.sessions()}
        config = write_config(tmp_path, sim.base_url)
        proc = run_once(config, crashpoint="after-commit")
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL
        # Finishers run side by side: one or more files may have been committed.
        committed = list((tmp_path / "archive").rglob("*.zip"))
        assert committed
        for path in committed:
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        proc = run_once(config)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        # Every archived file equals the platform's; nothing deleted without a whole copy.
        check_invariants(sim, tmp_path / "archive", all_ids)
        assert sim.deleted_ids() == all_ids


@pytest.mark.slow
def test_kill_9_at_random_moments(tmp_path, capsys):
    rng = random.Random(int(os.environ.get("E4SYNC_SOAK_SEED", "7")))
    # Slow enough that kills land mid-download, mid-verify and mid-commit.
    faults = Faults(bandwidth=3_000_000, latency=0.01)
    with Simulator(port=0, seed=12, sessions=10, faults=faults) as sim:
        all_ids = {r["id"] for r in sim.sessions()}
        config = write_config(tmp_path, sim.base_url)
        kills = 0
        for i in range(RANDOM_KILLS):
            if i % 3 == 0:  # new recordings keep arriving, so passes keep having work to kill
                all_ids.add(sim.add_session()["id"])
            proc = run_once(config)
            time.sleep(rng.uniform(0.2, 2.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=60)
            check_invariants(sim, tmp_path / "archive", all_ids)
        finish_and_check(sim, config, tmp_path / "archive", all_ids)
    with capsys.disabled():
        print(
            f"\ncrash suite: {kills} kill -9 of {RANDOM_KILLS} passes, "
            f"{len(all_ids)} sessions archived, 0 lost"
        )
    assert kills >= RANDOM_KILLS // 2, "most passes were killed mid-work"
