"""e4sync.report_plot: the picture of a report: a heatmap of groups × days coloured by hours
(matplotlib, the optional extra ``e4sync[report]``, Agg backend), alone as PNG or SVG, or in
one self-contained HTML page with the totals (styles inline, the heatmap an inline base64
PNG: opening it makes no network request).

matplotlib is imported only here, and only when a picture is asked for; without it,
``UsageError`` (exit 2) says what to install.
Must not import: e4sync.cli, e4sync.sync, e4sync.state, e4sync.sources.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from e4sync.errors import UsageError
from e4sync.report import Report

MISSING = "drawing the report needs matplotlib: pip install 'e4sync[report]'"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UsageError(MISSING) from None
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def _figure(report: Report) -> Any:
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    groups = [t.group for t in report.groups]
    days = report.days
    data = [report.grid[g] for g in groups] or [[0.0] * len(days)]
    width = min(16.0, 2.5 + 0.32 * max(len(days), 1))
    height = 1.6 + 0.4 * max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    peak = max((h for row in data for h in row), default=0.0)
    top = max(1.0, peak, report.target_hours or 0.0)
    image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=top, interpolation="none")
    ax.set_yticks(range(len(groups)), groups or [""])
    step = max(1, len(days) // 20)
    ax.set_xticks(
        range(0, len(days), step), [d.isoformat() for d in days[::step]], rotation=60, ha="right"
    )
    ax.set_xlabel(f"day ({report.timezone})")
    ax.set_ylabel(report.by)
    title = f"hours recorded per {report.by} and day"
    if report.target_hours:
        title += f" (red: under {report.target_hours:g} h)"
    small = len(days) <= 45 and len(groups) <= 40  # room to write each day's hours
    for y, g in enumerate(groups):
        under = report.under_target(g)
        for x, hours in enumerate(report.grid[g]):
            if under[x]:
                ax.add_patch(
                    Rectangle((x - 0.46, y - 0.46), 0.92, 0.92, fill=False, edgecolor="red", lw=1.5)
                )
            if small and hours > 0:
                colour = "black" if hours > 0.6 * top else "white"
                ax.text(x, y, f"{hours:.1f}", ha="center", va="center", color=colour, fontsize=7)
    ax.set_title(title)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("hours")
    fig.tight_layout()
    return fig


def heatmap_bytes(report: Report, fmt: str) -> bytes:
    """The heatmap as ``png`` or ``svg``."""
    fig = _figure(report)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    finally:
        _pyplot().close(fig)
    return buf.getvalue()


def write_heatmap(report: Report, path: Path, fmt: str) -> None:
    Path(path).write_bytes(heatmap_bytes(report, fmt))


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.under { color: #b00; font-weight: bold; }
img { max-width: 100%; }
"""


def html_page(report: Report) -> str:
    """One self-contained page: the heatmap (an inline PNG), its legend and the totals."""
    png = base64.b64encode(heatmap_bytes(report, "png")).decode("ascii")
    esc = html.escape
    span = f"{report.days[0].isoformat()} to {report.days[-1].isoformat()}" if report.days else "-"
    rows = []
    for t in report.groups:
        under = sum(report.under_target(t.group))
        mark = ' class="under"' if under else ""
        rows.append(
            f"<tr><td>{esc(t.group)}</td><td>{t.hours:.1f}</td><td>{t.days}</td>"
            f"<td>{t.longest_gap_days}</td><td{mark}>{under if report.target_hours else '-'}"
            "</td></tr>"
        )
    target = (
        f"<p>Days under the daily target of {report.target_hours:g} hours are outlined in red.</p>"
        if report.target_hours
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>e4sync report: hours per {esc(report.by)}</title>
<style>{STYLE}</style></head>
<body>
<h1>Hours recorded per {esc(report.by)} and day</h1>
<p>{esc(span)}, days in {esc(report.timezone)}; archived recordings only.
Colour: hours recorded that day, from none (dark) to the most (yellow); each cell
shows its hours.</p>
{target}
<img id="heatmap" alt="heatmap of hours per {esc(report.by)} and day"
 src="data:image/png;base64,{png}">
<table id="totals"><thead><tr><th>{esc(report.by)}</th><th>hours</th><th>days with data</th>
<th>longest gap (days)</th><th>days under target</th></tr></thead>
<tbody>
{"".join(rows)}
</tbody></table>
</body></html>
"""


def write_html(report: Report, path: Path) -> None:
    Path(path).write_text(html_page(report), encoding="utf-8")
