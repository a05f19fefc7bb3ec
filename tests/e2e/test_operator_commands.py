"""What an operator's commands promise (issue 14, items 1, 6 and 10), against the real
simulator on 127.0.0.1: `status` exits 1 while an account is NOT OK and says why; `download`
never overwrites a file and never writes inside the archive; `accounts import` refuses a
login given twice and never replaces a password file; `retry ID` says when it knows no such
session; `demo --keep` keeps its simulator up for the commands it prints; sizes for people."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from e4sync.units import human_size
from tests.conftest import archived, e4sync_cmd


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in folder.rglob("*") if p.is_file()}


# -- item 1: status for cron and Nagios ------------------------------------------------------


def test_status_exit_code_follows_health_and_not_ok_says_why(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    before = run_cli("status", "--config", config, exit_code=1)
    assert "lab (user ?): NOT OK\n  why: no pass has run yet for this account" in before.out
    assert not setup.state.exists(), "status creates no state database"
    run_cli("run-once", "--config", config)
    ok = run_cli("status", "--config", config)
    assert ": ok\n" in ok.out and "why:" not in ok.out
    assert re.search(r"^  archive: \d+(\.\d)? (B|kB|MB|GB)$", ok.out, re.MULTILINE), ok.out
    assert (
        json.loads(run_cli("status", "--json", "--config", config).out)["accounts"][0]["reasons"]
        == []
    )
    # Damage found by verify: NOT OK (1) until repaired, in text and JSON.
    victim = sorted(archived(setup.archive).values())[0]
    victim.unlink()
    run_cli("verify", "--config", config, exit_code=1)
    text = run_cli("status", "--config", config, exit_code=1).out
    assert "why: 1 archived copy missing or damaged (see docs/recovery.md)" in text
    (lab,) = json.loads(run_cli("status", "--json", "--config", config, exit_code=1).out)[
        "accounts"
    ]
    assert lab["healthy"] is False and lab["local_problems"][0]["problem"] == f"missing: {victim}"
    run_cli("run-once", "--config", config)  # downloaded again
    run_cli("status", "--config", config)
    # As a separate process, as cron runs it.
    assert e4sync_cmd("status", "--config", config).returncode == 0


def test_human_sizes():
    assert [human_size(n) for n in (None, 0, 999, 1000, 2_900_000, 15_000_000_000)] == [
        "size unknown",
        "0 B",
        "999 B",
        "1.0 kB",
        "2.9 MB",
        "15 GB",
    ]
    assert human_size(999_999) == "1.0 MB" and human_size(120 * 10**12) == "120 TB"


# -- item 6: download never overwrites ---------------------------------------------------------


def test_download_never_overwrites_and_never_writes_inside_the_archive(
    sim, setup, run_cli, tmp_path
):
    config = str(setup.write(sim.base_url))
    run_cli("run-once", "--config", config)
    zips = archived(setup.archive)
    sid, other = sorted(zips)[:2]
    before = tree(setup.archive)
    logins = sim.login_count()
    # Another session's only copy, as docs/recovery.md once suggested: refused, with or
    # without --force, and before any login; so is a link that leads into the archive.
    link = tmp_path / "into-archive.zip"
    link.symlink_to(zips[other])
    for target in (zips[other], link, setup.archive / "new-file.zip", setup.archive):
        for force in ((), ("--force",)):
            result = run_cli("download", sid, "-o", str(target), *force, "--config", config,
                             exit_code=73)  # fmt: skip
            (line,) = [x for x in result.err.splitlines() if x.startswith("e4sync:")]
            assert "is inside the archive root" in line and "Traceback" not in result.err
    assert tree(setup.archive) == before and sim.login_count() == logins

    # Outside the archive: a new file is written; an existing one is kept, unless --force.
    out = tmp_path / "out"
    out.mkdir()
    first = run_cli("download", sid, "-o", str(out / "copy.zip"), "--config", config)
    assert first.out.strip() == str(out / "copy.zip")
    assert (out / "copy.zip").read_bytes() == sim.zip_bytes(sid)
    (out / "mine.zip").write_bytes(b"my own file")
    refused = run_cli("download", sid, "-o", str(out / "mine.zip"), "--config", config,
                      exit_code=73)  # fmt: skip
    assert f"refusing to overwrite {out / 'mine.zip'}: it exists" in refused.err
    assert "--force" in refused.err and (out / "mine.zip").read_bytes() == b"my own file"
    run_cli("download", sid, "-o", str(out / "mine.zip"), "--force", "--config", config)
    assert (out / "mine.zip").read_bytes() == sim.zip_bytes(sid)
    # Into a folder, under the platform's name: the second time the name is taken.
    folder = tmp_path / "folder"
    named = Path(run_cli("download", sid, "-o", f"{folder}/", "--config", config).out.strip())
    assert named.parent == folder and named.read_bytes() == sim.zip_bytes(sid)
    named.write_bytes(b"edited since")
    again = run_cli("download", sid, "-o", f"{folder}/", "--config", config, exit_code=73)
    assert f"refusing to overwrite {named}" in again.err and named.read_bytes() == b"edited since"
    # Nothing half-done is left: no temporary folder, no .part.
    assert sorted(p.name for p in folder.iterdir()) == [named.name]
    assert sorted(p.name for p in out.iterdir()) == ["copy.zip", "mine.zip"]
    assert tree(setup.archive) == before


# -- item 10: the smaller things ---------------------------------------------------------------


def test_accounts_import_refuses_a_login_given_twice_and_never_replaces_a_password(
    run_cli, tmp_path
):
    users = tmp_path / "users.txt"
    users.write_text("a@example.org:first\nb@example.org:second\nA@example.org:third\n")
    out = tmp_path / "pw"
    result = run_cli("accounts", "import", str(users), "--out", str(out), exit_code=78)
    assert "line 3: the login 'A@example.org' is already on line 1; keep one of them" in (
        result.err
    )
    assert not out.exists(), "nothing written"
    users.write_text("a@example.org:first\nb@example.org:second\n")
    run_cli("accounts", "import", str(users), "--out", str(out))
    assert (out / "a.password").read_text() == "first\n"
    users.write_text("a@example.org:changed\nc@example.org:new\n")
    result = run_cli("accounts", "import", str(users), "--out", str(out), exit_code=73)
    (line,) = [x for x in result.err.splitlines() if x.startswith("e4sync:")]
    assert f"refusing to overwrite the password file {out / 'a.password'}" in line
    assert (out / "a.password").read_text() == "first\n"
    assert not (out / "c.password").exists(), "every file is checked before any is written"


def test_retry_of_an_unknown_id_says_so(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    run_cli("run-once", "--config", config)
    result = run_cli("retry", "123", "--config", config, exit_code=2)
    assert result.err.strip() == (
        "e4sync: error: retry 123: the state database knows no session 123 of any account "
        "(`e4sync sessions` lists the platform's; `e4sync status` the failed ones)"
    )
    known = sim.sessions()[0]["id"]
    done = run_cli("retry", known, "--config", config)
    assert done.out.strip() == f"session {known} is verified: nothing to retry"
    run_cli("retry", "123", "--account", "lab", "--config", config, exit_code=2)


@pytest.mark.timeout(120)
def test_demo_keep_keeps_its_simulator_until_ctrl_c(tmp_path):
    folder = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E4SYNC_", "E4_"))}
    demo = subprocess.Popen(
        [sys.executable, "-m", "e4sync", "demo", "--dir", str(folder), "--sessions", "2",
         "--keep"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        said = []
        for line in demo.stdout:
            said.append(line)
            if line.startswith("  e4sync --config") and line.rstrip().endswith(" run-once"):
                break
        text = "".join(said)
        assert "The simulator keeps running until Ctrl-C" in text, text
        # The commands it prints talk to the simulator, which is still there.
        commands = [line.split(None, 3)[1:] for line in said if line.startswith("  e4sync ")]
        commands = [[w.strip() for w in c] for c in commands]
        assert [c[2] for c in commands][:3] == ["status", "sessions", "check"]
        config = str(folder / "config.toml")
        sessions = e4sync_cmd("--config", config, "sessions", env=env)
        assert sessions.returncode == 0, sessions.stderr
        assert len(sessions.stdout.splitlines()) == 3  # a header and two sessions
        assert e4sync_cmd("--config", config, "check", env=env).returncode == 0
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
        assert "simulator stopped" in demo.stdout.read()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    # Stopped: the same command now finds no platform (temporary, 75).
    assert e4sync_cmd("--config", config, "sessions", env=env).returncode == 75
