"""Every command example in docs/ is one the program takes, and those that can run against
the simulator run as documented (issue 14, item 11: docs that cannot drift again).

An example is a line in a fenced block that runs e4sync: ``$ e4sync ...`` (its documented
output follows it, up to the next ``$``) or a bare ``e4sync ...`` in a ``sh`` block (a
trailing ``# comment`` is dropped, and so is anything after ``|``, ``>`` or ``<``). Each
must parse with the CLI's own parser, and a ``--dry-run`` must be one a command takes.

Then, in document order, page by page, each example that can run here runs in-process
against the real simulator on 127.0.0.1 (the seed ``e4sync simulate`` uses, so the
documented session ids are its ids) in a fake home whose ``~/E4Archive`` is the archive:
no traceback, ever; an example whose documented output is an error exits non-zero with
that error's line (paths and numbers aside); any other exits 0 or 1 (1: "something needs
a look", as a NOT OK status or a difference found). Those that cannot run here (a daemon, a
prompt, a fault the simulator must be told about, a damaged database, a read-only disk)
are named below with the reason and tested in their own files.
"""

from __future__ import annotations

import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from e4sync import cli
from tests.conftest import write_config, write_secret

DOCS = Path(__file__).resolve().parents[2] / "docs"
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_STOP = ("|", ">", "<", "&&", ";", "||", "2>&1")


@dataclass
class Example:
    page: str
    line: int
    argv: list[str]
    output: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"docs/{self.page}:{self.line}: e4sync {shlex.join(self.argv)}"

    @property
    def error(self) -> str | None:
        """The documented error line, when the output shows the command failing."""
        for line in self.output:
            text = line.strip()
            if text.startswith("e4sync: "):
                return text
        return None


def examples(page: Path) -> list[Example]:
    found = []
    lines = page.read_text(encoding="utf-8").splitlines()
    fence: str | None = None
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if text.startswith("```"):
            fence = None if fence is not None else text[3:]
            continue
        if fence is None:
            continue
        prompt = text.startswith("$ ")
        if prompt:
            text = text[2:]
        elif fence not in ("sh", "bash", "console"):
            continue
        try:
            words = shlex.split(text, comments=True)
        except ValueError:
            continue
        while words and (_ENV.match(words[0]) or words[0] == "sudo"):
            words.pop(0)
        if words[:3] == ["python", "-m", "e4sync"]:
            words = ["e4sync", *words[3:]]
        if not words or not (words[0] == "e4sync" or words[0].endswith("/e4sync")):
            continue
        argv = []
        for word in words[1:]:
            if word in _STOP or word.startswith((">", "<")):
                break
            argv.append(word)
        output = []
        if prompt:
            for after in lines[number:]:
                if after.strip().startswith(("$ ", "```")):
                    break
                output.append(after)
        found.append(Example(page.name, number, argv, output))
    return found


PAGES = sorted(DOCS.glob("*.md"))
ALL = [example for page in PAGES for example in examples(page)]


def test_the_docs_have_examples_of_every_command():
    documented = {e.argv[0] for e in ALL if e.argv and not e.argv[0].startswith("-")}
    assert {"run-once", "status", "check", "verify", "download", "retry", "doctor"} <= documented
    assert len(ALL) > 50


@pytest.mark.parametrize("example", ALL, ids=str)
def test_every_documented_example_parses(example: Example):
    if example.argv == ["--version"]:
        return  # argparse prints it and exits 0 (run below)
    parser = cli.build_parser(example.argv)
    args = parser.parse_args(example.argv)
    if args.dry_run:
        assert args.command in cli.DRY_RUN_COMMANDS, example


# -- running them --------------------------------------------------------------------------

# Documented output that needs a set-up this test does not make; each is tested elsewhere.
NEEDS = {
    "JSON object, not a list": "a platform fault (tests/e2e/test_platform_input.py)",
    "no password found": "no configuration at all (tests/unit/test_credentials.py)",
    "is a file, not a folder": "a state folder that is a file (test_folders.py)",
    "is damaged": "a damaged state database (tests/e2e/test_damaged_state.py)",
    "(read-only file system": "a read-only filesystem (tests/e2e/test_storage_faults.py)",
    "[y/N]": "a terminal to answer the prompt (tests/e2e/test_cli.py)",
}
LONG_RUNNING = ("run", "simulate")


def why_not_run(example: Example, platform_ids: set[str]) -> str | None:
    if not example.argv or example.argv[0] in LONG_RUNNING or "--keep" in example.argv:
        return "it runs until stopped"
    said = "\n".join(example.output)
    for words, why in NEEDS.items():
        if words in said:
            return why
    if example.argv[0] in ("download", "remove", "retry") and example.error is None:
        ids = [a for a in example.argv[1:] if a.isdigit()]
        if ids and not set(ids) <= platform_ids:
            return "a session id of another example's platform"
    return None


def normalized(line: str) -> str:
    """An error line without what differs from one machine to another: paths, numbers."""
    line = re.sub(r"(~|\.?/)?[\w.@-]*(/[\w.@%+-]+)+/?", "<path>", line)
    line = re.sub(r"\b[\w.-]+\.(zip|toml|password)\b", "<path>", line)
    return re.sub(r"\d+", "<n>", line)


@pytest.fixture
def docs_world(tmp_path, monkeypatch):
    """A fake home with the archive at ~/E4Archive, the configuration at
    ~/.config/e4sync/config.toml (E4SYNC_CONFIG), the simulator with ``e4sync simulate``'s
    seed and one pass already made; the files the examples name (users.txt, bad.toml,
    lab.toml with a missing password file) in the current folder, which is the home."""
    from e4sync.sources.e4connect.simulator import Simulator

    home = tmp_path / "home"
    (home / ".config" / "e4sync").mkdir(parents=True)
    monkeypatch.chdir(home)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with Simulator(port=0, seed=0, sessions=5) as sim:
        config_dir = home / ".config" / "e4sync"
        config = write_config(
            config_dir,
            sim.base_url,
            archive={"root": home / "E4Archive"},
            state={"dir": home / ".local" / "state" / "e4sync"},
        )
        monkeypatch.setenv("E4SYNC_CONFIG", str(config))
        (home / "users.txt").write_text("a@example.org:first\nb@example.org:second\n")
        text = config.read_text()
        (home / "bad.toml").write_text(text.replace("[download]\n", "[download]\nconcurency = 4\n"))
        secret = str(config_dir / "lab.password")
        (home / "lab.toml").write_text(text.replace(secret, str(config_dir / "gone.password")))
        write_secret(config_dir / "lab.password", "demo")
        yield sim, home, tmp_path


def concrete(argv: list[str], sim, home: Path, tmp: Path) -> list[str]:
    """The example's words on this machine: the simulator's address, the fake home for
    ~ and /home/me, a temporary folder for /etc/e4sync, /var/lib/e4sync and /tmp."""
    places = (
        ("~", home),
        ("/home/me", home),
        ("/etc/e4sync/config.toml", home / ".config" / "e4sync" / "config.toml"),
        ("/etc/e4sync", tmp / "etc"),
        ("/var/lib/e4sync", tmp / "var"),
        ("/tmp/", tmp / "t"),
    )
    out = []
    for word in argv:
        word = re.sub(r"http://127\.0\.0\.1:\d+/connect", sim.base_url, word)
        for prefix, there in places:
            if word.startswith(prefix):
                word = str(there) + word[len(prefix) :]
                break
        out.append(word)
    return out


@pytest.mark.parametrize("page", [p.name for p in PAGES if examples(p)])
def test_the_documented_examples_run_as_documented(page, docs_world, run_cli):
    sim, home, tmp = docs_world
    run_cli("run-once")  # a first pass, as the examples assume
    platform_ids = {row["id"] for row in sim.sessions()}
    wrong = []
    for example in examples(DOCS / page):
        if why_not_run(example, platform_ids) is not None:
            continue
        result = run_cli(*concrete(example.argv, sim, home, tmp), exit_code=None)
        said = result.out + result.err
        if "Traceback" in said:
            wrong.append(f"{example}: a traceback\n{said[-2000:]}")
        elif example.error is not None:
            lines = [x for x in result.err.splitlines() if x.startswith("e4sync: ")]
            if result.code == 0 or not lines:
                wrong.append(f"{example}: documented as failing, exited {result.code}")
            elif normalized(lines[0]) != normalized(example.error):
                wrong.append(f"{example}: says\n  {lines[0]}\nnot as documented\n  {example.error}")
        elif result.code not in (0, 1):
            wrong.append(f"{example}: exited {result.code}\n{said[-2000:]}")
    assert not wrong, "\n\n".join(wrong)
