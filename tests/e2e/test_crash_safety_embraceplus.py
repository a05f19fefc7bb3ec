"""Never lose an object of the EmbracePlus S3 delivery: real `e4sync run-once` processes
against the loopback delivery (``S3Delivery``: moto's S3 behind its proxy, which adds a
little latency to every request so that kills land mid-download), killed with SIGKILL at
random moments while new files keep arriving and a per-minute CSV is rewritten; after each
kill the archive holds nothing half-written, and a last uninterrupted pass finishes the work.

The kills and the waits come from tests/e2e/test_crash_safety.py (``run_and_kill_at_random``);
the checks are that file's for this source's tree (``{account}/{key}``, sidecars beside the
files, replaced copies under ``{account}/.versions/``). ``E4SYNC_SOAK_KILLS`` sets the kills.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
from pathlib import Path

import pytest

from e4sync.sources.embraceplus.demo import account_toml, write_secret
from e4sync.sources.embraceplus.simulator import Faults, S3Delivery
from tests.e2e.test_crash_safety import run_and_kill_at_random, run_once

RANDOM_KILLS = int(os.environ.get("E4SYNC_SOAK_KILLS", "10"))
ACCOUNT = "study"
SIDECAR_SUFFIXES = (".json", ".json.tmp")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Served:
    """Every version of every object the delivery has held (sha256 digests by key)."""

    def __init__(self, delivery: S3Delivery):
        self.delivery = delivery
        self.versions: dict[str, set[str]] = {}
        self.note()

    def note(self) -> None:
        for key in self.delivery.keys(self.delivery.prefix):
            self.versions.setdefault(key, set()).add(sha256(self.delivery.read(key)))

    def current(self) -> dict[str, str]:
        return {k: sha256(self.delivery.read(k)) for k in self.delivery.keys(self.delivery.prefix)}


def data_file(sidecar: Path, meta: dict) -> Path:
    return sidecar.parent / str(meta["file"])


def sidecar_of(path: Path) -> Path | None:
    """The sidecar beside an archived file: ``X.json`` for ``X.avro``, named or staged."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    for suffix in SIDECAR_SUFFIXES:
        candidate = path.with_name(stem + suffix)
        if candidate.exists():
            return candidate
    return None


def check_invariants(archive: Path, served: Served) -> dict[str, set[str]]:
    """After any kill: every file under a final name is whole (its sha256 is its sidecar's
    and a version the delivery served for that key), has a sidecar (right after a kill it
    may still be staged, ``X.json.tmp``: the next start names it), no sidecar is an
    orphan, and each key has at most one current copy. Returns the kept-aside copies
    (``.versions``) by key."""
    root = archive / ACCOUNT
    prefix = served.delivery.prefix
    current: dict[str, int] = {}
    kept: dict[str, set[str]] = {}
    if not root.exists():
        return kept
    for path in root.rglob("*"):
        if not path.is_file() or path.name.endswith((".part", *SIDECAR_SUFFIXES)):
            continue
        if path.name.startswith(".e4sync-probe-"):
            continue
        side = sidecar_of(path)
        assert side is not None, f"{path} is under a final name with no sidecar"
        meta = json.loads(side.read_text())
        digest = sha256(path.read_bytes())
        assert digest == meta["sha256"], f"{path} is not whole (its sha256 is not its sidecar's)"
        key = meta["session_id"]
        assert key.startswith(prefix) and key in served.versions, f"{path}: unknown key {key}"
        assert digest in served.versions[key], f"{path}: bytes the delivery never served"
        if ".versions" in path.relative_to(root).parts:
            assert meta.get("kept_aside"), f"{path} is under .versions but not marked kept aside"
            kept.setdefault(key, set()).add(digest)
        else:
            assert not meta.get("kept_aside"), path
            assert path.relative_to(root).as_posix() == key[len(prefix) :], path
            current[key] = current.get(key, 0) + 1
    for side in root.rglob("*.json"):
        meta = json.loads(side.read_text())
        assert data_file(side, meta).is_file(), f"{side} is an orphan sidecar"
    assert all(n == 1 for n in current.values()), "a key archived twice"
    return kept


def state_rows(state: Path) -> dict[str, tuple[str, str | None]]:
    db = sqlite3.connect(state / "state.db")
    try:
        return {
            r[0]: (r[1], r[2]) for r in db.execute("select remote_id, state, sha256 from sessions")
        }
    finally:
        db.close()


def finish_and_check(config: Path, archive: Path, state: Path, served: Served) -> dict:
    proc = run_once(config)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    kept = check_invariants(archive, served)
    want = served.current()
    rows = state_rows(state)
    assert set(rows) == set(want), "every object has its row"
    for key, digest in want.items():
        path = archive / ACCOUNT / key[len(served.delivery.prefix) :]
        assert sha256(path.read_bytes()) == digest, f"{key}: archived whole, the current bytes"
        assert rows[key] == ("verified", digest), f"{key}: its row says verified, with its sha256"
    assert not list(archive.rglob("*.part")), "no partial file is left once all is done"
    assert not list(archive.rglob("*.json.tmp")), "every staged sidecar was finished"
    return kept


@pytest.fixture
def delivery(monkeypatch: pytest.MonkeyPatch):
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)  # only the account's own keys, never the developer's
    # Slow enough that kills land in the listing, mid-download, mid-verify and mid-commit.
    faults = Faults(latency=0.02, seed=3)
    with S3Delivery(
        participants=("0010", "007-b"),
        days=2,
        raw_per_day=8,
        metrics=("eda", "pulse-rate"),
        today_minutes=600,
        seed=21,
        faults=faults,
    ) as made:
        yield made


def write_config(tmp_path: Path, delivery: S3Delivery) -> Path:
    secret = write_secret(tmp_path / "s3.secret", delivery.readonly.secret_access_key)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[archive]\nroot = "{tmp_path / "archive"}"\n\n[state]\ndir = "{tmp_path / "state"}"\n\n'
        '[download]\nconcurrency = 3\nbackoff = "0s"\ntimeout = "20s"\n\n'
        + account_toml(delivery, ACCOUNT, secret)
    )
    return config


@pytest.mark.slow
def test_kill_9_at_random_moments_on_the_s3_delivery(tmp_path, delivery, capsys):
    rng = random.Random(int(os.environ.get("E4SYNC_SOAK_SEED", "9")))
    config = write_config(tmp_path, delivery)
    archive, state = tmp_path / "archive", tmp_path / "state"
    served = Served(delivery)
    csv = delivery.csv_keys[-1]  # today's: a CSV the delivery rewrites as the day fills up
    old_csv = delivery.read(csv)
    kills = 0
    for i in range(RANDOM_KILLS):
        if i % 3 == 1:  # new files keep arriving, so passes keep having work to kill
            delivery.add_late_file(1, rng.choice(delivery.participants))
            served.note()
        kills += run_and_kill_at_random(config, rng, 1.8)
        check_invariants(archive, served)
    # Let one pass archive the CSV whole, then rewrite it (same size, other bytes: what
    # `aws s3 sync` would miss) and kill some more passes.
    proc = run_once(config)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert sha256((archive / ACCOUNT / csv[len(delivery.prefix) :]).read_bytes()) == sha256(old_csv)
    delivery.rewrite_same_size(csv)
    delivery.add_late_file(1, delivery.participants[0])
    served.note()
    for _ in range(max(3, RANDOM_KILLS // 3)):
        kills += run_and_kill_at_random(config, rng, 1.5)
        check_invariants(archive, served)
    kept = finish_and_check(config, archive, state, served)
    assert kept == {csv: {sha256(old_csv)}}, "the CSV's old copy is kept, once, under .versions"
    (aside,) = [p for p in (archive / ACCOUNT / ".versions").rglob("*.csv")]
    assert aside.read_bytes() == old_csv
    with capsys.disabled():
        print(
            f"\ncrash suite (EmbracePlus): {kills} kill -9 of "
            f"{RANDOM_KILLS + max(3, RANDOM_KILLS // 3)} passes, {len(served.current())} "
            "objects archived whole once, the rewritten CSV's old copy kept once, 0 lost"
        )
    assert kills >= RANDOM_KILLS // 2, "most passes were killed mid-work"


def test_a_kill_between_keeping_the_old_copy_and_naming_the_new_one_keeps_it_once(
    tmp_path, delivery
):
    """A rewritten CSV is replaced in two steps: the old file gets a second name under
    ``.versions`` (a hard link), then the new file takes its name. A kill between the two
    leaves the old file under both names; the next pass downloads the new one and keeps
    the old one under the name it has already, not under a third."""
    from pathlib import PurePosixPath

    from e4sync.archive import Archive

    config = write_config(tmp_path, delivery)
    archive, state = tmp_path / "archive", tmp_path / "state"
    served = Served(delivery)
    proc = run_once(config)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    csv = delivery.csv_keys[0]
    old = delivery.read(csv)
    delivery.rewrite_same_size(csv)
    served.note()
    rel = PurePosixPath(ACCOUNT, csv[len(delivery.prefix) :])
    # What the killed pass did just before it died: the old copy's second name.
    first = Archive(archive).keep_aside(rel, "replaced", PurePosixPath(ACCOUNT, ".versions"))
    assert first.read_bytes() == old
    kept = finish_and_check(config, archive, state, served)
    assert kept == {csv: {sha256(old)}}
    assert [p for p in (archive / ACCOUNT / ".versions").rglob("*.csv")] == [first]
    assert json.loads(sidecar_of(first).read_text())["sha256"] == sha256(old)
