"""Shared fixtures: a loopback simulator, a configuration in tmp_path, the CLI in-process.

Nothing here is a mock: the simulator is the real server code on 127.0.0.1, the state
database a real SQLite file, the archive a real folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

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
        accounts: Sequence[tuple[str, str, str | None]] | None = None,
        account_extra: str = "",
    ) -> Path:
        """``write_config`` in ``dir``, with this setup's archive and state folders."""
        assert self.config == self.dir / "config.toml", "write_config writes dir/config.toml"
        return write_config(
            self.dir,
            base_url,
            accounts=accounts or ACCOUNTS,
            archive={"root": self.archive},
            state={"dir": self.state},
            extra=extra,
            account_extra=account_extra,
        )


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


# -- configuration -----------------------------------------------------------------------

# The simulator's own account (e4sync.sources.e4connect.simulator.DEFAULT_USER / DEFAULT_PASSWORD).
ACCOUNTS: tuple[tuple[str, str, str | None], ...] = (("lab", "demo@example.org", "demo"),)
# write_config's default for a section: the section with its usual keys, nothing changed.
KEEP: Mapping[str, object] = MappingProxyType({})
# [remote] with deletion on and no minimum age or grace: a verified copy qualifies at once.
REMOTE_DELETE: Mapping[str, object] = MappingProxyType(
    {"delete_after_verify": True, "delete_min_age": "0s", "delete_grace": "0s"}
)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))  # a str or a Path; a JSON string is a TOML basic string


def toml_keys(keys: Mapping[str, object]) -> str:
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())


def write_config(
    dir: Path,
    base_url: str | None = None,
    *,
    accounts: Sequence[tuple[str, str, str | None]] = ACCOUNTS,
    archive: Mapping[str, object] | None = KEEP,
    state: Mapping[str, object] | None = KEEP,
    download: Mapping[str, object] | None = KEEP,
    schedule: Mapping[str, object] | None = None,
    remote: Mapping[str, object] | None = None,
    monitor: Mapping[str, object] | None = None,
    extra: str = "",
    account_extra: str = "",
) -> Path:
    """Write ``dir/config.toml`` and return its path. Sections, in this order:

    - ``[archive]``: ``root = dir/archive``, then the keys of ``archive`` (which may
      replace it); ``None`` leaves the section out. ``[state]`` likewise with
      ``dir = dir/state``, ``[download]`` with ``backoff = "0s"``, ``timeout = "20s"``.
    - ``extra``, as given: raw TOML right after ``[download]``, so bare keys land in it
      (``extra="max_attempts = 1"``).
    - ``[schedule]``, ``[remote]``, ``[monitor]``: only if given, with exactly those keys.
    - one ``[[account]]`` per ``(name, username, password)``: a password is written to
      ``dir/<name>.password`` (mode 0600) and named by ``password_file``; ``None`` writes
      no password line (the test gives one in ``account_extra``, or the password comes
      from elsewhere). Then ``base_url`` unless ``None``, then ``account_extra``, as given.

    Values are strings, paths, booleans or numbers.
    """
    defaults = {
        "archive": {"root": dir / "archive"},
        "state": {"dir": dir / "state"},
        "download": {"backoff": "0s", "timeout": "20s"},
    }
    text = ""
    for name, keys in (("archive", archive), ("state", state), ("download", download)):
        if keys is not None:
            text += f"[{name}]\n{toml_keys({**defaults[name], **keys})}\n"
    text += f"{extra}\n"
    for name, keys in (("schedule", schedule), ("remote", remote), ("monitor", monitor)):
        if keys is not None:
            text += f"[{name}]\n{toml_keys(keys)}\n"
    for name, user, password in accounts:
        lines: dict[str, object] = {"name": name, "username": user}
        if password is not None:
            lines["password_file"] = write_secret(dir / f"{name}.password", password)
        if base_url is not None:
            lines["base_url"] = base_url
        text += f"[[account]]\n{toml_keys(lines)}"
        text += f"{account_extra}\n"
    config = dir / "config.toml"
    config.write_text(text)
    return config


# -- what a pass left behind -----------------------------------------------------------


def archived(archive: Path, *, once: bool = False, sidecars: bool = False) -> dict[str, Any]:
    """session id -> archived ZIP, read from the named sidecars (``*.json``) under
    ``archive``; a session with several (kept-aside versions) maps to one of them.

    ``once``: assert that no session has two sidecars. ``sidecars``: each value is
    ``(zip, sidecar as a dict)`` instead of the ZIP alone.
    """
    found: dict[str, Any] = {}
    for sidecar in archive.rglob("*.json"):
        data = json.loads(sidecar.read_text())
        sid = data["session_id"]
        if once:
            assert sid not in found, f"session {sid} archived twice"
        zip_path = sidecar.with_suffix(".zip")
        found[sid] = (zip_path, data) if sidecars else zip_path
    return found


def archived_copies(archive: Path) -> dict[str, set[str]]:
    """Every whole copy in the archive, by session (sha256 digests): the current one and the
    older versions kept aside (``*.replaced-*.zip``). A damaged file kept aside is not a
    copy. Right after a kill a current copy's sidecar may still be staged as ``X.json.tmp``
    (named after the file, by design: docs/reliability.md); the next start finishes it.
    Asserts every other ZIP has a sidecar that says what it is and hashes as it says."""
    copies: dict[str, set[str]] = {}
    for zip_path in archive.rglob("*.zip"):
        if ".damaged-" in zip_path.name:
            assert not zip_path.with_suffix(".json").exists()
            continue
        sidecar = zip_path.with_suffix(".json")
        if not sidecar.exists():
            sidecar = zip_path.with_suffix(".json.tmp")
        assert sidecar.exists(), f"{zip_path} has no sidecar, staged or named"
        meta = json.loads(sidecar.read_text())
        assert (".replaced-" in zip_path.name) == bool(meta.get("kept_aside")), zip_path
        digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
        assert digest == meta["sha256"], f"{zip_path} is damaged"
        copies.setdefault(meta["session_id"], set()).add(digest)
    return copies


class SessionState(NamedTuple):
    state: str
    attempts: int
    last_error: str | None


def states(state: Path) -> dict[str, SessionState]:
    """remote id -> (state, attempts, last_error), straight from the SQLite file: ``state``
    is the state database or the state folder that holds ``state.db``."""
    db = sqlite3.connect(state if state.is_file() else state / "state.db")
    try:
        return {
            r[0]: SessionState(r[1], r[2], r[3])
            for r in db.execute("select remote_id, state, attempts, last_error from sessions")
        }
    finally:
        db.close()
