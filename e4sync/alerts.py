"""e4sync.alerts: telling a person when the archive's state changes (borgmatic's hooks).

Owns: the conditions a pass or a scrub leaves for each account (``failed``: the exit code
the account's passes fail with, 0 while they succeed; ``damaged``: archived copies
missing or damaged; ``deletion_cap``: 1 while a pass stops deleting at
``max_deletes_per_pass``), what changed since each channel was last told, and telling it:

- ``[notify] urls``: one notification through Apprise to every URL (e-mail, ntfy, Matrix,
  Slack, a ``json://`` receiver, ...). Apprise is the optional extra ``e4sync[notify]``,
  imported only when there is something to send to configured URLs.
- ``[notify] on_error``: a command, split like a shell would but run without one, with a
  timeout (``hook_timeout``; its process group is killed then), the summary as JSON on
  stdin and an environment with no secret in it (``hook_environment``). It runs when a
  condition appears or worsens, not on recovery.

Each channel is told once per change: a pass that fails like the one before says nothing
new, a pass that succeeds after failures is a recovery, said once. A channel that could
not be told (Apprise failed, the hook exited non-zero or timed out) is tried again at the
next pass, since it never heard of the change.

What was told is kept in a small file in the state directory (``notify-state.json``,
0600, replaced atomically, under a lock file), not in the state database: the database is
among the things that fail (damaged, locked, a PostgreSQL server down), and a notification
that it failed must still be sent and remembered; a notification channel's memory needs
no migration; and nothing in it is the archive's truth. With several workers on one
database each host keeps its own file, so each worker tells a change it saw once.

Nothing here raises to its caller: a notification that fails is logged and never fails a
pass. Dry runs tell nothing.

Must not import: e4sync.cli, e4sync.sources.e4connect, e4sync.sync.run, e4sync.state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e4sync.errors import EXIT_CODES, EXIT_SESSIONS_FAILED, LockBusy

if TYPE_CHECKING:
    from e4sync.config import Config
    from e4sync.sync.report import PassReport

log = logging.getLogger("e4sync.alerts")

MEMO = "notify-state.json"
CONDITIONS = ("failed", "damaged", "deletion_cap")
PASS = ""  # the pass as a whole: a failure before or around every account's part
_OK = dict.fromkeys(CONDITIONS, 0)
_LOCK = threading.Lock()  # the daemon's pass and scrub jobs run on different threads

# Variables never handed to the hook: the ones any kind's secrets default to, names with
# SECRET, PASSWORD and their like in them, AWS_* and more of the same kind.
_SECRET_WORDS = ("SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIAL", "APIKEY", "API_KEY")
_SECRET_PREFIXES = ("AWS_", "E4SYNC_")  # E4SYNC_*: overrides may hold URLs with tokens


def wanted(cfg: Config) -> bool:
    return bool(cfg.notify.urls or cfg.notify.on_error)


def problems(cfg: Config) -> list[str]:
    """What would keep a notification from going out, found before one is due: Apprise
    missing, a URL it cannot read (named by its scheme only), a hook that is not there.
    Imports Apprise when URLs are set (the daemon asks at its start)."""
    found = []
    if cfg.notify.urls:
        try:
            import apprise
        except ImportError:
            found.append("[notify] urls are set but Apprise is not installed: "
                         "pip install 'e4sync[notify]'")  # fmt: skip
        else:
            for url in cfg.notify.urls:
                if apprise.Apprise.instantiate(url) is None:
                    scheme = url.partition("://")[0]
                    found.append(f"[notify] urls: Apprise cannot read this {scheme}:// URL")
    if cfg.notify.on_error:
        import shutil

        program = shlex.split(cfg.notify.on_error)[0]
        if shutil.which(program) is None:
            found.append(f"[notify] on_error: {program} is not an executable on PATH")
    return found


# -- what a pass or a scrub says ---------------------------------------------------------


def after_pass(cfg: Config, report: PassReport, status: dict | None) -> None:
    """After a pass that ran to its end: each served account's conditions, from its report
    and (for sessions still failing and damaged copies) the status report."""
    if not wanted(cfg) or report.dry_run or report.interrupted:
        return
    by_name = {a["name"]: a for a in (status or {}).get("accounts", [])}
    now: dict[str, dict[str, int]] = {PASS: {"failed": 0}}
    details: dict[str, dict[str, list[str]]] = {}
    for a in report.accounts:
        if a.skipped:
            continue
        st = by_name.get(a.name)
        failures = st["failures"] if st else []
        code = a.exit_code or (EXIT_SESSIONS_FAILED if a.failed or failures else 0)
        now[a.name] = {"failed": code, "deletion_cap": int(a.deletion_cap_reached)}
        if st is not None:
            now[a.name]["damaged"] = int(st.get("local_problems_total") or 0)
        details[a.name] = {
            "failed": [
                *a.errors[:3],
                *(f"session {f['session_id']}: {f['last_error']}" for f in failures[:3]),
            ],
            "damaged": _problems(st),
        }
    _update(cfg, now, details, report=report)


def pass_raised(cfg: Config, exc: BaseException) -> None:
    """A pass that raised instead of reporting (the archive root unwritable, the state
    database damaged or unreachable): the pass as a whole failed. Another pass holding
    the lock is no failure, and an interrupt is none either."""
    if not wanted(cfg) or isinstance(exc, LockBusy) or not isinstance(exc, Exception):
        return
    code = getattr(exc, "exit_code", EXIT_SESSIONS_FAILED) or EXIT_SESSIONS_FAILED
    _update(cfg, {PASS: {"failed": code}}, {PASS: {"failed": [f"{exc}"[:500]]}})


def after_scrub(cfg: Config, status: dict | None) -> None:
    """After the daemon's scrub: the damaged copies of every account it re-hashed."""
    if not wanted(cfg) or status is None:
        return
    now = {
        a["name"]: {"damaged": int(a.get("local_problems_total") or 0)}
        for a in status.get("accounts", [])
    }
    _update(cfg, now, {a["name"]: {"damaged": _problems(a)} for a in status.get("accounts", [])})


def _problems(account: Mapping[str, Any] | None) -> list[str]:
    if not account:
        return []
    return [f"{p['session']}: {p['problem']}" for p in account.get("local_problems", [])[:3]]


# -- what changed, and telling it --------------------------------------------------------


@dataclasses.dataclass
class Event:
    account: str  # "" for the pass as a whole
    kind: str  # failed, damaged, deletion_cap, cleared, recovered
    text: str
    bad: bool  # a condition appeared or worsened (the hook runs for these)
    exit_code: int = 0


def changes(
    told: Mapping[str, Mapping[str, int]],
    now: Mapping[str, Mapping[str, int]],
    details: Mapping[str, Mapping[str, list[str]]] | None = None,
    cap: int = 0,
) -> list[Event]:
    """What a channel that was last told ``told`` must hear about ``now``."""
    events: list[Event] = []
    details = details or {}
    for name in sorted(now):
        before = {**_OK, **told.get(name, {})}
        after = {**_OK, **now[name]}
        who = f"{name}: " if name else ""

        said = details.get(name, {})

        def more(condition: str, said: Mapping[str, list[str]] = said) -> str:
            text = "; ".join(said.get(condition, []))
            return f": {text}" if text else ""

        if after["failed"] and after["failed"] != before["failed"]:
            code = after["failed"]
            what = "the pass failed" if not name else "passes fail"
            meaning = EXIT_CODES.get(code, "")
            exit_says = f"exit {code}: {meaning}" if meaning else f"exit {code}"
            events.append(
                Event(name, "failed", f"{who}{what} ({exit_says}){more('failed')}", True, code)
            )
        if after["damaged"] > before["damaged"]:
            count = after["damaged"]
            copies = "archived copy" if count == 1 else "archived copies"
            events.append(
                Event(
                    name,
                    "damaged",
                    f"{who}{count} {copies} missing or damaged{more('damaged')}",
                    True,
                )
            )
        if after["deletion_cap"] and not before["deletion_cap"]:
            events.append(
                Event(
                    name,
                    "deletion_cap",
                    f"{who}remote deletions stopped at the cap of {cap} per pass; the rest "
                    "waits for the next passes",
                    True,
                )
            )
        if any(before.values()) and not any(after.values()):
            events.append(Event(name, "recovered", f"{who}recovered: all is well again", False))
        else:
            cleared = [c for c in CONDITIONS if before[c] and not after[c]]
            if cleared:
                said = {"failed": "passes succeed again", "damaged": "the archive is whole again",
                        "deletion_cap": "remote deletions are under the cap again"}  # fmt: skip
                text = "; ".join(said[c] for c in cleared)
                events.append(Event(name, "cleared", f"{who}{text}", False))
    return events


def _update(
    cfg: Config,
    now: dict[str, dict[str, int]],
    details: dict[str, dict[str, list[str]]],
    report: PassReport | None = None,
) -> None:
    try:
        with _LOCK, _memo(Path(cfg.state.dir)) as memo:
            state = memo.setdefault("state", {})
            for name, values in now.items():
                state[name] = {**_OK, **state.get(name, {}), **values}
            current = {name: state[name] for name in now}
            told = memo.setdefault("told", {})
            cap = cfg.remote.max_deletes_per_pass
            for channel, enabled in (
                ("apprise", bool(cfg.notify.urls)),
                ("hook", bool(cfg.notify.on_error)),
            ):
                if not enabled:
                    continue
                heard = told.setdefault(channel, {})
                events = changes(heard, current, details, cap)
                if not events:
                    continue
                if channel == "hook" and not any(e.bad for e in events):
                    delivered = True  # recoveries are not the hook's business; remembered
                elif channel == "apprise":
                    delivered = _send_apprise(cfg, events)
                else:
                    delivered = _run_hook(cfg, events, report)
                if delivered:
                    for name in current:
                        heard[name] = dict(current[name])
    except Exception as exc:  # never fail a pass for a notification
        log.warning("notifications: %s", exc)


@contextlib.contextmanager
def _memo(state_dir: Path):
    """The memo, read under its lock file and written back atomically (0600)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / MEMO
    fd = os.open(state_dir / (MEMO + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            memo = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(memo, dict) or memo.get("schema") != 1:
                memo = {}
        except FileNotFoundError:
            memo = {}
        except (OSError, ValueError) as exc:
            log.warning("notifications: %s unreadable (%s); starting afresh", path, exc)
            memo = {}
        memo["schema"] = 1
        yield memo
        tmp = tempfile.NamedTemporaryFile(
            "w", dir=state_dir, prefix=f".{MEMO}.", suffix=".tmp", delete=False, encoding="utf-8"
        )
        try:
            with tmp:
                json.dump(memo, tmp, indent=1, sort_keys=True)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp.name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp.name)
            raise
    finally:
        os.close(fd)


def _title(events: list[Event]) -> str:
    host = socket.gethostname().split(".")[0] or "?"
    kinds = {e.kind for e in events}
    if kinds & {"failed", "damaged"}:
        word = "failing" if "failed" in kinds else "damage found"
    elif "deletion_cap" in kinds:
        word = "deletion cap reached"
    elif kinds == {"recovered"}:
        word = "recovered"
    else:
        word = "better"
    names = sorted({e.account or "pass" for e in events})
    return f"e4sync on {host}: {word} ({', '.join(names)})"


def _send_apprise(cfg: Config, events: list[Event]) -> bool:
    try:
        import apprise
    except ImportError:
        log.error(
            "[notify] urls are set but Apprise is not installed: pip install 'e4sync[notify]'"
        )
        return False
    notifier = apprise.Apprise()
    for url in cfg.notify.urls:
        if not notifier.add(url):
            # The URL holds the service's credentials: only its scheme is said.
            log.error(
                "[notify] urls: Apprise does not know %s:// URLs like this one",
                url.partition("://")[0],
            )
    if not len(notifier):
        return False
    kinds = {e.kind for e in events}
    kind = (
        apprise.NotifyType.FAILURE
        if kinds & {"failed", "damaged"}
        else apprise.NotifyType.WARNING
        if "deletion_cap" in kinds
        else apprise.NotifyType.SUCCESS
    )
    body = "\n".join(e.text for e in events) + "\n\n`e4sync status` says more."
    ok = bool(notifier.notify(title=_title(events), body=body, notify_type=kind))
    if ok:
        log.info("notified %d URL(s): %s", len(notifier), _title(events))
    else:
        log.warning("notifications: Apprise could not notify every URL; tried again next pass")
    return ok


# -- the on_error hook -------------------------------------------------------------------


def hook_environment(cfg: Config, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``env`` without anything that could hold a secret: the variables every kind's
    secret defaults to (E4 Connect's password variable), those the accounts take their
    secrets from, any name with SECRET, PASSWORD, TOKEN or CREDENTIAL in it
    (CREDENTIALS_DIRECTORY: systemd's secrets), AWS_* and E4SYNC_*."""
    from e4sync.config.schema import kind_settings
    from e4sync.sources import KINDS

    named: set[str] = set()
    for name in KINDS:
        with contextlib.suppress(Exception):  # a kind not installed has no variable
            default = kind_settings(name).SECRET.env_default
            if default:
                named.add(default[1])

    for account in cfg.accounts:
        with contextlib.suppress(Exception):
            secret = getattr(kind_settings(account.source), "SECRET", None)
            if secret is not None:
                variable = account.options.get(secret.env)
                if variable:
                    named.add(str(variable))
                if secret.env_default:
                    named.add(secret.env_default[1])
    out = {}
    for key, value in env.items():
        upper = key.upper()
        if key in named or upper.startswith(_SECRET_PREFIXES):
            continue
        if any(word in upper for word in _SECRET_WORDS):
            continue
        out[key] = value
    return out


def hook_input(events: list[Event], report: PassReport | None) -> dict[str, Any]:
    """What the hook reads on stdin: the changes, and the pass's report when a pass made
    them (the shape of ``run-once --json``'s accounts)."""
    return {
        "schema": 1,
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "events": [dataclasses.asdict(e) for e in events],
        "pass": None
        if report is None
        else {
            "started": _iso(report.started_at),
            "finished": _iso(report.finished_at),
            "exit_code": report.exit_code,
            "accounts": [dataclasses.asdict(a) for a in report.accounts],
        },
    }


def _iso(ts: float) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None


def _run_hook(cfg: Config, events: list[Event], report: PassReport | None) -> bool:
    command = cfg.notify.on_error or ""
    argv = shlex.split(command)
    if not argv:
        return True
    data = json.dumps(hook_input(events, report), indent=1).encode()
    timeout = cfg.notify.hook_timeout
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=hook_environment(cfg),
            start_new_session=True,  # its own process group: killed whole at the timeout
            close_fds=True,
        )
    except OSError as exc:
        log.warning("on_error hook %s could not start: %s", argv[0], exc.strerror or exc)
        return False
    try:
        _out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        log.warning("on_error hook %s killed after %g s", argv[0], timeout)
        return False
    if proc.returncode != 0:
        last = (err.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:300]
        log.warning(
            "on_error hook %s exited %d%s", argv[0], proc.returncode, f": {last}" if last else ""
        )
        return False
    log.info("on_error hook %s ran: %s", argv[0], _title(events))
    return True
