"""e4sync.alerts and its [notify] keys: what changed since a channel was told, the hook's
environment, the scrub's damage told once, and the keys as the loader and `config show`
take them."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from e4sync import alerts
from e4sync.config import effective_config, load_config, render_toml
from e4sync.errors import ConfigError

ACCOUNT = '[[account]]\nname = "lab"\nusername = "u@x"\npassword_env = "LAB_PW"\n'


def config(tmp_path: Path, notify: str):
    path = tmp_path / "config.toml"
    path.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n[notify]\n{notify}\n{ACCOUNT}')
    return load_config(path, env={})


def kinds(events: list[alerts.Event]) -> list[tuple[str, str]]:
    return [(e.account, e.kind) for e in events]


def test_changes_tell_each_change_once() -> None:
    ok = {"failed": 0, "damaged": 0, "deletion_cap": 0}
    assert alerts.changes({}, {"lab": ok}) == []  # a first good pass is no news
    failing = {"lab": {**ok, "failed": 77}}
    assert kinds(alerts.changes({}, failing)) == [("lab", "failed")]
    assert alerts.changes(failing, failing) == []
    other = {"lab": {**ok, "failed": 75}}
    assert kinds(alerts.changes(failing, other)) == [("lab", "failed")]  # another failure
    assert kinds(alerts.changes(other, {"lab": ok})) == [("lab", "recovered")]
    damaged = {"lab": {**ok, "damaged": 2}}
    assert kinds(alerts.changes({}, damaged)) == [("lab", "damaged")]
    assert alerts.changes(damaged, {"lab": {**ok, "damaged": 1}}) == []  # fewer: no alarm
    assert kinds(alerts.changes(damaged, {"lab": {**ok, "damaged": 3}})) == [("lab", "damaged")]
    both = {"lab": {**ok, "failed": 1, "damaged": 2}}
    assert kinds(alerts.changes(both, damaged)) == [("lab", "cleared")]
    assert [e.bad for e in alerts.changes({}, both)] == [True, True]
    cap = alerts.changes({}, {"lab": {**ok, "deletion_cap": 1}}, cap=7)
    assert kinds(cap) == [("lab", "deletion_cap")] and "cap of 7 per pass" in cap[0].text
    (whole,) = alerts.changes({}, {"": {"failed": 65}})
    assert whole.text.startswith("the pass failed (exit 65: the state database is damaged")


def test_the_hook_environment_holds_no_secret(tmp_path: Path) -> None:
    cfg = config(tmp_path, "")
    env = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "LANG": "C.UTF-8",
        "LAB_PW": "the account's variable",
        "E4_PWD": "x",
        "E4SYNC_PASSWORD": "x",
        "E4SYNC_STATE__URL": "postgresql://u:pw@db/x",
        "MY_SECRET": "x",
        "client_secret_id": "x",
        "DB_PASSWORD": "x",
        "GITHUB_TOKEN": "x",
        "AWS_PROFILE": "x",
        "CREDENTIALS_DIRECTORY": "/run/credentials/e4sync.service",
    }
    assert alerts.hook_environment(cfg, env) == {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "LANG": "C.UTF-8",
    }


HOOK = "import sys, pathlib; p = pathlib.Path(sys.argv[1]); p.write_text(p.read_text() + sys.stdin.read() + '\\n---\\n') if p.exists() else p.write_text(sys.stdin.read() + '\\n---\\n')"  # noqa: E501


def status(damaged: int) -> dict:
    problems = [
        {"session": str(i), "state": "verified", "problem": "missing"} for i in range(damaged)
    ]
    return {
        "accounts": [{"name": "lab", "local_problems_total": damaged, "local_problems": problems}]
    }


def test_the_scrub_tells_damage_once_and_the_hook_reads_it(tmp_path: Path) -> None:
    out = tmp_path / "hook.txt"
    command = shlex.join([sys.executable, "-c", HOOK, str(out)])
    cfg = config(tmp_path, f"on_error = {json.dumps(command)}")
    alerts.after_scrub(cfg, status(2))
    alerts.after_scrub(cfg, status(2))
    runs = [json.loads(chunk) for chunk in out.read_text().split("\n---\n") if chunk.strip()]
    assert len(runs) == 1
    (event,) = runs[0]["events"]
    assert event["kind"] == "damaged" and "2 archived copies missing or damaged" in event["text"]
    assert runs[0]["pass"] is None
    alerts.after_scrub(cfg, status(0))  # whole again: remembered, not run
    alerts.after_scrub(cfg, status(1))
    runs = [json.loads(chunk) for chunk in out.read_text().split("\n---\n") if chunk.strip()]
    assert len(runs) == 2


def test_notify_keys_load_mask_and_refuse_bad_values(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        'urls = ["mailtos://me:app-pw@example.org", "ntfy://tok3n@ntfy.sh/lab"]\n'
        'on_error = "notify-send --token s3cret"\nhook_timeout = "30s"',
    )
    assert cfg.notify.urls == ("mailtos://me:app-pw@example.org", "ntfy://tok3n@ntfy.sh/lab")
    assert cfg.notify.hook_timeout == 30.0
    shown = render_toml(effective_config(cfg))
    assert 'urls = ["mailtos://***", "ntfy://***"]' in shown
    assert 'on_error = "***"' in shown
    for secret in ("app-pw", "tok3n", "s3cret"):
        assert secret not in shown and secret not in repr(cfg)
    default = config(tmp_path, "")
    assert default.notify.urls == () and default.notify.on_error is None
    assert not alerts.wanted(default)
    for bad, words in (
        ('urls = "json://x"', "expected a list of URLs"),
        ("urls = [1]", "entry 1: expected a string"),
        ('urls = ["no scheme"]', "entry 1 is not a URL"),
        ('hook_timeout = "0s"', "must be at least 1s"),
    ):
        with pytest.raises(ConfigError) as raised:
            config(tmp_path, bad)
        assert words in str(raised.value)
    config(tmp_path, "")
    path = tmp_path / "config.toml"
    env = {"E4SYNC_NOTIFY__URLS": "json://127.0.0.1:1/a  ntfy://t"}
    assert load_config(path, env=env).notify.urls == ("json://127.0.0.1:1/a", "ntfy://t")


def test_problems_are_found_before_a_notification_is_due(tmp_path: Path) -> None:
    pytest.importorskip("apprise")
    cfg = config(
        tmp_path,
        'urls = ["json://127.0.0.1:1/x", "nope://user:Pa55word@x"]\n'
        'on_error = "/nonexistent/e4sync-hook --flag"',
    )
    assert alerts.problems(cfg) == [
        "[notify] urls: Apprise cannot read this nope:// URL",
        "[notify] on_error: /nonexistent/e4sync-hook is not an executable on PATH",
    ]
    assert alerts.problems(config(tmp_path, 'urls = ["json://127.0.0.1:1/x"]')) == []
