"""Secrets never leak: a distinctive password (and a password_command's token) is searched
for in every byte e4sync prints at ``-vv``, in every file it writes (sidecars, the SQLite
database and its -wal, the lock file), in ``config show`` (TOML and JSON), in ``doctor`` and in
the text of a failing login's exception. The platform's session cookies (taken from the
simulator, which issued them) must not reach a file or a log either: they live in memory.

Real processes and files throughout: `python -m e4sync` children, the simulator on
127.0.0.1, a real state folder.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from e4sync.errors import E4SyncError
from e4sync.sources.e4connect.client import E4Connect
from e4sync.sources.e4connect.simulator import Faults, Simulator
from tests.conftest import write_config, write_secret

USER = "lab@example.org"
SECRET = "Quokka-Zebra-7731/S3cr3t!"
TOKEN = "TOKEN-f00dfacecafe-4711"
# The password line is each test's own (account_extra).
ACCOUNTS = [("lab", USER, None)]


def forms(secret: str) -> list[bytes]:
    """The secret as it could appear: raw, URL-encoded (the login form), JSON-escaped,
    base64 (basic auth)."""
    return sorted(
        {
            secret.encode(),
            quote_plus(secret).encode(),
            quote(secret).encode(),
            json.dumps(secret)[1:-1].encode(),
            base64.b64encode(secret.encode()),
        }
    )


def assert_absent(secret: str, blob: bytes, where: str) -> None:
    for form in forms(secret):
        assert form not in blob, f"{form!r} found in {where}"


def scan_files(root: Path, secret: str, skip: tuple[Path, ...] = ()) -> int:
    """Search every file under ``root`` (but ``skip``); return how many were read."""
    count = 0
    for path in root.rglob("*"):
        if path.is_file() and path not in skip:
            assert_absent(secret, path.read_bytes(), str(path))
            count += 1
    return count


def env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("E4SYNC_", "E4_")) and k != "CREDENTIALS_DIRECTORY"
    }


def e4sync(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "e4sync", *argv], env=env(), capture_output=True, timeout=120
    )


def password_file(tmp_path: Path, secret: str = SECRET) -> Path:
    pw = tmp_path / "lab.password"
    write_secret(pw, secret)
    return pw


@pytest.fixture
def sim():
    with Simulator(
        port=0, seed=51, sessions=8, session_size=20_000, user=USER, password=SECRET
    ) as server:
        yield server


def kill_cookie_at_first_download(sim: Simulator) -> threading.Thread:
    """Another login kills the cookie once the downloads begin, so the debug log also
    shows a re-login (the sessions after the first four need one)."""

    def killer() -> None:
        if sim.wait_requests("download", 1, timeout=60):
            sim.expire_cookies()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


def test_a_debug_pass_and_its_files_never_show_the_password(tmp_path, sim):
    pw = password_file(tmp_path)
    config = write_config(
        tmp_path, sim.base_url, accounts=ACCOUNTS, account_extra=f'password_file = "{pw}"'
    )
    killer = kill_cookie_at_first_download(sim)
    run = e4sync("run-once", "-vv", "--config", str(config))
    killer.join(timeout=10)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    assert b"DEBUG" in run.stderr and b"logged in" in run.stderr, "not a debug log"
    assert sim.login_count(USER) >= 2, "no re-login happened: the test shows less than it could"
    assert_absent(SECRET, run.stdout + run.stderr, "run-once -vv output")
    files = scan_files(tmp_path / "archive", SECRET) + scan_files(tmp_path / "state", SECRET)
    assert files >= 2 * 8 + 1, "the archive and the state database were read"
    # The platform's cookies stay in memory: in no file, in no log line.
    cookies = sim.issued_cookies(USER)
    assert len(cookies) == sim.login_count(USER)
    for cookie in cookies:
        assert_absent(cookie, run.stdout + run.stderr, "run-once -vv output")
        scan_files(tmp_path, cookie)
    # Everything that prints the configuration or checks it.
    for argv in (
        ["config", "show"],
        ["config", "show", "--json"],
        ["config", "check"],
        ["doctor"],
        ["doctor", "--json"],
        ["status", "--json"],
        ["verify"],
    ):
        shown = e4sync(*argv, "-vv", "--config", str(config))
        assert shown.returncode == 0, (argv, shown.stderr.decode()[-2000:])
        assert_absent(SECRET, shown.stdout + shown.stderr, " ".join(argv))
        for cookie in sim.issued_cookies(USER):
            assert_absent(cookie, shown.stdout + shown.stderr, " ".join(argv))


def test_a_refused_login_never_shows_the_password_it_tried(tmp_path, sim):
    wrong = "Wombat-Wrong-9932/Pa$$!"
    pw = password_file(tmp_path, wrong)
    config = write_config(
        tmp_path, sim.base_url, accounts=ACCOUNTS, account_extra=f'password_file = "{pw}"'
    )
    run = e4sync("run-once", "-vv", "--config", str(config))
    assert run.returncode == 77
    assert b"wrong username or password" in run.stdout + run.stderr
    assert_absent(wrong, run.stdout + run.stderr, "run-once -vv output")
    doctor = e4sync("doctor", "-vv", "--config", str(config))
    assert doctor.returncode == 1
    assert_absent(wrong, doctor.stdout + doctor.stderr, "doctor output")
    scan_files(tmp_path, wrong, skip=(pw,))
    # The library: the exception, its repr, its whole traceback, and the client's repr.
    for password in (wrong, SECRET):
        client = E4Connect(USER, base_url=sim.base_url)
        if password == SECRET:  # right password, but the platform is down
            sim.set_faults(Faults(error_5xx=1.0))
        with pytest.raises(E4SyncError) as caught:
            client.auth(USER, password)
        text = "".join(traceback.format_exception(caught.value)) + repr(caught.value) + repr(client)
        assert_absent(password, text.encode(), "the exception of a failing login")
        client.close()


def test_a_password_command_token_never_shows(tmp_path, sim):
    script = tmp_path / "get-password"
    script.write_text(f'#!/bin/sh\n[ "$2" = "{TOKEN}" ] || exit 3\necho "{SECRET}"\n')
    script.chmod(0o700)
    config = write_config(
        tmp_path,
        sim.base_url,
        accounts=ACCOUNTS,
        account_extra=f'password_command = "{script} --token {TOKEN}"',
    )
    run = e4sync("run-once", "-vv", "--config", str(config))
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    output = run.stdout + run.stderr
    for argv in (
        ["config", "show"],
        ["config", "show", "--json"],
        ["doctor"],
        ["doctor", "--json"],
    ):
        shown = e4sync(*argv, "-vv", "--config", str(config))
        assert shown.returncode == 0, (argv, shown.stderr.decode()[-2000:])
        output += shown.stdout + shown.stderr
    for secret in (TOKEN, SECRET):
        assert_absent(secret, output, "output")
        scan_files(tmp_path / "archive", secret)
        scan_files(tmp_path / "state", secret)


def exact_password_file(tmp_path: Path, content: str) -> Path:
    """A 0600 password file holding exactly ``content`` (write_secret adds a newline)."""
    pw = tmp_path / "lab.password"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return pw


STRAY_WHITESPACE = [
    ("{}\n\n", "has trailing whitespace (1 character)"),  # a blank line after it
    (" {}\n", "has leading whitespace (1 character)"),
    ("\t{}  \r\n\n", "has leading whitespace (1 character) and trailing whitespace (4 characters)"),
]


@pytest.mark.parametrize("content, hint", STRAY_WHITESPACE)
def test_a_password_file_with_stray_whitespace_is_refused_with_a_hint(tmp_path, content, hint):
    with Simulator(port=0, seed=52, sessions=1) as demo:  # its password is "demo"
        pw = exact_password_file(tmp_path, content.format(demo.password))
        config = write_config(
            tmp_path, demo.base_url, accounts=ACCOUNTS, account_extra=f'password_file = "{pw}"'
        )
        config.write_text(config.read_text().replace(USER, demo.user))
        for argv in (["run-once"], ["whoami"]):
            run = e4sync(*argv, "--config", str(config))
            err = run.stderr.decode()
            assert run.returncode == 77, err
            (line,) = [x for x in err.splitlines() if "wrong username or password" in x][-1:]
            assert f"the password from {pw} {hint}; check the file" in line, line
        # The same file without the stray whitespace logs in.
        exact_password_file(tmp_path, demo.password + "\n")
        assert e4sync("whoami", "--config", str(config)).returncode == 0


@pytest.mark.parametrize("content, hint", STRAY_WHITESPACE)
def test_the_whitespace_hint_never_shows_the_password(tmp_path, sim, content, hint):
    pw = exact_password_file(tmp_path, content.format(SECRET))
    config = write_config(
        tmp_path, sim.base_url, accounts=ACCOUNTS, account_extra=f'password_file = "{pw}"'
    )
    output = b""
    for argv in (["run-once", "-vv"], ["whoami", "-vv"], ["doctor"]):
        run = e4sync(*argv, "--config", str(config))
        assert run.returncode == (1 if argv == ["doctor"] else 77), run.stderr.decode()
        output += run.stdout + run.stderr
    assert hint.encode() in output
    assert_absent(SECRET, output, "the output of a refused login")
    for start in range(len(SECRET) - 5):  # nor any part of it
        assert SECRET[start : start + 6].encode() not in output, SECRET[start : start + 6]
    scan_files(tmp_path, SECRET, skip=(pw,))


def test_a_wrong_password_without_stray_whitespace_gets_no_such_hint(tmp_path, sim):
    pw = exact_password_file(tmp_path, "not the password\n")
    config = write_config(
        tmp_path, sim.base_url, accounts=ACCOUNTS, account_extra=f'password_file = "{pw}"'
    )
    run = e4sync("whoami", "--config", str(config))
    assert run.returncode == 77
    assert b"wrong username or password" in run.stderr and b"whitespace" not in run.stderr
