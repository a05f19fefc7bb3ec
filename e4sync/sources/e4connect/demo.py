"""e4sync.sources.e4connect.demo: E4 Connect's part of ``e4sync demo`` and ``e4sync simulate``.

Owns what the demo needs to know of E4 Connect: ``demo_account`` starts the simulator with
seeded sessions, writes its password into a 0600 file and yields the ``[[account]]`` block
that points at it; ``add_simulate_arguments`` and ``simulate`` are ``e4sync simulate``'s
options and body (``simulator.cli``). The CLI and ``e4sync.demo`` reach this module by the
kind's name (``e4sync.sources.kind_module``), so they name no kind. Cheap to import: the
simulator is imported when it is started.

Must not import: e4sync.state, e4sync.sync, e4sync.cli, e4sync.sources.e4connect.client.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoAccount:
    """What the demo's configuration needs of the running platform: the ``[[account]]``
    block (TOML) and the line that says what runs."""

    account_toml: str
    banner: str


def _toml_string(value: object) -> str:
    # A JSON string of printable text is a valid TOML basic string: quotes and backslashes
    # in a folder name cannot break the file.
    return json.dumps(str(value))


@contextmanager
def demo_account(root: Path, sessions: int, name: str = "demo") -> Iterator[DemoAccount]:
    """Run the simulator with ``sessions`` sessions while the block is in use, its
    password in ``root / "demo.password"`` (0600), as a user would keep one."""
    from e4sync.sources.e4connect.simulator import Simulator

    with Simulator(port=0, seed=4, sessions=sessions) as sim:
        password_file = root / "demo.password"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{sim.password}\n")
        yield DemoAccount(
            account_toml=(
                "[[account]]\n"
                f"name = {_toml_string(name)}\n"
                f"username = {_toml_string(sim.user)}\n"
                f"password_file = {_toml_string(password_file)}\n"
                f"base_url = {_toml_string(sim.base_url)}\n"
            ),
            banner=f"E4 Connect simulator at {sim.base_url} with {sessions} sessions",
        )


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """``e4sync simulate``'s options (server, account, one per fault)."""
    from e4sync.sources.e4connect.simulator.cli import add_arguments

    add_arguments(parser)


def simulate(args: argparse.Namespace) -> int:
    """Serve the simulator until SIGINT or SIGTERM (``e4sync simulate``)."""
    from e4sync.sources.e4connect.simulator.cli import run

    return run(args)
