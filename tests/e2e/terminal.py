"""``python -m e4sync`` on a real pseudo-terminal (``os.openpty``), and what it wrote.

Not a fixture module: the tests of what a person sees (progress bars, log lines, quiet
passes) import ``run_on_terminal`` and ``screen_segments``.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass

# CSI sequences (cursor up, erase line, colours) and lone ESC sequences.
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: "
)


@dataclass
class TerminalRun:
    code: int
    raw: str  # every byte the program wrote to the terminal (stdout and stderr), decoded


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "E4SYNC_CONFIG",
            "E4_USER",
            "E4_PWD",
            "CREDENTIALS_DIRECTORY",
            "NOTIFY_SOCKET",
            "JOURNAL_STREAM",
        )
    }
    env.update({"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"})
    env.update(extra or {})
    return env


def run_on_terminal(
    *argv: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    python_args: tuple[str, ...] = ("-m", "e4sync"),
) -> TerminalRun:
    """Run ``python -m e4sync ARGV`` with stdin, stdout and stderr on one pseudo-terminal of
    120x40, and return everything written to it."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, *python_args, *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=clean_env(env),
        close_fds=True,
        start_new_session=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the program closed the terminal's last descriptor
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"{argv} did not end within {timeout} s")
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return TerminalRun(code, b"".join(chunks).decode("utf-8", "replace"))


def screen_segments(raw: str) -> list[str]:
    """What was drawn, piece by piece: the output split at every line feed and carriage
    return (where a terminal starts drawing a line again), control sequences removed,
    empty pieces dropped. A log line written through a progress bar shows up as one
    piece holding both."""
    pieces = re.split(r"[\r\n]", ANSI.sub("", raw))
    return [p for p in pieces if p.strip()]
