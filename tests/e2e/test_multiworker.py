"""Lab-wide archiving end to end (issue 7): several ``e4sync run`` worker processes sharing
one PostgreSQL database and one archive folder, many accounts in one configuration, a
wrong password among them, and the users-file import.

Real parts only: the simulator's server code on 127.0.0.1, workers started the way a
service manager starts them (``python -m e4sync run``), a real PostgreSQL server and a
real archive folder. The PostgreSQL tests need ``E4SYNC_TEST_PG_URL`` (``.ci/pg-start``
starts one); without it they skip, unless ``E4SYNC_REQUIRE_PG=1`` (CI), where they fail.
Each of them gets a database of its own, created with a random name and dropped afterwards.

The workers are other processes: the state database is the only place their progress
shows, and it offers no event a test could wait on, so ``wait_until`` polls it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from e4sync.sources.e4connect.simulator import Faults, Simulator
from e4sync.state import db as statedb
from e4sync.state.models import VERIFIED, Account, Pass, Worker
from e4sync.state.models import Session as SessionRow
from tests.conftest import archived

LEASE = 6.0
INTERVAL = 2.0
# Two passes of one account by different workers may overlap by this much in the `passes`
# table without sharing the account: a row's started_at is taken just before the claim and
# its finished_at just after the release, each one short local transaction apart.
PASS_ROW_SLACK = 0.25
# e4sync.status.status_report marks a worker stale at this heartbeat age (a constant there).
STATUS_STALE_AFTER = 600.0

CHILD_ENV_DROP = (
    "E4SYNC_CONFIG",
    "E4_USER",
    "E4_PWD",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "JOURNAL_STREAM",
)


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    # Migrated here once, so the test can query before the first worker is up.
    eng = statedb.open_db(pg_url)
    yield eng
    eng.dispose()


@dataclass(frozen=True)
class Acct:
    name: str
    user: str
    password: str


class Lab:
    """One shared archive, one password file per account, one config per worker host."""

    def __init__(self, root: Path, base_url: str, accounts: list[Acct], state_url: str = ""):
        self.root = root
        self.base_url = base_url
        self.accounts = accounts
        self.state_url = state_url
        self.archive = root / "archive"
        self.secrets = root / "secrets"
        self.secrets.mkdir(mode=0o700)
        for a in accounts:
            fd = os.open(self.secrets / f"{a.name}.password", os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(a.password + "\n")

    def config(self, host: str) -> Path:
        """The configuration of one worker host: everything shared but its state dir."""
        state_url = f'url = "{self.state_url}"\n' if self.state_url else ""
        text = (
            f'[archive]\nroot = "{self.archive}"\n\n'
            f'[state]\n{state_url}dir = "{self.root / host / "state"}"\n'
            f'lease = "{LEASE:g}s"\n\n'
            f'[schedule]\ninterval = "{INTERVAL:g}s"\njitter = "0s"\n\n'
            f'[download]\nbackoff = "0s"\ntimeout = "20s"\n\n'
        )
        for a in self.accounts:
            text += (
                f'[[account]]\nname = "{a.name}"\nusername = "{a.user}"\n'
                f'password_file = "{self.secrets / (a.name + ".password")}"\n'
                f'base_url = "{self.base_url}"\n\n'
            )
        path = self.root / host / "config.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return path


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}


class Workers:
    """``e4sync run`` processes, their output in log files (a pipe nobody reads would fill
    up and stall a worker)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self, config: Path) -> subprocess.Popen:
        log = config.with_name("worker.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "e4sync", "run", "--config", str(config)],
                env=child_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def by_pid(self, pid: int) -> subprocess.Popen:
        (proc,) = [p for p in self.procs if p.pid == pid]
        return proc

    def output(self) -> str:
        return "\n".join(f"--- {log}\n{log.read_text(errors='replace')}" for log in self.logs)

    def alive(self) -> None:
        dead = [p.returncode for p in self.procs if p.poll() is not None and p.returncode != -9]
        assert not dead, f"a worker exited early ({dead}):\n{self.output()[-5000:]}"

    def stop(self) -> dict[int, int]:
        """SIGTERM each live worker and return pid -> exit code (-9 for a killed one)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = {}
        for p in self.procs:
            try:
                codes[p.pid] = p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[p.pid] = p.wait()
        return codes


def wait_until(
    check: Callable[[], object], timeout: float, what: str, workers: Workers | None = None
) -> float:
    """Poll ``check`` until it is true; return the seconds it took."""
    began = time.monotonic()
    while not check():
        if workers is not None:
            workers.alive()
        if time.monotonic() - began > timeout:
            tail = workers.output()[-6000:] if workers else ""
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{tail}")
        time.sleep(0.05)
    return time.monotonic() - began


def e4sync_cmd(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "e4sync", *argv],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def count_verified(engine: sa.Engine, account: str | None = None) -> int:
    query = (
        sa.select(sa.func.count())
        .select_from(SessionRow)
        .join(Account, Account.id == SessionRow.account_id)
        .where(SessionRow.state == VERIFIED)
    )
    if account is not None:
        query = query.where(Account.name == account)
    with engine.connect() as c:
        return c.execute(query).scalar_one()


def pass_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as c:
        return c.execute(
            sa.select(Account.name, Pass.worker, Pass.started_at, Pass.finished_at)
            .join(Account, Account.id == Pass.account_id)
            .order_by(Pass.started_at)
        ).all()


def lease_owner(engine: sa.Engine, account: str) -> str | None:
    with engine.connect() as c:
        row = c.execute(
            sa.select(Account.lease_owner, Account.lease_until).where(Account.name == account)
        ).one_or_none()
    if row is None:  # no worker has reached the account yet
        return None
    owner, until = row
    return owner if owner and until and until > time.time() else None


def heartbeats(engine: sa.Engine) -> dict[str, float]:
    with engine.connect() as c:
        return dict(c.execute(sa.select(Worker.id, Worker.heartbeat_at)).all())


def shared_service(passes: list[sa.Row]) -> list[str]:
    """Pairs of passes of one account by two workers that overlap in time."""
    found = []
    for i, p in enumerate(passes):
        for q in passes[i + 1 :]:
            if p.name != q.name or p.worker == q.worker:
                continue
            overlap = min(p.finished_at, q.finished_at) - max(p.started_at, q.started_at)
            if overlap > PASS_ROW_SLACK:
                found.append(f"{p.name}: {p.worker} and {q.worker} for {overlap:.2f} s")
    return found


def add_lab_accounts(sim: Simulator, n: int, sessions: int, size: int) -> list[Acct]:
    accounts = []
    for i in range(n):
        a = Acct(f"lab{i}", f"lab{i}@example.org", f"pw-{i}-{secrets.token_hex(4)}")
        sim.add_account(a.user, a.password)
        for _ in range(sessions):
            sim.add_session(a.user, size_bytes=size)
        accounts.append(a)
    return accounts


# -- several workers, one database ---------------------------------------------------------


@pytest.mark.postgres
def test_three_workers_archive_every_session_once_and_never_share_an_account(
    pg_url, engine, tmp_path
):
    # ~300 KB sessions behind a 1 MB/s cap: an account's first pass takes long enough that
    # two workers serving it at once could not hide in the pass rows' slack.
    with Simulator(port=0, seed=7, sessions=0, faults=Faults(bandwidth=1_000_000)) as sim:
        accounts = add_lab_accounts(sim, 6, 0, 0)
        # A wrong password, first in the file: the check at start-up skips past it, and it
        # never keeps the workers from the other accounts.
        bad = Acct("badpw", "badpw@example.org", "not-the-password")
        sim.add_account(bad.user, "the-real-one")
        lab = Lab(tmp_path, sim.base_url, [bad, *accounts], state_url=pg_url)
        workers = Workers()
        for host in ("host1", "host2", "host3"):
            workers.start(lab.config(host))
        try:
            # Each worker logs in once at start, holding no lease (see the report on
            # daemon.check_logins): count the platform's traffic only from when all three are
            # past that check (a worker's row appears at its first pass), and publish the
            # recordings only then.
            wait_until(lambda: len(heartbeats(engine)) == 3, 30, "three workers up", workers)
            before = sim.stats()
            counted_from = time.time()
            for a in accounts:
                for _ in range(3):
                    sim.add_session(a.user, size_bytes=300_000)
            wait_until(lambda: count_verified(engine) == 18, 45, "18 sessions archived", workers)
            # Two more rounds with nothing to download: the workers keep contending.
            done = len(pass_rows(engine))
            wait_until(
                lambda: len(pass_rows(engine)) >= done + 2 * len(lab.accounts),
                20,
                "two more rounds of passes",
                workers,
            )
            # `status` from a host that runs no worker, with its own config.
            observer = e4sync_cmd("status", "--json", "--config", str(lab.config("observer")))
            status = json.loads(observer.stdout)
            healthy = all(a["healthy"] for a in status["accounts"])
            assert observer.returncode == (0 if healthy else 1), observer.stderr
        finally:
            codes = workers.stop()
        after = sim.stats()
    assert set(codes.values()) == {0}, workers.output()[-5000:]

    # Every session archived exactly once, byte for byte, each with its sidecar.
    downloads = after["requests"]["download"] - before["requests"].get("download", 0)
    assert downloads == 18, "a session was fetched twice"
    files = archived(lab.archive, once=True, sidecars=True)
    expected = {r["id"]: a.name for a in accounts for r in sim.sessions(a.user)}
    assert {sid: data["account"] for sid, (_, data) in files.items()} == expected
    for sid, (zip_path, _) in files.items():
        assert zip_path.read_bytes() == sim.zip_bytes(sid)
    assert len(list(lab.archive.rglob("*.zip"))) == 18
    assert not list(lab.archive.rglob("*.part"))

    # No account served by two workers at once, seen from both sides of the wire.
    passes = [p for p in pass_rows(engine) if p.name != bad.name]
    assert shared_service(passes) == []
    worker_ids = {p.worker for p in passes}
    assert len(worker_ids) == 3, "the three workers did not divide the work"
    # The platform allows one live login per account, so two workers serving one account
    # log each other out and log in again: logins would outnumber passes. A served pass
    # logs in exactly once; one already under way when counting began may or may not have.
    for a in accounts:
        mine = [p for p in passes if p.name == a.name]
        started = sum(1 for p in mine if p.started_at >= counted_from)
        straddling = sum(1 for p in mine if p.started_at < counted_from < p.finished_at)
        logins = after["accounts"][a.user]["logins"] - before["accounts"][a.user]["logins"]
        assert started <= logins <= started + straddling, (a.name, started, logins)

    # status --json: the workers with heartbeats, each account's health and its lease.
    by_name = {a["name"]: a for a in status["accounts"]}
    assert set(by_name) == {a.name for a in lab.accounts}
    assert {w["id"] for w in status["workers"]} == worker_ids
    for w in status["workers"]:
        assert w["heartbeat"] and not w["stale"] and w["host"] and w["pid"]
    for a in accounts:
        entry = by_name[a.name]
        assert entry["healthy"] and entry["counts"]["verified"] == 3
        assert entry["last_pass"]["worker"] in worker_ids
        assert entry["lease"]["owner"] in (None, *worker_ids)
    assert not by_name[bad.name]["healthy"]
    assert "password" in by_name[bad.name]["last_error"]
    assert after["accounts"][bad.user]["failed_logins"] >= 3
    assert "not-the-password" not in workers.output() + json.dumps(status)


@pytest.mark.postgres
def test_killed_worker_hands_its_account_over_within_a_lease(pg_url, engine, tmp_path):
    # "slow" has two big sessions behind a 200 KB/s cap (about 4 s each); the others are tiny.
    with Simulator(port=0, seed=8, sessions=0, faults=Faults(bandwidth=200_000)) as sim:
        slow = Acct("slow", "slow@example.org", "slow-pw")
        sim.add_account(slow.user, slow.password)
        for _ in range(2):
            sim.add_session(slow.user, size_bytes=800_000)
        others = add_lab_accounts(sim, 3, 1, 20_000)
        lab = Lab(tmp_path, sim.base_url, [slow, *others], state_url=pg_url)
        workers = Workers()
        for host in ("host1", "host2", "host3"):
            workers.start(lab.config(host))
        try:

            def slow_part_growing() -> bool:
                return lease_owner(engine, "slow") is not None and any(
                    p.stat().st_size for p in (lab.archive / "slow").rglob("*.part")
                )

            wait_until(slow_part_growing, 30, "a download of 'slow' under way", workers)
            victim = lease_owner(engine, "slow")
            with engine.connect() as c:
                pid = c.execute(sa.select(Worker.pid).where(Worker.id == victim)).scalar_one()
            workers.by_pid(pid).send_signal(signal.SIGKILL)
            workers.by_pid(pid).wait(timeout=10)
            killed_at = time.monotonic()

            # Right after the kill, status still names the dead worker's (unexpired) lease.
            seen = json.loads(
                e4sync_cmd("status", "--json", "--config", str(lab.config("observer"))).stdout
            )
            lease = {a["name"]: a["lease"] for a in seen["accounts"]}["slow"]
            assert lease["owner"] in (victim, None)  # None only on a very slow machine

            def taken_over() -> bool:
                owner = lease_owner(engine, "slow")
                return owner is not None and owner != victim

            wait_until(taken_over, LEASE + INTERVAL + 5, "another worker to take 'slow'", workers)
            took = time.monotonic() - killed_at
            # The dead lease lapses at most LEASE after its last renewal; the others look
            # again every INTERVAL.
            assert took <= LEASE + INTERVAL + 2, f"take-over after {took:.1f} s"
            wait_until(lambda: count_verified(engine) == 5, 30, "every session archived", workers)
            # Let each survivor heartbeat after its own pass: the dead row is then the oldest.
            marks = {w: hb for w, hb in heartbeats(engine).items() if w != victim}
            wait_until(
                lambda: all(heartbeats(engine)[w] > hb for w, hb in marks.items()),
                3 * INTERVAL,
                "the surviving workers to heartbeat",
                workers,
            )
            status_cli = json.loads(
                e4sync_cmd("status", "--json", "--config", str(lab.config("observer"))).stdout
            )
            from e4sync.status import status_report

            dead_beat = heartbeats(engine)[victim]
            later = status_report(engine, now=dead_beat + STATUS_STALE_AFTER + 0.5)
        finally:
            codes = workers.stop()
    assert codes[pid] == -signal.SIGKILL
    assert sorted(c for p, c in codes.items() if p != pid) == [0, 0], workers.output()[-5000:]

    files = archived(lab.archive, once=True, sidecars=True)
    assert len(files) == 5 and not list(lab.archive.rglob("*.part"))
    for sid, (zip_path, _) in files.items():
        assert zip_path.read_bytes() == sim.zip_bytes(sid)
    # The dead worker's pass on "slow" never finished, so its successor's pass row is the one.
    slow_passes = [p for p in pass_rows(engine) if p.name == "slow"]
    assert slow_passes and all(p.worker != victim for p in slow_passes)
    assert shared_service(pass_rows(engine)) == []

    # status from any host: all three workers with heartbeats, the dead one the oldest; and
    # once the dead one's heartbeat is older than status_report's threshold, it alone is stale.
    rows = {w["id"]: w for w in status_cli["workers"]}
    assert len(rows) == 3 and victim in rows
    assert all(rows[victim]["heartbeat"] <= w["heartbeat"] for w in rows.values())
    assert {w["id"]: w["stale"] for w in later["workers"]} == {w: w == victim for w in rows}
    slow_status = {a["name"]: a for a in status_cli["accounts"]}["slow"]
    assert slow_status["counts"]["verified"] == 2 and slow_status["healthy"]
    assert slow_status["last_pass"]["worker"] != victim


# -- many accounts in one configuration (SQLite is enough) ----------------------------------


def test_wrong_password_in_one_account_never_stops_the_others(tmp_path, run_cli):
    with Simulator(port=0, seed=9, sessions=0) as sim:
        accounts = add_lab_accounts(sim, 3, 2, 20_000)
        bad = Acct("badpw", "badpw@example.org", "wrong-secret-7")
        sim.add_account(bad.user, "right-secret")
        sim.add_session(bad.user, size_bytes=20_000)
        # The bad account in the middle: the ones after it are served all the same.
        lab = Lab(tmp_path, sim.base_url, [accounts[0], bad, *accounts[1:]])
        config = str(lab.config("host"))
        result = run_cli("run-once", "--config", config, exit_code=77)
        status = json.loads(run_cli("status", "--json", "--config", config, exit_code=1).out)
        text = run_cli("status", "--config", config, exit_code=1).out
    files = archived(lab.archive, once=True, sidecars=True)
    assert {data["account"] for _, data in files.values()} == {a.name for a in accounts}
    assert len(files) == 6
    assert "wrong-secret-7" not in result.out + result.err + text + json.dumps(status)
    health = {a["name"]: a["healthy"] for a in status["accounts"]}
    assert health == {"lab0": True, "lab1": True, "lab2": True, "badpw": False}
    bad_entry = {a["name"]: a for a in status["accounts"]}["badpw"]
    assert bad_entry["counts"]["verified"] == 0 and bad_entry["last_error"]
    assert "badpw (user ?): NOT OK" in text
    assert "lab1 (user " in text and text.count(": ok") == 3


def test_users_file_import_writes_private_files_and_a_snippet_that_loads(tmp_path, run_cli):
    from e4sync.config import load_config

    users = tmp_path / "users.txt"
    users.write_text(
        "# lab wristbands\nana@example.org:s3cret\n\nbo@example.org:pass:with:colons\n"
    )
    out_dir = tmp_path / "passwords"
    result = run_cli("accounts", "import", str(users), "--out", str(out_dir))
    assert "s3cret" not in result.out and "with:colons" not in result.out + result.err
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o700
    files = sorted(out_dir.iterdir())
    assert len(files) == 2
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert {f.read_text().strip() for f in files} == {"s3cret", "pass:with:colons"}

    with Simulator(port=0, seed=10, sessions=0) as sim:
        sim.add_account("ana@example.org", "s3cret")
        sim.add_session("ana@example.org", size_bytes=20_000)
        sim.add_account("bo@example.org", "pass:with:colons")
        sim.add_session("bo@example.org", size_bytes=20_000)
        snippet = result.out.replace("[[account]]\n", f'[[account]]\nbase_url = "{sim.base_url}"\n')
        config = tmp_path / "config.toml"
        config.write_text(
            f'[archive]\nroot = "{tmp_path / "archive"}"\n'
            f'[state]\ndir = "{tmp_path / "state"}"\n\n{snippet}'
        )
        cfg = load_config(config)
        users = sorted(a.options["username"] for a in cfg.accounts)
        assert users == ["ana@example.org", "bo@example.org"]
        # The passwords in the written files log in for real.
        run_cli("run-once", "--config", str(config))
    assert len(archived(tmp_path / "archive", once=True, sidecars=True)) == 2
