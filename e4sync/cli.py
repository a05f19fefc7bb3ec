"""e4sync.cli: the command line — argparse, rendering (text, --json, --csv) and ``main()``.

Each ``cmd_<name>(args) -> int`` builds objects, calls one core function and renders what
it returns. ``main`` holds the single ``try``: an ``E4SyncError`` becomes its ``exit_code``
(decided in ``errors.py``) and a one-line message, never a traceback; no command maps an
error to a code itself. Only this module prints to stdout. Imports are made inside the
commands so ``e4sync --help`` stays fast.

It knows no source kind. An account's source comes from the one factory
(``sources.make_source``), as the pass's and ``doctor``'s do; an id a person gives is
checked by the account's kind (``kind(...).check_id``); a command only some platforms can
answer (``devices``, ``download``, ``whoami``) asks the source for its optional method and
says "not offered by source ..." (exit 64) when it has none; ``simulate`` and ``demo`` run
the default kind's ``demo`` module (``sources.kind_module``).

Must not import: e4sync.sources.e4connect.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from e4sync import __version__
from e4sync.errors import (
    EXIT_CODES,
    EXIT_NOT_OK,
    EXIT_OK,
    EXIT_SESSIONS_FAILED,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    ConfigError,
    E4SyncError,
    NotOffered,
    StateDamaged,
    UsageError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from e4sync.config import AccountConfig, Config
    from e4sync.sources import Item, Source


# -- the parser --------------------------------------------------------------------------

# The commands that change something and can say instead what they would change (SPEC 3).
DRY_RUN_COMMANDS = ("run", "run-once", "remove")
# The commands that make passes: their log shows INFO by default (the journal, a cron mail);
# the others log warnings only unless -v (a login is no news to a person who asked).
PASS_COMMANDS = ("run", "run-once")
LOG_LEVELS = ("debug", "info", "warning", "error")  # as e4sync.notify's, without importing it
LOG_FORMATS = ("text", "json")


# The commands that read no configuration: --config, --account and --base-url are not theirs.
NO_CONFIG_COMMANDS = ("simulate", "demo", "accounts", "completion")
CONFIG_OPTIONS = ("--config", "--account", "--base-url")


def _global_options(
    parser: argparse.ArgumentParser, suppress: bool, command: str | None = None
) -> None:
    """Global options, accepted both before and after the command name: the sub-parsers
    get copies whose default is SUPPRESS, so a value given after the command wins and an
    absent one leaves the value given before it alone. A sub-parser gets only those its
    ``command`` honours (no --dry-run for `status`, no --config for `demo`), so neither
    its --help nor the shell completion offers one it would refuse."""
    from e4sync.completion import FILE, hint

    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    parser.add_argument("--version", action="version", version=f"e4sync {__version__}")
    if command not in NO_CONFIG_COMMANDS:
        hint(
            parser.add_argument(
                "--config",
                metavar="PATH",
                default=d(None),
                help="configuration file (default: $E4SYNC_CONFIG, else the user "
                "config directory's config.toml)",
            ),
            FILE,
        )
        parser.add_argument(
            "--account", metavar="NAME", default=d(None), help="act on this account only"
        )
        parser.add_argument(
            "--base-url",
            metavar="URL",
            default=d(None),
            help="E4 Connect address, overriding the account's base_url",
        )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=d(0),
        help="more log output: each -v one level more (-vv: debug, the HTTP library's too)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=d(False),
        help="only warnings and errors; run-once prints nothing when the pass went well",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=d(None),
        help="log this level and above (instead of -v/-q; default: info for run and "
        "run-once, warning for the other commands)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=d("text"),
        help="text (default) or json: one JSON object per line (time, level, logger, message)",
    )
    if command is None or command in DRY_RUN_COMMANDS:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            default=d(False),
            help="say what would be downloaded or deleted; change nothing",
        )


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; ``argv`` (the command line) only picks ``simulate``'s kind options."""
    exit_status = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="e4sync",
        description="Keep a local, verified, dated archive of every Empatica E4 session "
        "stored on E4 Connect.",
        epilog=f"exit status:\n{exit_status}\n\nDocumentation: docs/index.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from e4sync.completion import DIRECTORY, FILE, SHELLS, hint

    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", help="`e4sync COMMAND --help` lists its options"
    )
    sub.required = True

    def command(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _global_options(p, suppress=True, command=name)
        p.set_defaults(func=func)
        return p

    command("run", cmd_run, "the daemon: a pass now, then every schedule.interval")
    p = command("run-once", cmd_run_once, "one sync pass over every account, then exit")
    p.add_argument("--json", action="store_true", help="print the pass report as JSON")
    p = command("status", cmd_status, "per account: last pass, counts per state, failures")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p = command("sessions", cmd_sessions, "the remote session list, with each local state")
    _format_options(p)
    p = command("devices", cmd_devices, "purchased devices")
    _format_options(p)
    command("whoami", cmd_whoami, "the account's user id")
    p = command("download", cmd_download, "one session, verified, outside the archive")
    p.add_argument("session_id", metavar="ID", help="the session's id on the platform")
    hint(
        p.add_argument(
            "-o",
            "--output",
            metavar="PATH",
            default=".",
            help="file or directory (default: the current directory); an existing file is "
            "never overwritten",
        ),
        FILE,
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing file (never one inside the archive root)",
    )
    p = command("remove", cmd_remove, "remove a remote session that has a verified local copy")
    p.add_argument("session_id", metavar="ID", help="the session's id on the platform")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--force",
        action="store_true",
        help="remove even without a verified local copy (the recording may be lost)",
    )
    p = command("verify", cmd_verify, "re-hash the archive against the state database")
    p.add_argument("--json", action="store_true", help="print what was found as JSON")
    p = command(
        "check", cmd_check, "the platform's listing against the archive, read-only: differences"
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="also fetch each archived item's bytes from the platform (to a temporary file) "
        "and compare their sha256",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p = command("retry", cmd_retry, "clear back-off so failed sessions are tried next pass")
    p.add_argument("session_id", metavar="ID", nargs="?", help="the session to try again")
    p.add_argument("--all", action="store_true", help="every failed or waiting session")
    p = command("reindex", cmd_reindex, "rebuild the state database from the sidecar files")
    p.add_argument(
        "--no-rehash",
        action="store_true",
        help="trust the sidecars' sha256 instead of re-reading every file",
    )
    p = command("db", cmd_db, "state database maintenance")
    p.add_argument("action", choices=["upgrade"], help="apply schema migrations")
    p = command("config", cmd_config, "check or show the configuration")
    p.add_argument(
        "action",
        choices=["check", "show"],
        help="check: read and validate it; show: print the effective configuration, secrets masked",
    )
    p.add_argument("--json", action="store_true", help="show: print it as JSON")
    p = command(
        "doctor", cmd_doctor, "check each account's password source and login, and the directories"
    )
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p = command("report", cmd_report, "hours recorded per device or participant and day")
    p.add_argument(
        "--by",
        choices=["device", "participant"],
        default="device",
        help="group by device (default) or by participant ([participants] file)",
    )
    p.add_argument(
        "--from",
        dest="first",
        metavar="DATE",
        type=_iso_date,
        help="first day (YYYY-MM-DD, in archive.timezone; default: the first with data)",
    )
    p.add_argument(
        "--to",
        dest="last",
        metavar="DATE",
        type=_iso_date,
        help="last day, included (default: the last with data)",
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print the report as JSON")
    shape.add_argument("--csv", action="store_true", help="print the rows as CSV, with a header")
    for fmt, what in (
        ("html", "a self-contained page: the heatmap and the totals"),
        ("png", "the heatmap alone as PNG"),
        ("svg", "the heatmap alone as SVG"),
    ):
        hint(
            shape.add_argument(
                f"--{fmt}", metavar="FILE", help=f"write {what} (needs e4sync[report])"
            ),
            FILE,
        )
    p = command("simulate", cmd_simulate, "run a platform's simulator on 127.0.0.1")
    _source_option(p)
    # Each kind's simulator has options of its own: those of the kind named on the line.
    _demo_module(_named_source(argv)).add_simulate_arguments(p)
    p = command(
        "demo",
        cmd_demo,
        "start a simulator, sync it into a fresh folder, show the tree and status",
    )
    _source_option(p)
    hint(
        p.add_argument("--dir", metavar="PATH", help="folder for the demo (default: a new one)"),
        DIRECTORY,
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the simulator running after the sync, until Ctrl-C, so the commands "
        "it suggests work",
    )
    p.add_argument(
        "--sessions",
        type=int,
        default=6,
        help="sessions the simulated account starts with (default 6)",
    )
    p = command("accounts", cmd_accounts, "import an e4client users file (email:password)")
    p.add_argument("action", choices=["import"], help="import: read a users file")
    hint(
        p.add_argument("users_file", metavar="FILE", help="one email:password per line"),
        FILE,
    )
    hint(
        p.add_argument(
            "--out",
            metavar="DIR",
            required=True,
            help="folder for the password files (created 0700, files 0600)",
        ),
        DIRECTORY,
    )
    p = command(
        "completion",
        cmd_completion,
        "print a bash or zsh completion script (e4sync completion bash > FILE)",
    )
    p.add_argument("shell", choices=SHELLS, help="the shell the script is for")
    return parser


def _format_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="print JSON")
    group.add_argument("--csv", action="store_true", help="print CSV")


# -- shared helpers ----------------------------------------------------------------------


def load(args: argparse.Namespace) -> Config:
    import dataclasses

    from e4sync.config import load_config

    cfg = load_config(args.config)
    if args.base_url:
        # The client validates the URL (http(s) only, plain http only on loopback).
        accounts = tuple(
            dataclasses.replace(a, options={**a.options, "base_url": args.base_url.rstrip("/")})
            for a in cfg.accounts
        )
        cfg = dataclasses.replace(cfg, accounts=accounts)
    if args.account:
        names = [a.name for a in cfg.accounts]
        if args.account not in names:
            raise UsageError(
                f"--account {args.account}: no such account (configured: "
                f"{', '.join(names) or 'none'})"
            )
        cfg = dataclasses.replace(
            cfg, accounts=tuple(a for a in cfg.accounts if a.name == args.account)
        )
    return cfg


def one_account(cfg: Config) -> AccountConfig:
    if len(cfg.accounts) != 1:
        names = ", ".join(a.name for a in cfg.accounts)
        raise UsageError(f"several accounts are configured ({names}): choose one with --account")
    return cfg.accounts[0]


def open_state(cfg: Config, check: bool = False, dry_run: bool = False):
    """The state database, migrated; ``check``: its integrity checked first (for the
    commands that trust the whole file or act on its word). An unusable state folder or
    database is one line first (exit 73), before any login. A ``dry_run`` creates nothing:
    with no database yet it plans against an empty one in a temporary folder."""
    from e4sync.folders import ensure_state
    from e4sync.state.db import default_sqlite_url, open_db

    ensure_state(cfg)
    url = cfg.state.url or default_sqlite_url(cfg.state.dir)
    if dry_run:
        from e4sync.state.db import scratch_url_if_missing

        url = scratch_url_if_missing(url)
    return open_db(url, check=check)


def raise_if_damaged(engine) -> None:
    """Raise the damage the engine met even if the code that met it carried on (a pass
    records per-session errors; a metrics write only warns)."""
    from e4sync.state.db import damage_found

    damage = damage_found(engine)
    if damage is not None:
        raise damage


@contextlib.contextmanager
def account_source(cfg: Config, account: AccountConfig) -> Iterator[Source]:
    """The account's source from the one factory (as the pass and ``doctor`` get theirs),
    closed when the block ends."""
    from e4sync.sources import make_source

    source = make_source(account, cfg)
    try:
        yield source
    finally:
        source.close()


def offered(source: Source, method: str, command: str) -> Any:
    """The source's optional ``method`` (see ``sources.Source``), or ``NotOffered`` naming
    the command and the source (exit 64)."""
    found = getattr(source, method, None)
    if found is None:
        raise NotOffered(f"{command}: not offered by source {source.name!r}")
    return found


def item_id(accounts: Sequence[AccountConfig], text: str) -> str:
    """An id a person gave, checked by the one rule of the accounts' kind: the first kind
    among ``accounts`` that accepts it (several kinds: an id is meant for one of them);
    none: the first kind's error."""
    from e4sync.sources import DEFAULT_SOURCE, kind

    refused: UsageError | None = None
    for name in dict.fromkeys(a.source for a in accounts) or (DEFAULT_SOURCE,):
        try:
            return kind(name).check_id(text)
        except UsageError as exc:
            refused = refused or exc
    assert refused is not None
    raise refused


def _demo_module(source: str = "") -> Any:
    """A kind's ``demo`` module (the default kind's): ``e4sync demo``'s platform and
    ``simulate``."""
    from e4sync.sources import DEFAULT_SOURCE, kind_module

    return kind_module(source or DEFAULT_SOURCE, "demo")


def _source_option(p: argparse.ArgumentParser) -> None:
    from e4sync.sources import DEFAULT_SOURCE, KINDS

    p.add_argument(
        "--source",
        choices=KINDS,
        default="",
        help=f"which platform (default: {DEFAULT_SOURCE})",
    )


def _named_source(argv: Sequence[str] | None) -> str:
    """The ``--source`` given on ``argv`` (``--source X`` or ``--source=X``), else ""."""
    from e4sync.sources import KINDS

    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        value = None
        if arg == "--source" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--source="):
            value = arg.split("=", 1)[1]
        if value is not None:
            return value if value in KINDS else ""  # argparse then names the choices
    return ""


def out(text: str = "") -> None:
    print(text, flush=True)


def print_json(data: Any) -> None:
    out(json.dumps(data, indent=2))


def print_table(rows: list[dict], columns: list[str], as_csv: bool) -> None:
    if as_csv:
        writer = csv.DictWriter(
            sys.stdout, fieldnames=columns, extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
        return
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    out("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        out("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


# -- commands ----------------------------------------------------------------------------


def cmd_run_once(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from e4sync.monitoring import monitored_pass
    from e4sync.progress import footer, for_terminal
    from e4sync.sync import run_pass

    cfg = load(args)
    engine = open_state(cfg, dry_run=args.dry_run)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    def on_hangup(_signum: int, _frame: object) -> None:
        # One pass reads its configuration once (the next run reads it again); dying
        # half-way through downloads because a terminal closed would help nobody.
        logging.getLogger("e4sync.cli").info(
            "received SIGHUP: ignored; run-once reads the configuration at each start"
        )

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    # Bars only on a terminal with tqdm installed (e4sync[progress]); never with -q.
    progress = None if args.quiet else for_terminal(sys.stderr)
    with progress or contextlib.nullcontext():
        report = monitored_pass(
            cfg,
            engine,
            lambda: run_pass(
                cfg,
                engine,
                dry_run=args.dry_run,
                stop=stop,
                on_progress=progress.on_progress if progress else None,
                on_bytes=progress.on_bytes if progress else None,
                on_download=progress.on_download if progress else None,
            ),
            dry_run=args.dry_run,
        )
    raise_if_damaged(engine)
    if args.json:
        print_json(_report_dict(report))
    elif not (args.quiet and _went_well(report)):
        _print_report(report)
        out(footer(report))
    engine.dispose()
    if received:
        return EXIT_SIGTERM if received[0] == signal.SIGTERM else EXIT_SIGINT
    return report.exit_code


def _went_well(report) -> bool:
    """Nothing for a person to see (``run-once -q`` prints nothing, for cron): a pass that
    planned nothing, failed nothing and found no archived copy lost or damaged."""
    return (
        not report.dry_run
        and report.exit_code == EXIT_OK
        and not any(a.lost for a in report.accounts)
    )


def _report_dict(report) -> dict:
    import dataclasses

    from e4sync.sync import iso

    return {
        "schema": 1,
        "started": iso(report.started_at),
        "finished": iso(report.finished_at),
        "dry_run": report.dry_run,
        "interrupted": report.interrupted,
        "exit_code": report.exit_code,
        "accounts": [dataclasses.asdict(a) for a in report.accounts],
    }


def _print_report(report) -> None:
    from e4sync.sync.report import plan_lines

    for a in report.accounts:
        if a.skipped:
            out(f"{a.name}: skipped ({a.skipped})")
            continue
        line = (
            f"{a.name}: {a.listed} listed, {a.new} new, {a.downloaded} downloaded "
            f"({a.bytes / 1e6:.1f} MB), {a.failed} failed, {a.deleted} deleted remotely"
        )
        if a.adopted:
            line += f", {a.adopted} already in the archive (verified and adopted, not downloaded)"
        if a.gone:
            line += f", {a.gone} vanished from the platform"
        if a.content_changed:
            line += (
                f", {a.content_changed} changed on the platform since archived (downloaded "
                "again, the archived copy kept beside it)"
            )
        if a.lost:
            line += f", {a.lost} archived copies lost or damaged on disk"
        out(line)
        if report.dry_run:
            for line in plan_lines(a):
                out(line)
        for error in a.errors[:20]:
            out(f"  error: {error}")
        if len(a.errors) > 20:
            out(f"  ... and {len(a.errors) - 20} more errors (see `e4sync status`)")


def cmd_run(args: argparse.Namespace) -> int:
    from e4sync.daemon import Daemon, check_logins
    from e4sync.state.db import make_worker_id
    from e4sync.sync import default_source_factory

    cfg = load(args)
    engine = open_state(cfg, dry_run=args.dry_run)
    if not args.dry_run:
        from e4sync.folders import ensure_archive

        ensure_archive(cfg)  # before the first login: a daemon that cannot archive says so
    worker_id = make_worker_id()
    # SIGHUP reads the file found at start again (not a new lookup), with the same options.
    again = argparse.Namespace(**{**vars(args), "config": cfg.path or args.config})
    # No source factory: each pass makes clients from its own configuration, so a reload
    # reaches the download settings too, and the stop event ends the clients' waits.
    daemon = Daemon(
        cfg, engine, worker_id=worker_id, dry_run=args.dry_run, reload=lambda: load(again)
    )
    factory = default_source_factory(cfg, daemon.stop)
    return daemon.run(check_login=lambda: check_logins(cfg, factory, engine, worker_id))


# The human status names this many lost or damaged copies per account (--json: up to 50).
STATUS_LOCAL_PROBLEMS_SHOWN = 10


def cmd_status(args: argparse.Namespace) -> int:
    from e4sync.status import report_for
    from e4sync.units import human_size

    cfg = load(args)
    names = [a.name for a in cfg.accounts] if args.account else None
    # A daemon heartbeats at least once a pass; it is stale only when it missed two.
    stale_after = 2 * (cfg.schedule.interval + cfg.schedule.jitter) + cfg.state.lease
    report = report_for(cfg, names, stale_after)
    # Any account NOT OK is a non-zero exit, for cron and Nagios-style checks (--json too).
    code = EXIT_OK if all(a["healthy"] for a in report["accounts"]) else EXIT_NOT_OK
    if args.json:
        print_json(report)
        return code
    if not report["accounts"]:
        out("no pass has run yet: try `e4sync run-once`")
    for a in report["accounts"]:
        c = a["counts"]
        health = "ok" if a["healthy"] else "NOT OK"
        out(f"{a['name']} (user {a['user_id'] or '?'}): {health}")
        for reason in a["reasons"]:
            out(f"  why: {reason}")
        out("  " + ", ".join(f"{k} {v}" for k, v in c.items()))
        out(f"  archive: {human_size(a['archive_bytes'])}")
        p = a["last_pass"]
        if p:
            out(
                f"  last pass: {p['finished'] or p['started']}, {p['downloaded']} downloaded, "
                f"{p['failed']} failed, {p['deleted']} deleted"
            )
            if p["paused"]:
                out(f"  downloads paused in the last pass: {p['paused']}")
        if a["last_error"] and not any(a["last_error"] in r for r in a["reasons"]):
            out(f"  last error: {a['last_error']}")
        if a.get("deletions_refused"):
            out(
                f"  deletions refused by the platform: {a['deletions_refused']} "
                "(`e4sync retry` asks again)"
            )
        problems = a["local_problems"]
        total = a["local_problems_total"]
        if total:
            out(f"  archived copies missing or damaged: {total} (see docs/recovery.md)")
            for p in problems[:STATUS_LOCAL_PROBLEMS_SHOWN]:
                out(f"  session {p['session']} ({p['state']}): {p['problem']}")
            if total > STATUS_LOCAL_PROBLEMS_SHOWN:
                out(f"  ... and {total - STATUS_LOCAL_PROBLEMS_SHOWN} more")
        # A marked session's queued download carries the problem as its error: said above.
        shown = {(p["session"], p["problem"]) for p in problems}
        failures = [f for f in a["failures"] if (f["session_id"], f["last_error"]) not in shown]
        for f in failures[:10]:
            out(
                f"  session {f['session_id']}: {f['state']}, {f['attempts']} attempts, "
                f"next {f['next_attempt'] or 'after `e4sync retry`'}: {f['last_error']}"
            )
    for w in report["workers"]:
        stale = " (stale)" if w["stale"] else ""
        out(f"worker {w['id']}: {w['current'] or 'idle'}, last seen {w['heartbeat']}{stale}")
    return code


def cmd_sessions(args: argparse.Namespace) -> int:
    from e4sync.sources import DEFAULT_LISTING_COLUMNS

    cfg = load(args)
    account = one_account(cfg)
    with account_source(cfg, account) as source:
        items = source.list_items().items
        columns = source.capabilities.listing_columns
    local = _local_states(cfg, account.name)
    items = sorted(items, key=lambda item: (item.recorded_at, item.id))
    if columns:
        table = [_item_row(item, columns, local, item.raw) for item in items]
    else:
        columns = DEFAULT_LISTING_COLUMNS
        table = [_item_row(item, columns, local, _attributes(item)) for item in items]
    if args.json:
        print_json(table)
    else:
        print_table(table, list(columns), args.csv)
    return EXIT_OK


def _local_states(cfg: Config, account: str) -> dict[str, tuple[str, str]]:
    """Each item's state and archived path (relative to the archive root) in the state
    database; none when it cannot be read, but a damaged one is said (not "no local
    state": every item would show as never archived)."""
    from sqlalchemy import select

    from e4sync.state.models import Account
    from e4sync.state.models import Session as SessionRow

    try:
        engine = open_state(cfg)
        with engine.connect() as conn:
            rows = conn.execute(
                select(SessionRow.remote_id, SessionRow.state, SessionRow.local_path)
                .join(Account, Account.id == SessionRow.account_id)
                .where(Account.name == account)
            ).all()
        engine.dispose()
    except StateDamaged:
        raise
    except E4SyncError:
        return {}
    return {remote_id: (state, path or "") for remote_id, state, path in rows}


def _item_row(
    item: Item, columns: Sequence[str], local: dict[str, tuple[str, str]], fields: Any
) -> dict:
    """One listed item as ``sessions`` shows it: the listed values from ``fields`` (the
    item's raw metadata, for a source that names its columns; else its attributes), then
    the core's ``start``, ``local_state`` and ``local_path`` (the order ``--json`` has
    always had). A field the listing did not send stays out of the row, as the platform
    left it out."""
    import datetime as dt

    state, path = local.get(item.id, ("", ""))
    core = {
        "start": dt.datetime.fromtimestamp(item.recorded_at, dt.UTC).isoformat(),
        "local_state": state,
        "local_path": path,
    }
    row = {c: fields[c] for c in columns if c not in core and c in fields}
    row.update((c, core[c]) for c in columns if c in core)
    return row


def _attributes(item: Item) -> dict[str, Any]:
    return {"id": item.id, "kind": item.kind, "size": item.size, "duration": item.duration}


def cmd_devices(args: argparse.Namespace) -> int:
    cfg = load(args)
    with account_source(cfg, one_account(cfg)) as source:
        devices = offered(source, "devices", "devices")()
    if args.json:
        print_json(devices.rows)
    else:
        print_table(devices.rows, list(devices.columns), args.csv)
    return EXIT_OK


def cmd_whoami(args: argparse.Namespace) -> int:
    cfg = load(args)
    with account_source(cfg, one_account(cfg)) as source:
        identity = source.identity()
        if not identity:
            raise NotOffered(f"whoami: not offered by source {source.name!r}")
    out(identity)
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    from e4sync.download import download_one, plan_target

    cfg = load(args)
    account = one_account(cfg)
    remote_id = item_id([account], args.session_id)
    # Before the source, which may log in at once: a target that is refused is one line.
    plan_target(args.output, cfg.archive.root, args.force)
    with account_source(cfg, account) as source:
        fetch = offered(source, "download", "download")
        path = download_one(fetch, remote_id, args.output, cfg.archive.root, force=args.force)
    out(str(path))
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from e4sync.sync import Outcome, remove_one

    cfg = load(args)
    account = one_account(cfg)
    session_id = item_id([account], args.session_id)

    def ask(item_id: str) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError("not on a terminal: add --yes to confirm the removal")
        answer = input(f"Remove {item_id} from the {account.source} platform? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    # A remote copy goes only on the word of a whole database.
    engine = open_state(cfg, check=True)
    try:
        removal = remove_one(
            cfg, engine, account, session_id, dry_run=args.dry_run, force=args.force, ask=ask
        )
    finally:
        engine.dispose()
    if removal.outcome is Outcome.WOULD_REMOVE:
        out(f"dry run: would remove remote session {session_id}")
    elif removal.outcome is Outcome.DECLINED:
        out("not removed")
    else:
        out(f"removed remote session {session_id}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from e4sync.archive import Archive
    from e4sync.maintenance import verify_archive

    cfg = load(args)
    engine = open_state(cfg)
    names = [a.name for a in cfg.accounts] if args.account else None
    report = verify_archive(engine, Archive(cfg.archive.root), names)
    if args.json:
        print_json(report.as_dict())
    else:
        for kind in ("missing", "changed", "unreadable"):
            for path in getattr(report, kind):
                out(f"{kind}: {path}")
        if report.requeued:
            out(f"{len(report.requeued)} of them will be downloaded again by the next pass")
        for path in report.lost:
            out(f"lost: {path}: the platform no longer holds it; restore it from a backup")
        for path in report.restored:
            out(f"restored: {path} matches its recorded sha256 again")
        for path in report.repaired_sidecars:
            out(f"repaired sidecar: {path} ({report.repair_reasons.get(path, 'damaged')})")
        for problem in report.sidecar_errors:
            out(f"sidecar not repaired: {problem}")
        out(f"{report.checked} files checked, {report.ok} match the state database")
    # A repaired sidecar is fixed: it is reported, but exit 1 means damage remains.
    return EXIT_OK if report.clean else EXIT_SESSIONS_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    from e4sync.check import check_accounts
    from e4sync.folders import ensure_state
    from e4sync.state.db import sqlite_path

    cfg = load(args)
    ensure_state(cfg)
    path = sqlite_path(cfg.state.url) if cfg.state.url else None
    # Read-only: a state database not created yet is not created to say nothing is archived.
    missing = path is not None and not os.path.lexists(os.path.expanduser(path))
    engine = None if missing else open_state(cfg)
    try:
        report = check_accounts(cfg, engine, download=args.download)
    finally:
        if engine is not None:
            engine.dispose()
    if args.json:
        print_json(report.as_dict())
    else:
        for line in report.lines():
            out(line)
    return report.exit_code


def cmd_retry(args: argparse.Namespace) -> int:
    from e4sync.maintenance import retry

    if bool(args.session_id) == bool(args.all):
        raise UsageError("retry needs a session ID or --all")
    cfg = load(args)
    ids = None if args.all else [item_id(cfg.accounts, args.session_id)]
    names = [a.name for a in cfg.accounts] if args.account else None
    engine = open_state(cfg)
    if ids is not None:
        from e4sync.maintenance import session_states
        from e4sync.state.states import DUE_STATES, FAILED

        states = session_states(engine, ids, names)
        if not states:
            where = f"account {args.account}" if args.account else "any account"
            raise UsageError(
                f"retry {ids[0]}: the state database knows no session {ids[0]} of {where} "
                "(`e4sync sessions` lists the platform's; `e4sync status` the failed ones)"
            )
        if not set(states.values()) & {*DUE_STATES, FAILED}:
            retry(engine, ids, names)  # still asks again for deletions a platform refused
            out(f"session {ids[0]} is {', '.join(sorted(set(states.values())))}: nothing to retry")
            return EXIT_OK
    count = retry(engine, ids, names)
    out(f"{count} session(s) will be tried on the next pass")
    return EXIT_OK


def cmd_reindex(args: argparse.Namespace) -> int:
    from e4sync.archive import Archive
    from e4sync.maintenance import reindex

    cfg = load(args)
    # Rebuilding into a damaged file would only mix good rows with bad: it must be moved
    # aside first (the error says how).
    result = reindex(
        open_state(cfg, check=True), Archive(cfg.archive.root), rehash=not args.no_rehash
    )
    out(f"{result.sidecars} sidecars read: {result.added} sessions added, {result.updated} updated")
    for path in result.missing_zip:
        out(f"missing: {path} (its sidecar exists, the ZIP does not)")
    for problem in result.bad:
        out(f"skipped: {problem}")
    return EXIT_OK if not (result.missing_zip or result.bad) else EXIT_SESSIONS_FAILED


def cmd_db(args: argparse.Namespace) -> int:
    from e4sync.state.db import current_revision

    cfg = load(args)
    engine = open_state(cfg, check=True)  # checked first, then migrated
    out(f"state database at revision {current_revision(engine)}")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from e4sync.config import effective_config, render_toml

    cfg = load(args)
    if args.action == "check":
        from e4sync.doctor import offline_problems

        where = cfg.path or "the environment (no configuration file)"
        problems, code = offline_problems(cfg)
        if problems:
            print(
                f"e4sync: {where} reads, but {len(problems)} problem(s) would stop e4sync:",
                file=sys.stderr,
            )
            for problem in problems:
                print(f"e4sync: {problem}", file=sys.stderr)
            return code
        out(
            f"{where}: ok, {len(cfg.accounts)} account(s): "
            f"{', '.join(a.name for a in cfg.accounts)}"
        )
        return EXIT_OK
    shown = effective_config(cfg)
    if args.json:
        print_json(shown)
    else:
        out(render_toml(shown).rstrip("\n"))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from e4sync.doctor import run_checks

    cfg = load(args)
    checks, damage = run_checks(cfg)
    if args.json:
        print_json({"schema": 1, "checks": checks})
    else:
        for c in checks:
            out(f"[{'ok' if c['ok'] else 'FAIL'}] {c['what']}: {c['detail']}")
    if damage is not None:
        raise damage  # its own exit code and line, after every check was shown
    return EXIT_OK if all(c["ok"] for c in checks) else EXIT_SESSIONS_FAILED


def _iso_date(text: str) -> Any:
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def cmd_report(args: argparse.Namespace) -> int:
    from e4sync.report import as_csv, as_json, as_table, report_for

    cfg = load(args)
    if args.first and args.last and args.last < args.first:
        raise UsageError("--to is before --from")
    report = report_for(cfg, by=args.by, first=args.first, last=args.last)
    if args.json:
        print_json(as_json(report))
    elif args.csv:
        sys.stdout.write(as_csv(report))
    elif args.html or args.png or args.svg:
        from pathlib import Path

        from e4sync import report_plot
        from e4sync.errors import CantCreate

        target = Path(args.html or args.png or args.svg)
        try:
            if args.html:
                report_plot.write_html(report, target)
            else:
                report_plot.write_heatmap(report, target, "png" if args.png else "svg")
        except OSError as exc:
            raise CantCreate(f"cannot write {target}: {exc.strerror or exc}", str(target)) from None
    else:
        sys.stdout.write(as_table(report))
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    return _demo_module(args.source).simulate(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from e4sync.demo import run_demo

    return run_demo(
        args.dir, sessions=args.sessions, quiet=args.quiet, source=args.source, keep=args.keep
    )


def cmd_completion(args: argparse.Namespace) -> int:
    from e4sync.completion import script

    sys.stdout.write(script(build_parser([]), args.shell))
    return EXIT_OK


def cmd_accounts(args: argparse.Namespace) -> int:
    from e4sync.credentials import import_users_file

    snippet = import_users_file(args.users_file, args.out)
    out(snippet)
    return EXIT_OK


# -- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    given = {arg.split("=", 1)[0] for arg in unknown}
    if (args.dry_run or "--dry-run" in given) and args.command not in DRY_RUN_COMMANDS:
        # Accepted and ignored, it would promise "change nothing" to a command that changes.
        parser.error(f"--dry-run is for {', '.join(DRY_RUN_COMMANDS)}, not {args.command}")
    refused = [o for o in CONFIG_OPTIONS if o in given or getattr(args, o[2:].replace("-", "_"))]
    if refused and args.command in NO_CONFIG_COMMANDS:
        parser.error(f"{refused[0]} is not for {args.command}: it reads no configuration")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    import logging

    from e4sync.notify import setup_logging

    setup_logging(
        -1 if args.quiet else args.verbose,
        base=logging.INFO if args.command in PASS_COMMANDS else logging.WARNING,
        level=args.log_level,
        fmt=args.log_format,
    )
    try:
        return args.func(args)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"e4sync: {line}", file=sys.stderr)
        return exc.exit_code
    except StateDamaged as exc:
        return _damaged(exc, args)
    except E4SyncError as exc:
        print(f"e4sync: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_SIGINT
    except BrokenPipeError:
        # stdout closed early (`e4sync sessions | head`): not an error worth a traceback.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_SESSIONS_FAILED
    except Exception as exc:
        # A state database locked by another process, or a PostgreSQL server that is down:
        # temporary (75), said in one line.
        if "sqlalchemy" not in sys.modules:
            raise
        from e4sync.state.db import database_busy, database_damaged

        damage = database_damaged(exc)
        if damage is not None:
            # Met outside an engine's hook (which would have named the file).
            return _damaged(damage, args)
        busy = database_busy(exc)
        if busy is None:
            raise
        print(f"e4sync: error: {busy}", file=sys.stderr)
        return busy.exit_code


def _damaged(exc: StateDamaged, args: argparse.Namespace) -> int:
    """The one line for a damaged state database, its ``reindex`` with the ``--config``
    this command was given, so both commands it names can be pasted as they are."""
    import shlex

    from e4sync.state.damage import state_damaged

    if "sqlalchemy" in sys.modules:
        from e4sync.state.db import close_damaged_engines

        close_damaged_engines()
    if exc.path:
        # Said again once the connections are closed: the `mv` names the files still there.
        exc = state_damaged(exc.path, exc.reason)
    if args.config:
        exc = exc.with_reindex(f"e4sync --config {shlex.quote(args.config)} reindex")
    print(f"e4sync: error: {exc}", file=sys.stderr)
    return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
