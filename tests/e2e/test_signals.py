"""Real signals to a real ``python -m e4sync run`` / ``run-once`` process against the simulator
on 127.0.0.1: SIGHUP reloads the configuration between passes (a bad file is refused and the
old configuration keeps running), SIGTERM mid-download removes the process's own ``.part``
files, and SIGTERM during a ``Retry-After: 300`` wait exits within seconds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from e4sync.sources.e4connect.simulator import Faults, Simulator
from tests.conftest import Setup

SECOND_USER = "second@example.org"
SECOND_PASSWORD = "Second-Password"


class Running:
    """An e4sync process whose stderr is collected line by line as it comes."""

    def __init__(self, command: str, config: Path):
        env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                "E4SYNC_CONFIG",
                "E4_USER",
                "E4_PWD",
                "CREDENTIALS_DIRECTORY",
                "NOTIFY_SOCKET",
                "JOURNAL_STREAM",
            )
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "e4sync", command, "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.ended = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_log(self, pattern: str, timeout: float = 30, count: int = 1) -> list[str]:
        """The first ``count`` stderr lines matching ``pattern``; fails after ``timeout``."""
        regex = re.compile(pattern)

        def found() -> list[str]:
            return [line for line in self.lines if regex.search(line)]

        with self._changed:
            self._changed.wait_for(lambda: len(found()) >= count or self.ended, timeout)
            hits = found()
        assert len(hits) >= count, f"no {pattern!r} (exit {self.proc.poll()}):\n{self.log}"
        return hits[:count]

    def signal(self, signum: int) -> None:
        assert self.proc.poll() is None, f"exited {self.proc.returncode} already:\n{self.log}"
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def zips(root: Path) -> list[Path]:
    return sorted(root.rglob("*.zip")) if root.exists() else []


def parts(root: Path) -> list[Path]:
    # The write probe (.e4sync-probe-*.zip.part) lives only for a moment at pass start.
    return [p for p in root.rglob("*.part") if not p.name.startswith(".")]


def schedule(interval: str) -> str:
    return f'[schedule]\ninterval = "{interval}"\njitter = "0s"\n'


ACCOUNTS = [("lab", "demo@example.org", "demo")]
BOTH = [*ACCOUNTS, ("second", SECOND_USER, SECOND_PASSWORD)]


# --- SIGHUP: reload between passes ---------------------------------------------------------


def test_sighup_reloads_a_changed_config_new_account_and_interval(setup: Setup):
    with Simulator(port=0, seed=5, sessions=2) as sim:
        sim.add_account(SECOND_USER, SECOND_PASSWORD, sessions=2)
        config = setup.write(sim.base_url, extra=schedule("1h"), accounts=ACCOUNTS)
        daemon = Running("run", config)
        try:
            daemon.wait_log("a pass every 1h")
            wait_for(lambda: len(zips(setup.archive / "lab")) == 2, 30, "lab never synced")
            pid = daemon.proc.pid
            # A second account and a short interval: without a reload the next pass is in 1 h.
            setup.write(sim.base_url, extra=schedule("2s"), accounts=BOTH)
            daemon.signal(signal.SIGHUP)
            daemon.wait_log(re.escape(f"configuration reloaded from {config}"))
            wait_for(
                lambda: len(zips(setup.archive / "second")) == 2,
                30,
                f"the added account was never synced:\n{daemon.log}",
            )
            # The same process ran the new pass (the pass lock holds its PID): no restart.
            assert daemon.proc.poll() is None
            assert (setup.state / "state.db.lock").read_text().strip() == str(pid)
            # The new interval took effect: passes keep coming every 2 s.
            daemon.wait_log(r"account second: 2 sessions listed", count=1)
            sim.add_session()
            wait_for(lambda: len(zips(setup.archive / "lab")) == 3, 15, "interval not applied")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(15) == 0, daemon.log
        finally:
            daemon.kill()
    assert len([line for line in daemon.lines if "configuration reloaded from" in line]) == 1
    assert "Traceback" not in daemon.log


def test_sighup_with_a_broken_config_keeps_the_old_one_and_keeps_syncing(setup: Setup):
    with Simulator(port=0, seed=6, sessions=1) as sim:
        config = setup.write(sim.base_url, extra=schedule("2s"), accounts=ACCOUNTS)
        good = config.read_text()
        daemon = Running("run", config)
        try:
            wait_for(lambda: len(zips(setup.archive)) == 1, 30, "never synced")
            config.write_text(good.replace('interval = "2s"', 'interval = "soon"'))
            daemon.signal(signal.SIGHUP)
            (error,) = daemon.wait_log(r"ERROR .*configuration")
            assert str(config) in error and "interval" in error, error
            assert "keeping the previous configuration" in error, error
            # Still alive, still on the old configuration (a pass every 2 s).
            sim.add_session()
            wait_for(
                lambda: len(zips(setup.archive)) == 2,
                20,
                f"the daemon stopped syncing after a bad reload:\n{daemon.log}",
            )
            # A fixed file is taken on the next SIGHUP.
            config.write_text(good)
            daemon.signal(signal.SIGHUP)
            daemon.wait_log(re.escape(f"configuration reloaded from {config}"))
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(15) == 0, daemon.log
        finally:
            daemon.kill()
    assert "Traceback" not in daemon.log
    assert len([line for line in daemon.lines if "ERROR" in line]) == 1, daemon.log


def test_sighup_mid_pass_is_applied_once_the_pass_has_ended(setup: Setup):
    with Simulator(port=0, seed=8, sessions=0, faults=Faults(bandwidth=2_000_000)) as sim:
        sim.add_session(size_bytes=5_000_000)
        sim.add_account(SECOND_USER, SECOND_PASSWORD, sessions=1)
        config = setup.write(sim.base_url, extra=schedule("1h"), accounts=ACCOUNTS)
        daemon = Running("run", config)
        try:
            wait_for(lambda: parts(setup.archive), 30, f"no download started:\n{daemon.log}")
            setup.write(sim.base_url, extra=schedule("2s"), accounts=BOTH)
            daemon.signal(signal.SIGHUP)
            daemon.wait_log("reloaded when the running pass ends")
            (reloaded,) = daemon.wait_log("configuration reloaded from")
            wait_for(lambda: zips(setup.archive / "second"), 30, "the new account never synced")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(15) == 0, daemon.log
        finally:
            daemon.kill()
    (archived,) = [line for line in daemon.lines if "archived" in line and "/lab/" in line]
    assert daemon.lines.index(archived) < daemon.lines.index(reloaded), daemon.log
    # The running pass kept its configuration: "second" was not served until the reload.
    assert not [
        line for line in daemon.lines[: daemon.lines.index(reloaded)] if "second" in line
    ], daemon.log


def test_sighup_does_not_stop_run_once(setup: Setup):
    """run-once reads its configuration once; a SIGHUP (a closed terminal, a stray
    `systemctl reload`) must not cut the pass half-way."""
    with Simulator(port=0, seed=7, sessions=0, faults=Faults(bandwidth=2_000_000)) as sim:
        sim.add_session(size_bytes=6_000_000)
        once = Running("run-once", setup.write(sim.base_url, accounts=ACCOUNTS))
        try:
            wait_for(lambda: parts(setup.archive), 30, "the download never started")
            once.signal(signal.SIGHUP)
            once.wait_log("SIGHUP")
            assert once.wait(60) == 0, once.log
        finally:
            once.kill()
    assert len(zips(setup.archive)) == 1
    assert not parts(setup.archive)


# --- SIGTERM: prompt, and no .part left behind ---------------------------------------------


@pytest.mark.parametrize(("command", "code"), [("run", 0), ("run-once", 143)])
def test_sigterm_mid_download_exits_promptly_and_leaves_no_part(setup: Setup, command, code):
    # One big session behind a bandwidth cap: the pass is still downloading when it is stopped.
    with Simulator(port=0, seed=3, sessions=0, faults=Faults(bandwidth=2_000_000)) as sim:
        sim.add_session(size_bytes=40_000_000)
        proc = Running(command, setup.write(sim.base_url, extra=schedule("1h"), accounts=ACCOUNTS))
        try:
            wait_for(
                lambda: any(p.stat().st_size for p in parts(setup.archive)),
                30,
                f"the download never started:\n{proc.log}",
            )
            # Another program's file named like a part, made after the pass started: not ours.
            foreign = setup.archive / "lab" / "not-e4syncs.zip.part"
            foreign.write_bytes(b"someone else's")
            started = time.monotonic()
            proc.signal(signal.SIGTERM)
            assert proc.wait(15) == code, proc.log
            assert time.monotonic() - started < 10
        finally:
            proc.kill()
    assert not zips(setup.archive), "no half file under a final name"
    assert parts(setup.archive) == [foreign], "the process's own .part is removed, nothing else"
    assert "Traceback" not in proc.log


@pytest.mark.parametrize(("command", "code"), [("run", 0), ("run-once", 143)])
def test_sigterm_during_a_retry_after_300_wait_exits_within_seconds(setup: Setup, command, code):
    with Simulator(port=0, seed=4, sessions=1, faults=Faults(rate_429=1.0, retry_after=300)) as sim:
        proc = Running(command, setup.write(sim.base_url, extra=schedule("1h"), accounts=ACCOUNTS))
        try:
            # The listing is answered 429 with Retry-After: 300; the client is now waiting.
            assert sim.wait_requests("sessions_list", 1, timeout=30), proc.log
            wait_for(
                lambda: any(e["status"] == 429 for e in sim.request_log()),
                10,
                "the 429 was answered",
            )
            started = time.monotonic()
            proc.signal(signal.SIGTERM)
            assert proc.wait(10) == code, proc.log
            assert time.monotonic() - started < 10
        finally:
            proc.kill()
    assert sim.stats()["requests"]["sessions_list"] == 1, "stopped, not retried"
    # A stop, not a failure: no error is logged for the account.
    assert not [line for line in proc.lines if " ERROR " in line], proc.log
    assert "Traceback" not in proc.log
