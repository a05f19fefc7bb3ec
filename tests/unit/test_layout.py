"""Tests for e4sync.archive's layout: placeholders, time zones, hostile values, validation.

Real files in a real tmp root where a path is written; no mocks.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from e4sync.archive import (
    DEFAULT_LAYOUT,
    PLACEHOLDERS,
    Archive,
    LayoutFields,
    device_serial,
    render_relpath,
    validate_layout,
    validate_timezone,
)

# A real row from E4 Connect (e4connect-protocol.md): session 578634 on wristband A00A1C.
REAL = LayoutFields(
    account="lab",
    user_id="25383",
    session_id="578634",
    device_id="c004bc",
    label="2588",
    device="E4 2.2",
    start_time=1541950248,
    duration=70847.0,
)


def fields(**changes: object) -> LayoutFields:
    base = {name: getattr(REAL, name) for name in REAL.__dataclass_fields__}
    base.update(changes)
    return LayoutFields(**base)  # type: ignore[arg-type]


def test_default_layout_gives_the_name_e4_connect_gave_its_downloads() -> None:
    assert render_relpath(DEFAULT_LAYOUT, REAL) == PurePosixPath(
        "lab/2018/11/11/1541950248_A00A1C.zip"
    )


@pytest.mark.parametrize(
    ("label", "serial"),
    [
        ("2588", "A00A1C"),
        ("16810", "A041AA"),
        (2588, "A00A1C"),
        (2588.0, "A00A1C"),
        ("2588.0", "A00A1C"),
        (" 0 ", "A00000"),
        (1048576, "A100000"),
        ("", "unknown"),
        (None, "unknown"),
        ("abc", "unknown"),
        ("-5", "unknown"),
        ("25.5", "unknown"),
        ("٣", "unknown"),  # a digit, but not an ASCII one
        ("9" * 10_000, "unknown"),
    ],
)
def test_device_serial(label: object, serial: str) -> None:
    assert device_serial(label) == serial


@pytest.mark.parametrize(
    ("placeholder", "expected"),
    [
        ("{account}", "lab"),
        ("{user_id}", "25383"),
        ("{session_id}", "578634"),
        ("{device_id}", "c004bc"),
        ("{device_serial}", "A00A1C"),
        ("{label}", "2588"),
        ("{device}", "E4 2.2"),
        ("{start_time}", "1541950248"),
        ("{start}", "2018-11-11T15-30-48"),
        ("{start:%Y%m%d-%H%M%S}", "20181111-153048"),
        ("{start:%j}", "315"),
        ("{duration}", "70847"),
        ("{duration:.1f}", "70847.0"),
        ("{session_id:0>8}", "00578634"),
        ("{start_time:012d}", "001541950248"),
        ("{device:.2}", "E4"),
    ],
)
def test_every_placeholder(placeholder: str, expected: str) -> None:
    assert render_relpath(f"x/{placeholder}.zip", REAL) == PurePosixPath(f"x/{expected}.zip")


def test_the_placeholder_list_is_what_the_spec_names() -> None:
    assert set(PLACEHOLDERS) == {
        "account",
        "user_id",
        "session_id",
        "device_id",
        "device_serial",
        "label",
        "device",
        "start_time",
        "start",
        "duration",
    }
    everything = "/".join("{" + name + "}" for name in PLACEHOLDERS) + ".zip"
    validate_layout(everything)
    assert len(render_relpath(everything, REAL).parts) == len(PLACEHOLDERS)


def test_fractional_and_numeric_values_render_as_text() -> None:
    odd = fields(duration="62.46875", start_time="1541950248", session_id=578634, user_id=None)
    path = render_relpath("{user_id}/{session_id}_{duration}_{start:%Y}.zip", odd)
    assert path == PurePosixPath("_/578634_62.46875_2018.zip")


def test_time_zone_moves_the_dated_folders_near_midnight() -> None:
    # 2018-11-11 23:30:00 UTC: still the 11th in UTC and New York, the 12th in Berlin/Tokyo.
    late = fields(start_time=1541979000)
    layout = "{start:%Y}/{start:%m}/{start:%d}/{start:%H%M}.zip"
    assert render_relpath(layout, late) == PurePosixPath("2018/11/11/2330.zip")
    assert render_relpath(layout, late, "Europe/Berlin") == PurePosixPath("2018/11/12/0030.zip")
    assert render_relpath(layout, late, "Asia/Tokyo") == PurePosixPath("2018/11/12/0830.zip")
    assert render_relpath(layout, late, "America/New_York") == PurePosixPath("2018/11/11/1830.zip")
    # New Year's Eve changes the year folder too.
    assert render_relpath(layout, fields(start_time=1546297200), "Europe/Berlin") == (
        PurePosixPath("2019/01/01/0000.zip")
    )


def test_unknown_time_zone_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        render_relpath(DEFAULT_LAYOUT, REAL, "Mars/Olympus")
    with pytest.raises(ValueError, match="IANA"):
        validate_timezone("../../etc/passwd")
    validate_timezone("Europe/Berlin")


HOSTILE = [
    "../../etc",
    "..",
    ".",
    "/etc/passwd",
    "a/b\\c",
    "con",
    "CON.txt",
    "nul",
    "Com1",
    "lpt9.zip",
    "x\x00y",
    "\x00",
    "line\nbreak\r\t",
    "\x7f\x85\u2028\u202e",  # DEL, NEL, line separator, right-to-left override
    "\udc80\udcff",  # lone surrogates (undecodable bytes from a filesystem)
    " .hidden",
    "trailing. . ",
    '<>:"|?*',
    "~",
    "x" * 10_000,
    "ü" * 300,
    "🔥" * 200,
    "",
    "   ",
    None,
    12345,
    -1.5,
    float("nan"),
    float("inf"),
    10**400,
]


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v)[:30])
def test_hostile_values_stay_one_safe_component(value: object) -> None:
    layout = (
        "{account}/{user_id}/{session_id}/{device_id}/{label}/{device}/{start_time}_{duration}.zip"
    )
    hostile = LayoutFields(value, value, value, value, value, value, value, value)  # type: ignore[arg-type]
    path = render_relpath(layout, hostile)
    assert not path.is_absolute()
    assert len(path.parts) == 7, "a value must never add or remove a folder"
    for part in path.parts:
        assert part not in ("", ".", "..")
        assert not part.startswith((".", " "))
        assert not set(part) & set('/\\<>:"|?*')
        assert all(ord(ch) >= 32 and ch not in "\x7f\x85\u2028\u202e" for ch in part)
        assert not 0xD800 <= max(map(ord, part)) <= 0xDFFF
        assert part.split(".")[0].lower() not in ("con", "nul", "com1", "lpt9")
        assert len(part.encode("utf-8")) <= 255
        part.encode("utf-8")  # a name any filesystem can store
    assert path.name.endswith(".zip")


def test_long_values_are_capped_but_stay_distinct() -> None:
    a = render_relpath("{label}.zip", fields(label="x" * 5000 + "a"))
    b = render_relpath("{label}.zip", fields(label="x" * 5000 + "b"))
    assert a != b
    assert len(a.name) <= 100 + len(".zip")


def test_start_outside_the_calendar_is_unknown() -> None:
    for start in (10**18, "yesterday", None, float("nan")):
        path = render_relpath(DEFAULT_LAYOUT, fields(start_time=start))
        assert path.parts[1:4] == ("unknown", "unknown", "unknown")


def test_layout_literals_keep_their_folders() -> None:
    path = render_relpath("./e4/{account}//raw/{session_id}.zip", REAL)
    assert path == PurePosixPath("e4/lab/raw/578634.zip")


def test_reserved_name_from_a_literal_is_escaped() -> None:
    assert render_relpath("aux/{session_id}.zip", REAL) == PurePosixPath("_aux/578634.zip")


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("{acount}/{session_id}.zip", r"unknown placeholder \{acount\}; did you mean \{account\}"),
        ("{Start:%Y}/{session_id}.zip", r"did you mean \{start\}"),
        ("{}/{session_id}.zip", r"unknown placeholder \{\}"),
        ("{0}.zip", r"unknown placeholder \{0\}"),
        ("{account.name}.zip", "unknown placeholder"),
        ("{account[0]}.zip", "unknown placeholder"),
        ("{account!r}.zip", "conversions"),
        ("{account:{label}}.zip", "nested"),
        ("{session_id:d}.zip", "bad format spec"),
        ("{duration:d}.zip", "bad format spec"),
        ("{start_time:.3}.zip", "bad format spec"),
        ("{account:>999999999}.zip", "widths and precisions"),
        ("{start:%Y/%m}/{session_id}.zip", "put / between placeholders"),
        ("{start:%D}/{session_id}.zip", "path separator"),
        ("{start:" + "%Y" * 40 + "}.zip", "longer than"),
        ("/srv/e4/{session_id}.zip", "absolute"),
        ("~/e4/{session_id}.zip", "relative"),
        ("../{session_id}.zip", r"'\.\.'"),
        ("a/../../{session_id}.zip", r"'\.\.'"),
        ("{account}\\{session_id}.zip", "use / to separate"),
        ("C:/{session_id}.zip", "':'"),
        ("a\x00b/{session_id}.zip", "control"),
        ("{account}/{session_id}", r"must end with \.zip"),
        ("{account}/{session_id}.ZIP", r"must end with \.zip"),
        ("{account}/{session_id}.zip/", r"must end with \.zip"),
        ("{account}/.zip", "before .zip is empty"),
        ("{account", "expected '}'"),
        ("account}.zip", "Single '}'"),
    ],
)
def test_validate_layout_errors(layout: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_layout(layout)
    with pytest.raises(ValueError):
        render_relpath(layout, REAL)


def test_validate_layout_rejects_non_text_and_a_bad_zone() -> None:
    with pytest.raises(ValueError, match="text"):
        validate_layout(["{account}.zip"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time zone"):
        validate_layout(DEFAULT_LAYOUT, "Nowhere/Special")


@pytest.mark.parametrize(
    "layout",
    [
        DEFAULT_LAYOUT,
        "{account}/{device_serial}/{start:%Y-%m-%d}/{session_id}.zip",
        "{{literal braces}}/{session_id}.zip",
        "données/{account}/{start:%Y}年/{session_id}.zip",
        "{start}.zip",
        ".hidden/{session_id}.zip",
    ],
)
def test_good_layouts_validate(layout: str) -> None:
    validate_layout(layout)
    validate_layout(layout, "Europe/Berlin")


def test_hostile_values_never_write_outside_the_root(tmp_path: Path) -> None:
    """Write a file for every hostile value into a real root; nothing appears outside it."""
    root = tmp_path / "root"
    before_parent = sorted(os.listdir(tmp_path.parent))
    archive = Archive(root)
    layout = "{account}/{label}/{device}/{session_id}_{device_id}.zip"
    for i, value in enumerate(HOSTILE):
        hostile = LayoutFields(value, value, f"{i}{value}", value, value, value, value, value)  # type: ignore[arg-type]
        rel = render_relpath(layout, hostile)
        part = archive.part_path(rel)
        part.write_bytes(b"PK")
        os.replace(part, archive.resolve(rel))
    assert os.listdir(tmp_path) == ["root"]
    assert sorted(os.listdir(tmp_path.parent)) == before_parent
    written = []
    for dirpath, _dirs, files in os.walk(tmp_path):
        for name in files:
            path = Path(dirpath, name)
            assert not path.is_symlink()
            assert os.path.realpath(path).startswith(str(root) + os.sep)
            written.append(path)
    assert len(written) == len(HOSTILE)
