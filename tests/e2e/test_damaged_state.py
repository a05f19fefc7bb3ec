"""A damaged SQLite state database (issue 11, item 5): real damaged files, real commands.

The database is made by a real ``run-once`` against the simulator on 127.0.0.1 (enough
sessions for the ``sessions`` table to span several pages), then damaged three ways:
garbage bytes in place of the file, the file truncated to half its size, and one page in
the middle of the ``sessions`` table overwritten with garbage (found by walking the table's
b-tree; the page size comes from the file's own header, as ``PRAGMA page_size`` reports it).

Every command that opens the database must then exit 65 (EX_DATAERR) with one line on
stderr that names the file, says it is damaged and gives the exact ``mv`` and ``e4sync
reindex`` that rebuild it, and no traceback; and after that ``mv``, ``reindex`` must
rebuild the database from the archive's sidecars so that ``status`` shows every session.

Most commands run in-process (``cli.main``); ``status`` (whose fast path reads SQLite with
the standard library) and ``run`` (the daemon, which meets a damaged page mid-pass) also
run as real ``python -m e4sync`` processes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e4sync import cli
from e4sync.errors import EXIT_DATAERR
from e4sync.sources.e4connect.simulator import Simulator
from tests.conftest import e4sync_cmd, write_config

SESSIONS = 60
KINDS = ("garbage", "truncated", "damaged-page")
SCHEDULE = {"interval": "1h", "jitter": "0s"}
LEAKY = ("E4SYNC_CONFIG", "E4_USER", "E4_PWD", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET")


@dataclass
class Pristine:
    sim: Simulator
    dir: Path  # state/ and archive/ of a whole, real pass
    session_ids: list[str]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pristine]:
    """One real pass of ``SESSIONS`` small sessions; each test copies its result."""
    base = tmp_path_factory.mktemp("pristine")
    with Simulator(port=0, seed=5, sessions=SESSIONS, session_size=3000) as sim:
        config = write_config(base, sim.base_url, schedule=SCHEDULE)
        with pytest.MonkeyPatch.context() as mp:
            for var in LEAKY:
                mp.delenv(var, raising=False)
            assert cli.main(["run-once", "-q", "--config", str(config)]) == 0
        ids = sorted(s["id"] for s in sim.sessions())
        assert len(ids) == SESSIONS
        yield Pristine(sim, base, ids)


@dataclass
class Damaged:
    config: Path
    db: Path
    archive: Path
    sim: Simulator
    session_ids: list[str]


@pytest.fixture(params=KINDS)
def damaged(request: pytest.FixtureRequest, pristine: Pristine, tmp_path: Path) -> Damaged:
    """A copy of the pristine pass, its state database damaged as ``request.param`` says."""
    shutil.copytree(pristine.dir / "state", tmp_path / "state")
    # Hard links: fast, and e4sync replaces archive files by rename, never writes into them.
    shutil.copytree(pristine.dir / "archive", tmp_path / "archive", copy_function=os.link)
    config = write_config(tmp_path, pristine.sim.base_url, schedule=SCHEDULE)
    db = (tmp_path / "state" / "state.db").resolve()
    damage(db, request.param)
    return Damaged(config, db, tmp_path / "archive", pristine.sim, pristine.session_ids)


def damage(db: Path, kind: str) -> None:
    assert not Path(f"{db}-wal").exists(), "the pass left a WAL: the damage would not stick"
    if kind == "garbage":
        db.write_bytes(os.urandom(8192) + b"not a database at all\n" * 100)
    elif kind == "truncated":
        os.truncate(db, db.stat().st_size // 2)
    else:
        page_size, leaves = table_leaves(db, "sessions")
        assert len(leaves) >= 4, f"the sessions table has only {len(leaves)} pages"
        page = leaves[len(leaves) // 2]
        with open(db, "r+b") as f:
            f.seek((page - 1) * page_size)  # a page boundary
            f.write(os.urandom(page_size))


def table_leaves(db: Path, table: str) -> tuple[int, list[int]]:
    """The page size and the leaf pages of ``table``'s b-tree, in key order (SQLite's file
    format: interior table pages are type 5, leaves type 13)."""
    with sqlite3.connect(db) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,))
        root = root.fetchone()[0]
    conn.close()
    data = db.read_bytes()
    leaves: list[int] = []

    def walk(page: int) -> None:
        start = (page - 1) * page_size
        header = start + (100 if page == 1 else 0)
        kind = data[header]
        if kind == 13:
            leaves.append(page)
            return
        assert kind == 5, f"page {page} is of type {kind}"
        cells = struct.unpack(">H", data[header + 3 : header + 5])[0]
        for i in range(cells):
            offset = struct.unpack(">H", data[header + 12 + 2 * i : header + 14 + 2 * i])[0]
            walk(struct.unpack(">I", data[start + offset : start + offset + 4])[0])
        walk(struct.unpack(">I", data[header + 8 : header + 12])[0])

    walk(root)
    return page_size, leaves


def run_in_process(*argv: str) -> tuple[int, str, str]:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for var in LEAKY:
            mp.delenv(var, raising=False)
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def assert_one_clear_line(d: Damaged, code: int, err: str, only_line: bool = True) -> str:
    """Exit 65, one ``e4sync:`` line naming the file, the damage, the ``mv`` and ``reindex``;
    no traceback. ``only_line``: nothing else on stderr (commands that log nothing)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("e4sync:")]
    assert len(lines) == 1, err
    line = lines[0]
    if only_line:
        assert err.strip() == line, err
    assert code == EXIT_DATAERR, err
    assert str(d.db) in line and "damaged" in line, line
    assert f"mv {d.db} {d.db}.damaged" in line, line
    assert "e4sync --config" in line and "reindex" in line, line
    return line


# Each command that opens the state database (`run` is below, as a real process), and
# whether it says nothing on stderr but its error (`sessions` and `doctor` log their login).
COMMANDS = {
    "run-once": (["run-once"], False),
    "status": (["status"], True),
    "status --json": (["status", "--json"], True),
    "sessions": (["sessions"], False),
    "verify": (["verify"], True),
    "reindex": (["reindex"], True),
    "retry --all": (["retry", "--all"], True),
    "retry ID": (["retry", "FIRST"], True),
    "db upgrade": (["db", "upgrade"], True),
    "doctor": (["doctor"], False),
    "remove": (["remove", "FIRST", "--yes"], True),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_exits_65_with_one_clear_line(damaged: Damaged, name: str) -> None:
    argv, only_line = COMMANDS[name]
    argv = [damaged.session_ids[0] if a == "FIRST" else a for a in argv]
    code, out, err = run_in_process(*argv, "--config", str(damaged.config))
    assert_one_clear_line(damaged, code, err, only_line)
    # A damaged database never lets a remote copy go.
    assert not damaged.sim.deleted_ids()


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["run"]])
def test_a_real_process_exits_65_with_one_clear_line(damaged: Damaged, argv: list[str]) -> None:
    """``python -m e4sync``: ``status`` by its sqlite3 fast path, and the daemon, which with a
    damaged page opens the database, logs in and meets the damage in its first pass: it must
    log the line and stop with 65, not keep trying every interval."""
    result = e4sync_cmd(*argv, "--config", str(damaged.config), timeout=60)
    assert_one_clear_line(damaged, result.returncode, result.stderr, only_line=argv != ["run"])
    assert result.stdout == ""


def test_the_mv_it_gives_then_reindex_rebuild_the_database(damaged: Damaged) -> None:
    code, _, err = run_in_process("status", "--config", str(damaged.config))
    line = assert_one_clear_line(damaged, code, err)
    # Run the very commands the line gives, up to `e4sync reindex` (run here in-process).
    mv = line.split("`")[1]
    assert mv.startswith("mv "), line
    subprocess.run(mv, shell=True, check=True)
    assert not damaged.db.exists() and Path(f"{damaged.db}.damaged").is_file()
    reindex = shlex.split(line.split("`")[3])
    assert reindex[0] == "e4sync" and reindex[-1] == "reindex", line
    code, out, err = run_in_process(*reindex[1:])
    assert code == 0, out + err
    assert f"{SESSIONS} sidecars read: {SESSIONS} sessions added" in out
    code, out, err = run_in_process("status", "--json", "--config", str(damaged.config))
    assert code == 1, err  # rebuilt, but no pass has run on it yet: NOT OK, and why
    (account,) = json.loads(out)["accounts"]
    assert account["name"] == "lab" and account["reasons"][0].startswith("no pass has run yet")
    assert account["counts"]["verified"] == SESSIONS
    code, out, err = run_in_process("verify", "--config", str(damaged.config))
    assert code == 0, out + err
    assert f"{SESSIONS} files checked, {SESSIONS} match" in out
