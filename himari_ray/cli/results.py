"""`himari-ray analyze` and `himari-ray report`: a search's results from its files alone (no Ray)."""

from __future__ import annotations

import argparse
from pathlib import Path

from himari_ray.cli.common import add_command, print_results


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
    r.add_argument("--out", type=Path, help="HTML file to write (default: DIR/report.html).")
    r.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from himari_ray.report import load_search
    from himari_ray.report.html import check_plotting, check_writable, default_report_path, write_report

    check_plotting()
    path = args.out or default_report_path(args.dir)
    check_writable(path)
    results = load_search(args.dir)
    write_report(results, path)
    print(f"report: {path} ({len(results.trials)} trials; open it in a browser)")
    return 0
