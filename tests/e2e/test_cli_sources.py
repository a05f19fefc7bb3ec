"""The CLI over the one factory: what it asks of a source, and what it says when a source
does not offer a command; ``doctor``'s login under the account's lease.

A stand-in kind (``standin``: an S3-like listing with slashes in its ids, no devices, no
user id, no single download) is registered for these tests only: ``e4sync.sources.KINDS``
and ``sys.modules`` are patched, and the configured account is handed to it after the
normal loader (the configuration's ``source`` key is not read here). Everything else runs
for real: ``cli.main`` in-process, a real SQLite state file, the E4 simulator.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import sys
import types

import pytest

from e4sync import cli
from e4sync.errors import EXIT_NOT_OFFERED, UsageError
from e4sync.sources import Capabilities, Item, Kind, Listing, Verdict

USER = "demo@example.org"
STANDIN_ITEMS = [
    Item(
        id="v2/829/2026-11-02/p1-3YK/raw.avro",
        recorded_at=1793577600,
        version="etag-b",
        size=20,
        suffix=".avro",
        kind="raw",
        raw={"key": "v2/829/2026-11-02/p1-3YK/raw.avro", "size": 20},
    ),
    Item(
        id="v2/829/2026-11-01/p1-3YK/raw.avro",
        recorded_at=1793491200,
        version="etag-a",
        size=10,
        suffix=".avro",
        kind="raw",
        raw={"key": "v2/829/2026-11-01/p1-3YK/raw.avro", "size": 10},
    ),
]


class StandInSource:
    """A source with only the protocol's required methods that a listing needs."""

    name = "standin"
    capabilities = Capabilities(can_delete=False)
    built: list[StandInSource] = []

    def __init__(self) -> None:
        self.closed = False
        StandInSource.built.append(self)

    def identity(self) -> str:
        return ""

    def list_items(self) -> Listing:
        return Listing(list(STANDIN_ITEMS), complete=True)

    def fetch(self, *args, **kwargs):
        raise AssertionError("the CLI must not fetch from a stand-in")

    def remote_version(self, *args, **kwargs):
        raise AssertionError("the CLI must not probe a stand-in")

    def delete(self, *args, **kwargs):
        raise AssertionError("the CLI must not delete from a stand-in")

    def verify(self, path, item) -> Verdict:
        return Verdict()

    def close(self) -> None:
        self.closed = True


def _check_key(text: str) -> str:
    text = text.strip()
    if not text or ".." in text.split("/"):
        raise UsageError(f"not an object key: {text!r}")
    return text


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch):
    """The ``standin`` kind, known only for this test; every configured account uses it."""
    import e4sync.sources

    module = types.ModuleType("e4sync.sources.standin")
    module.KIND = Kind(
        name="standin",
        connect=lambda account, cfg, cancel=None, interactive=None: StandInSource(),
        item_from_raw=lambda raw: None,
        verify=lambda path, item: Verdict(),
        check_id=_check_key,
        endpoint=lambda account: "the stand-in bucket",
    )
    monkeypatch.setitem(sys.modules, "e4sync.sources.standin", module)
    monkeypatch.setattr(e4sync.sources, "KINDS", (*e4sync.sources.KINDS, "standin"))
    real_load = cli.load

    def load(args):
        cfg = real_load(args)
        accounts = tuple(dataclasses.replace(a, source="standin") for a in cfg.accounts)
        return dataclasses.replace(cfg, accounts=accounts)

    monkeypatch.setattr(cli, "load", load)
    StandInSource.built.clear()
    return StandInSource.built


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# -- a source that does not offer a command ---------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("devices",),
        ("devices", "--json"),
        ("whoami",),
        ("download", "v2/829/2026-11-01/p1-3YK/raw.avro"),
    ],
    ids=["devices", "devices-json", "whoami", "download"],
)
def test_a_command_the_source_does_not_offer_is_one_line_and_exit_64(setup, run_cli, standin, argv):
    config = str(setup.write("http://127.0.0.1:9/connect"))
    result = run_cli(*argv, "--config", config, exit_code=EXIT_NOT_OFFERED)
    (line,) = error_lines(result.err)
    assert line == f"e4sync: error: {argv[0]}: not offered by source 'standin'"
    assert result.out == ""
    assert standin and all(source.closed for source in standin)


def test_sessions_of_a_source_without_columns_shows_the_item_and_its_local_state(
    setup, run_cli, standin
):
    config = str(setup.write("http://127.0.0.1:9/connect"))
    from e4sync.state.db import ensure_account, open_db, sessionmaker_for
    from e4sync.state.models import Session as SessionRow

    # What a pass would have left: the older item archived.
    engine = open_db(f"sqlite:///{setup.state / 'state.db'}")
    with sessionmaker_for(engine)() as db, db.begin():
        account = ensure_account(db, "lab", "standin", "the stand-in bucket")
        db.add(
            SessionRow(
                account_id=account.id,
                remote_id=STANDIN_ITEMS[1].id,
                state="verified",
                local_path="lab/2026-11-01/p1-3YK/raw.avro",
            )
        )
    engine.dispose()
    rows = json.loads(run_cli("sessions", "--json", "--config", config).out)
    # Oldest first; the columns the core offers for any item.
    assert rows == [
        {
            "id": STANDIN_ITEMS[1].id,
            "kind": "raw",
            "start": "2026-11-01T00:00:00+00:00",
            "size": 10,
            "local_state": "verified",
            "local_path": "lab/2026-11-01/p1-3YK/raw.avro",
        },
        {
            "id": STANDIN_ITEMS[0].id,
            "kind": "raw",
            "start": "2026-11-02T00:00:00+00:00",
            "size": 20,
            "local_state": "",
            "local_path": "",
        },
    ]
    table = run_cli("sessions", "--config", config).out.splitlines()
    assert table[0].split() == ["id", "kind", "start", "size", "local_state", "local_path"]
    assert all(source.closed for source in standin)


def test_an_id_is_checked_by_the_accounts_kind(setup, run_cli, standin):
    config = str(setup.write("http://127.0.0.1:9/connect"))
    # A key with slashes is a good id for this kind (E4's rule would refuse it) ...
    # (accepted, it is then looked up: the state database does not know it, exit 2)
    result = run_cli("retry", STANDIN_ITEMS[0].id, "--config", config, exit_code=2)
    assert f"knows no session {STANDIN_ITEMS[0].id} of any account" in result.err
    # ... and the kind's own rule refuses what it must, before any source is built.
    result = run_cli("download", "a/../b", "--config", config, exit_code=2)
    (line,) = error_lines(result.err)
    assert line == "e4sync: error: not an object key: 'a/../b'"
    assert standin == []


def test_doctor_checks_a_kind_without_a_secret_of_its_own(setup, run_cli, standin):
    config = str(setup.write("http://127.0.0.1:9/connect"))
    lines = run_cli("doctor", "--config", config).out.splitlines()
    # No password line: the stand-in's kind names no secret source.
    assert lines[-1] == "[ok] account lab login: logged in to the stand-in bucket"
    assert not any("password" in line for line in lines)


# -- E4 Connect through the same seams ---------------------------------------------------------


def test_an_e4_id_longer_than_the_platform_makes_is_refused_by_the_kind(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    for argv in (("download", "1" * 21), ("retry", "1" * 21)):
        result = run_cli(*argv, "--config", config, exit_code=2)
        (line,) = error_lines(result.err)
        assert line == f"e4sync: error: session id must be a number, got '{'1' * 21}'"
    assert sim.login_count(USER) == 0


# -- doctor and the account's lease ------------------------------------------------------------


def _lease(setup) -> tuple[str | None, float | None]:
    db = sqlite3.connect(setup.state / "state.db")
    try:
        return db.execute(
            "select lease_owner, lease_until from accounts where name = 'lab'"
        ).fetchone()
    finally:
        db.close()


def test_doctor_does_not_log_in_to_an_account_another_worker_serves(sim, setup, run_cli):
    from e4sync.state.db import claim_accounts, make_engine, release_leases

    config = str(setup.write(sim.base_url))
    run_cli("run-once", "--config", config)
    engine = make_engine(f"sqlite:///{setup.state / 'state.db'}")
    other = "lab-host:4242:abcdef"
    try:
        assert claim_accounts(engine, other, ["lab"], 600) == ["lab"]
        logins = sim.login_count(USER)
        result = run_cli("doctor", "--config", config)
        assert result.out.splitlines()[-1] == (
            f"[ok] account lab login: served by another worker; login not checked ({other})"
        )
        assert sim.login_count(USER) == logins  # the worker's login was left alone
        assert _lease(setup)[0] == other  # and so was its lease
        checks = json.loads(run_cli("doctor", "--json", "--config", config).out)["checks"]
        assert checks[-1]["ok"] and "served by another worker" in checks[-1]["detail"]

        # Once the worker lets the lease go, doctor takes it, logs in, and gives it back.
        release_leases(engine, other, ["lab"])
        result = run_cli("doctor", "--config", config)
        assert f"as user {sim.user_id()}" in result.out.splitlines()[-1]
        assert sim.login_count(USER) == logins + 1
        assert _lease(setup) == (None, None)
    finally:
        engine.dispose()


def test_doctor_logs_in_under_the_lease_so_a_worker_waits(sim, setup, run_cli, monkeypatch):
    """While doctor's login runs, the account's lease is doctor's: a worker's claim fails."""
    import e4sync.sources
    from e4sync.state.db import claim_accounts, make_engine

    config = str(setup.write(sim.base_url))
    run_cli("run-once", "--config", config)
    engine = make_engine(f"sqlite:///{setup.state / 'state.db'}")
    seen: list[tuple[list[str], str | None]] = []
    real = e4sync.sources.make_source

    def make_source(account, cfg, **kwargs):
        # Just before doctor logs in: a worker tries to take the account.
        claimed = claim_accounts(engine, "worker:1:aaaaaa", [account.name], 60)
        seen.append((claimed, _lease(setup)[0]))
        return real(account, cfg, **kwargs)

    monkeypatch.setattr(e4sync.sources, "make_source", make_source)
    try:
        run_cli("doctor", "--config", config)
    finally:
        engine.dispose()
    ((claimed, owner),) = seen
    assert claimed == [] and owner is not None and owner.startswith("doctor:")
    assert _lease(setup) == (None, None)


def test_doctor_does_not_check_a_login_when_the_database_is_damaged(sim, setup, run_cli):
    config = str(setup.write(sim.base_url))
    setup.state.mkdir(parents=True, exist_ok=True)
    (setup.state / "state.db").write_bytes(b"this is not a database" * 200)
    result = run_cli("doctor", "--config", config, exit_code=65)
    assert "[FAIL] account lab login: login not checked: the state database" in result.out
    assert sim.login_count(USER) == 0
