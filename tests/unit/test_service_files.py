"""Tests for the service files: the systemd units pass `.ci/lint-units` (systemd-analyze
verify with no output at all, and a security rating of 2.0 or lower), carry the settings
the project relies on, and the launchd plists parse with plistlib and have the keys and
types launchd expects (plutil exists only on macOS)."""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = REPO / ".ci" / "lint-units"
SYSTEMD = REPO / "systemd"
LAUNCHD = REPO / "launchd"

# Keys that differ by design between the daemon and the one-shot service; every other
# [Service] line (the hardening) must be identical in both.
LIFECYCLE_KEYS = {
    "Type",
    "NotifyAccess",
    "ExecStart",
    "ExecReload",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "WatchdogSec",
    "Restart",
    "RestartSec",
    "RestartPreventExitStatus",
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}}; comments dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        current.setdefault(key, []).append(value)
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key} given {len(values)} times"
    return values[0]


# --- systemd-analyze --------------------------------------------------------------------


def _lint_available() -> bool:
    if shutil.which("systemd-analyze"):
        return True
    if os.environ.get("CI"):
        return True  # in CI a missing tool is a failure: let lint-units install it or fail
    return False


needs_analyze = pytest.mark.skipif(
    not _lint_available(), reason="systemd-analyze is absent (CI installs it; here it is skipped)"
)


def run_lint(unit_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if unit_dir is not None:
        env["UNIT_DIR"] = str(unit_dir)
    # The installed entry point when there is one (as CI passes it), else /bin/true.
    args = ["bash", str(LINT)]
    venv_e4sync = Path(sys.executable).parent / "e4sync"
    if venv_e4sync.is_file():
        args.append(str(venv_e4sync))
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


@needs_analyze
def test_lint_units_passes_and_rates_at_most_2() -> None:
    result = run_lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lint-units: all units clean" in result.stdout
    ratings = re.findall(r"ok   security (\S+): (\d+\.\d+)", result.stdout)
    assert {name for name, _ in ratings} == {"e4sync.service", "e4sync-once.service"}
    assert all(float(rating) <= 2.0 for _, rating in ratings), ratings
    assert "ok   verify --user e4sync.service" in result.stdout


@needs_analyze
@pytest.mark.parametrize(
    ("relpath", "old", "new", "complaint"),
    [
        # verify exits 0 on these: lint-units must fail on the output alone.
        ("e4sync.service", "ProtectSystem=strict", "ProtectSytem=strict", "Unknown key"),
        ("e4sync.timer", "Persistent=true", "Persistent=maybe", "Failed to parse"),
        ("user/e4sync.service", "Type=notify", "Type=notfy", "Failed to parse service type"),
    ],
)
def test_lint_units_fails_on_any_warning(
    tmp_path: Path, relpath: str, old: str, new: str, complaint: str
) -> None:
    units = tmp_path / "systemd"
    shutil.copytree(SYSTEMD, units)
    path = units / relpath
    text = path.read_text()
    assert f"\n{old}\n" in text
    path.write_text(text.replace(f"\n{old}\n", f"\n{new}\n"))
    result = run_lint(units)
    assert result.returncode != 0
    assert complaint in result.stderr


@needs_analyze
def test_lint_units_fails_on_a_weakly_hardened_unit(tmp_path: Path) -> None:
    units = tmp_path / "systemd"
    shutil.copytree(SYSTEMD, units)
    path = units / "e4sync.service"
    hardening, _, rest = path.read_text().partition("# --- hardening")
    path.write_text(hardening + "\n[Install]" + rest.partition("[Install]")[2])
    result = run_lint(units)
    assert result.returncode != 0
    assert "FAIL security e4sync.service" in result.stderr


# --- what the units say -------------------------------------------------------------------


def test_daemon_unit_settings() -> None:
    unit = parse_unit(SYSTEMD / "e4sync.service")
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/usr/local/bin/e4sync run --config /etc/e4sync/config.toml",
        # SIGHUP reloads the configuration between passes (e4sync.daemon).
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "5min",
        "Restart": "on-failure",
        "RestartSec": "30s",
        "RestartPreventExitStatus": "65 77 78",
        "TimeoutStopSec": "2min",
        "StateDirectory": "e4sync",
        "ConfigurationDirectory": "e4sync",
        "LoadCredential": "e4sync-password",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    assert "StartLimitIntervalSec" in unit["Unit"] and "StartLimitBurst" in unit["Unit"]
    assert "StartLimitIntervalSec" not in unit["Service"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_once_unit_has_the_same_hardening_and_no_restart() -> None:
    daemon = parse_unit(SYSTEMD / "e4sync.service")["Service"]
    once_unit = parse_unit(SYSTEMD / "e4sync-once.service")
    once = once_unit["Service"]
    assert one(once_unit, "Service", "Type") == "oneshot"
    assert one(once_unit, "Service", "ExecStart") == (
        "/usr/local/bin/e4sync run-once --config /etc/e4sync/config.toml"
    )
    # No ExecReload either: run-once ignores SIGHUP (it reads the configuration at start).
    for key in ("Restart", "RestartSec", "WatchdogSec", "NotifyAccess", "ExecReload"):
        assert key not in once, key
    assert "Install" not in once_unit  # pulled in by the timer, never enabled itself
    hardening = {k: v for k, v in daemon.items() if k not in LIFECYCLE_KEYS}
    assert len(hardening) > 25
    assert {k: v for k, v in once.items() if k not in LIFECYCLE_KEYS} == hardening


def test_timer_settings() -> None:
    timer = parse_unit(SYSTEMD / "e4sync.timer")
    assert one(timer, "Timer", "OnCalendar") == "*:0/15"
    assert one(timer, "Timer", "RandomizedDelaySec") == "2min"
    # Persistent= only works with OnCalendar=, and verify would not say so.
    assert one(timer, "Timer", "Persistent") == "true"
    assert "OnUnitActiveSec" not in timer["Timer"]
    assert one(timer, "Timer", "Unit") == "e4sync-once.service"
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_user_unit_settings() -> None:
    path = SYSTEMD / "user" / "e4sync.service"
    unit = parse_unit(path)
    assert one(unit, "Service", "ExecStart") == "%h/.local/bin/e4sync run"
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Service", "RestartPreventExitStatus") == "65 77 78"
    assert unit["Install"]["WantedBy"] == ["default.target"]
    assert "loginctl enable-linger" in path.read_text()
    # System-only sandboxing would be silently ignored in a user unit; keep it honest.
    for key in ("DynamicUser", "ProtectSystem", "PrivateDevices", "StateDirectory"):
        assert key not in unit["Service"], key


def test_every_hardening_line_is_commented() -> None:
    """Each group of hardening settings is introduced by a comment (when to relax it)."""
    for name in ("e4sync.service", "e4sync-once.service"):
        text = (SYSTEMD / name).read_text()
        # from the line after the "# --- hardening ---" banner up to [Install]
        section = text.partition("# --- hardening")[2].partition("\n")[2].partition("[Install]")[0]
        assert section, name
        commented = False
        for line in section.splitlines():
            if not line.strip():
                commented = False
            elif line.startswith("#"):
                commented = True
            else:
                assert commented, f"{name}: no comment above {line!r}"


# --- launchd -------------------------------------------------------------------------------


def load_plist(name: str) -> dict:
    with open(LAUNCHD / name, "rb") as fh:
        plist = plistlib.load(fh)
    assert isinstance(plist, dict)
    return plist


COMMON_KEYS = {
    "Label": str,
    "ProgramArguments": list,
    "RunAtLoad": bool,
    "ProcessType": str,
    "EnvironmentVariables": dict,
    "StandardOutPath": str,
    "StandardErrorPath": str,
}


@pytest.mark.parametrize(
    ("name", "command", "extra"),
    [
        (
            "org.e4sync.agent.plist",
            "run",
            {"KeepAlive": dict, "ThrottleInterval": int},
        ),
        ("org.e4sync.once.plist", "run-once", {"StartCalendarInterval": list}),
    ],
)
def test_plist_keys_and_types(name: str, command: str, extra: dict[str, type]) -> None:
    plist = load_plist(name)
    expected = COMMON_KEYS | extra
    assert set(plist) == set(expected)
    for key, kind in expected.items():
        assert type(plist[key]) is kind, key
    assert plist["Label"] == name.removesuffix(".plist")
    args = plist["ProgramArguments"]
    assert all(isinstance(a, str) for a in args)
    # launchd runs no shell and searches no PATH; it expands neither ~ nor $HOME.
    assert args[0] == "/Users/USERNAME/.local/bin/e4sync"
    assert args[1:] == [command]
    assert plist["RunAtLoad"] is True
    assert plist["ProcessType"] == "Background"
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert plist[key].startswith("/Users/USERNAME/Library/Logs/e4sync/"), key
    assert plist["StandardOutPath"] != plist["StandardErrorPath"]
    assert all("~" not in a and "$" not in a for a in args)


def test_agent_plist_restarts_only_on_failure() -> None:
    plist = load_plist("org.e4sync.agent.plist")
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] == 60


def test_once_plist_runs_every_quarter_hour() -> None:
    plist = load_plist("org.e4sync.once.plist")
    # StartCalendarInterval (missed runs coalesce on wake), not StartInterval (lost in sleep).
    assert plist["StartCalendarInterval"] == [{"Minute": m} for m in (0, 15, 30, 45)]
    assert all(type(d["Minute"]) is int for d in plist["StartCalendarInterval"])


def test_plists_and_docs_agree_on_the_placeholder() -> None:
    docs = (REPO / "docs" / "service.md").read_text()
    assert "USERNAME" in docs
    for name in ("org.e4sync.agent.plist", "org.e4sync.once.plist"):
        assert name in docs
        assert "USERNAME" in (LAUNCHD / name).read_text()


def test_docs_cover_every_topic() -> None:
    docs = (REPO / "docs" / "service.md").read_text()
    for needle in (
        "e4sync.service",
        "e4sync-once.service",
        "e4sync.timer",
        "systemd/user/e4sync.service",
        "loginctl enable-linger",
        "LoadCredential",
        "e4sync-password-",
        "launchctl bootstrap",
        "TCC",
        "journalctl",
        "healthcheck_url",
        "metrics_textfile",
        "ReadWritePaths",
    ):
        assert needle in docs, needle
