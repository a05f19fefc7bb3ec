"""Fuzz e4sync.archive's layout with hypothesis: any layout and any field values give either
a ValueError from validate_layout or a relative path that stays inside a real root. The
fields are E4 Connect's (``layout_fields``), checked against its placeholders.

Paths are created in a real tmp root, and the whole tmp tree is checked afterwards.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e4sync.archive import Archive, render_relpath, validate_layout
from e4sync.sources.e4connect.layout import EXAMPLE_FIELDS, SUFFIX, layout_fields

# E4 Connect's placeholders, as its fields name them (test_layout checks they are the
# ones its settings declare).
PLACEHOLDERS = tuple(EXAMPLE_FIELDS)

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
GOOD_PLACEHOLDER = st.sampled_from(
    [
        *("{" + name + "}" for name in PLACEHOLDERS),
        "{start:%Y}",
        "{start:%m}",
        "{start:%d}",
        "{start:%H%M%S}",
        "{start:%c}",
        "{start:%Y-%m-%dT%H}",
        "{session_id:0>8}",
        "{label:.3}",
        "{duration:.1f}",
        "{start_time:,}",
        "{device:_^20}",
        "{account:/>9}",
    ]
)
NOISY_LAYOUT = st.lists(PLACEHOLDER | LITERAL, max_size=12).map("".join)
WELL_FORMED_LAYOUT = st.builds(
    lambda body, end: body + end,
    st.lists(
        GOOD_PLACEHOLDER
        | GOOD_PLACEHOLDER
        | st.sampled_from(["/", "_", ".", "..x", " ", "é", "con"]),
        min_size=1,
        max_size=8,
    ).map("".join),
    st.sampled_from([".zip", "/{session_id}.zip", "_{label}.zip", "/{start}.zip", ".ZIP"]),
)
# Mostly well-formed layouts, so that hostile values get fuzzed through valid layouts too.
LAYOUT = st.one_of(WELL_FORMED_LAYOUT, WELL_FORMED_LAYOUT, NOISY_LAYOUT)
VALUE = st.one_of(
    st.none(),
    st.text(),
    st.text(alphabet=st.sampled_from(list("./\\\x00 \n~:con")), max_size=20),
    st.text(min_size=200, max_size=3000),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["..", "../../etc", "nul", "COM1.txt", "\udcff", "2588"]),
)
FIELDS = st.builds(layout_fields, VALUE, VALUE, VALUE, VALUE, VALUE, VALUE, VALUE, VALUE)
ZONES = st.sampled_from(["UTC", "Europe/Berlin", "Pacific/Kiritimati", "America/St_Johns"])


def test_layout_either_rejected_or_safe(tmp_path: Path) -> None:
    """About 300 examples; at least 60 must pass validation, so that paths are really
    rendered and written, and afterwards the whole tmp tree holds files only under roots."""
    counter = itertools.count()
    accepted = []

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(layout=LAYOUT, values=FIELDS, zone=ZONES)
    def check(layout: str, values: dict, zone: str) -> None:
        try:
            validate_layout(layout, EXAMPLE_FIELDS, zone, suffix=SUFFIX)
        except ValueError:
            return
        path = render_relpath(layout, values, zone)
        assert not path.is_absolute()
        assert path.name.endswith(".zip") and path.name != ".zip"
        for part in path.parts:
            assert part not in ("", ".", "..")
            assert "\x00" not in part and "\\" not in part
            assert len(part.encode("utf-8")) <= 255

        root = tmp_path / f"root{next(counter)}"
        archive = Archive(root)
        final = archive.resolve(path)
        assert os.path.commonpath([root, final]) == str(root)
        part_file = archive.part_path(path)
        part_file.write_bytes(b"x")
        assert os.path.realpath(part_file).startswith(str(root) + os.sep)
        accepted.append(path)

    check()
    assert len(accepted) >= 60, f"only {len(accepted)} layouts were valid: the fuzz is too weak"
    for dirpath, _dirs, files in os.walk(tmp_path):
        rel = Path(dirpath).relative_to(tmp_path)
        if files:
            assert rel.parts and rel.parts[0].startswith("root"), (dirpath, files)
    assert all(name.startswith("root") for name in os.listdir(tmp_path))
