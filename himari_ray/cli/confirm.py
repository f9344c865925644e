"""`himari-ray confirm`: retrain a search's best (or chosen) configuration and score it once on the test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from himari_ray.cli.common import add_command, positive


def register(sub: argparse._SubParsersAction) -> None:
    c = add_command(
        sub,
        "confirm",
        "Retrain a search's best configuration K times; score validation and, once per search, test.",
        ["himari-ray confirm runs/smoke-20260101-000000", "himari-ray confirm runs/pnl --trial 7 --seeds 5"],
    )
    c.add_argument("dir", type=Path, help="A search output directory; confirm.json and confirm.md are written there.")
    c.add_argument(
        "--trial",
        type=positive("--trial"),
        help="Trial number to confirm (default: best by band distance, then Sharpe).",
    )
    c.add_argument("--seeds", type=positive("--seeds", 100), default=3, help="Independent retrainings.")
    c.add_argument("--force", action="store_true", help="Confirm again although the test split was already read.")
    c.set_defaults(run=run_confirm_cmd)


def run_confirm_cmd(args: argparse.Namespace) -> int:
    from himari_ray.search.confirm import CONFIRM_JSON, CONFIRM_MD, run_confirm

    record = run_confirm(args.dir, trial=args.trial, seeds=args.seeds, force=args.force)
    test = record["summary"]["test"]
    val = record["summary"]["val"]
    print(
        f"confirm: trial {record['trial']}, {len(record['seeds'])} seeds: band distance val "
        f"{val['band_distance']['mean']:.1f} ± {val['band_distance']['std']:.1f}, test "
        f"{test['band_distance']['mean']:.1f} ± {test['band_distance']['std']:.1f}; test net return "
        f"{test['test_net_return']['mean']:+.2%} vs buy-and-hold {test['test_buy_and_hold']['mean']:+.2%}"
    )
    print(f"wrote {Path(args.dir) / CONFIRM_JSON} and {Path(args.dir) / CONFIRM_MD}")
    return 0
