"""Every module states its import rule, and keeps it.

Each module under ``e4sync/`` (but ``__main__.py`` and empty ``__init__.py`` files) says in
its docstring, on a line of its own::

    Must not import: e4sync.cli, e4sync.sync, requests.

Each name is a module prefix: ``e4sync.sync`` forbids ``e4sync.sync`` and everything under
it; ``Must not import: nothing.`` says a module may import anything (the CLI). A line that
starts ``Must not import:`` but is not of that form (wrapped, an "or", a remark in brackets)
counts as no rule: the module is reported with the line quoted.

The test reads every ``import`` and ``from ... import`` in the file with ``ast``: at the top,
inside functions and classes, and under ``if TYPE_CHECKING:`` too (a type-only import is
still a dependency of the module's text, and the rule is about the layering), relative ones
resolved. It fails naming each import a module's line forbids, and each module with no line.

Not seen: imports made by name at run time (``importlib.import_module(f"...{kind}")``), and
what the imported modules import in turn: each module answers for its own lines.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "e4sync"

# One line, exactly: "Must not import: " then comma-separated dotted names, then a full stop.
RULE = re.compile(r"^Must not import: ([\w.]+(?:, [\w.]+)*)\.$")
RULE_START = "Must not import:"
NOTHING = "nothing"  # "Must not import: nothing."


@dataclass(frozen=True)
class Import:
    module: str  # the module a statement imports, relative imports resolved
    line: int


@dataclass(frozen=True)
class Breach:
    module: str
    imported: str
    line: int
    rule: str


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def rule_of(docstring: str | None) -> tuple[str, ...] | None:
    """The prefixes of the docstring's one ``Must not import:`` line; None if it has none.
    A line that starts like a rule but is not of the exact form is an error, as is a
    second rule line."""
    found: list[tuple[str, ...]] = []
    for line in (docstring or "").splitlines():
        line = line.strip()
        if not line.startswith(RULE_START):
            continue
        match = RULE.match(line)
        if match is None:
            raise ValueError(f"not of the form 'Must not import: a, b.': {line!r}")
        names = tuple(match.group(1).split(", "))
        found.append(() if names == (NOTHING,) else names)
    if len(found) > 1:
        raise ValueError("more than one 'Must not import:' line")
    return found[0] if found else None


def imports_of(tree: ast.AST, module: str, is_package: bool) -> list[Import]:
    """Every module ``tree`` imports, wherever the statement is. ``from a import b`` imports
    ``a`` and, if ``b`` is a submodule, ``a.b``: both are listed, so a rule on ``a.b``
    catches ``from a import b``."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.append(Import(source, node.lineno))
            found += [
                Import(f"{source}.{a.name}", node.lineno) for a in node.names if a.name != "*"
            ]
    return found


def covered(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def breaches(source: str, module: str, is_package: bool = False) -> list[Breach] | None:
    """What ``source`` (the text of ``module``) imports against its own rule, or None when
    its docstring states no rule."""
    tree = ast.parse(source)
    rule = rule_of(ast.get_docstring(tree))
    if rule is None:
        return None
    found = [
        Breach(module, imp.module, imp.line, prefix)
        for imp in imports_of(tree, module, is_package)
        for prefix in rule
        if covered(imp.module, prefix)
    ]
    # ``from a import b`` with ``a`` forbidden: name ``a`` once, not ``a.b`` as well.
    return [
        b
        for b in found
        if not any(o.line == b.line and b.imported.startswith(o.imported + ".") for o in found)
    ]


def is_exempt(path: Path) -> bool:
    return path.name == "__main__.py" or (
        path.name == "__init__.py" and not path.read_text().strip()
    )


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if not is_exempt(p))


def test_the_package_is_found() -> None:
    names = {module_name(p) for p in modules()}
    assert {"e4sync.cli", "e4sync.errors", "e4sync.sync.run"} <= names


def test_every_module_states_its_import_rule() -> None:
    missing = []
    for path in modules():
        try:
            if rule_of(ast.get_docstring(ast.parse(path.read_text()))) is None:
                missing.append(module_name(path))
        except ValueError as exc:
            missing.append(f"{module_name(path)} ({exc})")
    assert not missing, "no 'Must not import: a, b.' line in the docstring of:\n  " + "\n  ".join(
        missing
    )


def test_every_module_keeps_its_import_rule() -> None:
    broken = []
    for path in modules():
        try:
            found = breaches(path.read_text(), module_name(path), path.name == "__init__.py")
        except ValueError:
            continue  # a malformed rule line is the test above's failure
        broken += [
            f"{b.module} imports {b.imported} (line {b.line}); its rule says not {b.rule}"
            for b in found or ()
        ]
    assert not broken, "imports a module's own rule forbids:\n  " + "\n  ".join(broken)


# -- the checker itself, on synthetic sources ---------------------------------------------

SYNTHETIC = '''"""pkg.sub.mod: a module with a rule.

Must not import: pkg.cli, pkg.sync, requests.
"""
import os
from typing import TYPE_CHECKING

from . import sibling
from .. import cli
from ..state import db

if TYPE_CHECKING:
    from pkg.sync.run import Pass


def late():
    import requests.adapters
    from pkg import sync as engine
'''


def line_of(source: str, text: str) -> int:
    (number,) = [n for n, line in enumerate(source.splitlines(), 1) if text in line]
    return number


def test_the_checker_finds_each_forbidden_import_wherever_it_is() -> None:
    found = breaches(SYNTHETIC, "pkg.sub.mod")

    def at(text: str) -> int:
        return line_of(SYNTHETIC, text)

    assert sorted((b.imported, b.line, b.rule) for b in found) == [
        ("pkg.cli", at("from .. import cli"), "pkg.cli"),  # relative, two levels up
        ("pkg.sync", at("import sync as"), "pkg.sync"),  # from pkg import sync, in a function
        ("pkg.sync.run", at("import Pass"), "pkg.sync"),  # under TYPE_CHECKING: it counts
        ("requests.adapters", at("import requests"), "requests"),  # a submodule, in a function
    ]


def test_the_checker_passes_a_module_that_keeps_its_rule() -> None:
    clean = SYNTHETIC.replace("from .. import cli\n", "").replace("import requests.adapters\n", "")
    clean = clean.replace("    from pkg.sync.run import Pass\n", "    pass\n")
    clean = clean.replace("    from pkg import sync as engine\n", "    from pkg import synced\n")
    assert breaches(clean, "pkg.sub.mod") == []


def test_a_prefix_is_a_whole_dotted_name() -> None:
    source = '"""Must not import: pkg.sync."""\nimport pkg.syncing\nfrom pkg import synced\n'
    assert breaches(source, "pkg.mod") == []
    assert [b.imported for b in breaches(source + "import pkg.sync.run\n", "pkg.mod")] == [
        "pkg.sync.run"
    ]


def test_an_import_two_prefixes_forbid_is_reported_under_each() -> None:
    source = '"""Must not import: pkg, pkg.sync."""\nfrom pkg.sync import run\n'
    assert sorted((b.imported, b.rule) for b in breaches(source, "other")) == [
        ("pkg.sync", "pkg"),
        ("pkg.sync", "pkg.sync"),
    ]


def test_relative_imports_resolve_from_a_package_and_from_a_module() -> None:
    source = '"""Must not import: pkg.state."""\nfrom .state import db\n'
    # In pkg/__init__.py ".state" is pkg.state; in pkg/mod.py it is pkg.state too.
    assert [b.imported for b in breaches(source, "pkg", is_package=True)] == ["pkg.state"]
    assert [b.imported for b in breaches(source, "pkg.mod")] == ["pkg.state"]
    # In pkg/sub/__init__.py it is pkg.sub.state: allowed.
    assert breaches(source, "pkg.sub", is_package=True) == []


@pytest.mark.parametrize(
    "docstring",
    [
        "Nothing said about imports.",
        "Must not import cli.",  # prose: no colon
        "It must not import: cli.",  # not at the start of the line
    ],
)
def test_a_docstring_without_a_rule_line_has_no_rule(docstring: str) -> None:
    assert rule_of(docstring) is None


@pytest.mark.parametrize(
    "line",
    [
        "Must not import: cli",  # no full stop
        "Must not import: cli; sync.",
        "Must not import: cli or sync.",
        "Must not import: e4sync.cli (it prints).",
        "Must not import: e4sync.state, e4sync.sync,",  # wrapped onto the next line
        "Must not import: .",
    ],
)
def test_a_malformed_rule_line_is_an_error(line: str) -> None:
    with pytest.raises(ValueError):
        rule_of(f"pkg.mod: text.\n\n{line}\ne4sync.cli.\n")


def test_nothing_forbids_nothing() -> None:
    source = '"""Must not import: nothing."""\nimport nothing\nimport pkg.sync\n'
    assert rule_of(ast.get_docstring(ast.parse(source))) == ()
    assert breaches(source, "pkg.cli") == []


def test_a_rule_is_read_from_its_own_line_among_the_prose() -> None:
    doc = "pkg.mod: text.\n\nMust not import: pkg.cli, sqlalchemy.\nMore prose.\n"
    assert rule_of(doc) == ("pkg.cli", "sqlalchemy")
    with pytest.raises(ValueError):
        rule_of(doc + "Must not import: pkg.sync.\n")
