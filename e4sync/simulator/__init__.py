"""e4sync.simulator: an E4 Connect look-alike on loopback, for tests, demos and benchmarks.

Owns the platform's wire behaviour (paths, cookies, redirects, JSON), seeded session ZIPs in the
exact E4 format, fault injection and admin hooks. Only ``e4sync.cli`` and the tests use it; it
must not import e4sync.state, e4sync.sync or e4sync.client, and needs only the standard library.

Usage::

    from e4sync.simulator import Simulator, Faults

    with Simulator(sessions=5, faults=Faults(error_5xx=0.1)) as sim:
        sim.base_url        # "http://127.0.0.1:PORT/connect"
"""

from e4sync.simulator.faults import Faults
from e4sync.simulator.server import DEFAULT_PASSWORD, DEFAULT_USER, Simulator

__all__ = ["DEFAULT_PASSWORD", "DEFAULT_USER", "Faults", "Simulator"]
