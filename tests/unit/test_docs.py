"""The user guide keeps up with the code: every command has working ``--help`` and a section
in docs/commands.md, every exit code is in docs/exit-codes.md, the README opens with the two
commands a newcomer needs and CI runs exactly the README's test command, and docs/index.md
links every page of the guide (and every link in it resolves)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from e4sync import cli
from e4sync.errors import EXIT_CODES

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def subcommands() -> list[str]:
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(action.choices)


def headings(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.startswith("#")]


def test_the_parser_has_the_commands_of_the_spec():
    spec = {"run", "run-once", "status", "sessions", "devices", "whoami", "download", "remove",
            "verify", "retry", "reindex", "db", "config", "simulate", "demo"}  # fmt: skip
    assert spec <= set(subcommands())


@pytest.mark.parametrize("name", subcommands())
def test_every_command_has_help_and_a_section_in_commands_md(name, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([name, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: e4sync ")
    pattern = re.compile(rf"^#+ .*`e4sync {re.escape(name)}[` ]")
    assert any(pattern.match(h) for h in headings("commands.md")), (
        f"docs/commands.md has no heading for `e4sync {name}`"
    )


def test_every_exit_code_is_in_exit_codes_md():
    text = (DOCS / "exit-codes.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| *`?(\d+)`? *\|", text, re.MULTILINE))
    assert {str(code) for code in EXIT_CODES} <= rows


def readme_commands() -> list[str]:
    """The README's indented (4-space) command lines, in order."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    return [line[4:] for line in lines if line.startswith("    ") and line.strip()]


def test_readme_starts_with_install_and_demo_then_the_tests():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first, second = readme_commands()[:2]
    assert "pip install" in first and first.endswith("e4sync demo")
    assert "pip install" in second and "pytest" in second
    # Both come before any prose about what e4sync is, after at most a title and two lead-ins.
    before = text[: text.index(second)]
    assert len([p for p in before.split("\n\n") if p.strip()]) <= 4


def test_ci_ends_with_exactly_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    last = [line for line in ci if line.strip() and not line.lstrip().startswith("#")][-1]
    assert last == readme_commands()[1]


def test_index_links_every_page_of_the_guide():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", index))
    pages = {p.name for p in DOCS.glob("*.md")} - {"index.md"}
    assert pages - linked == set(), "docs/index.md does not link these pages"


OWN_PAGES = ["index.md", "getting-started.md", "commands.md", "deletion.md", "recovery.md",
             "exit-codes.md"]  # fmt: skip


@pytest.mark.parametrize("page", OWN_PAGES)
def test_relative_links_resolve(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (DOCS / target).resolve().exists(), f"{page} links {target}, which is missing"
