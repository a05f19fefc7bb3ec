"""e4sync.config.example: ``config.example.toml``, written from the schema.

Owns ``render_example``: every key of every section with its default and its one-line doc,
each section under the first line of its dataclass's docstring, then one [[account]] of the
default source kind (its keys from the kind's settings module, with the example values the
schema gives for the keys that have no default), then its [account.remote]. A test checks
that the committed file is what this writes, so the example cannot fall behind the code.

Regenerate with ``python -m e4sync.config.example > config.example.toml``.

Imports only the standard library, ``e4sync.sources`` and ``e4sync.config.model``/
``schema``/``show`` (its TOML quoting).
Must not import: e4sync.config.loader, e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping

from e4sync import sources
from e4sync.config.model import Key
from e4sync.config.schema import (
    ACCOUNT_DOC,
    ACCOUNT_REMOTE_DOC,
    EXAMPLE_HEADER,
    SCHEMA,
    SECTIONS,
    account_schema,
    kind_settings,
)
from e4sync.config.show import _toml_value

WIDTH = 96  # comment lines are wrapped to this
ALIGN_UP_TO = 45  # a "key = value" no longer than this has its comment aligned


def _comment(text: str) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        wrapped = textwrap.wrap(paragraph, WIDTH - 2, break_on_hyphens=False)
        lines.extend(f"# {line}" if line else "#" for line in wrapped or [""])
    return lines


def _doc(key: Key, extra: str = "") -> str:
    doc = key.doc + extra
    if key.default is None:
        return doc + " (required)"
    if key.example is not None and key.example != key.default:
        return doc + f" (default {_toml_value(key.default)})"
    return doc


def _pairs(schema: Mapping[str, Key], notes: Mapping[str, str]) -> list[tuple[str, str]]:
    """(``key = value``, comment) for each key: its example or else its default."""
    out = []
    for name, key in schema.items():
        value = key.example if key.example is not None else key.default
        out.append((f"{name} = {_toml_value(value)}", _doc(key, notes.get(name, ""))))
    return out


def _aligned(pairs: list[tuple[str, str]], column: int) -> list[str]:
    lines = []
    for code, comment in pairs:
        if not comment:
            lines.append(code)
        elif len(code) <= ALIGN_UP_TO:
            lines.append(f"{code.ljust(column)}# {comment}")
        else:
            lines.append(f"{code}  # {comment}")
    return lines


def _column(groups: list[list[tuple[str, str]]]) -> int:
    short = [len(code) for pairs in groups for code, _ in pairs if len(code) <= ALIGN_UP_TO]
    return max(short, default=0) + 1


def _first_line(cls: type) -> str:
    return (cls.__doc__ or "").strip().split("\n")[0]


def render_example() -> str:
    """The text of ``config.example.toml``."""
    kind = sources.DEFAULT_SOURCE
    settings = kind_settings(kind)
    secret = getattr(settings, "SECRET", None)
    lines = _comment(EXAMPLE_HEADER)
    if secret is not None:
        lines += _comment(
            f"{secret.what.capitalize()}s never go in this file: see {secret.file}, "
            f"{secret.env}, {secret.command} and {secret.keyring} under [[account]]."
        )

    sections = {name: _pairs(schema, {}) for name, schema in SCHEMA.items()}
    column = _column(list(sections.values()))
    for name, pairs in sections.items():
        lines += ["", *_comment(_first_line(SECTIONS[name])), f"[{name}]"]
        lines += _aligned(pairs, column)

    notes = {"source": f" (one of: {', '.join(sources.KINDS)})"}
    account = _pairs(account_schema(kind), notes)
    remote = [(code, "") for code, _ in _pairs(SCHEMA["remote"], {})]
    column = _column([account])
    about = [ACCOUNT_DOC, getattr(settings, "ACCOUNT_DOC", "")]
    placeholders = getattr(settings, "PLACEHOLDERS", ())
    if placeholders:
        about.append(f"Layout placeholders of source {kind}: {', '.join(placeholders)}.")
    default_layout = getattr(settings, "DEFAULT_LAYOUT", "")
    if default_layout:
        about.append(f"Its default layout: {default_layout}")
    lines += ["", *_comment("\n".join(text for text in about if text)), "[[account]]"]
    lines += _aligned(account, column)
    lines += ["", *_aligned([("[account.remote]", ACCOUNT_REMOTE_DOC)], column)]
    lines += _aligned(remote, column)
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(render_example())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
