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
    from himari_ray.schema import BAND_DISTANCE, VAL_BUY_AND_HOLD, VAL_NET_RETURN, for_split
    from himari_ray.search.confirm import CONFIRM_JSON, CONFIRM_MD, run_confirm

    record = run_confirm(args.dir, trial=args.trial, seeds=args.seeds, force=args.force)
    test = record["summary"]["test"]
    val = record["summary"]["val"]
    net, bh = for_split(VAL_NET_RETURN, "test"), for_split(VAL_BUY_AND_HOLD, "test")
    print(
        f"confirm: trial {record['trial']}, {len(record['seeds'])} seeds: band distance val "
        f"{val[BAND_DISTANCE]['mean']:.1f} ± {val[BAND_DISTANCE]['std']:.1f}, test "
        f"{test[BAND_DISTANCE]['mean']:.1f} ± {test[BAND_DISTANCE]['std']:.1f}; test net return "
        f"{test[net]['mean']:+.2%} vs buy-and-hold {test[bh]['mean']:+.2%}"
    )
    print(f"wrote {Path(args.dir) / CONFIRM_JSON} and {Path(args.dir) / CONFIRM_MD}")
    return 0
