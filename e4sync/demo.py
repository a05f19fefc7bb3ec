"""e4sync.demo: `e4sync demo` — the simulator, a first sync into a fresh folder, the tree.

It goes through the same doors a user does: a configuration file and a 0600 password file
written into the demo folder, the normal loader, one ``run_pass`` and the status report.

Must not import: e4sync.cli.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from e4sync.errors import UsageError


def _toml_string(value: object) -> str:
    # A JSON string of printable text is a valid TOML basic string: quotes and backslashes
    # in a folder name cannot break the file.
    return json.dumps(str(value))


def run_demo(directory: str | None = None, sessions: int = 6, quiet: bool = False) -> int:
    from e4sync.config import load_config
    from e4sync.sources.e4connect.simulator import Simulator
    from e4sync.state.db import default_sqlite_url, open_db
    from e4sync.status import status_report
    from e4sync.sync import run_pass

    # Absolute: the configuration written below is read relative to its own folder.
    root = (
        Path(directory).expanduser().resolve()
        if directory
        else Path(tempfile.mkdtemp(prefix="e4sync-demo-"))
    )
    try:
        root.mkdir(parents=True, exist_ok=True)
        crowded = any(root.iterdir()) and not (root / "config.toml").exists()
    except OSError as exc:
        raise UsageError(f"cannot use {root} for the demo: {exc.strerror}") from None
    if crowded:
        raise UsageError(f"{root} is not empty; give an empty or new folder with --dir")
    with Simulator(port=0, seed=4, sessions=sessions) as sim:
        password_file = root / "demo.password"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("demo\n")
        config_file = root / "config.toml"
        config_file.write_text(
            "# written by `e4sync demo`: a normal configuration, pointing at the simulator\n"
            "[archive]\n"
            f"root = {_toml_string(root / 'archive')}\n\n"
            "[state]\n"
            f"dir = {_toml_string(root / 'state')}\n\n"
            "[[account]]\n"
            'name = "demo"\n'
            'username = "demo@example.org"\n'
            f"password_file = {_toml_string(password_file)}\n"
            f"base_url = {_toml_string(sim.base_url)}\n"
        )
        cfg = load_config(config_file, env={})
        print(f"E4 Connect simulator at {sim.base_url} with {sessions} sessions", flush=True)
        print(f"syncing into {cfg.archive.root}", flush=True)
        engine = open_db(cfg.state.url or default_sqlite_url(cfg.state.dir))
        report = run_pass(cfg, engine)
        print("\narchive:")
        for path in sorted(cfg.archive.root.rglob("*")):
            rel = path.relative_to(cfg.archive.root)
            indent = "  " * (len(rel.parts) - 1)
            size = f"  ({path.stat().st_size:,} bytes)" if path.is_file() else "/"
            print(f"  {indent}{rel.name}{size}")
        status = status_report(engine)
        print("\nstatus:")
        for account in status["accounts"]:
            counts = ", ".join(f"{k} {v}" for k, v in account["counts"].items() if v)
            print(f"  {account['name']} (user {account['user_id']}): {counts}")
        print(f"\nTry: e4sync --config {config_file} status")
        engine.dispose()
        return report.exit_code
