"""e4sync.demo: `e4sync demo` — a simulated platform, a first sync into a fresh folder, the tree.

Owns the demo's folder (new or empty), the configuration it writes there, the one pass and
what it prints. It goes through the same doors a user does: a configuration file, the
normal loader, one ``run_pass`` and the status report. What runs as the platform is the
default kind's business: its ``demo`` module (``e4sync.sources.kind_module``) starts its
simulator, keeps the password in a 0600 file in the folder and gives the ``[[account]]``
block, so this module names no source kind.

Must not import: e4sync.cli, e4sync.sources.e4connect.
"""

from __future__ import annotations

import json
import shlex
import signal
import tempfile
import threading
from pathlib import Path

from e4sync.errors import UsageError


def _toml_string(value: object) -> str:
    # A JSON string of printable text is a valid TOML basic string: quotes and backslashes
    # in a folder name cannot break the file.
    return json.dumps(str(value))


def run_demo(
    directory: str | None = None,
    sessions: int = 6,
    quiet: bool = False,
    source: str = "",
    keep: bool = False,
) -> int:
    """Run ``source``'s platform (default: the default kind's) on loopback, sync it once
    into ``directory`` (a new folder when None) and show the tree and the status. ``keep``:
    the platform keeps running afterwards, until Ctrl-C or SIGTERM, so the commands it
    suggests (which talk to it) work from another terminal."""
    from e4sync.config import load_config
    from e4sync.sources import DEFAULT_SOURCE, kind_module
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
    with kind_module(source or DEFAULT_SOURCE, "demo").demo_account(root, sessions) as platform:
        config_file = root / "config.toml"
        config_file.write_text(
            "# written by `e4sync demo`: a normal configuration, pointing at the simulator\n"
            "[archive]\n"
            f"root = {_toml_string(root / 'archive')}\n\n"
            "[state]\n"
            f"dir = {_toml_string(root / 'state')}\n\n" + platform.account_toml
        )
        cfg = load_config(config_file, env={})
        print(platform.banner, flush=True)
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
            who = f" (user {account['user_id']})" if account["user_id"] else ""
            print(f"  {account['name']}{who}: {counts}")
        engine.dispose()
        config = shlex.quote(str(config_file))
        if not keep:
            print(f"\nTry: e4sync --config {config} status")
            print("(run `e4sync demo --keep` to keep the simulator running for more commands)")
            return report.exit_code
        print("\nThe simulator keeps running until Ctrl-C. In another terminal, try:")
        for command in ("status", "sessions", "check", "run-once --dry-run", "run-once"):
            print(f"  e4sync --config {config} {command}")
        _wait_for_stop()
        print("\nsimulator stopped", flush=True)
        return report.exit_code


def _wait_for_stop() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM, then return (the platform is stopped by the
    caller's ``with``)."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda _signum, _frame: stop.set())
    try:
        while not stop.wait(3600):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
