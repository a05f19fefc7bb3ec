"""`e4sync run` as systemd runs it: a real datagram socket in NOTIFY_SOCKET, WATCHDOG_USEC
set, the password only in a CREDENTIALS_DIRECTORY, and a real SIGTERM (SIGTERM mid-download,
during a Retry-After and SIGHUP are in test_signals.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e4sync.sources.e4connect.simulator import Simulator
from tests.conftest import write_config

# As systemd runs it: no password line (the password is in CREDENTIALS_DIRECTORY), the
# [download] defaults, one pass an hour.
CONFIG = {
    "accounts": [("lab", "demo@example.org", None)],
    "download": None,
    "schedule": {"interval": "1h", "jitter": "0s"},
}


class NotifySocket:
    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in m for m in self.messages):
                return True
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        return any(text in m for m in self.messages)

    def close(self) -> None:
        self.sock.close()


def daemon_env(tmp_path: Path, notify: Path, password: str) -> dict[str, str]:
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / "e4sync-password").write_text(password)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("E4SYNC_CONFIG", "E4_USER", "E4_PWD", "JOURNAL_STREAM")
    }
    env.update(NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="2000000", CREDENTIALS_DIRECTORY=str(creds))
    return env


def start_daemon(config: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "e4sync", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_run_under_systemd_notifies_fills_the_archive_and_stops_cleanly(tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    with Simulator(port=0, seed=3, sessions=4) as sim:
        env = daemon_env(tmp_path, notify.path, "demo")
        proc = start_daemon(write_config(tmp_path, sim.base_url, **CONFIG), env)
        try:
            assert notify.wait_for("READY=1", 30), notify.messages
            assert notify.wait_for("WATCHDOG=1", 10), notify.messages
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if len(list((tmp_path / "archive").rglob("*.zip"))) == 4:
                    break
                time.sleep(0.1)
            zips = sorted((tmp_path / "archive").rglob("*.zip"))
            assert len(zips) == 4
            assert notify.wait_for("STATUS=idle", 15), notify.messages
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10)
            assert code == 0, proc.stderr.read()
            assert notify.wait_for("STOPPING=1", 2)
        finally:
            if proc.poll() is None:
                proc.kill()
            notify.close()
        stderr = proc.stderr.read()
        assert "demo" not in stderr.replace("demo@example.org", "")  # the password never shows


def test_sighup_tells_systemd_reloading_then_ready(tmp_path):
    """ExecReload=/bin/kill -HUP $MAINPID: systemd shows the unit reloading until READY=1."""
    notify = NotifySocket(tmp_path / "notify.sock")
    with Simulator(port=0, seed=3, sessions=1) as sim:
        env = daemon_env(tmp_path, notify.path, "demo")
        proc = start_daemon(write_config(tmp_path, sim.base_url, **CONFIG), env)
        try:
            assert notify.wait_for("READY=1", 30), notify.messages
            assert notify.wait_for("STATUS=idle", 15), notify.messages
            proc.send_signal(signal.SIGHUP)
            assert notify.wait_for("RELOADING=1", 10), notify.messages
            reloading = next(i for i, m in enumerate(notify.messages) if "RELOADING=1" in m)
            assert "MONOTONIC_USEC=" in notify.messages[reloading]
            deadline = time.monotonic() + 10
            while not any("READY=1" in m for m in notify.messages[reloading + 1 :]):
                assert time.monotonic() < deadline, notify.messages
                notify.wait_for("never", 0.1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            notify.close()
    assert "configuration reloaded from" in proc.stderr.read()


def test_wrong_password_at_start_exits_77_before_ready(tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    with Simulator(port=0, seed=3, sessions=1) as sim:
        env = daemon_env(tmp_path, notify.path, "wrong")
        proc = start_daemon(write_config(tmp_path, sim.base_url, **CONFIG), env)
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert code == 77
        assert "wrong username or password" in proc.stderr.read()
        assert not notify.wait_for("READY=1", 0.2)
        notify.close()


@pytest.mark.parametrize("password_file_mode", [0o644])
def test_world_readable_password_file_is_refused_with_78(tmp_path, password_file_mode):
    pw = tmp_path / "pw"
    pw.write_text("demo")
    pw.chmod(password_file_mode)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[archive]\nroot = "{tmp_path / "a"}"\n[state]\ndir = "{tmp_path / "s"}"\n'
        f'[[account]]\nname = "lab"\nusername = "u@example.org"\npassword_file = "{pw}"\n'
        f'base_url = "http://127.0.0.1:9/connect"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    proc = subprocess.run(
        [sys.executable, "-m", "e4sync", "run-once", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 78, proc.stderr
    assert "chmod 600" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_wrong_password_does_not_stop_a_worker_another_account_needs(sim, setup):
    """check_logins at start: account "wrong" is refused while "busy" is served by another
    worker. This worker must stay (it takes "busy" over if that worker dies); alone with
    only refused logins it must exit 77."""
    from e4sync.config import load_config
    from e4sync.daemon import check_logins
    from e4sync.errors import AuthError
    from e4sync.state.db import claim_accounts, ensure_account, open_db, sessionmaker_for
    from e4sync.sync import default_source_factory

    sim.add_account("busy@example.org", "Busy-Password", sessions=1)
    cfg = load_config(
        setup.write(
            sim.base_url,
            accounts=[
                ("wrong", "demo@example.org", "Not-The-Password"),
                ("busy", "busy@example.org", "Busy-Password"),
            ],
        )
    )
    engine = open_db(cfg.state.url)
    try:
        with sessionmaker_for(engine)() as db, db.begin():
            ensure_account(db, "busy", "busy@example.org", sim.base_url)
        assert claim_accounts(engine, "other-worker", ["busy"], 600)
        factory = default_source_factory(cfg)
        check_logins(cfg, factory, engine, "this-worker")  # stays: no AuthError
        assert sim.login_count("busy@example.org") == 0, "never logs out the other worker"

        alone = load_config(
            setup.write(sim.base_url, accounts=[("wrong", "demo@example.org", "Nope-Nope")])
        )
        with pytest.raises(AuthError):
            check_logins(alone, default_source_factory(alone), engine, "this-worker")
    finally:
        engine.dispose()
