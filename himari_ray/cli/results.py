"""`himari-ray analyze` and `himari-ray report`: a search's results from its files alone (no Ray)."""

from __future__ import annotations

import argparse
from pathlib import Path

from himari_ray.cli.common import add_command, load_results, new_path, print_results, report_problems


def register(sub: argparse._SubParsersAction) -> None:
    a = add_command(
        sub,
        "analyze",
        "Print a search's results from disk, running or finished (no Ray): trials, best, Pareto front, importance.",
        [
            "himari-ray analyze runs/smoke-20260101-120000",
            "himari-ray analyze runs/smoke-20260101-120000 --format csv > trials.csv",
        ],
    )
    a.add_argument("dir", type=Path, help="A search output directory.")
    a.add_argument(
        "--format",
        choices=("table", "csv", "json", "markdown"),
        default="table",
        help="table and markdown for people; csv (the trials table) and json (everything) for programs.",
    )
    a.set_defaults(run=lambda args: print_results(args.dir, args.format))

    r = add_command(
        sub,
        "report",
        "Write one self-contained HTML report with figures (needs the report extra: matplotlib).",
        "himari-ray report runs/smoke-20260101-120000 --out smoke.html",
    )
    r.add_argument("dir", type=Path, help="A search output directory.")
    r.add_argument(
        "--out",
        type=new_path("--out", "a file"),
        help="New HTML file, never overwritten (default: DIR/report.html, which is regenerated when it is a "
        "report of ours).",
    )
    r.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from himari_ray.report.html import check_plotting, check_writable, default_report_path, write_report

    check_plotting()
    # An --out the user names is refused when it exists, as export, act and data refuse theirs; the default
    # DIR/report.html is a view of DIR alone (like pareto.csv), so a report of ours there is regenerated.
    replace_own = args.out is None
    path = default_report_path(args.dir) if replace_own else args.out
    replacing = replace_own and path.exists()
    check_writable(path, replace_own)
    results = load_results(args.dir)
    if results is None:
        return 2
    write_report(results, path, replace_own)
    note = "replaced the previous report; " if replacing else ""
    print(f"report: {path} ({len(results.trials)} trials; {note}open it in a browser)", flush=True)
    # The report shows what could be read (and lists what could not); the exit code says it is partial.
    return report_problems(results.problems)
