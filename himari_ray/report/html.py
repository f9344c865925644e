"""`himari-ray report`: one self-contained HTML file (figures embedded as base64 PNG) from a search directory."""

from __future__ import annotations

import base64
import errno
import html
import os
import secrets
import time
from pathlib import Path

from himari_ray import __version__
from himari_ray.report.results import SearchResults
from himari_ray.report.text import display_frame, summary_lines
from himari_ray.schema import CONFIRM, display, for_split, label, shown
from himari_ray.searchdir import CONFIRM_JSON, STATUS_HELP, read_confirm
from himari_ray.types import UserInputError

#: Marks a file this command wrote, so regenerating the default DIR/report.html replaces only a report of ours.
GENERATOR = f"himari-ray {__version__} report"
INSTALL_HINT = 'report: needs matplotlib; install it with pip install -e ".[report]" (or pip install matplotlib)'

# The trials table has a column per searched parameter and per score: wider than any page. It scrolls inside
# its own box with the trial column pinned, so every score column is reachable and the page never scrolls
# sideways (long paths and error lines elsewhere wrap instead).
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1200px; color: #222;
       overflow-wrap: anywhere; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.table-scroll { overflow-x: auto; max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: separate; border-spacing: 0; font-size: 0.8em; overflow-wrap: normal; }
td, th { padding: 2px 8px; border-right: 1px solid #ddd; border-bottom: 1px solid #ddd; white-space: nowrap; }
td { background: #fff; } th { background: #f4f4f4; }
th:first-child, td:first-child { position: sticky; left: 0; z-index: 1; box-shadow: 2px 0 2px -1px #bbb; }
th:first-child { z-index: 2; }
img { max-width: 100%; } .note { color: #555; font-size: 0.9em; }
"""


def check_plotting() -> None:
    """One line saying how to get matplotlib when it is missing (the `report` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserInputError(INSTALL_HINT) from None


def default_report_path(out: Path) -> Path:
    return Path(out) / "report.html"


def is_our_report(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return b'<meta name="generator" content="himari-ray' in f.read(2000)
    except OSError:
        return False


def check_writable(path: Path, replace_own: bool = False) -> None:
    """Refuse an existing path in one line, as `export`, `act` and `data` refuse an existing --out. Only the
    default DIR/report.html (`replace_own`), derived from DIR alone, is regenerated in place, and only when
    it is a report of ours."""
    flag = "" if replace_own else "--out "
    if path.is_dir():
        raise UserInputError(f"{flag}{path}: is a directory; name the HTML file to write")
    if path.exists() or path.is_symlink():
        if not replace_own:
            raise UserInputError(f"--out {path}: already exists; choose a new --out (nothing is overwritten)")
        if not is_our_report(path):
            raise UserInputError(f"{path}: exists and is not a himari-ray report; name another file with --out")
    if not path.parent.is_dir():
        raise UserInputError(f"{flag}{path}: no such directory {path.parent}")


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
    parts += confirm_section(results.out)
    parts.append("<h2>Trials</h2>")
    parts.append('<p class="note">Scroll the table sideways for every column; the trial column stays in view.</p>')
    table = display_frame(results).to_html(index=False, escape=True, border=0)
    parts.append(f'<div class="table-scroll">{table}</div>')
    parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(results)) + "</ul>")
    parts.append(
        "<p class='note'>Status: "
        + "; ".join(f"<b>{s}</b> {html.escape(h)}" for s, h in STATUS_HELP.items())
        + "</p></body></html>"
    )
    return "\n".join(parts)


def confirm_section(out: Path) -> list[str]:
    """`confirm`'s results (CONFIRM_JSON), when the search was confirmed: mean ± std over its seeds on
    validation and on the test split, per metric; otherwise a line saying how to get them."""
    parts = ["<h2>Confirmation on the test split</h2>"]
    record, problem = read_confirm(out)
    if problem is not None:
        return [*parts, f'<p class="note">{html.escape(problem)}</p>']
    if record is None:
        return [
            *parts,
            '<p class="note">Not confirmed yet: <code>himari-ray confirm DIR</code> retrains the best trial with '
            "fresh seeds and scores it once on the untouched test split; this report shows its results after it.</p>",
        ]
    if record.get("status") != "complete":
        return [
            *parts,
            f'<p class="note">{CONFIRM_JSON}: the test split was being read at {html.escape(str(record.get("test_read_at")))}'
            " and confirm did not finish; its figures are not shown (the test split counts as read).</p>",
        ]
    summary = record.get("summary", {})
    seeds = ", ".join(map(str, record.get("seeds", [])))
    parts.append(
        f"<p>Trial {html.escape(str(record.get('trial')))} retrained with seeds {html.escape(seeds)}, each its best "
        f"validation iteration, then scored once on the test split ({html.escape(str(record.get('test_read_at')))})."
        " Mean ± std over the seeds.</p>"
    )
    rows = ["<tr><th>metric</th><th>validation</th><th>test</th></tr>"]
    for name in shown(CONFIRM):
        cells = []
        for split in ("val", "test"):
            m = summary.get(split, {}).get(for_split(name, split))
            cells.append(
                "-" if not isinstance(m, dict) else f"{display(name, m.get('mean'))} ± {display(name, m.get('std'))}"
            )
        if cells != ["-", "-"]:
            rows.append(f"<tr><td>{html.escape(label(name))}</td><td>{cells[0]}</td><td>{cells[1]}</td></tr>")
    return [*parts, f'<div class="table-scroll"><table>{"".join(rows)}</table></div>']


def write_report(results: SearchResults, path: Path, replace_own: bool = False) -> Path:
    """Render the report and write it (see `write_html`)."""
    check_writable(path, replace_own)
    return write_html(render_html(results), path, replace_own)


#: link() errors of file systems without hard links: there the existence check before the rename decides.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV, errno.ENOSYS}


def write_html(text: str, path: Path, replace_own: bool = False) -> Path:
    """Write `text` to `path` atomically (a reader never sees half a file; a failure leaves nothing, or the
    old report) with the mode a plain `open` gives (0644 under umask 022: a report is for sharing, and
    mkstemp's 0600 hid it from a web server or a colleague). A new path is claimed with link(), which fails
    on an existing one: a file that appeared after `check_writable` is still never replaced."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open(..., "w")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if replace_own:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise UserInputError(
                    f"--out {path}: already exists; choose a new --out (nothing is overwritten)"
                ) from None
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                check_writable(path)
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
