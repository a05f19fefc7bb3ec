"""The sync engine's acceptance check (issue 3): every fault of the simulator switched on at
once, remote deletion on, repeated `run-once` passes. They end with every session archived
byte for byte in the dated layout with sidecars; a further pass downloads nothing; `status
--json` counts them; deletion removed exactly the verified sessions, each only after its
verification; `verify` catches a flipped byte and names the file."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

from e4sync.sources.e4connect.simulator import Simulator
from tests.conftest import REMOTE_DELETE, archived, write_config
from tests.e2e.test_network_faults import STORM
from tests.e2e.test_run_once import downloads, expected_relpath

# The storm of the network-fault suite, plus the faults that only matter with deletion on or
# with hostile listings: a DELETE that answers 200 while the session stays listed, a listed
# session that 404s now and then, numbers where strings were expected.
# Half the storm's rates: every kind still fires many times, and with deletion's extra
# requests (a DELETE and a confirming list per session) the passes still converge.
RATES = (
    "error_5xx",
    "rate_429",
    "reset_mid_body",
    "truncate_body",
    "empty_body",
    "expire_cookie",
    "slow_first_byte_rate",
)
EVERYTHING = dataclasses.replace(
    STORM,
    **{f: getattr(STORM, f) / 2 for f in RATES},
    delete_lingers=0.2,
    missing_session=0.1,
    string_numbers=True,
)
KINDS = {
    "error_5xx",
    "rate_429",
    "reset_mid_body",
    "truncate_body",
    "html_instead_of_zip",
    "empty_body",
    "expire_cookie",
    "delete_lingers",
    "missing_session",
}


def test_every_fault_with_deletion_on_ends_whole_and_deleted_only_after_proof(tmp_path, run_cli):
    with Simulator(port=0, seed=33, sessions=10, session_size=60_000, faults=EVERYTHING) as sim:
        originals = {r["id"]: dict(r) for r in sim.sessions()}
        config = write_config(
            tmp_path,
            sim.base_url,
            download={"timeout": "5s", "connect_timeout": "5s", "max_attempts": 100},
            remote=REMOTE_DELETE,
        )
        for _ in range(60):
            result = run_cli("run-once", "--config", str(config), exit_code=None)
            assert result.code in (0, 1, 75), (result.code, result.out, result.err[-3000:])
            assert "Traceback" not in result.err
            # After every pass: no remote copy gone without a whole local one.
            zips = archived(tmp_path / "archive")
            for sid in sim.deleted_ids():
                assert zips[sid].read_bytes() == sim.zip_bytes(sid), f"{sid} deleted unproven"
            if sim.deleted_ids() == set(originals):
                break
        assert sim.deleted_ids() == set(originals), "every verified session removed remotely"
        injected = sim.stats()["faults"]
        assert KINDS <= {k for k, n in injected.items() if n}, injected
        zips = archived(tmp_path / "archive")
        assert set(zips) == set(originals)
        for sid, row in originals.items():
            path = zips[sid]
            assert path.read_bytes() == sim.zip_bytes(sid)
            assert path.relative_to(tmp_path / "archive").as_posix() == expected_relpath(
                "lab", {k: str(v) for k, v in row.items()}
            )
            sidecar = json.loads(path.with_suffix(".json").read_text())
            assert sidecar["session_id"] == sid and sidecar["size"] == path.stat().st_size

        # Each deletion was requested only after its session had been verified, and its
        # ledger entry was confirmed by a later listing.
        db = sqlite3.connect(tmp_path / "state" / "state.db")
        rows = db.execute(
            "select d.remote_id, d.requested_at, d.confirmed_at, s.verified_at, d.sha256, "
            "s.sha256 from deletions d join sessions s on s.id = d.session_id"
        ).fetchall()
        confirmed = {r[0] for r in rows if r[2] is not None}
        assert confirmed == set(originals)
        # Lingering and failed DELETEs leave several entries per session; once the session
        # is gone, none of them may stay open to claim a later disappearance.
        assert len(rows) > len(originals)
        assert [r[0] for r in rows if r[2] is None] == []
        for remote_id, requested, _, verified, ledger_sha, session_sha in rows:
            assert requested >= verified, f"{remote_id} deleted before it was verified"
            assert ledger_sha == session_sha
        db.close()

        # A further pass, faults off: nothing downloaded, nothing deleted.
        sim.set_faults(
            dataclasses.replace(
                EVERYTHING,
                **{
                    f: 0.0
                    for f in (*RATES, "html_instead_of_zip", "delete_lingers", "missing_session")
                },
            )
        )
        before = downloads(sim)
        run_cli("run-once", "--config", str(config))
        assert downloads(sim) == before

        status = json.loads(run_cli("status", "--config", str(config), "--json").out)
        counts = status["accounts"][0]["counts"]
        assert counts["remote_deleted"] == len(originals)
        assert counts["new"] == counts["downloading"] == counts["failed"] == 0

        victim = zips[sorted(originals)[0]]
        data = bytearray(victim.read_bytes())
        data[-10] ^= 0x01
        victim.write_bytes(bytes(data))
        report = json.loads(run_cli("verify", "--config", str(config), "--json", exit_code=1).out)
        assert report["changed"] == [str(victim)]
