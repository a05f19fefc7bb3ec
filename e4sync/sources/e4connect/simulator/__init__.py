"""e4sync.sources.e4connect.simulator: an E4 Connect look-alike on loopback, for tests, demos
and benchmarks.

Owns the platform's wire behaviour (paths, cookies, redirects, JSON), seeded session ZIPs in the
exact E4 format, fault injection and admin hooks. Only ``e4sync.cli`` and the tests use it; it
must not import e4sync.state, e4sync.sync or the E4 client, and needs only the standard library.
Must not import: e4sync.state, e4sync.sync, e4sync.sources.e4connect.client, e4sync.cli, requests.

Usage::

    from e4sync.sources.e4connect.simulator import Simulator, Faults

    with Simulator(sessions=5, faults=Faults(error_5xx=0.1)) as sim:
        sim.base_url        # "http://127.0.0.1:PORT/connect"
"""

from typing import Any

from e4sync.sources.e4connect.simulator.faults import DEFAULT_PASSWORD, DEFAULT_USER, Faults

__all__ = ["DEFAULT_PASSWORD", "DEFAULT_USER", "Faults", "Simulator"]


def __getattr__(name: str) -> Any:
    # The server (http.server and the ZIP generator) is imported on first use, so that
    # `e4sync --help` and every other command do not pay for it.
    if name == "Simulator":
        from e4sync.sources.e4connect.simulator.server import Simulator

        return Simulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
