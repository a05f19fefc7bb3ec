"""An installed (not editable) e4sync migrates its own database from the migrations in its wheel.

Builds the wheel from a copy of the source tree (so the shared tree gets no build/ or
egg-info), installs it into a fresh virtualenv (no system site-packages; dependencies come
from the package index, which CI reaches), and opens a new SQLite database from a working
directory outside the repository, so nothing can be imported from the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

CHILD = textwrap.dedent(
    """
    import json, sys
    import sqlalchemy as sa
    import e4sync
    from e4sync.state import db
    engine = db.open_db("sqlite:///" + sys.argv[1])
    db.upgrade(engine)  # a second time: a no-op
    with engine.connect() as c:
        versions = c.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    print(json.dumps({
        "tables": sorted(sa.inspect(engine).get_table_names()),
        "versions": versions,
        "head": db.head_revision(),
        "package": e4sync.__file__,
        "migrations": db._script_location(),
    }))
    """
)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_installed_wheel_migrates_a_new_database(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("e4sync", "migrations"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for path in REPO.iterdir():
        if path.is_file() and (path.name == "pyproject.toml" or path.stem in ("README", "LICENSE")):
            shutil.copy2(path, src / path.name)
    # No PYTHONPATH or the like from the test run: the child must see only its own venv.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}

    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)], src, env)
    (wheel,) = dist.glob("e4sync-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    _run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        tmp_path,
        env,
    )

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    db_file = outside / "state.db"
    out = json.loads(_run([str(py), "-c", CHILD, str(db_file)], outside, env).splitlines()[-1])

    site = venv.resolve()
    assert Path(out["package"]).resolve().is_relative_to(site)
    assert Path(out["migrations"]).resolve().is_relative_to(site)  # from the wheel
    assert {"accounts", "sessions", "passes", "deletions", "workers"} <= set(out["tables"])
    assert "alembic_version" in out["tables"]
    assert out["versions"] == [out["head"]] == ["0003"]
    assert db_file.is_file()
