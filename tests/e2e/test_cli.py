"""The command line end to end: every user-facing command against the real simulator on
127.0.0.1, a real SQLite state file and real folders in tmp_path.

Most tests call ``cli.main`` in-process (the ``run_cli`` fixture); where the environment
itself is under test (no configuration file at all, stdin not a terminal, ``python -m``,
signals, the demo) the program runs as a subprocess. Nothing is mocked. Every test points
HOME and the XDG directories at tmp_path, so the developer's own configuration, state and
archive are never read or touched.
"""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from e4sync import __version__
from e4sync.sources.e4connect.layout import device_serial
from tests.conftest import write_config

USER = "demo@example.org"
PASSWORD = "demo"

# Variables that would let a developer's own set-up leak into a test.
LEAKY = (
    "E4SYNC_CONFIG",
    "E4_USER",
    "E4_PWD",
    "CREDENTIALS_DIRECTORY",
    "CONFIGURATION_DIRECTORY",
    "STATE_DIRECTORY",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "WATCHDOG_USEC",
)


@dataclass
class Home:
    """HOME and the XDG directories, all inside tmp_path."""

    env: dict[str, str]
    data: Path
    state: Path
    config: Path

    @property
    def archive(self) -> Path:
        # platformdirs' user data directory / "archive" (SPEC section 4).
        return self.data / "e4sync" / "archive"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    dirs = {
        "HOME": tmp_path / "home",
        "XDG_CONFIG_HOME": tmp_path / "xdg-config",
        "XDG_STATE_HOME": tmp_path / "xdg-state",
        "XDG_DATA_HOME": tmp_path / "xdg-data",
        "XDG_CACHE_HOME": tmp_path / "xdg-cache",
    }
    env = {}
    for name, path in dirs.items():
        path.mkdir()
        env[name] = str(path)
        monkeypatch.setenv(name, str(path))
    for name in LEAKY:
        monkeypatch.delenv(name, raising=False)
    return Home(env, dirs["XDG_DATA_HOME"], dirs["XDG_STATE_HOME"], dirs["XDG_CONFIG_HOME"])


@pytest.fixture
def envcli(run_cli, home: Home, monkeypatch: pytest.MonkeyPatch):
    """``run_cli`` with no configuration file: only E4_USER/E4_PWD (after run_cli, which
    clears them)."""
    monkeypatch.setenv("E4_USER", USER)
    monkeypatch.setenv("E4_PWD", PASSWORD)
    return run_cli


def sub(*argv: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60):
    """``python -m e4sync`` as a separate process, stdin not a terminal."""
    full = {k: v for k, v in os.environ.items() if k not in LEAKY}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "e4sync", *argv],
        env=full,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def platform_name(row: dict) -> str:
    """The file name E4 Connect gives a download (SPEC section 4)."""
    return f"{row['start_time']}_{device_serial(row['label'])}.zip"


def read_lines(stream, into: queue.Queue) -> None:
    """Feed a pipe's lines to a queue (None at its end), so a test can wait with a timeout."""
    for line in stream:
        into.put(line)
    into.put(None)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# -- account commands with no configuration file --------------------------------------------


def test_whoami_with_only_e4_user_and_e4_pwd(sim, home, tmp_path):
    env = {**home.env, "E4_USER": USER, "E4_PWD": PASSWORD}
    result = sub("whoami", "--base-url", sim.base_url, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == sim.user_id()
    assert PASSWORD not in result.stderr.replace(USER, "")


def test_sessions_json_csv_and_table_show_the_local_state(sim, envcli, home):
    url = ("--base-url", sim.base_url)
    ids = {r["id"] for r in sim.sessions()}
    before = json.loads(envcli("sessions", "--json", *url).out)
    assert {r["id"] for r in before} == ids
    assert {r["local_state"] for r in before} == {""}
    assert [r["start_time"] for r in before] == sorted(r["start_time"] for r in before)

    envcli("run-once", *url)
    # The default account's archive lands in the (temporary) user data directory.
    assert len(list(home.archive.rglob("*.zip"))) == len(ids)
    assert (home.state / "e4sync" / "state.db").is_file()

    after = json.loads(envcli("sessions", "--json", *url).out)
    assert {r["id"]: r["local_state"] for r in after} == dict.fromkeys(ids, "verified")

    rows = list(csv.DictReader(io.StringIO(envcli("sessions", "--csv", *url).out)))
    assert {r["id"]: r["local_state"] for r in rows} == dict.fromkeys(ids, "verified")
    assert rows[0].keys() >= {"id", "start_time", "start", "duration", "label", "device"}

    table = envcli("sessions", *url).out.splitlines()
    assert table[0].split() == list(rows[0].keys())
    body = {line.split()[0]: line.split()[-1] for line in table[1:]}
    assert body == dict.fromkeys(ids, "verified")


def test_devices_json_and_csv(sim, envcli):
    url = ("--base-url", sim.base_url)
    expected = {d["device_id"]: d["label"] for d in sim.devices()}
    assert expected
    devices = json.loads(envcli("devices", "--json", *url).out)
    assert {d["device_id"]: str(d["label"]) for d in devices} == expected
    rows = list(csv.DictReader(io.StringIO(envcli("devices", "--csv", *url).out)))
    assert {r["device_id"]: r["label"] for r in rows} == expected
    assert set(rows[0]) == {
        "device_id",
        "label",
        "model",
        "hardware_code",
        "purchase_code",
        "purchase_id",
    }


def test_download_to_a_file_and_into_a_directory(sim, envcli, tmp_path):
    row = sim.sessions()[0]
    target = tmp_path / "one.zip"
    result = envcli("download", row["id"], "-o", str(target), "--base-url", sim.base_url)
    assert result.out.strip() == str(target)
    assert target.read_bytes() == sim.zip_bytes(row["id"])

    folder = tmp_path / "downloads"
    folder.mkdir()
    result = envcli("download", row["id"], "-o", str(folder), "--base-url", sim.base_url)
    expected = folder / platform_name(row)
    assert result.out.strip() == str(expected)
    assert expected.read_bytes() == sim.zip_bytes(row["id"])
    assert [p.name for p in folder.iterdir()] == [expected.name]  # no .part left behind


def test_download_to_a_new_directory_named_with_a_trailing_slash(sim, envcli, tmp_path):
    row = sim.sessions()[0]
    target = str(tmp_path / "new") + os.sep
    envcli("download", row["id"], "-o", target, "--base-url", sim.base_url)
    assert (tmp_path / "new" / platform_name(row)).read_bytes() == sim.zip_bytes(row["id"])


def test_download_into_a_folder_that_cannot_be_made_is_one_line(sim, envcli, tmp_path):
    # A folder under a regular file cannot be created, even by root.
    (tmp_path / "plain-file").write_text("x")
    target = str(tmp_path / "plain-file" / "sub") + os.sep
    row = sim.sessions()[0]
    result = envcli("download", row["id"], "-o", target, "--base-url", sim.base_url, exit_code=73)
    (line,) = error_lines(result.err)
    assert f"cannot create {target.rstrip(os.sep)}" in line and "Traceback" not in result.err
    assert sim.stats()["requests"].get("authenticate", 0) == 0, "refused before any login"


def test_remove_is_refused_without_a_verified_local_copy(sim, envcli):
    sid = sim.sessions()[0]["id"]
    result = envcli("remove", sid, "--yes", "--base-url", sim.base_url, exit_code=2)
    (line,) = error_lines(result.err)
    assert f"refusing to remove session {sid}" in line and "--force" in line
    assert sim.deleted_ids() == set()


def test_remove_force_yes_removes_without_a_local_copy(sim, envcli):
    sid = sim.sessions()[0]["id"]
    result = envcli("remove", sid, "--force", "--yes", "--base-url", sim.base_url)
    assert f"removed remote session {sid}" in result.out
    assert sim.deleted_ids() == {sid}
    assert sid not in {r["id"] for r in sim.sessions()}


def test_remove_dry_run_removes_nothing(sim, envcli):
    sid = sim.sessions()[0]["id"]
    for argv in (
        ("remove", sid, "--force", "--yes", "--dry-run"),
        ("--dry-run", "remove", sid, "--force", "--yes"),
    ):
        result = envcli(*argv, "--base-url", sim.base_url)
        assert f"would remove remote session {sid}" in result.out
    assert sim.deleted_ids() == set()


def test_remove_dry_run_sends_no_delete_and_makes_the_passes_proofs(sim, envcli, home):
    url = ("--base-url", sim.base_url)
    envcli("run-once", *url)
    sid = sim.sessions()[0]["id"]
    before = len(sim.request_log())
    for argv in (("remove", sid, "--dry-run"), ("remove", sid, "--force", "--dry-run")):
        result = envcli(*argv, *url)
        assert f"dry run: would remove remote session {sid}" in result.out
    sent = sim.request_log()[before:]
    assert not [e for e in sent if e["method"] == "DELETE"], sent
    # The same proofs as a pass: the platform was asked for one byte of the archived version.
    assert [e for e in sent if e["endpoint"] == "download" and e["range"] == "bytes=0-0"]
    assert sim.deleted_ids() == set()
    db = sqlite3.connect(home.state / "e4sync" / "state.db")
    try:
        assert db.execute("select count(*) from deletions").fetchone() == (0,)
    finally:
        db.close()


def test_remove_of_a_verified_session_needs_yes_off_a_terminal(sim, envcli, monkeypatch):
    url = ("--base-url", sim.base_url)
    envcli("run-once", *url)
    sid = sim.sessions()[0]["id"]
    # A pipe that says "y" is still not a person at a terminal.
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    result = envcli("remove", sid, *url, exit_code=2)
    (line,) = error_lines(result.err)
    assert "--yes" in line
    assert sim.deleted_ids() == set()

    envcli("remove", sid, "--yes", *url)
    assert sim.deleted_ids() == {sid}


def test_remove_is_written_to_the_ledger_and_confirmed_by_the_next_pass(sim, envcli, home):
    import sqlite3

    url = ("--base-url", sim.base_url)
    envcli("run-once", *url)
    sid = sim.sessions()[0]["id"]
    envcli("remove", sid, "--yes", *url)
    envcli("run-once", *url)
    db = sqlite3.connect(home.state / "e4sync" / "state.db")
    try:
        ledger = db.execute("select remote_id, result from deletions").fetchall()
        state = db.execute("select state from sessions where remote_id = ?", (sid,)).fetchone()
    finally:
        db.close()
    assert ledger == [(sid, "confirmed")]
    assert state == ("remote_deleted",)


def test_a_forced_removal_without_a_proven_copy_is_not_counted_as_archived(sim, envcli, home):
    import sqlite3

    from e4sync.sources.e4connect.simulator import Faults

    url = ("--base-url", sim.base_url)
    sid = sim.sessions()[0]["id"]
    # The session is seen but its download fails: known to the database, never verified.
    sim.set_faults(Faults(missing_session=1.0))
    envcli("run-once", *url, exit_code=1)
    sim.set_faults(Faults())
    envcli("remove", sid, "--force", "--yes", *url)
    envcli("run-once", *url)
    db = sqlite3.connect(home.state / "e4sync" / "state.db")
    try:
        ledger = db.execute("select remote_id from deletions").fetchall()
        state = db.execute("select state from sessions where remote_id = ?", (sid,)).fetchone()
    finally:
        db.close()
    # No ledger entry claims it: it vanished without a local copy, which is remote_gone.
    assert ledger == [] and state == ("remote_gone",)


def test_remove_is_refused_when_the_local_copy_changed(sim, envcli, home):
    url = ("--base-url", sim.base_url)
    envcli("run-once", *url)
    victim = sorted(home.archive.rglob("*.zip"))[0]
    sid = json.loads(victim.with_suffix(".json").read_text())["session_id"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = envcli("remove", sid, "--yes", *url, exit_code=2)
    assert "has changed on disk" in result.err
    assert sim.deleted_ids() == set()


def test_remove_is_refused_when_the_platform_copy_changed_since_it_was_archived(sim, envcli, home):
    url = ("--base-url", sim.base_url)
    envcli("run-once", *url)
    sid = sim.sessions()[0]["id"]
    sim.change_content(sid)  # other bytes under the same metadata
    result = envcli("remove", sid, "--yes", *url, exit_code=2)
    assert f"refusing to remove session {sid}" in result.err
    assert "changed since it was archived" in result.err
    assert sim.deleted_ids() == set()
    db = sqlite3.connect(home.state / "e4sync" / "state.db")
    try:
        state = db.execute("select state from sessions where remote_id = ?", (sid,)).fetchone()
        ledger = db.execute("select count(*) from deletions").fetchone()
    finally:
        db.close()
    # Queued to be downloaded again by the next pass; no ledger entry was written.
    assert state == ("new",) and ledger == (0,)


def test_run_once_dry_run_prints_what_it_would_download(sim, envcli, home):
    result = envcli("run-once", "--dry-run", "--base-url", sim.base_url)
    plan = result.out.split("would download 5 (sizes not listed):\n")[1].split("  would delete")[0]
    assert {x.split()[0] for x in plan.splitlines()} == {r["id"] for r in sim.sessions()}
    assert "would delete: nothing" in result.out
    assert not list(home.archive.rglob("*.zip"))
    assert sim.stats()["requests"].get("download", 0) == 0


def test_run_dry_run_downloads_nothing(sim, setup, home):
    config = str(setup.write(sim.base_url))
    full = {k: v for k, v in os.environ.items() if k not in LEAKY}
    full.update(home.env)
    argv = [sys.executable, "-m", "e4sync", "run", "--dry-run", "--config", config]
    proc = subprocess.Popen(
        argv, env=full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=read_lines, args=(proc.stderr, lines), daemon=True).start()
        # The first pass starts at once; its first download or dry-run line is the event.
        while True:
            line = lines.get(timeout=30)
            assert line is not None, "the daemon exited early"
            if "would download" in line or "archived" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "dry run: would download session" in line
    assert not setup.archive.exists() or not list(setup.archive.rglob("*.zip"))
    assert sim.stats()["requests"].get("download", 0) == 0


# -- global options -------------------------------------------------------------------------


def test_global_options_before_and_after_the_command(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    first = run_cli("--config", config, "run-once")
    assert f"{len(sim.sessions())} downloaded" in first.out
    second = run_cli("run-once", "--config", config, "--json")
    assert json.loads(second.out)["accounts"][0]["downloaded"] == 0
    # A value after the command wins over one before it.
    status = run_cli(
        "--config", str(setup.dir / "absent.toml"), "status", "--json", "--config", config
    )
    assert json.loads(status.out)["accounts"][0]["counts"]["verified"] == len(sim.sessions())
    # A value before the command is kept when none follows it.
    missing = run_cli("--config", str(setup.dir / "absent.toml"), "status", exit_code=78)
    assert "absent.toml" in missing.err
    for argv in (("--account", "lab", "-q", "status"), ("status", "--account", "lab", "-q")):
        assert "lab (user" in run_cli(*argv, "--config", config).out
    run_cli("status", "--config", config, "--account", "nope", exit_code=2)


def test_python_m_e4sync_version(home):
    for argv in (("--version",), ("run-once", "--version")):
        result = sub(*argv, env=home.env)
        assert result.returncode == 0
        assert result.stdout.strip() == f"e4sync {__version__}"


def test_dry_run_is_refused_by_commands_that_cannot_honour_it(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    sid = sim.sessions()[0]["id"]
    for argv in (("--dry-run", "retry", "--all"), ("download", sid, "--dry-run")):
        result = run_cli(*argv, "--config", config, exit_code=2)
        assert "--dry-run is for run, run-once, remove" in result.err
    assert sim.stats()["requests"].get("download", 0) == 0


# -- bad input: one clear line, the right exit code, never a traceback ---------------------


@pytest.mark.parametrize(
    ("argv", "env", "code", "words"),
    [
        (("download", "12a4"), {"E4_PWD": PASSWORD}, 2, "session id must be a number"),
        (("retry", "x1"), {"E4_PWD": PASSWORD}, 2, "session id must be a number"),
        (
            ("whoami", "--base-url", "ftp://127.0.0.1/connect"),
            {"E4_PWD": PASSWORD},
            2,
            "http:// or https://",
        ),
        # A reserved name (RFC 2606) that never resolves: the refusal must come first.
        (
            ("whoami", "--base-url", "http://e4sync.invalid/connect"),
            {"E4_PWD": PASSWORD},
            2,
            "not loopback",
        ),
        (("whoami",), {}, 77, "no password found for account 'default'"),
        (("whoami",), {"E4_PWD": "Not-The-Password"}, 77, "refused the login"),
    ],
    ids=["id-letters", "retry-id", "ftp-url", "http-remote", "no-password", "wrong-password"],
)
def test_bad_input_is_one_line_on_stderr(sim, home, argv, env, code, words):
    if "--base-url" not in argv:
        argv = (*argv, "--base-url", sim.base_url)
    result = sub(*argv, env={**home.env, "E4_USER": USER, **env})
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith("e4sync: error: ") and words in line
    assert "Not-The-Password" not in result.stderr
    assert result.stdout == ""


def test_no_configuration_and_no_e4_user_exits_78(home):
    result = sub("run-once", env=home.env)
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    assert "E4_USER" in result.stderr and "config.toml" in result.stderr


# -- config check / show --------------------------------------------------------------------


def test_config_check_and_show_mask_secrets(setup, run_cli):
    secrets = ("op-token-8c1f", "db-pass-77aa", "ping-uuid-5e2d")
    config = str(
        write_config(
            setup.dir,
            archive=None,
            state={
                "dir": setup.state,
                "url": f"postgresql+psycopg://e4:{secrets[1]}@127.0.0.1:5432/e4sync",
            },
            download=None,
            monitor={"healthcheck_url": f"https://hc-ping.com/{secrets[2]}"},
            accounts=[("lab", "lab@example.org", None)],
            account_extra=f'password_command = "secret-tool lookup token {secrets[0]}"',
        )
    )
    check = run_cli("config", "check", "--config", config)
    assert check.out.strip() == f"{config}: ok, 1 account(s): lab"
    text = run_cli("config", "show", "--config", config).out
    shown = json.loads(run_cli("--config", config, "config", "show", "--json").out)
    for secret in secrets:
        assert secret not in text and secret not in json.dumps(shown)
    assert 'password_command = "***"' in text
    assert shown["account"][0]["password_command"] == "***"
    assert shown["state"]["url"] == "postgresql+psycopg://e4:***@127.0.0.1:5432/e4sync"
    assert shown["account"][0]["username"] == "lab@example.org"
    assert shown["download"]["concurrency"] == 4  # defaults are shown too


def test_config_typo_names_the_file_and_key_with_a_suggestion(setup, run_cli):
    # Nothing but the typo: no other section, no account.
    config = str(
        write_config(
            setup.dir,
            archive=None,
            state=None,
            download=None,
            accounts=(),
            extra="[download]\nconcurency = 8\n",
        )
    )
    for argv in (("config", "check"), ("config", "show"), ("config", "show", "--json")):
        result = run_cli(*argv, "--config", config, exit_code=78)
        assert result.out == ""
        assert f"{config}: [download] concurency: unknown key" in result.err
        assert "did you mean 'concurrency'?" in result.err
        assert "Traceback" not in result.err


# -- simulate and demo as programs ----------------------------------------------------------


def test_simulate_prints_its_address_answers_a_login_and_stops_on_sigterm(home):
    from e4sync.sources.e4connect.client import E4Connect

    full = {k: v for k, v in os.environ.items() if k not in LEAKY}
    full.update(home.env)
    argv = [
        "simulate",
        "--port",
        "0",
        "--sessions",
        "2",
        "--user",
        "u@example.org",
        "--password",
        "pw-42",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "e4sync", *argv],
        env=full,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=read_lines, args=(proc.stdout, lines), daemon=True).start()
        first = lines.get(timeout=30)
        assert first.startswith("E4 Connect simulator at http://127.0.0.1:")
        base_url = first.split()[-1]
        assert lines.get(timeout=10).strip() == "user: u@example.org password: pw-42"
        with E4Connect("u@example.org", "pw-42", base_url=base_url) as client:
            assert client.user_id().isdigit()
            assert len(client.sessions_list()) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "simulator stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_syncs_a_fresh_folder_and_shows_tree_and_status(home, tmp_path):
    folder = tmp_path / "demo"
    result = sub("demo", "--dir", str(folder), "--sessions", "3", env=home.env)
    assert result.returncode == 0, result.stderr
    zips = sorted((folder / "archive").rglob("*.zip"))
    assert len(zips) == 3
    for z in zips:
        sidecar = json.loads(z.with_suffix(".json").read_text())
        assert sidecar["size"] == z.stat().st_size
        assert z.name in result.stdout and z.with_suffix(".json").name in result.stdout
    assert "archive:" in result.stdout and "status:" in result.stdout
    assert "verified 3" in result.stdout
    assert not list(folder.rglob("*.part"))


def test_demo_takes_a_relative_folder_with_a_quote_in_its_name(home, tmp_path):
    # The configuration it writes is read relative to its own folder, and TOML-quoted.
    result = sub("demo", "--dir", 'rel "demo"', "--sessions", "2", env=home.env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / 'rel "demo"' / "archive").rglob("*.zip"))) == 2
    # A folder that holds something else is a usage error (2), not a failed pass (1).
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("keep me")
    result = sub("demo", "--dir", "busy", env=home.env, cwd=tmp_path)
    assert result.returncode == 2 and "is not empty" in result.stderr
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["thesis.tex"]


# -- status, retry, doctor ------------------------------------------------------------------


def test_status_and_retry_bring_a_failed_session_back(setup, run_cli):
    from e4sync.sources.e4connect.simulator import Simulator
    from e4sync.sources.e4connect.simulator.faults import Faults

    with Simulator(port=0, seed=2, sessions=2, faults=Faults(missing_session=1.0)) as sim:
        # `extra` lands inside setup's [download] table: one attempt, then 'failed'.
        config = str(setup.write(sim.base_url, extra="max_attempts = 1"))
        assert "no pass has run yet" in run_cli("status", "--config", config, exit_code=1).out
        run_cli("run-once", "--config", config, exit_code=1)
        first, second = (r["id"] for r in sim.sessions())
        status = run_cli("status", "--config", config, exit_code=1).out
        assert "lab (user " in status and "failed 2" in status
        assert f"session {first}: failed, 1 attempts, next after `e4sync retry`" in status

        sim.set_faults(Faults())
        run_cli("run-once", "--config", config)  # failed sessions wait for `retry`
        assert sim.stats()["requests"].get("download", 0) == 2
        # That pass went through, but sessions given up on keep the account unhealthy.
        status_json = run_cli("status", "--json", "--config", config, exit_code=1).out
        (account,) = json.loads(status_json)["accounts"]
        assert account["last_pass"]["ok"] and not account["healthy"]
        assert account["reasons"] == [
            "2 session(s) given up on after download.max_attempts: `e4sync retry` tries them again"
        ]
        status = run_cli("status", "--config", config, exit_code=1).out
        assert "lab (user " in status and ": NOT OK" in status
        assert "  why: 2 session(s) given up on" in status

        run_cli("retry", "--config", config, exit_code=2)
        run_cli("retry", first, "--all", "--config", config, exit_code=2)
        assert "1 session(s)" in run_cli("retry", first, "--config", config).out
        counts = json.loads(run_cli("status", "--json", "--config", config, exit_code=1).out)
        assert counts["accounts"][0]["counts"]["new"] == 1
        assert counts["accounts"][0]["counts"]["failed"] == 1

        run_cli("run-once", "--config", config)
        assert "1 session(s)" in run_cli("retry", "--all", "--config", config).out
        run_cli("run-once", "--config", config)
        status = run_cli("status", "--config", config).out
        assert "verified 2" in status and "failed 0" in status and ": ok" in status


def test_status_lists_no_worker_for_finished_run_once_passes(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    run_cli("run-once", "--config", config)
    run_cli("run-once", "--config", config)
    assert json.loads(run_cli("status", "--json", "--config", config).out)["workers"] == []
    assert "worker " not in run_cli("status", "--config", config).out


def test_doctor_all_ok(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    lines = run_cli("doctor", "--config", config).out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "[ok] archive root",
        "[ok] state directory",
        "[ok] state database",
        "[ok] account lab password",
        "[ok] account lab login",
    ]
    assert f"as user {sim.user_id()}" in lines[-1]


def test_doctor_fails_on_a_wrong_password(sim, setup, run_cli):
    config = str(setup.write(sim.base_url, accounts=[("lab", USER, "Wr0ng-Secret")]))
    result = run_cli("doctor", "--config", config, exit_code=1)
    assert "[FAIL] account lab login: " in result.out
    assert "Wr0ng-Secret" not in result.out + result.err
    checks = json.loads(run_cli("doctor", "--json", "--config", config, exit_code=1).out)
    assert [c["ok"] for c in checks["checks"]] == [True, True, True, True, False]


def test_doctor_fails_on_an_unwritable_archive_root(sim, setup, run_cli):
    # A path under a regular file cannot be created, even by root.
    blocker = setup.dir / "plain-file"
    blocker.write_text("not a folder")
    setup.archive = blocker / "archive"
    config = str(setup.write(sim.base_url))
    result = run_cli("doctor", "--config", config, exit_code=1)
    (line,) = [x for x in result.out.splitlines() if x.startswith("[FAIL]")]
    assert line == (
        f"[FAIL] archive root: the archive root {setup.archive} cannot be created: {blocker} "
        f"is a file, not a folder; move {blocker} away or point [archive] root at a folder "
        f"this user (uid {os.geteuid()}) can write"
    )
    assert not setup.archive.exists(), "doctor creates nothing"
