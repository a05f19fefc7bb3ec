"""Tests for e4sync.archive's layout: placeholders, time zones, hostile values, validation,
and the names derived from a file. The fields are E4 Connect's (``layout_fields``) unless a
test says otherwise: the archive takes its placeholders from the item.

Real files in a real tmp root where a path is written; no mocks.
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from e4sync.archive import Archive, render_relpath, validate_layout, validate_timezone
from e4sync.archive.layout import aside_names, collision_names, sidecar_name, suffix_of
from e4sync.sources.e4connect.layout import EXAMPLE_FIELDS, SUFFIX, device_serial, layout_fields
from e4sync.sources.e4connect.settings import DEFAULT_LAYOUT, PLACEHOLDERS

# A real row from E4 Connect (e4connect-protocol.md): session 578634 on wristband A00A1C.
ROW: dict[str, Any] = {
    "account": "lab",
    "user_id": "25383",
    "session_id": "578634",
    "device_id": "c004bc",
    "label": "2588",
    "device": "E4 2.2",
    "start_time": 1541950248,
    "duration": 70847.0,
}
REAL = layout_fields(**ROW)
# How the configuration checks a layout: against E4 Connect's placeholders and suffix.
E4: dict[str, Any] = {"placeholders": EXAMPLE_FIELDS, "suffix": SUFFIX}


def fields(**changes: object) -> dict[str, Any]:
    return layout_fields(**{**ROW, **changes})


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
        "participant",  # SPEC section 10: from the [participants] file
    }
    assert tuple(REAL) == tuple(EXAMPLE_FIELDS) == PLACEHOLDERS, "E4 fields name them all"
    everything = "/".join("{" + name + "}" for name in PLACEHOLDERS) + ".zip"
    validate_layout(everything, **E4)
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
    hostile = layout_fields(value, value, value, value, value, value, value, value)
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
        validate_layout(layout, **E4)
    with pytest.raises(ValueError):
        render_relpath(layout, REAL, **E4)


def test_validate_layout_rejects_non_text_and_a_bad_zone() -> None:
    with pytest.raises(ValueError, match="text"):
        validate_layout(["{account}.zip"], **E4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time zone"):
        validate_layout(DEFAULT_LAYOUT, EXAMPLE_FIELDS, "Nowhere/Special", suffix=SUFFIX)


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
    validate_layout(layout, **E4)
    validate_layout(layout, EXAMPLE_FIELDS, "Europe/Berlin", suffix=SUFFIX)


def test_hostile_values_never_write_outside_the_root(tmp_path: Path) -> None:
    """Write a file for every hostile value into a real root; nothing appears outside it."""
    root = tmp_path / "root"
    before_parent = sorted(os.listdir(tmp_path.parent))
    archive = Archive(root)
    layout = "{account}/{label}/{device}/{session_id}_{device_id}.zip"
    for i, value in enumerate(HOSTILE):
        hostile = layout_fields(value, value, f"{i}{value}", value, value, value, value, value)
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


# -- a kind that is not E4 Connect: the placeholders come from the item --------------------

OTHER = {
    "participant": "p-01",
    "serial": "3YK3B15",
    "day": datetime(2024, 3, 9, 23, 30, tzinfo=UTC),
    "key": "raw/a",
}


def test_placeholders_come_from_the_item_and_datetimes_follow_the_zone() -> None:
    layout = "{participant}/{day:%Y-%m-%d}/{serial}_{key}.avro"
    validate_layout(layout, OTHER, "Europe/Berlin", suffix=".avro")
    validate_layout(layout, tuple(OTHER))  # names alone
    assert render_relpath(layout, OTHER) == PurePosixPath("p-01/2024-03-09/3YK3B15_raw_a.avro")
    assert render_relpath(layout, OTHER, "Europe/Berlin").parts[1] == "2024-03-10"
    assert render_relpath("{day}.avro", OTHER) == PurePosixPath("2024-03-09T23-30-00.avro")
    with pytest.raises(ValueError, match=r"unknown placeholder \{session_id\}"):
        validate_layout("{session_id}.avro", OTHER)
    with pytest.raises(ValueError, match="unknown placeholder"):
        render_relpath("{device_serial}.zip", OTHER)  # E4 Connect's names mean nothing here
    with pytest.raises(ValueError, match=r"must end with \.avro"):
        validate_layout("{participant}.zip", OTHER, suffix=".avro")
    with pytest.raises(ValueError, match="put / between placeholders"):
        validate_layout("{day:%Y/%m}.avro", OTHER)


def test_missing_naive_and_date_values() -> None:
    item = {"when": datetime(2024, 1, 1, 0, 30), "day": date(2024, 1, 2), "gone": None}
    layout = "{when}/{day:%d}/{gone}_{gone:>5}.bin"
    # A naive datetime is taken as UTC; a date has no zone; None is unknown, whatever the spec.
    assert render_relpath(layout, item, "America/New_York") == PurePosixPath(
        "2023-12-31T19-30-00/02/unknown_unknown.bin"
    )
    beyond = {"when": datetime(9999, 12, 31, 23, 0, tzinfo=UTC)}
    assert render_relpath("{when:%Y}.bin", beyond, "Asia/Tokyo") == PurePosixPath("unknown.bin")


def test_names_alone_take_any_spec_and_a_value_it_does_not_suit_renders_as_text() -> None:
    validate_layout("{n:d}/{n:>999999}.x", ("n",))
    assert render_relpath("{n:d}/{n:>999999}.x", {"n": "abc"}) == PurePosixPath("abc/abc.x")
    # With an example, the spec is checked against the example's type.
    with pytest.raises(ValueError, match="bad format spec"):
        validate_layout("{n:d}.x", {"n": "text"})
    with pytest.raises(ValueError, match="widths and precisions"):
        validate_layout("{n:>999999}.x", {"n": "text"})
    validate_layout("{n:d}.x", {"n": 7})


def test_a_data_file_never_looks_like_a_partial_one() -> None:
    assert render_relpath("{n}", {"n": "x.zip.part"}) == PurePosixPath("x.zip.part_")
    assert render_relpath("{n}", {"n": "x.json.tmp"}) == PurePosixPath("x.json.tmp_")


@pytest.mark.parametrize(
    ("name", "suffix", "sidecar"),
    [
        ("1541950248_A00A1C.zip", ".zip", "1541950248_A00A1C.json"),
        ("x.avro", ".avro", "x.json"),
        ("a.tar.gz", ".gz", "a.tar.json"),
        ("notes.json", ".json", "notes.json.json"),
        ("notes.JSON", ".JSON", "notes.JSON.json"),
        ("README", "", "README.json"),
        (".hidden", "", ".hidden.json"),
        ("x.", "", "x..json"),
        ("x.replaced-20240101T000000Z", "", "x.replaced-20240101T000000Z.json"),
    ],
)
def test_the_sidecar_of_a_file_of_any_suffix(name: str, suffix: str, sidecar: str) -> None:
    assert suffix_of(name) == suffix
    assert sidecar_name(name) == sidecar != name


@pytest.mark.parametrize(
    "name", ["s.zip", "s.avro", "s.gz", "notes.json", "README", "é" * 120 + ".avro", "x" * 250]
)
def test_collision_and_aside_names_keep_the_suffix_and_fit_with_their_derived_names(
    name: str,
) -> None:
    rel = PurePosixPath("lab") / name
    derived = [
        *itertools.islice(collision_names(rel, "9" * 500), 1, 4),
        *itertools.islice(aside_names(rel, "replaced", "20240101T000000Z"), 3),
    ]
    assert len(set(derived)) == len(derived)
    for other in derived:
        assert suffix_of(other.name) == suffix_of(name)
        assert sidecar_name(other.name) != sidecar_name(name), "never the original's sidecar"
        for longest in (other.name + ".part", sidecar_name(other.name) + ".tmp"):
            assert len(longest.encode()) <= 255


def test_collision_and_aside_names_of_an_e4_file() -> None:
    rel = PurePosixPath("lab/2018/11/11/1541950248_A00A1C.zip")
    assert list(itertools.islice(collision_names(rel, "578634"), 3)) == [
        rel,
        rel.with_name("1541950248_A00A1C_578634.zip"),
        rel.with_name("1541950248_A00A1C_578634_2.zip"),
    ]
    assert list(itertools.islice(aside_names(rel, "damaged", "20240101T000000Z"), 2)) == [
        rel.with_name("1541950248_A00A1C.damaged-20240101T000000Z.zip"),
        rel.with_name("1541950248_A00A1C.damaged-20240101T000000Z-2.zip"),
    ]
