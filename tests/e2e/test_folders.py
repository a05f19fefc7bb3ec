"""Unusable folders are clear errors found before any login (issue 14, item 5): a state folder
or database path that is a file or a folder, a state folder on a read-only filesystem, an
archive root that is a file: one line naming the path and the fix, exit 73 (EX_CANTCREAT),
no traceback, no request to the platform; a pass that cannot archive is recorded as failed;
`config check` and `doctor` find them, and a password file that is missing or unsafe. The
real simulator on 127.0.0.1, real folders, a real read-only tmpfs (as root)."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import write_config
from tests.e2e.test_storage_faults import remount, tmpfs  # noqa: F401 (the fixture)

COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("run-once",),
    ("run-once", "--dry-run"),
    ("verify",),
    ("retry", "--all"),
    ("reindex",),
    ("db", "upgrade"),
    ("check",),
    ("run",),
]


def one_error_line(result) -> str:
    assert "Traceback" not in result.err, result.err
    lines = [x for x in result.err.splitlines() if x.startswith("e4sync:")]
    assert len(lines) == 1, result.err
    return lines[0]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_a_state_folder_that_is_a_file_is_one_line_and_73_before_any_login(
    argv, sim, setup, run_cli
):
    config = setup.write(sim.base_url)
    setup.state.write_text("not a folder\n")
    result = run_cli(*argv, "--config", str(config), exit_code=73)
    line = one_error_line(result)
    assert line == (
        f"e4sync: error: the state folder {setup.state} is a file, not a folder; move it away "
        f"(mv {setup.state} {setup.state}.old) or point [state] dir at a folder this user "
        f"(uid {os.geteuid()}) can write"
    )
    assert sim.login_count() == 0
    assert setup.state.read_text() == "not a folder\n"


def test_a_database_path_that_is_a_folder_is_73(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    (setup.state / "state.db").mkdir(parents=True)
    for argv in (("run-once",), ("status",), ("verify",)):
        line = one_error_line(run_cli(*argv, "--config", str(config), exit_code=73))
        assert f"the state database {setup.state / 'state.db'} is a folder" in line
    assert sim.login_count() == 0
    problems = run_cli("config", "check", "--config", str(config), exit_code=73)
    assert f"the state database {setup.state / 'state.db'} is a folder" in problems.err


def test_a_read_only_state_folder_stops_a_pass_and_status_before_login(
    tmp_path,
    tmpfs,  # noqa: F811
    sim,
    run_cli,
):
    # The tmpfs is the state folder here (the fixture mounts it at tmp_path/archive).
    config = write_config(tmp_path, sim.base_url, archive={"root": tmp_path / "arch"},
                          state={"dir": tmpfs})  # fmt: skip
    run_cli("run-once", "--config", str(config))
    logins = sim.login_count()
    remount(tmpfs, "ro")
    try:
        line = one_error_line(run_cli("run-once", "--config", str(config), exit_code=73))
        assert f"the state folder {tmpfs} cannot be written (read-only file system (EROFS))" in (
            line
        )
        assert "remount it read-write, or point [state] dir at a folder" in line
        assert sim.login_count() == logins
        # status too: SQLite cannot read a WAL database in a folder where it can make
        # nothing, and says so in the same line, not "unable to open database file".
        assert one_error_line(run_cli("status", "--config", str(config), exit_code=73)) == line
        doctor = run_cli("doctor", "--config", str(config), exit_code=1).out
        assert f"[FAIL] state directory: the state folder {tmpfs} cannot be written" in doctor
    finally:
        remount(tmpfs, "rw")


def test_an_archive_root_that_is_a_file_is_a_failed_pass_that_status_explains(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    run_cli("run-once", "--config", str(config))
    logins = sim.login_count()
    setup.archive.rename(setup.dir / "archive.real")
    setup.archive.write_text("a file where the archive was\n")
    line = one_error_line(run_cli("run-once", "--config", str(config), exit_code=73))
    assert f"the archive root {setup.archive} is a file, not a folder; move it away" in line
    assert sim.login_count() == logins, "found before any login"
    # Recorded as a failed pass, so `status` (exit 1) and its JSON say why.
    status = run_cli("status", "--config", str(config), exit_code=1).out
    assert f"why: the last pass failed: the archive root {setup.archive} is a file" in status
    (lab,) = json.loads(run_cli("status", "--json", "--config", str(config), exit_code=1).out)[
        "accounts"
    ]
    assert lab["healthy"] is False and "is a file, not a folder" in lab["reasons"][0]
    # The daemon will not start on it either (before its first login).
    one_error_line(run_cli("run", "--config", str(config), exit_code=73))
    assert sim.login_count() == logins
    # config check and doctor find it.
    check = run_cli("config", "check", "--config", str(config), exit_code=73)
    assert f"e4sync: the archive root {setup.archive} is a file, not a folder" in check.err
    doctor = run_cli("doctor", "--config", str(config), exit_code=1).out
    assert f"[FAIL] archive root: the archive root {setup.archive} is a file" in doctor
    # Put right, the next pass is ok again.
    setup.archive.unlink()
    (setup.dir / "archive.real").rename(setup.archive)
    run_cli("run-once", "--config", str(config))
    assert ": ok" in run_cli("status", "--config", str(config)).out


def test_config_check_and_doctor_find_a_missing_or_unsafe_password_file(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    assert ": ok, 1 account(s): lab" in run_cli("config", "check", "--config", str(config)).out
    password = setup.dir / "lab.password"
    password.rename(setup.dir / "elsewhere")
    check = run_cli("config", "check", "--config", str(config), exit_code=78)
    assert check.err.splitlines() == [
        f"e4sync: {config} reads, but 1 problem(s) would stop e4sync:",
        f"e4sync: account lab: {password}: the password file does not exist (password_file)",
    ]
    doctor = run_cli("doctor", "--config", str(config), exit_code=1).out
    assert f"[FAIL] account lab password: {password}: the password file does not exist" in doctor
    assert sim.login_count() == 0, "neither logs in without a password"
    (setup.dir / "elsewhere").rename(password)
    password.chmod(0o644)
    check = run_cli("config", "check", "--config", str(config), exit_code=78)
    assert "can be read by others (mode 0644); run: chmod 600" in check.err
    password.chmod(0o600)
    password.write_text("")
    check = run_cli("config", "check", "--config", str(config), exit_code=78)
    assert f"{password}: the password file is empty" in check.err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes whatever the modes say")
def test_unreadable_password_file_and_unwritable_folders_as_a_user(sim, setup, run_cli):
    config = setup.write(sim.base_url)
    (setup.dir / "lab.password").chmod(0o000)
    check = run_cli("config", "check", "--config", str(config), exit_code=78)
    assert "cannot open the password file: Permission denied" in check.err
    (setup.dir / "lab.password").chmod(0o600)
    setup.state.mkdir()
    setup.state.chmod(0o500)
    try:
        line = one_error_line(run_cli("run-once", "--config", str(config), exit_code=73))
        assert f"the state folder {setup.state} cannot be written (permission denied" in line
    finally:
        setup.state.chmod(0o700)
