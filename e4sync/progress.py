"""e4sync.progress: what a person sees of a pass while it runs, and the line that ends it.

Owns ``Progress``: progress bars on a terminal, as rclone's ``-P`` shows them: one bar for
the pass (bytes, rate, ETA, files done of files due) and one per big file (past
``BIG_FILE`` bytes, or known to be that big), updated as the bytes reach the disk, with the
log's lines printed above the bars instead of through them (``tqdm.write`` through
``tqdm.contrib.logging``). It is fed by the pass's hooks (``run_pass``'s ``on_download``,
``on_bytes`` and ``on_progress``), which may be called from any download or finisher
thread. ``for_terminal`` makes one only when stderr is a terminal and tqdm (the optional
extra ``e4sync[progress]``) is installed: never on a pipe, a file or the journal.

Why tqdm and not rich: tqdm is one pure-Python package with no dependencies, the one the
field's tools already use (pip, huggingface_hub, many lab scripts), and it handles several
bars written from threads and log lines above them; rich would bring markdown-it-py and
pygments into a daemon's environment for the same bars (GUIDE section 6).

A platform that lists no sizes (E4 Connect) gives no total to begin with: the pass's total
is then the sizes known so far plus, for each file of unknown size, the mean size of the
files already done, marked ``~`` while it is an estimate.

Also the closing texts, used with or without a terminal: ``footer`` (the pass's elapsed
time and throughput, the last line ``run-once`` prints) and ``summary`` (the daemon's one
INFO line per pass).

Must not import: e4sync.cli, e4sync.state, e4sync.sources, e4sync.sync.run, requests.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

if TYPE_CHECKING:
    from e4sync.sync.report import PassReport

# A file at least this big (known from the listing, or once this much of it has arrived)
# gets a bar of its own; smaller ones only count in the pass's bar.
BIG_FILE = 1 << 20

_PASS_KNOWN = (
    "{desc} {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B, {rate_fmt}, ETA {remaining}{postfix}"
)
_PASS_GUESSED = (
    "{desc} {percentage:3.0f}%|{bar}| {n_fmt}B/~{total_fmt}B, {rate_fmt}, ETA ~{remaining}{postfix}"
)
_PASS_UNKNOWN = "{desc} {n_fmt}B, {rate_fmt}, {elapsed} elapsed{postfix}"
_FILE_KNOWN = "  {desc} {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B, {rate_fmt}"
_FILE_UNKNOWN = "  {desc} {n_fmt}B, {rate_fmt}"
_BAR_OPTIONS: dict[str, Any] = {
    "unit": "B",
    "unit_scale": True,
    "unit_divisor": 1000,  # MB as the rest of e4sync's output counts them
    "dynamic_ncols": True,
    "leave": False,
    "mininterval": 0.2,
    "smoothing": 0.1,
}


def tqdm_available() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def for_terminal(stream: TextIO | None = None) -> Progress | None:
    """A ``Progress`` on ``stream`` (default stderr) if it is a terminal and tqdm is
    installed, else None (the log's one line per file and the pass summary remain)."""
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty or not tqdm_available():
        return None
    return Progress(stream)


_Hook = TypeVar("_Hook", bound=Callable[..., None])


def _guarded(hook: _Hook) -> _Hook:
    """A hook the pass calls: whatever goes wrong drawing (a terminal that closed, EIO)
    turns the bars off, never fails a download."""

    @functools.wraps(hook)
    def call(self: Progress, *args: Any) -> None:
        if self._broken:
            return
        try:
            hook(self, *args)
        except Exception:
            self._broken = True

    return call  # type: ignore[return-value]


@dataclass
class _File:
    size: int | None  # as listed; None when the platform lists no size
    got: int = 0
    done: bool = False
    bar: Any = None


class Progress:
    """The bars of one pass. Use as a context manager around the pass (it sends the log
    above the bars and closes them at the end), and hand its methods to ``run_pass``:
    ``on_download``, ``on_bytes`` and ``on_progress``."""

    def __init__(self, stream: TextIO, big: int = BIG_FILE) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._stream = stream
        self._big = big
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._fetching: dict[int, str] = {}  # download thread -> the item it fetches
        # The pass's figures: bytes of the files whose size is known (a file done counts
        # what arrived), files of unknown size not done yet, files done and their bytes,
        # bytes arrived.
        self._known = 0
        self._unknown = 0
        self._done = 0
        self._done_bytes = 0
        self._got = 0
        self._bar: Any = None
        self._broken = False
        self._redirect: contextlib.ExitStack | None = None

    # -- the context ----------------------------------------------------------------

    def __enter__(self) -> Progress:
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(logging_redirect_tqdm(tqdm_class=self._tqdm))
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            for f in self._files.values():
                if f.bar is not None:
                    f.bar.close()
                    f.bar = None
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None

    # -- the pass's hooks (any thread) -------------------------------------------------

    @_guarded
    def on_download(self, event: str, item_id: str, size: int | None) -> None:
        """``queued``: the item will be downloaded this pass; ``fetching``: its bytes
        start arriving on the calling thread."""
        with self._lock:
            f = self._files.get(item_id)
            if f is None or (event == "queued" and f.done):
                f = self._files[item_id] = _File(size if size and size > 0 else None)
                if f.size is None:
                    self._unknown += 1
                else:
                    self._known += f.size
                self._refresh_total()
            if event == "fetching":
                self._fetching[threading.get_ident()] = item_id
                if f.size is not None and f.size >= self._big and f.bar is None:
                    self._open_file_bar(item_id, f)

    @_guarded
    def on_bytes(self, count: int) -> None:
        with self._lock:
            item_id = self._fetching.get(threading.get_ident())
            f = self._files.get(item_id) if item_id is not None else None
            if f is None or f.done:
                return
            f.got += count
            self._got += count
            if f.size is not None and f.got > f.size:
                self._known += f.got - f.size  # the platform listed less than it sent
                f.size = f.got
            if self._bar is not None:
                self._refresh_total(redraw=False)
                self._bar.update(count)
            if f.bar is not None:
                f.bar.update(count)
            elif f.got >= self._big:
                self._open_file_bar(item_id, f)

    @_guarded
    def on_progress(self, item_id: str) -> None:
        """An item is finished with (archived, failed or skipped)."""
        with self._lock:
            f = self._files.get(item_id)
            if f is None or f.done:
                return
            f.done = True
            # What did not arrive (adopted from disk, failed) will not: out of the total.
            if f.size is None:
                self._unknown -= 1
                self._known += f.got
            else:
                self._known += f.got - f.size
            f.size = f.got
            self._done += 1
            self._done_bytes += f.got
            for thread, fetching in list(self._fetching.items()):
                if fetching == item_id:
                    del self._fetching[thread]
            if f.bar is not None:
                f.bar.close()
                f.bar = None
            self._refresh_total()

    # -- inside the lock ---------------------------------------------------------------

    def _open_file_bar(self, item_id: str, f: _File) -> None:
        name = item_id if len(item_id) <= 32 else "..." + item_id[-29:]
        f.bar = self._tqdm(
            desc=name,
            total=f.size,
            initial=f.got,
            file=self._stream,
            bar_format=_FILE_KNOWN if f.size else _FILE_UNKNOWN,
            **_BAR_OPTIONS,
        )

    def _refresh_total(self, redraw: bool = True) -> None:
        """The pass's bar: its total (exact, estimated or unknown) and its file count."""
        if not self._unknown:
            total, form = self._known, _PASS_KNOWN
        elif self._done:
            mean = self._done_bytes / self._done
            total, form = max(self._got, round(self._known + self._unknown * mean)), _PASS_GUESSED
        else:
            total, form = 0, _PASS_UNKNOWN
        if not total:
            form = _PASS_UNKNOWN
        if self._bar is None:
            self._bar = self._tqdm(
                desc="pass",
                total=total or None,
                initial=self._got,
                file=self._stream,
                bar_format=form,
                **_BAR_OPTIONS,
            )
        bar = self._bar
        postfix = f"{self._done}/{len(self._files)} files"
        if (bar.total or 0) == total and bar.bar_format == form and bar.postfix == postfix:
            return
        bar.total = total or None
        bar.bar_format = form
        bar.postfix = postfix
        if redraw:
            bar.refresh()


# -- the closing texts -------------------------------------------------------------------


def human_size(count: float) -> str:
    """Bytes in the units the rest of e4sync's output uses (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _elapsed(report: PassReport) -> float:
    return max(0.0, (report.finished_at or time.time()) - report.started_at)


def footer(report: PassReport) -> str:
    """The pass's last line: its elapsed time and throughput."""
    elapsed = _elapsed(report)
    if report.dry_run:
        return f"dry run took {human_duration(elapsed)}"
    count = sum(a.downloaded for a in report.accounts)
    size = sum(a.bytes for a in report.accounts)
    rate = human_size(size / elapsed) + "/s" if elapsed > 0 else "-"
    return f"pass took {human_duration(elapsed)}: {count} downloaded, {human_size(size)} at {rate}"


def summary(report: PassReport) -> str:
    """One line for a pass's log (the daemon's idle passes say this and nothing else)."""
    accounts = report.accounts
    served = [a for a in accounts if not a.skipped]

    def total(attr: str) -> int:
        return sum(getattr(a, attr) for a in served)

    elapsed = _elapsed(report)
    size = total("bytes")
    rate = human_size(size / elapsed) + "/s" if elapsed > 0 else "-"
    line = (
        f"pass finished in {human_duration(elapsed)}: {total('listed')} listed, "
        f"{total('new')} new, {total('downloaded')} downloaded ({human_size(size)} at {rate}), "
        f"{total('failed')} failed, {total('deleted')} deleted remotely"
    )
    if total("lost"):
        line += f", {total('lost')} archived copies lost or damaged"
    line += f"; {len(served)} account{'s' if len(served) != 1 else ''}"
    if len(served) != len(accounts):
        line += f" ({len(accounts) - len(served)} served by another worker)"
    if report.interrupted:
        line += "; interrupted"
    return "dry run: " + line if report.dry_run else line
