"""[notify]: Apprise notifications to a loopback HTTP receiver (a ``json://`` URL) and the
on_error command hook, against the simulator. Each change is told once: a failing pass,
the same failure again (nothing), the recovery; damage found; the deletion cap reached.
The hook gets the summary as JSON on stdin and no secret in its environment."""

from __future__ import annotations

import http.server
import json
import shlex
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REMOTE_DELETE, archived, write_config
from tests.e2e.terminal import clean_env

pytest.importorskip("apprise")

USER = "demo@example.org"


class Receiver:
    """A loopback HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/e4sync"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def notify_toml(**keys: object) -> str:
    lines = ["[notify]"]
    for key, value in keys.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def test_one_notification_on_failure_none_for_the_same_failure_one_on_recovery(
    sim, tmp_path, run_cli, receiver
):
    extra = notify_toml(urls=[receiver.url])
    bad = write_config(tmp_path, sim.base_url, accounts=[("lab", USER, "wrong")], extra="")
    bad.write_text(bad.read_text() + extra)
    run_cli("run-once", "--config", str(bad), exit_code=77)
    assert len(receiver.bodies) == 1, receiver.bodies
    (first,) = receiver.bodies
    assert first["type"] == "failure"
    assert "failing (lab)" in first["title"]
    assert "lab: passes fail (exit 77: " in first["message"] and "refused" in first["message"]

    run_cli("run-once", "--config", str(bad), exit_code=77)
    run_cli("run-once", "-q", "--config", str(bad), exit_code=77)
    assert len(receiver.bodies) == 1, "the same failure is told once"

    good = write_config(tmp_path, sim.base_url)
    good.write_text(good.read_text() + extra)
    run_cli("run-once", "--config", str(good))
    assert len(receiver.bodies) == 2
    recovered = receiver.bodies[1]
    assert recovered["type"] == "success" and "recovered" in recovered["title"]
    assert "lab: recovered" in recovered["message"]
    run_cli("run-once", "--config", str(good))
    assert len(receiver.bodies) == 2, "a good pass after a good pass is no news"
    memo = json.loads((tmp_path / "state" / "notify-state.json").read_text())
    assert memo["told"]["apprise"]["lab"] == {"failed": 0, "damaged": 0, "deletion_cap": 0}
    assert oct((tmp_path / "state" / "notify-state.json").stat().st_mode & 0o777) == "0o600"


def test_a_receiver_that_is_down_hears_the_change_at_the_next_pass(sim, tmp_path, run_cli):
    down = Receiver()
    url = down.url
    down.close()  # nothing listens there now
    config = write_config(tmp_path, sim.base_url, accounts=[("lab", USER, "wrong")])
    config.write_text(config.read_text() + notify_toml(urls=[url]))
    run_cli("run-once", "--config", str(config), exit_code=77)  # the notification fails
    memo = json.loads((tmp_path / "state" / "notify-state.json").read_text())
    assert memo["told"].get("apprise", {}) == {}, "not told: it did not arrive"


def test_damage_found_is_told_once(sim, tmp_path, run_cli, receiver):
    from e4sync.sources.e4connect.client import E4Connect

    config = write_config(tmp_path, sim.base_url)
    config.write_text(config.read_text() + notify_toml(urls=[receiver.url]))
    run_cli("run-once", "--config", str(config))
    assert receiver.bodies == [], "a first good pass is no news"
    # A session the platform no longer holds loses its only copy: damage nobody can undo.
    sid, path = sorted(archived(tmp_path / "archive").items())[0]
    with E4Connect(USER, "demo", base_url=sim.base_url) as client:
        client.remove_session(sid)
    path.unlink()
    run_cli("run-once", "--config", str(config), exit_code=None)
    assert len(receiver.bodies) == 1, receiver.bodies
    (told,) = receiver.bodies
    assert told["type"] == "failure" and "damage found (lab)" in told["title"]
    assert "lab: 1 archived copy missing or damaged" in told["message"]
    assert sid in told["message"]
    run_cli("run-once", "--config", str(config), exit_code=None)
    assert len(receiver.bodies) == 1


def test_the_deletion_cap_is_told_once(sim, tmp_path, run_cli, receiver):
    config = write_config(
        tmp_path, sim.base_url, remote={**REMOTE_DELETE, "max_deletes_per_pass": 1}
    )
    config.write_text(config.read_text() + notify_toml(urls=[receiver.url]))
    run_cli("run-once", "--config", str(config))
    assert len(receiver.bodies) == 1, receiver.bodies
    (told,) = receiver.bodies
    assert told["type"] == "warning" and "deletion cap reached (lab)" in told["title"]
    assert "cap of 1 per pass" in told["message"]
    run_cli("run-once", "--config", str(config))
    assert len(receiver.bodies) == 1


HOOK = """\
import json, os, sys
out = sys.argv[1]
n = len([p for p in os.listdir(out) if p.endswith(".stdin")])
with open(os.path.join(out, f"{n}.stdin"), "w") as f:
    f.write(sys.stdin.read())
with open(os.path.join(out, f"{n}.env"), "w") as f:
    json.dump(dict(os.environ), f)
"""

SECRETS = {
    "LAB_PW": "lab-password-in-the-environment",  # the account's password_env
    "E4_PWD": "e4-pwd-value",
    "MY_API_SECRET_KEY": "api-secret-value",
    "DB_PASSWORD": "db-password-value",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
    "E4SYNC_STATE__LEASE": "5m",
}


def test_the_hook_gets_the_summary_on_stdin_and_no_secret(sim, tmp_path):
    out = tmp_path / "hook-out"
    out.mkdir()
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    command = shlex.join([sys.executable, str(script), str(out)])
    config = write_config(
        tmp_path,
        sim.base_url,
        accounts=[("lab", USER, None)],
        account_extra='password_env = "LAB_PW"\n',
    )
    config.write_text(config.read_text() + notify_toml(on_error=command, hook_timeout="20s"))
    env = clean_env({**SECRETS, "LAB_PW": "Wr0ng-Pw-1234", "HOOK_SEES_THIS": "yes"})

    def run_once() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "e4sync", "run-once", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert run_once().returncode == 77
    (stdin,) = sorted(out.glob("*.stdin"))
    summary = json.loads(stdin.read_text())
    assert summary["schema"] == 1
    (event,) = summary["events"]
    assert event["account"] == "lab" and event["kind"] == "failed" and event["exit_code"] == 77
    assert summary["pass"]["exit_code"] == 77
    (account,) = summary["pass"]["accounts"]
    assert account["name"] == "lab" and account["errors"]
    seen = json.loads(stdin.with_suffix(".env").read_text())
    assert seen["HOOK_SEES_THIS"] == "yes" and "PATH" in seen
    for name in SECRETS:
        assert name not in seen, name
    blob = json.dumps(seen) + stdin.read_text()
    for value in (*SECRETS.values(), "Wr0ng-Pw-1234"):
        if value != "5m":
            assert value not in blob, value

    assert run_once().returncode == 77
    assert len(list(out.glob("*.stdin"))) == 1, "the same failure runs the hook once"


def test_a_hook_that_hangs_is_killed_at_its_timeout(sim, tmp_path):
    marker = tmp_path / "started"
    hang = f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"
    command = shlex.join([sys.executable, "-c", hang])
    config = write_config(tmp_path, sim.base_url, accounts=[("lab", USER, "wrong")])
    config.write_text(config.read_text() + notify_toml(on_error=command, hook_timeout="2s"))
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "e4sync", "run-once", "--config", str(config)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 77
    assert marker.exists()
    assert time.monotonic() - started < 30
    assert "killed after 2 s" in run.stderr, run.stderr
    memo = json.loads((tmp_path / "state" / "notify-state.json").read_text())
    assert "lab" not in memo["told"].get("hook", {}), "killed: tried again at the next pass"


def test_a_url_apprise_cannot_read_is_named_by_its_scheme_only(sim, tmp_path, receiver):
    secret = "Sup3rS3cretPw"
    config = write_config(tmp_path, sim.base_url, accounts=[("lab", USER, "wrong")])
    config.write_text(
        config.read_text() + notify_toml(urls=[f"nope://me:{secret}@x", receiver.url])
    )
    run = subprocess.run(
        [sys.executable, "-m", "e4sync", "run-once", "--config", str(config)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 77
    assert "Apprise does not know nope:// URLs" in run.stderr, run.stderr
    for form in (secret, secret[0] + "..." + secret[-1]):
        assert form not in run.stderr + run.stdout
    assert len(receiver.bodies) == 1  # the other URL was told
