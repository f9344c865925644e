"""`himari-ray export` and `himari-ray act`: a trial's policy out of a search, and its actions on new bars."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from himari_ray.cli.common import add_command, new_path, positive, seed


def register(sub: argparse._SubParsersAction) -> None:
    e = add_command(
        sub,
        "export",
        "Write a trial's policy (TorchScript, plus ONNX when onnx is installed), feature scaler, feature names, "
        "context length, detector and denoiser settings and the search's config as a bundle directory with a "
        "checksummed manifest.",
        "himari-ray export runs/smoke-20260101-000000 --out policy",
    )
    e.add_argument("dir", type=Path, help="A search output directory.")
    e.add_argument("--trial", type=positive("--trial"), help="Trial number (default: best by band distance).")
    e.add_argument("--out", type=new_path("--out"), required=True, help="New bundle directory (never overwritten).")
    e.set_defaults(run=run_export)

    a = add_command(
        sub,
        "act",
        "Compute features and regimes from raw OHLCV bars (any layout `data import` reads) exactly as training "
        "did, and write one row per bar: timestamp, close, real, regime, action, p_hold, p_long, p_short (CSV). "
        "Bars before the first full context get no action.",
        "himari-ray act policy BTC_USDT-1h.feather --out actions.csv",
    )
    a.add_argument("bundle", type=Path, help="A bundle directory written by `himari-ray export`.")
    a.add_argument("bars", type=Path, help="OHLCV file: CSV, Parquet, freqtrade .json/.feather, Binance klines.")
    a.add_argument("--out", type=Path, help="New CSV file (default: standard output).")
    a.add_argument(
        "--sha256",
        help="Refuse the bundle unless its manifest.json has this SHA-256, as export printed it (default: no check).",
    )
    a.add_argument(
        "--seed",
        type=seed(),
        default=0,
        help="Seed of the draws of a policy scored as a sampler (eval.deploy: sample); a greedy policy ignores it.",
    )
    a.add_argument(
        "--start",
        help="Timestamp where the deployment begins: flat, with the fitted thresholds (default: the first bar "
        "with a full context); earlier bars only warm the features up.",
    )
    a.set_defaults(run=run_act)


def run_export(args: argparse.Namespace) -> int:
    from himari_ray.policy.export import export_search

    found, digest, n = export_search(args.dir, args.trial, args.out)
    print(
        f"exported trial {found.number} (iteration {found.iteration}, {found.checkpoint.name}) to {args.out}\n"
        f"checked: the exported module's greedy actions equal the checkpoint's on all {n} validation windows\n"
        f"manifest SHA-256 {digest} (pass it to `act --sha256` to authenticate the bundle)\n"
        f"next: himari-ray act {args.out} BARS.csv --out actions.csv"
    )
    return 0


def run_act(args: argparse.Namespace) -> int:
    from himari_ray.policy.act import act_on_bars, deployment, write_actions
    from himari_ray.policy.bundle import load_bundle
    from himari_ray.types import UserInputError

    if args.out is not None and args.out.exists():
        raise UserInputError(f"{args.out}: already exists; choose a new --out (nothing is overwritten)")
    if args.out is not None and not args.out.parent.is_dir():
        raise UserInputError(f"{args.out}: no such directory {args.out.parent}")
    bundle = load_bundle(args.bundle, args.sha256)
    frame, skipped = act_on_bars(bundle, args.bars, args.seed, args.start)
    write_actions(frame, args.out)
    first = frame["timestamp"].iloc[skipped] if skipped < len(frame) else "-"
    print(
        f"act: {len(frame) - skipped} actions ({deployment(bundle)}); the first {skipped} bars have none (the detector's warm-up over "
        f"real bars, then a context of {bundle.spec.context_len}{', then --start' if args.start else ''}); first action at {first}"
        + (f"; wrote {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return 0
