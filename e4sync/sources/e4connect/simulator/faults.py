"""e4sync.sources.e4connect.simulator.faults: which failures the simulator injects, and the
seeded dice deciding when.

Owns the :class:`Faults` settings (rates per request, plus a few magnitudes and switches) and
:class:`FaultDice`, which decides each fault per request from ``sha256(seed, fault, request,
attempt number)``. Two properties follow: a run is reproducible under its seed even when requests
for different sessions interleave across threads (each request key has its own attempt counter),
and a fault with a rate below 1 never sticks to one request forever, so retries eventually succeed.

Standard library only; must not import any e4sync module outside the simulator package.
Must not import: e4sync.state, e4sync.sync, e4sync.sources.e4connect.client, e4sync.cli, requests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

# The default account of a new simulator (SPEC section 2).
DEFAULT_USER = "demo@example.org"
DEFAULT_PASSWORD = "demo"

T = TypeVar("T")

RATE_FIELDS = (
    "error_5xx",
    "rate_429",
    "reset_mid_body",
    "truncate_body",
    "html_instead_of_zip",
    "expire_cookie",
    "missing_session",
    "empty_body",
    "delete_lingers",
    "slow_first_byte_rate",
)
"""Fields that are probabilities per request, each in [0.0, 1.0]."""


@dataclass
class Faults:
    """What goes wrong, and how often. Every rate is a probability per request (0.0-1.0).

    Data requests (the JSON API and ``download.php``) can get any fault; the login flow
    (``authenticate.php``, ``login.php``, ``dashboard.php``, ``sessions.php``) only ``error_5xx``
    and ``latency``. Admin requests under ``/_admin/`` never get any.
    """

    error_5xx: float = 0.0
    """Answer 500, 502 or 503 (picked by the dice) instead of doing the request."""
    rate_429: float = 0.0
    """Answer 429 with ``Retry-After: retry_after``."""
    retry_after: float = 1.0
    """Seconds sent in ``Retry-After`` (rounded up to a whole second, as HTTP requires)."""
    reset_mid_body: float = 0.0
    """Send the headers and part of the body, then reset the connection (TCP RST)."""
    truncate_body: float = 0.0
    """Send fewer bytes than ``Content-Length`` promised, then close the connection cleanly."""
    html_instead_of_zip: float = 0.0
    """Downloads only: 200 with a ``text/html`` maintenance page instead of the ZIP."""
    expire_cookie: float = 0.0
    """The request's cookie dies on arrival: answered as logged out (302 to ``login.php``)."""
    one_login: bool = True
    """One live login per account: a new login kills that account's older cookies."""
    missing_session: float = 0.0
    """Downloads and deletes only: 404 although the session is listed."""
    empty_body: float = 0.0
    """200 with ``Content-Length: 0`` and no body."""
    delete_lingers: float = 0.0
    """DELETE answers 200 but the session stays listed (and downloadable)."""
    hide_size: bool = False
    """Downloads send no ``Content-Length`` (the body ends when the connection closes) and
    ignore ``Range``: a platform that never says how big a ZIP is."""
    string_numbers: bool = False
    """When true, every other listed session (and device) sends its numbers as JSON numbers."""
    latency: float = 0.0
    """Seconds added before answering every request."""
    bandwidth: int = 0
    """Bytes per second cap on each response body; 0 means no cap."""
    slow_first_byte: float = 0.0
    """Seconds a download waits before sending its first byte (status line included)."""
    slow_first_byte_rate: float = 1.0
    """Share of downloads that wait ``slow_first_byte`` (when that is above 0)."""
    extra_member_sessions: tuple[str, ...] = ()
    """Session ids whose ZIP holds one more member that is not an E4 file (``notes.txt``,
    :data:`~.zipgen.EXTRA_MEMBER`) after the eight real ones: every download
    of such a session serves those same bytes (not a per-request dice roll), so its ETag
    and resumes hold."""

    def __post_init__(self) -> None:
        problems = []
        ids = self.extra_member_sessions
        if isinstance(ids, str | bytes) or not isinstance(ids, list | tuple | set | frozenset):
            problems.append(f"extra_member_sessions must be a list of session ids, not {ids!r}")
        elif not all(isinstance(i, str | int) and not isinstance(i, bool) for i in ids):
            problems.append(f"extra_member_sessions must hold session ids, not {sorted(ids)!r}")
        else:
            # Ids as the listing spells them; a tuple so the settings stay comparable.
            self.extra_member_sessions = tuple(sorted({str(i) for i in ids}, key=_by_number))
        for name in RATE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be a rate between 0.0 and 1.0, not {value!r}")
        for name in ("retry_after", "latency", "bandwidth", "slow_first_byte"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                problems.append(f"{name} must be a number >= 0, not {value!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (the admin API's shape)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        """Build from a dict, rejecting unknown keys (a typo must not silently inject nothing)."""
        return cls().merged(data)

    def merged(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with ``changes`` applied; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(unknown)}; known: {sorted(known)}")
        return dataclasses.replace(self, **dict(changes))

    def any_active(self) -> bool:
        """True when some fault can fire (``one_login`` alone is normal platform behaviour)."""
        defaults = Faults()
        return any(
            getattr(self, f.name) != getattr(defaults, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("one_login", "retry_after", "slow_first_byte_rate")
        )


class FaultDice:
    """Seeded, per-request decisions: roll ``fault`` for request ``key`` at ``rate``."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._attempts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def _uniform(self, fault: str, key: str) -> float:
        with self._lock:
            attempt = self._attempts[(fault, key)]
            self._attempts[(fault, key)] += 1
        digest = hashlib.sha256(f"{self._seed}\0{fault}\0{key}\0{attempt}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def roll(self, fault: str, key: str, rate: float) -> bool:
        """True if ``fault`` strikes this attempt at ``key``; rate 0 never, rate 1 always."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self._uniform(fault, key) < rate

    def pick(self, fault: str, key: str, options: Sequence[T]) -> T:
        """One of ``options``, chosen by the dice (e.g. which 5xx status)."""
        return options[int(self._uniform(fault + ":pick", key) * len(options))]


def _by_number(session_id: str) -> tuple[int, str]:
    # Numeric ids in numeric order ("7" before "12"), as the platform's ids grow.
    return len(session_id), session_id
