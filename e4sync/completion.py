"""e4sync.completion: bash and zsh completion, generated from the command line's own parser.

Owns ``script`` (``e4sync completion bash|zsh``): shtab (the optional extra
``e4sync[completion]``) turns the argparse parser into a completion script, so every
command and option offered is one the parser accepts, with no list to keep by hand; and
``FILE``/``DIRECTORY``, the hints the parser's path options carry for it (shtab's own
values, written out so building the parser never imports shtab).

Why shtab: it reads an argparse parser as it is (no second definition of the commands),
writes static scripts that need nothing at completion time (no Python started at each
Tab, unlike argcomplete), and has no dependencies.

Must not import: e4sync.cli, e4sync.sync, e4sync.state, e4sync.sources.
"""

from __future__ import annotations

import argparse

from e4sync.errors import E4SyncError

SHELLS = ("bash", "zsh")
# shtab.FILE and shtab.DIRECTORY for the shells offered (an action's ``complete``).
FILE = {"bash": "_shtab_compgen_files", "zsh": "_files"}
DIRECTORY = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}


class CompletionUnavailable(E4SyncError):
    """shtab is not installed."""


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell``, from ``parser``."""
    try:
        import shtab
    except ImportError:
        raise CompletionUnavailable(
            "shell completion needs shtab: pip install 'e4sync[completion]'"
        ) from None
    return shtab.complete(parser, shell=shell)


def hint(action: argparse.Action, kind: dict[str, str]) -> argparse.Action:
    """Mark ``action``'s value as a file or folder for the completion (``FILE``,
    ``DIRECTORY``); returns it."""
    action.complete = kind  # type: ignore[attr-defined]
    return action
