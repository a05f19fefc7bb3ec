"""e4sync.progress without a terminal: the pass's figures as the hooks feed them (exact
totals, estimated ones, files of unknown size), a stream that breaks turns the bars off
instead of failing a download, and the closing lines."""

from __future__ import annotations

import io
import threading

import pytest

from e4sync import progress
from e4sync.sync.report import AccountReport, PassReport

pytest.importorskip("tqdm")


def bars(stream: io.StringIO | None = None, big: int = 1000) -> progress.Progress:
    return progress.Progress(stream or io.StringIO(), big=big)


def test_known_sizes_give_an_exact_total_and_per_file_bars():
    p = bars()
    p.on_download("queued", "a", 3000)
    p.on_download("queued", "b", 500)
    assert p._bar.total == 3500 and p._bar.bar_format == progress._PASS_KNOWN
    p.on_download("fetching", "a", 3000)
    assert p._files["a"].bar is not None, "a big file gets its own bar"
    p.on_bytes(1000)
    assert p._bar.n == 1000 and p._files["a"].bar.n == 1000
    p.on_progress("a")  # failed after 1000 bytes: what did not come is out of the total
    assert p._bar.total == 1500 and p._bar.postfix.endswith("1/2 files")
    p.on_progress("a")  # said twice: counted once
    assert p._done == 1
    p.close()


def test_unknown_sizes_are_estimated_from_the_files_done():
    p = bars(big=10**9)
    for item in ("a", "b", "c"):
        p.on_download("queued", item, None)
    assert p._bar.total is None and p._bar.bar_format == progress._PASS_UNKNOWN
    done = threading.Thread(target=lambda: (p.on_download("fetching", "a", None), p.on_bytes(400)))
    done.start()
    done.join()
    p.on_progress("a")
    # Two files to go, estimated at the mean of those done (400 bytes each).
    assert p._bar.total == 1200 and p._bar.bar_format == progress._PASS_GUESSED
    p.on_bytes(50)  # bytes of a thread fetching nothing known: ignored
    assert p._bar.n == 400
    p.close()


def test_a_broken_stream_turns_the_bars_off():
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise RuntimeError("the terminal went away")

    p = bars(Broken())
    p.on_download("queued", "a", 3000)  # must not raise
    p.on_download("fetching", "a", 3000)
    p.on_bytes(100)
    p.on_progress("a")
    assert p._broken
    p.close()


def test_for_terminal_is_none_off_a_terminal():
    assert progress.for_terminal(io.StringIO()) is None


def test_closing_lines():
    report = PassReport(started_at=100.0, finished_at=104.0)
    report.accounts = [
        AccountReport("lab", listed=5, new=2, downloaded=2, bytes=8_000_000),
        AccountReport("other", skipped="leased by another worker"),
    ]
    assert progress.footer(report) == "pass took 4.0 s: 2 downloaded, 8.0 MB at 2.0 MB/s"
    assert progress.summary(report) == (
        "pass finished in 4.0 s: 5 listed, 2 new, 2 downloaded (8.0 MB at 2.0 MB/s), 0 failed, "
        "0 deleted remotely; 1 account (1 served by another worker)"
    )
    report.dry_run = True
    assert progress.footer(report) == "dry run took 4.0 s"
    assert progress.summary(report).startswith("dry run: pass finished in 4.0 s")
    assert progress.human_size(999) == "999 B" and progress.human_size(1_500_000) == "1.5 MB"
    assert progress.human_duration(3725) == "1h02m05s"
