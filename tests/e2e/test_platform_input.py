"""Never trust the platform: hostile listing rows and hostile ZIPs from the simulator (its
``set_listing_hook`` and ``replace_zip`` test hooks), fetched by real `e4sync run-once` passes
into a real archive.

Labels, devices and ids such as ``../../etc``, ``a/b\\c``, ``con``, NUL bytes and 10 kB
strings, numbers where strings were expected, duplicate ids, an empty list where sessions
existed, a listing that is an object, ZIPs with members whose names escape, a ZIP bomb, a ZIP
with no E4 file. After each: every genuine session is archived byte for byte or refused and
retried (never verified while wrong), and nothing at all is written outside the archive root
and the state folder (the whole tmp tree is walked). A ZIP with one more harmless member (the
simulator's ``extra_member_sessions`` fault) is the platform's data: archived, with a warning.
"""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile
from pathlib import Path

import pytest

from e4sync.sources.e4connect.simulator import Faults, Simulator, zipgen
from tests.conftest import REMOTE_DELETE, archived, states, write_config

HOSTILE_TEXT = [
    "../../etc",
    "a/b\\c",
    "con",
    "x\x00y",
    "9" * 10_000,
    "..",
    "/etc/passwd",
    "C:\\Windows",
    "\u202eevil",
    "line\nbreak",
    "",
]
# One level down, so a ``../..`` escape from the root lands in tmp_path, where it shows.
DEEP = Path("deep") / "archive"
# Every placeholder, so every listed value reaches a path.
LAYOUT = (
    "{account}/{device}/{device_id}/{label}/{start:%Y}/"
    "{start_time}_{device_serial}_{session_id}_{duration}_{user_id}.zip"
)


def tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_nothing_written_outside(
    tmp_path: Path, before: set[Path], parent_before: set[Path]
) -> None:
    """Every new path lies under the archive root or the state folder; nothing new beside
    tmp_path either (where a ``../..`` escape from tmp_path/deep/archive would land)."""
    archive, state = tmp_path / "deep" / "archive", tmp_path / "state"
    ours = {tmp_path / "config.toml", tmp_path / "lab.password", tmp_path / "deep"}
    new = tree(tmp_path) - before - ours
    stray = [p for p in new if not (p.is_relative_to(archive) or p.is_relative_to(state))]
    assert list((tmp_path / "deep").iterdir()) == [archive]
    assert not stray, f"written outside the archive root: {sorted(stray)[:10]}"
    assert set(tmp_path.parent.iterdir()) == parent_before
    for p in tree(archive):
        assert p.resolve().is_relative_to(archive.resolve()), f"{p} resolves outside the root"


@pytest.fixture
def watched(tmp_path):
    """The tmp tree before the test, checked after it."""
    before, parent_before = tree(tmp_path), set(tmp_path.parent.iterdir())
    yield
    assert_nothing_written_outside(tmp_path, before, parent_before)


def hostile_listing(genuine_ids: list[str]):
    """Rewrite the real rows' labels, devices and device ids with hostile text and numbers,
    then add duplicates, rows with hostile ids and rows that are not sessions at all."""

    def hook(_user: str, rows: list[dict]) -> list:
        out = []
        for row in rows:
            i = genuine_ids.index(str(row["id"]))
            bad = HOSTILE_TEXT[i % len(HOSTILE_TEXT)]
            out.append(
                {
                    **row,
                    "label": bad if i % 3 else 2588.0,
                    "device": HOSTILE_TEXT[(i + 3) % len(HOSTILE_TEXT)],
                    "device_id": bad,
                    "status": 0,
                    "exit_code": None,
                    "extra\x00field": "x" * 10_000,
                }
            )
        first = out[0]
        out.append(dict(first))  # the same session twice
        out.append({**first, "label": "a different label"})  # twice, disagreeing
        for bad_id in [
            *HOSTILE_TEXT,
            None,
            12.5,
            -3,
            True,
            [],
            {},
            "１２３",
            "0x1f",
            "1e3",
            "9" * 21,
        ]:
            out.append({**first, "id": bad_id})
        return out

    return hook


def test_hostile_listing_rows_stay_inside_the_archive(tmp_path, run_cli, watched):
    faults = Faults(string_numbers=True)  # every other row: numbers where strings were
    with Simulator(
        port=0, seed=41, sessions=len(HOSTILE_TEXT), session_size=20_000, faults=faults
    ) as sim:
        genuine = [r["id"] for r in sim.sessions()]
        sim.set_listing_hook(hostile_listing(genuine))
        config = write_config(
            tmp_path, sim.base_url, archive={"root": tmp_path / DEEP, "layout": LAYOUT}
        )
        result = run_cli("run-once", "--config", str(config))
        assert "Traceback" not in result.err
        archive = tmp_path / "deep" / "archive"
        zips = archived(archive)
        assert set(zips) == set(genuine), "every genuine session, and nothing else"
        for sid, path in zips.items():
            assert path.read_bytes() == sim.zip_bytes(sid)
            assert path.resolve().is_relative_to(archive.resolve())
            assert all(len(part.encode()) <= 255 for part in path.parts)
        assert set(states(tmp_path / "state")) == set(genuine), "a hostile id became a session row"
        # A second pass with the same hostile list is quiet: nothing new, nothing changed.
        again = json.loads(run_cli("run-once", "--config", str(config), "--json").out)
        (account,) = again["accounts"]
        assert (account["new"], account["changed"], account["downloaded"]) == (0, 0, 0)
        # The commands that print the remote list cope too.
        run_cli("sessions", "--config", str(config), "--json")
        run_cli("sessions", "--config", str(config), "--csv")


EXTREME_ROWS = [
    {
        "id": "900000001",
        "start_time": "-1",
        "duration": "NaN",
        "label": "1e400",
        "device_id": "c004bc",
        "device": "E4 2.2",
        "status": "0",
        "exit_code": "0",
    },
    {
        "id": "900000002",
        "start_time": "1541950248.75",
        "duration": "-5",
        "label": "inf",
        "device_id": 7,
        "device": 2.1,
        "status": 0,
        "exit_code": None,
    },
    {
        "id": 900000003,
        "start_time": 1541950248,
        "duration": 1e300,
        "label": -1,
        "device_id": None,
        "device": None,
    },
]


def run_with_extra_rows(tmp_path: Path, run_cli, extra: list[dict]) -> None:
    with Simulator(port=0, seed=42, sessions=2, session_size=20_000) as sim:
        genuine = [r["id"] for r in sim.sessions()]
        sim.set_listing_hook(lambda _user, rows: rows + extra)
        config = write_config(
            tmp_path, sim.base_url, archive={"root": tmp_path / DEEP, "layout": LAYOUT}
        )
        # Those sessions do not exist on the platform (404 on download): failed, retried.
        result = run_cli("run-once", "--config", str(config), exit_code=1)
        assert "Traceback" not in result.err
        assert set(archived(tmp_path / "deep" / "archive")) == set(genuine)
        rows = states(tmp_path / "state")
        assert {s for s, row in rows.items() if row.state == "verified"} == set(genuine)
        assert {str(r["id"]) for r in extra} <= set(rows)
        run_cli("sessions", "--config", str(config), "--json")
        run_cli("status", "--config", str(config), "--json", exit_code=1)  # failed: NOT OK


def test_extreme_numbers_in_listed_rows_are_coerced_not_fatal(tmp_path, run_cli, watched):
    run_with_extra_rows(tmp_path, run_cli, EXTREME_ROWS)


@pytest.mark.parametrize("start_time", ["1e30", 1e300, "99999999999999999999"])
def test_a_start_time_beyond_any_date_is_coerced_not_fatal(tmp_path, run_cli, watched, start_time):
    row = {**EXTREME_ROWS[0], "id": "900000009", "start_time": start_time}
    run_with_extra_rows(tmp_path, run_cli, [row])


def test_an_empty_list_where_sessions_existed_is_never_everything_deleted(
    tmp_path, run_cli, watched
):
    remote = {**REMOTE_DELETE, "delete_grace": "1d"}
    with Simulator(port=0, seed=43, sessions=3, session_size=20_000) as sim:
        ids = {r["id"] for r in sim.sessions()}
        config = write_config(
            tmp_path, sim.base_url, archive={"root": tmp_path / DEEP}, remote=remote
        )
        run_cli("run-once", "--config", str(config))
        before = {sid: p.read_bytes() for sid, p in archived(tmp_path / "deep" / "archive").items()}
        assert set(before) == ids
        sim.set_listing_hook(lambda _user, _rows: [])  # a platform glitch: nothing listed
        # Even with the grace period over, an untrusted listing deletes nothing.
        write_config(
            tmp_path,
            sim.base_url,
            archive={"root": tmp_path / DEEP},
            remote={**remote, "delete_grace": "0s"},
        )
        result = run_cli("run-once", "--config", str(config), exit_code=1)
        assert "empty session list" in result.out
        assert {s: row.state for s, row in states(tmp_path / "state").items()} == dict.fromkeys(
            ids, "verified"
        )
        assert sim.deleted_ids() == set()
        status = json.loads(run_cli("status", "--config", str(config), "--json", exit_code=1).out)
        assert status["accounts"][0]["counts"]["remote_gone"] == 0
        after = {sid: p.read_bytes() for sid, p in archived(tmp_path / "deep" / "archive").items()}
        assert after == before


def test_an_empty_re_listing_never_confirms_a_deletion(tmp_path, run_cli, watched):
    remote = {**REMOTE_DELETE, "max_deletes_per_pass": 1}
    # The DELETE is answered 200 but the session stays (a fault the protocol file lists).
    with Simulator(port=0, seed=44, sessions=3, faults=Faults(delete_lingers=1.0)) as sim:
        config = write_config(tmp_path, sim.base_url, archive={"root": tmp_path / DEEP})
        run_cli("run-once", "--config", str(config))
        write_config(tmp_path, sim.base_url, archive={"root": tmp_path / DEEP}, remote=remote)
        listings = []

        def glitch_after_the_first(_user, rows):
            listings.append(len(rows))
            return rows if len(listings) == 1 else []

        sim.set_listing_hook(glitch_after_the_first)
        run_cli("run-once", "--config", str(config), exit_code=None)
        assert len(listings) == 2, "the pass re-lists to confirm its deletion"
        by_id = {sid: row.state for sid, row in states(tmp_path / "state").items()}
        # Still on the platform, so never remote_deleted on the word of an empty list.
        assert "remote_deleted" not in by_id.values()
        assert set(by_id.values()) == {"verified"}
        db = sqlite3.connect(tmp_path / "state" / "state.db")
        try:
            ledger = db.execute("select result, confirmed_at from deletions").fetchall()
        finally:
            db.close()
        assert ledger == [("requested", None)]


def with_member(data: bytes, name: str, content: bytes = b"echo pwned\n") -> bytes:
    """The genuine ZIP plus one more member."""
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo(name), content)
    return out.getvalue()


def zip_bomb(member: str = "EDA.csv", size: int = 64 << 20) -> bytes:
    """A valid E4-looking ZIP whose one CSV expands about 1000 times (64 MiB from ~64 KiB)."""
    out = io.BytesIO()
    info = zipfile.ZipInfo(member)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(info, "w") as f:
            f.write(b"1541950248.000000\n4.000000\n")
            block = b"0.000000\n" * (1 << 16)
            written = 0
            while written < size:
                f.write(block)
                written += len(block)
        zf.writestr("info.txt", b"e4 session\n")
    return out.getvalue()


# A harmless extra member is archived with a warning (the next tests); a member whose name
# could leave a folder, or one that claims to expand like a bomb, is refused.
@pytest.mark.parametrize(
    "member", ["../../evil.csv", "/etc/evil.csv", "sub/ACC.csv", "C:evil.csv", "bomb"]
)
def test_a_zip_that_is_not_an_e4_session_is_refused_then_retried(
    tmp_path, run_cli, watched, member
):
    with Simulator(port=0, seed=44, sessions=2, session_size=20_000) as sim:
        victim, other = (r["id"] for r in sim.sessions())
        genuine = sim.zip_bytes(victim)
        bad = zip_bomb() if member == "bomb" else with_member(genuine, member)
        sim.replace_zip(victim, bad)
        config = write_config(tmp_path, sim.base_url, archive={"root": tmp_path / DEEP})
        result = run_cli("run-once", "--config", str(config), exit_code=1)
        expected = "ZIP bomb" if member == "bomb" else repr(member)
        assert expected in result.out, result.out
        archive = tmp_path / "deep" / "archive"
        assert set(archived(archive)) == {other}, "a refused ZIP was archived"
        assert not list(archive.rglob("*.part"))
        # Never unpacked anywhere: no file in the whole tmp tree is anywhere near its size.
        biggest = max(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
        assert biggest < 2 * max(len(bad), len(genuine), 1 << 20)
        assert states(tmp_path / "state")[victim][0] != "verified"
        downloads = sim.stats()["requests"]["download"]
        run_cli("run-once", "--config", str(config), exit_code=1)  # refused again, not stuck
        assert sim.stats()["requests"]["download"] == downloads + 1
        assert states(tmp_path / "state")[victim][1] == 2
        sim.replace_zip(victim, None)
        run_cli("run-once", "--config", str(config))
        zips = archived(archive)
        assert zips[victim].read_bytes() == genuine


def sidecar_of(zip_path: Path) -> dict:
    return json.loads(zip_path.with_suffix(".json").read_text())


def test_a_zip_with_an_extra_member_is_archived_at_once_with_a_warning(tmp_path, run_cli, watched):
    with Simulator(port=0, seed=45, sessions=2, session_size=20_000) as sim:
        victim, other = (r["id"] for r in sim.sessions())
        sim.set_faults(Faults(extra_member_sessions=[victim]))
        config = write_config(tmp_path, sim.base_url, archive={"root": tmp_path / DEEP})
        result = run_cli("run-once", "--config", str(config))
        archive = tmp_path / "deep" / "archive"
        zips = archived(archive)
        assert set(zips) == {victim, other}
        # Archived byte for byte as served, notes.txt included, on the first download.
        assert zips[victim].read_bytes() == sim.zip_bytes(victim)
        assert zipgen.EXTRA_MEMBER in zipfile.ZipFile(zips[victim]).namelist()
        assert sim.stats()["requests"]["download"] == 2
        assert {s: row[:2] for s, row in states(tmp_path / "state").items()} == {
            victim: ("verified", 0),
            other: ("verified", 0),
        }
        (warning,) = sidecar_of(zips[victim])["warnings"]
        assert repr(zipgen.EXTRA_MEMBER) in warning and "not an E4 file" in warning
        assert "warnings" not in sidecar_of(zips[other])
        # One WARNING line in the log for that download, naming the session and the member.
        lines = [line for line in result.err.splitlines() if zipgen.EXTRA_MEMBER in line]
        assert len(lines) == 1, result.err
        assert " WARNING " in lines[0] and f"session {victim}" in lines[0], lines[0]
        # The archive keeps agreeing with itself: verify re-hashes it, reindex reads it back.
        run_cli("verify", "--config", str(config))
        again = json.loads(run_cli("run-once", "--config", str(config), "--json").out)
        assert again["accounts"][0]["downloaded"] == 0


def test_download_of_a_zip_with_an_extra_member_succeeds_and_warns(tmp_path, run_cli):
    with Simulator(port=0, seed=46, sessions=1, session_size=20_000) as sim:
        (sid,) = (r["id"] for r in sim.sessions())
        sim.set_faults(Faults(extra_member_sessions=[sid]))
        config = write_config(tmp_path, sim.base_url, archive={"root": tmp_path / DEEP})
        target = tmp_path / "one.zip"
        result = run_cli("download", sid, "-o", str(target), "--config", str(config))
        assert result.out.strip() == str(target)
        assert target.read_bytes() == sim.zip_bytes(sid)
        lines = [line for line in result.err.splitlines() if zipgen.EXTRA_MEMBER in line]
        assert len(lines) == 1 and " WARNING " in lines[0] and sid in lines[0], result.err


def test_a_zip_with_no_e4_file_at_all_is_still_refused(tmp_path, run_cli, watched):
    with Simulator(port=0, seed=47, sessions=2, session_size=20_000) as sim:
        victim, other = (r["id"] for r in sim.sessions())
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("notes.txt", b"nothing recorded\n")
            zf.writestr("info.txt", b"e4 session\n")
        sim.replace_zip(victim, out.getvalue())
        config = write_config(tmp_path, sim.base_url, archive={"root": tmp_path / DEEP})
        result = run_cli("run-once", "--config", str(config), exit_code=1)
        assert "no E4 data CSV" in result.out, result.out
        assert set(archived(tmp_path / "deep" / "archive")) == {other}
        assert states(tmp_path / "state")[victim][0] != "verified"


@pytest.mark.parametrize(
    "listing", [{"error": "Service temporarily unavailable"}, {}, "maintenance", None, 7]
)
def test_a_listing_that_is_not_a_list_is_a_platform_problem(tmp_path, run_cli, watched, listing):
    """A JSON object (or any other shape) where the session list belongs is the platform's
    fault, not a failed session: 75, said once, and nothing taken for vanished."""
    with Simulator(port=0, seed=48, sessions=3, session_size=20_000) as sim:
        config = write_config(tmp_path, sim.base_url, archive={"root": tmp_path / DEEP})
        run_cli("run-once", "--config", str(config))
        before = {s: row[:2] for s, row in states(tmp_path / "state").items()}
        assert {st for st, _ in before.values()} == {"verified"}
        sim.set_listing_hook(lambda _user, _rows: listing)
        result = run_cli("run-once", "--config", str(config), exit_code=75)
        assert "Traceback" not in result.err
        said = [line for line in (result.out + result.err).splitlines() if "session list" in line]
        assert said and all("not a list" in line for line in said), result.out + result.err
        assert len([line for line in result.err.splitlines() if " ERROR " in line]) == 1
        if isinstance(listing, dict) and listing.get("error"):
            assert "Service temporarily unavailable" in said[0]
        after = {s: row[:2] for s, row in states(tmp_path / "state").items()}
        assert after == before, "nothing recorded as vanished or gone"
        assert "vanished" not in result.err
        status = json.loads(run_cli("status", "--config", str(config), "--json", exit_code=1).out)
        assert status["accounts"][0]["counts"]["remote_gone"] == 0
        shown = run_cli("sessions", "--config", str(config), exit_code=75)
        (line,) = shown.err.strip().splitlines()[-1:]
        assert line.startswith("e4sync: error: ") and "session list" in line, shown.err
        sim.set_listing_hook(None)
        run_cli("run-once", "--config", str(config))
