"""`himari-ray report`: one self-contained HTML file (figures embedded as base64 PNG) from a search directory."""

from __future__ import annotations

import base64
import html
import os
import tempfile
import time
from pathlib import Path

from himari_ray import __version__
from himari_ray.report.results import SearchResults
from himari_ray.report.text import display_frame, summary_lines
from himari_ray.searchdir import STATUS_HELP
from himari_ray.types import UserInputError

#: Marks a file this command wrote, so regenerating a report replaces it and nothing else is overwritten.
GENERATOR = f"himari-ray {__version__} report"
INSTALL_HINT = 'report: needs matplotlib; install it with pip install -e ".[report]" (or pip install matplotlib)'

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.8em; } td, th { padding: 2px 8px; border: 1px solid #ddd; }
th { background: #f4f4f4; } img { max-width: 100%; } .note { color: #555; font-size: 0.9em; }
"""


def check_plotting() -> None:
    """One line saying how to get matplotlib when it is missing (the `report` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserInputError(INSTALL_HINT) from None


def default_report_path(out: Path) -> Path:
    return Path(out) / "report.html"


def check_writable(path: Path) -> None:
    """Refuse to replace a file this command did not write (a report of ours is regenerated in place)."""
    if path.is_dir():
        raise UserInputError(f"--out {path}: is a directory; name the HTML file to write")
    if path.exists():
        try:
            ours = '<meta name="generator" content="himari-ray' in path.read_text(errors="replace")[:2000]
        except OSError:
            ours = False
        if not ours:
            raise UserInputError(f"--out {path}: exists and is not a himari-ray report; choose another file")
    if not path.parent.is_dir():
        raise UserInputError(f"--out {path}: no such directory {path.parent}")


def render_html(results: SearchResults) -> str:
    from himari_ray.report.figures import FIGURES

    m = results.manifest
    parts = [
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><meta name="generator" content="{html.escape(GENERATOR)}">',
        f"<title>himari-ray: {html.escape(m.space)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Search {html.escape(m.space)} ({html.escape(m.family)})</h1>",
        f'<p class="note">{html.escape(str(results.out))} &middot; {len(results.trials)} of {m.trials} '
        f"trials, {m.iterations} iterations each at most &middot; searched: "
        f"{html.escape(', '.join(m.searched))} &middot; {'finished' if results.run.finished else 'running or interrupted'}"
        f" &middot; written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} by {html.escape(GENERATOR)}</p>",
        "<p>Every trial is shown by its <b>best report</b> (lowest objective) and the iteration it came from; "
        "trial numbers are Tune's (from 1), as in the trial directories and the report lines.</p>",
    ]
    for title, draw in FIGURES:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        png = draw(results)
        if png is None:
            parts.append(f'<p class="note">{html.escape(results.importance_note)}</p>')
            continue
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">')
    parts.append("<h2>Trials</h2>")
    parts.append(display_frame(results).to_html(index=False, escape=True, border=0))
    parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(results)) + "</ul>")
    parts.append(
        "<p class='note'>Status: "
        + "; ".join(f"<b>{s}</b> {html.escape(h)}" for s, h in STATUS_HELP.items())
        + "</p></body></html>"
    )
    return "\n".join(parts)


def write_report(results: SearchResults, path: Path) -> Path:
    """Write the report atomically (a reader never sees half a file; a failure leaves the old one)."""
    check_writable(path)
    text = render_html(results)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".report-", suffix=".html")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
