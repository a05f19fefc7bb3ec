"""Shared fixtures: a loopback simulator, a configuration in tmp_path, the CLI in-process.

Nothing here is a mock: the simulator is the real server code on 127.0.0.1, the state
database a real SQLite file, the archive a real folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture
def pings():
    """A healthchecks.io look-alike on loopback: its ping URL, and the (path, body) of every
    request it was sent, in order."""
    import http.server
    import threading

    seen: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append((self.path, self.rfile.read(length).decode()))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _record

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ping/abc123", seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def sim():
    from e4sync.sources.e4connect.simulator import Simulator

    with Simulator(port=0, seed=1, sessions=5) as server:
        yield server


@dataclass
class Setup:
    """A configuration in tmp_path that points at a simulator."""

    dir: Path
    config: Path
    archive: Path
    state: Path
    password_file: Path

    def write(
        self,
        base_url: str,
        *,
        extra: str = "",
        accounts: list[tuple[str, str, str]] | None = None,
        account_extra: str = "",
    ) -> Path:
        accounts = accounts or [("lab", "demo@example.org", "demo")]
        text = (
            f'[archive]\nroot = "{self.archive}"\n\n[state]\ndir = "{self.state}"\n\n'
            f'[download]\nbackoff = "0s"\ntimeout = "20s"\n\n{extra}\n'
        )
        for name, user, password in accounts:
            pw = write_secret(self.dir / f"{name}.password", password)
            text += (
                f'[[account]]\nname = "{name}"\nusername = "{user}"\n'
                f'password_file = "{pw}"\nbase_url = "{base_url}"\n{account_extra}\n'
            )
        self.config.write_text(text)
        return self.config


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(
        dir=tmp_path,
        config=tmp_path / "config.toml",
        archive=tmp_path / "archive",
        state=tmp_path / "state",
        password_file=tmp_path / "lab.password",
    )


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run ``e4sync`` in-process (borg's ``cmd()``) and assert its exit code."""
    from e4sync import cli

    # Keep the developer's own configuration and credentials out of the tests.
    for var in (
        "E4SYNC_CONFIG",
        "E4_USER",
        "E4_PWD",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "JOURNAL_STREAM",
    ):
        monkeypatch.delenv(var, raising=False)

    def run(*argv: str, exit_code: int | None = 0) -> CliResult:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        captured = capsys.readouterr()
        result = CliResult(code, captured.out, captured.err)
        if exit_code is not None:
            assert code == exit_code, f"exit {code}, wanted {exit_code}\n{result.out}\n{result.err}"
        return result

    return run


def e4sync_cmd(
    *argv: str, env: dict | None = None, timeout: float = 120, **kwargs
) -> subprocess.CompletedProcess:
    """Run ``python -m e4sync`` as a separate process."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("E4SYNC_CONFIG", "E4_USER", "E4_PWD", "CREDENTIALS_DIRECTORY")
    }
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "e4sync", *argv],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the server at E4SYNC_TEST_PG_URL, dropped afterwards.
    Skipped without a server, except in CI (E4SYNC_REQUIRE_PG=1), where that fails."""
    import secrets

    import sqlalchemy as sa

    admin_url = os.environ.get("E4SYNC_TEST_PG_URL")
    if not admin_url:
        if os.environ.get("E4SYNC_REQUIRE_PG") == "1":
            pytest.fail("E4SYNC_REQUIRE_PG=1 but E4SYNC_TEST_PG_URL is not set")
        pytest.skip("E4SYNC_TEST_PG_URL is not set")
    name = f"e4sync_test_{secrets.token_hex(6)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as c:
            # FORCE: a killed worker or a test that failed half-way may leave connections.
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def write_secret(path: Path, text: str) -> Path:
    """A password file as a user makes one: mode 0600 from the start, one trailing newline."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path
