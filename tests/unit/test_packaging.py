"""The wheel holds every package: an editable install finds any folder, a real one
(`pip install .`, the README's first command) only those pyproject.toml lists."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "e4sync").rglob("__init__.py")
    }
    assert found - listed == set(), "missing from [tool.setuptools] packages"
