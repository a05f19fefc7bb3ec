"""Fuzz e4sync.archive's layout with hypothesis: any layout and any field values give either
a ValueError from validate_layout or a relative path that stays inside a real root.

Paths are created in a real tmp root, and the whole tmp tree is checked afterwards.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e4sync.archive import PLACEHOLDERS, Archive, LayoutFields, render_relpath, validate_layout

SPECS = st.sampled_from(
    [
        "",
        "%Y",
        "%m",
        "%d",
        "%H%M%S",
        "%Y-%m-%d",
        "%D",
        "%c",
        "%",
        "%Q",
        ">8",
        "0>10",
        ".3",
        "d",
        ".1f",
        ",",
        "x",
        "/>20",
        "s",
        "999999999",
    ]
) | st.text(max_size=6)
PLACEHOLDER = st.builds(
    lambda name, spec: "{" + name + (":" + spec if spec else "") + "}",
    st.sampled_from([*PLACEHOLDERS, "acount", "", "0", "start.x"]),
    SPECS,
)
LITERAL = st.sampled_from(
    [
        "/",
        "//",
        "..",
        ".",
        "_",
        "-",
        ".zip",
        "\\",
        "~",
        "con",
        "{{",
        "}}",
        "{",
        "}",
        " ",
        "\x00",
        "é",
        "C:",
    ]
) | st.text(max_size=8)
LAYOUT = st.lists(PLACEHOLDER | LITERAL, max_size=12).map("".join) | st.builds(
    lambda body, end: body + end,
    st.lists(PLACEHOLDER | st.sampled_from(["/", "_", "-"]), min_size=1, max_size=8).map("".join),
    st.sampled_from([".zip", "/{session_id}.zip", ".ZIP", "/"]),
)
VALUE = st.one_of(
    st.none(),
    st.text(),
    st.text(alphabet=st.sampled_from(list("./\\\x00 \n~:con")), max_size=20),
    st.text(min_size=200, max_size=3000),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["..", "../../etc", "nul", "COM1.txt", "\udcff", "2588"]),
)
FIELDS = st.builds(LayoutFields, VALUE, VALUE, VALUE, VALUE, VALUE, VALUE, VALUE, VALUE)
ZONES = st.sampled_from(["UTC", "Europe/Berlin", "Pacific/Kiritimati", "America/St_Johns"])


@pytest.fixture(scope="module")
def fuzz_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layout=LAYOUT, values=FIELDS, zone=ZONES)
def test_layout_either_rejected_or_safe(
    fuzz_tmp: Path, layout: str, values: LayoutFields, zone: str
) -> None:
    try:
        validate_layout(layout, zone)
    except ValueError:
        return
    path = render_relpath(layout, values, zone)
    assert not path.is_absolute()
    assert path.name.endswith(".zip") and path.name != ".zip"
    for part in path.parts:
        assert part not in ("", ".", "..")
        assert "\x00" not in part and "\\" not in part
        assert len(part.encode("utf-8")) <= 255

    root = fuzz_tmp / f"root{next(COUNTER)}"
    archive = Archive(root)
    final = archive.resolve(path)
    assert os.path.commonpath([root, final]) == str(root)
    part_file = archive.part_path(path)
    part_file.write_bytes(b"x")
    assert os.path.realpath(part_file).startswith(str(root) + os.sep)


COUNTER = itertools.count()


def test_fuzz_wrote_nothing_outside_its_roots(fuzz_tmp: Path) -> None:
    """Runs after the fuzz test (file order): every file lies under some rootN folder."""
    for dirpath, _dirs, files in os.walk(fuzz_tmp):
        rel = Path(dirpath).relative_to(fuzz_tmp)
        if files:
            assert rel.parts and rel.parts[0].startswith("root"), (dirpath, files)
    assert all(name.startswith("root") for name in os.listdir(fuzz_tmp))
