"""Shell completion and help: every option in every --help says what it does, a command is
offered only the options it honours, and the completion scripts generated from the parser
load in bash and complete what the parser accepts."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from e4sync import cli, notify

pytest.importorskip("shtab")


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    top = cli.build_parser([])
    (sub,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return [("e4sync", top), *((f"e4sync {n}", p) for n, p in sub.choices.items())]


def test_every_option_and_argument_has_a_description():
    missing = []
    for name, parser in parsers():
        for action in parser._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name}: {action.option_strings or action.dest}")
            if isinstance(action, argparse._SubParsersAction):
                missing += [
                    f"{name} {choice.dest}" for choice in action._choices_actions if not choice.help
                ]
    assert missing == []


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def test_a_command_is_offered_only_the_options_it_honours():
    offered = dict(parsers())
    for name, parser in offered.items():
        command = name.removeprefix("e4sync").strip()
        if not command:
            continue
        assert ("--dry-run" in options_of(parser)) == (command in cli.DRY_RUN_COMMANDS), name
        reads_config = command not in cli.NO_CONFIG_COMMANDS
        for option in cli.CONFIG_OPTIONS:
            assert (option in options_of(parser)) == reads_config, (name, option)
        for option in ("-v", "-q", "--log-level", "--log-format", "--version", "--help"):
            assert option in options_of(parser), (name, option)
    assert cli.LOG_LEVELS == notify.LOG_LEVELS and cli.LOG_FORMATS == notify.LOG_FORMATS


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["status", "--dry-run"], "--dry-run is for run, run-once, remove, not status"),
        (["--dry-run", "status"], "--dry-run is for run, run-once, remove, not status"),
        (["demo", "--config", "c.toml"], "--config is not for demo: it reads no configuration"),
        (["--account", "lab", "simulate"], "--account is not for simulate"),
        (["status", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_refused_options_are_one_usage_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


def completion(shell: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "e4sync", "completion", shell],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    return run.stdout


def bash(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "E4SYNC_TEST_SCRIPT": completion("bash")},
    )


def complete(words: str) -> set[str]:
    """What bash offers for the command line ``words`` (the last word being completed;
    a trailing space starts a new, empty one)."""
    quoted = " ".join(shlex.quote(w) for w in words.split(" "))
    run = bash(
        'source <(printf "%s" "$E4SYNC_TEST_SCRIPT") || exit 9\n'
        f"COMP_WORDS=({quoted}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n"
        'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}\n'
        '_shtab_e4sync; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    assert run.returncode == 0, run.stderr
    return {w.strip() for w in run.stdout.splitlines() if w.strip()}


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_the_bash_script_loads_and_completes_what_the_parser_accepts():
    run = bash('source <(printf "%s" "$E4SYNC_TEST_SCRIPT") && complete -p e4sync')
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith(" e4sync") and "-F _shtab_e4sync" in run.stdout
    assert run.stderr == ""
    # As documented: the script from a process substitution, in a fresh shell.
    documented = subprocess.run(
        [
            "bash",
            "-c",
            f"source <({sys.executable} -m e4sync completion bash) && complete -p e4sync",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert documented.returncode == 0 and "e4sync" in documented.stdout, documented.stderr

    assert {"status", "sessions"} <= complete("e4sync s")
    assert "completion" in complete("e4sync c")
    assert "--dry-run" in complete("e4sync run-once --d")
    assert "--dry-run" not in complete("e4sync status --d")
    assert complete("e4sync status --") >= {"--json", "--config", "--log-level"}
    assert "--config" not in complete("e4sync demo --")
    assert complete("e4sync completion ") == {"bash", "zsh"}
    assert complete("e4sync --log-format ") == {"text", "json"}


def test_the_zsh_script_is_generated_from_the_same_parser():
    script = completion("zsh")
    assert script.startswith("#compdef e4sync")
    assert "run-once" in script and "--log-format" in script
    if shutil.which("zsh"):
        run = subprocess.run(
            ["zsh", "-fc", "autoload -U compinit && compinit -u && source /dev/stdin"],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr


def test_without_shtab_completion_says_what_to_install():
    block = "import sys; sys.modules['shtab'] = None; from e4sync.cli import main; sys.exit(main())"
    run = subprocess.run(
        [sys.executable, "-c", block, "completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and run.stdout == ""
    assert "pip install 'e4sync[completion]'" in run.stderr
