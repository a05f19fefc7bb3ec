"""Health pings and the Prometheus textfile around a real `run-once` (cron's case)."""

from __future__ import annotations


def monitor_section(url: str, prom: str) -> str:
    return f'[monitor]\nhealthcheck_url = "{url}"\nmetrics_textfile = "{prom}"\n'


def test_a_good_pass_pings_start_then_success_and_writes_metrics(sim, setup, run_cli, pings):
    url, seen = pings
    prom = setup.dir / "e4sync.prom"
    config = setup.write(sim.base_url, extra=monitor_section(url, prom))
    run_cli("run-once", "--config", str(config))
    assert [path for path, _ in seen] == ["/ping/abc123/start", "/ping/abc123"]
    text = prom.read_text()
    count = len(sim.sessions())
    assert f'e4sync_sessions{{account="lab",state="verified"}} {count}' in text
    assert 'e4sync_pass_downloads{account="lab"} ' + str(count) in text
    assert "e4sync_up 1" in text
    assert not list(setup.dir.glob("*.prom.*")), "written by rename, no temp file left"


def test_a_refused_login_pings_fail(sim, setup, run_cli, pings):
    url, seen = pings
    config = setup.write(
        sim.base_url,
        accounts=[("lab", "demo@example.org", "wrong")],
        extra=monitor_section(url, setup.dir / "e4sync.prom"),
    )
    run_cli("run-once", "--config", str(config), exit_code=77)
    assert [path for path, _ in seen] == ["/ping/abc123/start", "/ping/abc123/fail"]
    assert "e4sync_up 0" in (setup.dir / "e4sync.prom").read_text()


def test_a_dead_ping_url_never_fails_the_pass(sim, setup, run_cli):
    config = setup.write(
        sim.base_url,
        extra=monitor_section("http://127.0.0.1:9/nothing-listens-here", setup.dir / "e4sync.prom"),
    )
    result = run_cli("run-once", "--config", str(config))
    assert f"{len(sim.sessions())} downloaded" in result.out


def test_a_dry_run_is_not_reported(sim, setup, run_cli, pings):
    url, seen = pings
    prom = setup.dir / "e4sync.prom"
    config = setup.write(sim.base_url, extra=monitor_section(url, prom))
    run_cli("run-once", "--dry-run", "--config", str(config))
    assert seen == [] and not prom.exists()
