"""benchmarks.harness: what every benchmark shares.

Owns: the simulator in its own process (``SimProcess``, started with ``e4sync simulate`` so its
memory is never counted against e4sync), a throw-away e4sync configuration (``Workdir``),
child processes timed by the wall clock with their own peak RSS read from the OS
(``run_child``: ``os.wait4`` returns the child's ``ru_maxrss``), the result rows, medians and
the machine description. Talks only to 127.0.0.1.

Standard library only; imports no e4sync module (e4sync runs as a program here).
"""

from __future__ import annotations

import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
USER = "demo@example.org"
PASSWORD = "demo"  # the simulator's own demo credential, not a secret
# Variables that would point a child at the developer's own configuration or credentials.
_SCRUB = (
    "E4SYNC_CONFIG",
    "E4_USER",
    "E4_PWD",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
)


def e4sync_argv() -> list[str]:
    """The e4sync program as users run it: the console script beside this Python, else
    ``python -m e4sync``."""
    script = Path(PYTHON).with_name("e4sync")
    return [str(script)] if script.is_file() else [PYTHON, "-m", "e4sync"]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    # The benchmarks package must be importable by `python -m benchmarks.x` from anywhere.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


# -- child processes ---------------------------------------------------------------------


@dataclass
class Measured:
    """One child process: wall seconds, its own peak RSS (MB), exit code and output, and
    the CPU seconds (user + system) it and its children used."""

    seconds: float
    rss_mb: float
    code: int
    out: str
    err: str
    cpu_s: float = float("nan")

    def check(self, what: str, ok: tuple[int, ...] = (0,)) -> Measured:
        """This run, if it exited with one of the ``ok`` codes; RuntimeError otherwise."""
        if self.code not in ok:
            raise RuntimeError(f"{what} exited {self.code}\n{self.out[-2000:]}\n{self.err[-2000:]}")
        return self


# A tiny parent between the runner and the measured program. On Linux a child's ru_maxrss
# starts at the RSS of the process image it was forked (or vforked) from, so a program
# started straight from the runner would inherit the runner's own peak. This launcher is
# small (its RSS is the floor of every figure, ~10 MB), forks the program, forwards
# SIGTERM/SIGINT to it, and reports the program's own peak RSS and wall time from wait4.
_LAUNCHER = r"""
import os, signal, sys, time
report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda n, _f: os.kill(pid, n))
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(f"{usage.ru_maxrss} {time.perf_counter() - started} {usage.ru_utime + usage.ru_stime}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_child(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 900,
    during: Callable[[int, threading.Event], None] | None = None,
) -> Measured:
    """Run ``argv`` to completion; return its wall time and its own peak RSS (``wait4``).

    ``during(pid, done)`` runs in a thread while the program runs (to signal it, say);
    ``pid`` is the launcher's, which forwards SIGTERM and SIGINT; ``done`` is set at the end.
    """
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "rusage"
        out_path, err_path = Path(scratch) / "out", Path(scratch) / "err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [PYTHON, "-I", "-S", "-c", _LAUNCHER, str(report), *argv],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env or child_env(),
                cwd=cwd,
            )
            done = threading.Event()
            helper = None
            if during:
                helper = threading.Thread(target=during, args=(proc.pid, done), daemon=True)
                helper.start()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()  # forwarded to the program
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            finally:
                done.set()
            if helper:
                helper.join(timeout=60)
        try:
            maxrss_kb, seconds, cpu = report.read_text().split()
        except (OSError, ValueError):
            maxrss_kb, seconds, cpu = "0", "nan", "nan"  # the launcher itself failed: see err
        return Measured(
            float(seconds),
            int(maxrss_kb) / 1024,
            proc.returncode,
            out_path.read_bytes().decode(errors="replace"),
            err_path.read_bytes().decode(errors="replace"),
            float(cpu),
        )


# -- the simulator in its own process ----------------------------------------------------


class SimProcess:
    """``e4sync simulate`` on 127.0.0.1 in a child process, driven through its admin API."""

    def __init__(
        self,
        *,
        sessions: int = 0,
        session_size: int | None = None,
        latency: float = 0.0,
        seed: int = 0,
    ) -> None:
        argv = [
            *e4sync_argv(),
            "simulate",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--sessions",
            str(sessions),
            "--seed",
            str(seed),
        ]
        if session_size is not None:
            argv += ["--session-size", str(session_size)]
        if latency:
            argv += ["--latency", str(latency)]
        self.argv = argv
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.admin_url = ""

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120) -> SimProcess:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            env=child_env(),
        )
        lines: queue.Queue[str] = queue.Queue()
        # A thread drains stdout for the simulator's whole life, so the pipe never fills.
        threading.Thread(target=_pump, args=(self.proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not (self.base_url and self.admin_url):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if not line:
                self.stop()
                raise RuntimeError(f"the simulator did not start: {' '.join(self.argv)}")
            if m := re.match(r"E4 Connect simulator at (\S+)", line):
                self.base_url = m.group(1)
            elif m := re.match(r"admin: (\S+)", line):
                self.admin_url = m.group(1)
        for url in (self.base_url, self.admin_url):
            if not url.startswith(("http://127.0.0.1:", "http://[::1]:")):
                self.stop()
                raise RuntimeError(f"the simulator is not on loopback: {url}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def root_url(self) -> str:
        return self.base_url.rsplit("/connect", 1)[0]

    def admin(self, method: str, path: str, payload: Any = None, timeout: float = 300) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            f"{self.admin_url}/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def stats(self) -> dict[str, Any]:
        return self.admin("GET", "state")

    def requests(self) -> dict[str, int]:
        return dict(self.stats()["requests"])

    def sessions(self) -> list[dict[str, str]]:
        return self.admin("GET", "sessions?user=" + urllib.request.quote(USER))

    def add_sessions(self, count: int, size_bytes: int | None = None) -> list[dict[str, str]]:
        payload: dict[str, Any] = {"count": count}
        if size_bytes is not None:
            payload["size_bytes"] = size_bytes
        return self.admin("POST", "sessions", payload)["sessions"]

    def warm(self, session_ids: Sequence[str]) -> None:
        """Have the simulator build (and cache) these ZIPs now, so that no timed client
        pays for generating them."""
        for sid in session_ids:
            with urllib.request.urlopen(f"{self.admin_url}/zip/{sid}", timeout=600) as r:
                while r.read(1 << 20):
                    pass


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)
    lines.put("")  # end of output: the simulator exited


# -- an e4sync configuration -------------------------------------------------------------


class Workdir:
    """A fresh archive, state directory, password file and config.toml under ``path``."""

    def __init__(self, path: Path, base_url: str, *, concurrency: int | None = None) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.archive = path / "archive"
        self.state = path / "state"
        self.config = path / "config.toml"
        pw = path / "password"
        fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(PASSWORD + "\n")
        download = f"[download]\nconcurrency = {concurrency}\n\n" if concurrency else ""
        self.config.write_text(
            f'[archive]\nroot = "{self.archive}"\n\n[state]\ndir = "{self.state}"\n\n{download}'
            f'[[account]]\nname = "lab"\nusername = "{USER}"\npassword_file = "{pw}"\n'
            f'base_url = "{base_url}"\n'
        )

    @property
    def db(self) -> Path:
        return self.state / "state.db"

    def argv(self, *args: str) -> list[str]:
        return [*e4sync_argv(), "--config", str(self.config), *args]

    def run(
        self,
        *args: str,
        timeout: float = 900,
        during: Callable[[int, threading.Event], None] | None = None,
    ) -> Measured:
        return run_child(self.argv(*args), timeout=timeout, during=during)

    def migrate(self) -> None:
        """Create the state database untimed: a daemon's database exists before a pass."""
        self.run("db", "upgrade").check("e4sync db upgrade")

    def archived_files(self) -> list[Path]:
        return sorted(self.archive.rglob("*.zip")) if self.archive.exists() else []

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def inproc_pass(workdir: Workdir, *extra: str) -> dict[str, Any]:
    """A pass run in-process by ``benchmarks.inproc`` (SQL statements counted); its JSON."""
    m = run_child([PYTHON, "-m", "benchmarks.inproc", str(workdir.config), *extra])
    m.check("benchmarks.inproc")
    data = json.loads(m.out.strip().splitlines()[-1])
    data["process_seconds"] = m.seconds
    data["rss_mb"] = m.rss_mb
    return data


# -- results -----------------------------------------------------------------------------


@dataclass
class Result:
    """One benchmark's outcome: a summary line, a detail table and notes for the docs."""

    key: str
    title: str
    measured: str
    target: str
    met: bool | None  # None: not judged (tiny mode, or no target)
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "n/a" if self.met is None else "PASS" if self.met else "MISS"


@dataclass(frozen=True)
class Mode:
    """Sizes and repetitions: ``full`` is what docs/benchmarks.md reports."""

    name: str
    reps: int
    throughput_sessions: int
    throughput_size: int
    latency: float
    memory_sizes: tuple[int, ...]
    big_size: int
    idle_sizes: tuple[int, int]
    startup_runs: int
    scale_sessions: int

    @property
    def judged(self) -> bool:
        return self.name != "tiny"


MODES = {
    "full": Mode(
        "full",
        5,
        120,
        100_000,
        0.04,
        (50_000_000, 100_000_000, 200_000_000),
        200_000_000,
        (2_000, 20_000),
        20,
        100_000,
    ),
    "quick": Mode(
        "quick",
        3,
        120,
        100_000,
        0.04,
        (10_000_000, 20_000_000, 40_000_000),
        40_000_000,
        (500, 5_000),
        10,
        20_000,
    ),
    "tiny": Mode("tiny", 1, 8, 20_000, 0.04, (1_000_000, 2_000_000), 2_000_000, (20, 200), 2, 300),
}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1000:.0f} ms"


def fmt_mb(mb: float) -> str:
    return f"{mb:.1f} MB"


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, OS, Python and tool versions, for the docs."""
    cpu = platform.processor() or platform.machine()
    mem_gb = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            cpu = m.group(1).strip()
        meminfo = Path("/proc/meminfo").read_text()
        if m := re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M):
            mem_gb = f"{int(m.group(1)) / 1024 / 1024:.1f} GB"
    except OSError:
        pass
    versions = {}
    for name, argv in (
        ("curl", ["curl", "--version"]),
        ("unzip", ["unzip", "-v"]),
        ("sha256sum", ["sha256sum", "--version"]),
    ):
        try:
            first = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
            line = first.splitlines()[0].strip() if first else "?"
            versions[name] = re.split(r" \(x86|, by ", line)[0]  # drop build details
        except (OSError, subprocess.SubprocessError):
            versions[name] = "missing"
    e4 = subprocess.run(
        [*e4sync_argv(), "--version"], capture_output=True, text=True, env=child_env(), timeout=60
    ).stdout.strip()
    e4c = subprocess.run(
        [PYTHON, "-c", "import importlib.metadata as m; print(m.version('e4client'))"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": mem_gb or "?",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load average at the end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "e4sync": e4 or "?",
        "e4client": e4c or "?",
        **versions,
    }
