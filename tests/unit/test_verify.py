"""Tests for e4sync.verify: real E4 recordings (realdata), zipped on the fly or as their
authors shipped them, and hand-made broken archives. No mocks: real files in tmp_path."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from e4sync.sources.e4connect.checks import (
    E4_MEMBERS,
    RATIO_FLOOR,
    check_zip,
    looks_like_html,
    sha256_file,
)

REALDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata"
E4TOOLS_ZIPS = sorted((REALDATA / "e4tools").glob("*/*.zip"))
DEVICELY_START = 1551453301
FLIRT_START = 1560279825


def zip_folder(folder: Path, dest: Path) -> Path:
    """Zip a realdata folder's E4 files the way E4 Connect did (flat, deflated)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(E4_MEMBERS):
            zf.write(folder / name, name)
    return dest


def make_zip(dest: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(dest, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dest


def good_members(start: int = 1600000000) -> dict[str, bytes]:
    return {
        "EDA.csv": f"{start}.000000\n4.000000\n0.1\n0.2\n".encode(),
        "ACC.csv": f"{start}.0, {start}.0, {start}.0\n32.0, 32.0, 32.0\n1,2,3\n".encode(),
        "HR.csv": f"{start + 10}.000000\n1.000000\n80.00\n".encode(),
        "IBI.csv": f"{start}.000000, IBI\n1.5,0.8\n".encode(),
        "tags.csv": b"",
        "info.txt": b"about these files\n",
    }


@pytest.mark.parametrize("folder, start", [("devicely", DEVICELY_START), ("flirt", FLIRT_START)])
def test_real_sessions_zipped_on_the_fly_pass(tmp_path, folder, start):
    path = zip_folder(REALDATA / folder, tmp_path / f"{folder}.zip")
    check = check_zip(path, start_time=start)
    assert check.ok, check.problems
    assert set(check.members) == E4_MEMBERS
    assert check.uncompressed_size == sum(
        (REALDATA / folder / name).stat().st_size for name in E4_MEMBERS
    )


def test_every_e4tools_zip_passes():
    assert len(E4TOOLS_ZIPS) == 8
    for path in E4TOOLS_ZIPS:
        start = int(path.name.split("_")[0])
        check = check_zip(path, start_time=start)
        assert check.ok, (path.name, check.problems)
        assert "EDA.csv" in check.members


def test_flipped_byte_fails_the_crc(tmp_path):
    path = make_zip(
        tmp_path / "s.zip", {"EDA.csv": b"1600000000\n4\n" + b"0.5\n" * 200}, zipfile.ZIP_STORED
    )
    data = bytearray(path.read_bytes())
    offset = data.index(b"0.5\n0.5\n") + 1
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    check = check_zip(path)
    assert not check.ok
    assert any("EDA.csv" in p and "CRC" in p for p in check.problems), check.problems


def test_flipped_byte_in_a_deflated_real_member_fails(tmp_path):
    path = zip_folder(REALDATA / "devicely", tmp_path / "d.zip")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("BVP.csv")
    # Inside BVP's compressed data: past its local header (30 bytes + name).
    data[info.header_offset + 30 + len("BVP.csv") + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    check = check_zip(path, start_time=DEVICELY_START)
    assert not check.ok
    assert any(p.startswith("BVP.csv") for p in check.problems), check.problems


@pytest.mark.parametrize("bad_name", ["../x", "a/b.csv", "/etc/passwd", "a\\b.csv", "C:evil", ".."])
def test_member_names_that_leave_the_folder_fail(tmp_path, bad_name):
    members = good_members()
    members[bad_name] = b"1600000000\n"
    check = check_zip(make_zip(tmp_path / "s.zip", members), e4_members=False)
    assert not check.ok
    assert any(repr(bad_name) in p for p in check.problems), check.problems


def test_a_foreign_member_is_a_warning_not_a_problem(tmp_path):
    """The platform's ZIP with one more harmless file is still the platform's data."""
    members = good_members()
    members["notes.docx"] = b"hello"
    path = make_zip(tmp_path / "s.zip", members)
    check = check_zip(path, start_time=1600000000)
    assert check.ok and check.problems == (), check.problems
    assert len(check.warnings) == 1 and "'notes.docx'" in check.warnings[0], check.warnings
    assert "not an E4 file" in check.warnings[0]
    # Structure only (the client's download_session): the same warning, nothing refused.
    assert check_zip(path, e4_members=False) == check
    assert check_zip(make_zip(tmp_path / "g.zip", good_members())).warnings == ()


def test_many_foreign_members_are_named_in_one_short_warning(tmp_path):
    members = good_members()
    for n in range(30):
        members[f"extra{n:02d}.bin"] = b"x"
    members["x" * 300] = b"z"
    check = check_zip(make_zip(tmp_path / "s.zip", members), start_time=1600000000)
    assert check.ok, check.problems
    (warning,) = check.warnings
    assert "31 files that are not E4 files" in warning and "and 21 more" in warning
    assert "'extra00.bin'" in warning and "'extra09.bin'" in warning
    assert "'extra10.bin'" not in warning
    assert len(warning) < 400


def test_a_foreign_name_cannot_forge_a_log_line(tmp_path):
    members = good_members()
    members["notes\n2024-01-01 ERROR forged.txt"] = b"y"
    check = check_zip(make_zip(tmp_path / "s.zip", members), start_time=1600000000)
    assert check.ok, check.problems
    (warning,) = check.warnings
    assert "\n" not in warning and "'notes\\n2024-01-01 ERROR forged.txt'" in warning


@pytest.mark.parametrize("foreign", ["notes.txt", "ACC.CSV", ".DS_Store"])
def test_a_foreign_member_with_a_bad_crc_is_still_refused(tmp_path, foreign):
    members = good_members()
    members[foreign] = b"0.5\n" * 200
    path = make_zip(tmp_path / "s.zip", members, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    data[data.index(b"0.5\n0.5\n") + 1] ^= 0x01
    path.write_bytes(bytes(data))
    check = check_zip(path)
    assert not check.ok
    assert any(p.startswith(foreign) and "CRC" in p for p in check.problems), check.problems


def test_a_foreign_member_that_expands_like_a_bomb_is_refused(tmp_path):
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in good_members().items():
            zf.writestr(name, data)
        with zf.open("video.bin", "w") as member:
            for _ in range(40):
                member.write(bytes(1 << 20))
    check = check_zip(path)
    assert not check.ok
    assert any("video.bin" in p and "ZIP bomb" in p for p in check.problems), check.problems


@pytest.mark.parametrize("bad_name", ["../x", "a/b.csv", "/etc/passwd", "C:evil"])
def test_an_escaping_name_is_refused_with_e4_members_too(tmp_path, bad_name):
    members = good_members()
    members[bad_name] = b"1600000000\n"
    check = check_zip(make_zip(tmp_path / "s.zip", members))
    assert not check.ok
    assert any(repr(bad_name) in p for p in check.problems), check.problems


def test_a_zip_with_no_e4_member_at_all_is_refused(tmp_path):
    path = make_zip(tmp_path / "s.zip", {"notes.txt": b"hello", "photo.jpg": b"\xff\xd8"})
    check = check_zip(path)
    assert not check.ok
    assert any("no E4 data CSV" in p for p in check.problems), check.problems
    assert "'notes.txt'" in check.warnings[0]


def test_an_archive_without_data_csv_fails(tmp_path):
    path = make_zip(tmp_path / "s.zip", {"info.txt": b"x", "tags.csv": b""})
    check = check_zip(path)
    assert not check.ok and "no E4 data CSV" in check.problems[0]


def test_bomb_ratio_member_fails_without_writing_anything(tmp_path):
    bomb = tmp_path / "bomb.zip"
    size = 50 * (1 << 20)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("EDA.csv", "w") as member:
            member.write(b"1600000000\n4\n")
            zero = bytes(1 << 20)
            for _ in range(50):
                member.write(zero)
    assert bomb.stat().st_size < size / 100
    before = sorted(os.listdir(tmp_path))
    check = check_zip(bomb)
    assert not check.ok
    assert any("EDA.csv" in p and "ZIP bomb" in p for p in check.problems), check.problems
    assert check.uncompressed_size > size
    assert sorted(os.listdir(tmp_path)) == before
    # A big but honest member is fine: ratio only counts above the floor.
    assert RATIO_FLOOR < size


def test_uncompressed_cap(tmp_path):
    path = make_zip(tmp_path / "s.zip", good_members())
    check = check_zip(path, max_uncompressed=100)
    assert not check.ok and "more than the 100 allowed" in check.problems[0]


def test_start_time_more_than_a_day_off_fails(tmp_path):
    path = make_zip(tmp_path / "s.zip", good_members(1600000000))
    assert check_zip(path, start_time=1600000000 + 86400).ok  # exactly a day: fine
    assert check_zip(path, start_time=1600000000 - 3600).ok
    check = check_zip(path, start_time=1600000000 + 2 * 86400)
    assert not check.ok
    named = {p.split(":")[0] for p in check.problems}
    assert named == {"EDA.csv", "ACC.csv", "HR.csv", "IBI.csv"}


def test_crlf_and_integer_headers_pass(tmp_path):
    members = {
        "ACC.csv": b"1511238009,1511238009,1511238009\r\n32,32,32\r\n-22,-61,20\r\n",
        "EDA.csv": b"1511238009\r\n4\r\n0\r\n",
        "IBI.csv": b"1511238009,IBI\r\n",
        "tags.csv": b"1511238010.5\r\n",
    }
    assert check_zip(make_zip(tmp_path / "s.zip", members), start_time=1511238009).ok


def test_empty_ibi_and_empty_tags_pass(tmp_path):
    members = good_members()
    members["IBI.csv"] = b""
    members["tags.csv"] = b""
    assert check_zip(make_zip(tmp_path / "a.zip", members), start_time=1600000000).ok
    members["IBI.csv"] = b"1600000000.000000, IBI\n"
    assert check_zip(make_zip(tmp_path / "b.zip", members), start_time=1600000000).ok


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("ACC.csv", b"1600000000, 1600000001, 1600000000\n", "three equal"),
        ("ACC.csv", b"1600000000\n32\n", "three equal"),
        ("EDA.csv", b"start,4\n", "row of numbers"),
        ("EDA.csv", b"", "empty"),
        ("IBI.csv", b"1600000000, HR\n", "IBI"),
        ("TEMP.csv", b"\xff\xfe1600000000\n", "not plain text"),
        ("EDA.csv", b"1_600_000_000\n4\n", "row of numbers"),
    ],
)
def test_bad_headers_fail_naming_the_member(tmp_path, name, content, fragment):
    members = good_members()
    members[name] = content
    check = check_zip(make_zip(tmp_path / "s.zip", members))
    assert not check.ok
    assert len(check.problems) == 1
    assert check.problems[0].startswith(name) and fragment in check.problems[0]


def test_not_a_zip(tmp_path):
    html = tmp_path / "page.zip"
    html.write_bytes(b"  \n<!DOCTYPE html><html><body>login</body></html>")
    assert "HTML page" in check_zip(html).problems[0]
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    assert check_zip(empty).problems == ("the file is empty",)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"GIF89a....")
    assert "ZIP header" in check_zip(junk).problems[0]
    missing = check_zip(tmp_path / "nope.zip")
    assert not missing.ok and "cannot be opened" in missing.problems[0]


def test_truncated_zip_is_not_readable(tmp_path):
    path = zip_folder(REALDATA / "flirt", tmp_path / "f.zip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    check = check_zip(path)
    assert not check.ok and "not a readable ZIP" in check.problems[0]


def test_sha256_file_and_html_sniff(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3 * (1 << 20) + 17)
    path.write_bytes(data)
    import hashlib

    assert sha256_file(path) == (len(data), hashlib.sha256(data).hexdigest())
    assert looks_like_html(b"<html>")
    assert looks_like_html(b"\r\n\t <!doctype html>")
    assert looks_like_html(b"\xef\xbb\xbf<html>")
    assert not looks_like_html(b"PK\x03\x04<html>")
    assert not looks_like_html(b"")
