"""How tests/data/state-0.2-r0002.sql was made: e4sync 0.2 (commit 2732cc2, schema revision
0002), installed in its own venv (`pip install .` of that commit), ran two `run-once`
passes against the loopback simulator with remote deletion on and a cap of 2, so the
database holds verified and remote_deleted sessions and confirmed ledger entries. The
dump is `sqlite3.Connection.iterdump()` of its state.db. Not run by the tests.
"""

import os
import subprocess
import sys
from pathlib import Path

from e4sync.sources.e4connect.simulator import Simulator

d = Path("/tmp/e4sync-state-0.2")
pw = d / "pw"
pw.write_text("demo\n")
os.chmod(pw, 0o600)
with Simulator(port=0, seed=7, sessions=6) as sim:
    cfg = d / "config.toml"
    cfg.write_text(f'''[archive]
root = "{d}/archive"
[state]
dir = "{d}/state"
[download]
backoff = "0s"
[remote]
delete_after_verify = true
delete_min_age = "0s"
delete_grace = "0s"
max_deletes_per_pass = 2
[[account]]
name = "lab"
username = "demo@example.org"
password_file = "{pw}"
base_url = "{sim.base_url}"
''')
    env = dict(os.environ)
    for _i in range(2):
        r = subprocess.run(
            [sys.executable, "-m", "e4sync", "--config", str(cfg), "run-once"],
            env=env,
            capture_output=True,
            text=True,
        )
        print(r.returncode, r.stdout[-500:], r.stderr[-800:])

import sqlite3  # noqa: E402

c = sqlite3.connect(d / "state" / "state.db")
Path("state-0.2-r0002.sql").write_text("\n".join(c.iterdump()) + "\n")
