"""`himari-ray data import|inspect|synth`."""

from __future__ import annotations

import argparse
from pathlib import Path

from himari_ray.cli.common import Parser, add_command, int_at_least, new_path, positive, seed
from himari_ray.types import UserInputError

#: Fewer synthetic bars leave splits too short for any context window (the smoke space needs ~1000).
MIN_SYNTH_BARS = 1000


def register(sub: argparse._SubParsersAction) -> None:
    d = add_command(sub, "data", "Build and inspect datasets.", "himari-ray data import btc.csv --out data/btc")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    imp = add_command(
        dsub,
        "import",
        "OHLCV CSV/Parquet, freqtrade .json/.feather, Binance klines, CryptoDataDownload, or the seed pickle.",
        "himari-ray data import BTC_USDT-1h.csv --out data/btc --denoise",
    )
    imp.add_argument("file", type=Path, help="OHLCV .csv/.parquet/.json/.feather or seed .pkl file.")
    imp.add_argument("--out", type=new_path("--out"), required=True, help="New dataset directory.")
    imp.add_argument("--train-frac", type=float, default=0.6, help="Share of bars in the train split.")
    imp.add_argument("--val-frac", type=float, default=0.2, help="Share of bars in the validation split.")
    imp.add_argument("--denoise", action="store_true", help="Apply the causal Kalman denoiser to the features.")
    imp.add_argument("--min-dwell", type=positive("--min-dwell"), default=1, help="Regime hysteresis in bars.")
    imp.add_argument(
        "--seed-features", choices=("raw", "denoised"), default="raw", help="Seed pickle: which feature array."
    )
    ins = add_command(
        dsub,
        "inspect",
        "Shapes, date ranges, regime shares, gaps, feature summary.",
        "himari-ray data inspect data/btc",
    )
    ins.add_argument("dataset", type=Path, help="A dataset directory.")
    syn = add_command(
        dsub,
        "synth",
        "Write the seeded synthetic market as a dataset.",
        "himari-ray data synth --out data/synth --seed 1",
    )
    syn.add_argument("--out", type=new_path("--out"), required=True, help="New dataset directory.")
    syn.add_argument(
        "--n-bars",
        type=int_at_least("--n-bars", MIN_SYNTH_BARS, 10_000_000),
        default=12_000,
        help="Hourly bars to generate.",
    )
    syn.add_argument("--seed", type=seed(), default=0, help="Seed of the synthetic market.")
    d.set_defaults(run=run_data)


def run_data(args: argparse.Namespace) -> int:
    from himari_ray.data import dataset, store
    from himari_ray.data.describe import describe_dataset

    if args.data_command == "inspect":
        print(describe_dataset(store.load_dataset_dir(args.dataset), args.dataset))
        return 0
    store.check_new_path(args.out)
    if args.data_command == "synth":
        ds = dataset.synthetic_dataset(args.n_bars, args.seed)
    elif args.file.suffix.lower() in (".pkl", ".pickle"):
        ds = dataset.import_seed_pickle(args.file, features=args.seed_features)
    else:
        ds = dataset.import_ohlcv(args.file, _build_settings(args))
    store.save_dataset(ds, args.out)
    print(describe_dataset(ds, args.out))
    return 0


def _build_settings(args: argparse.Namespace):
    from pydantic import ValidationError

    from himari_ray.data.dataset import BuildSettings

    try:
        return BuildSettings(
            train_frac=args.train_frac,
            val_frac=args.val_frac,
            denoise={"enabled": args.denoise},
            detector={"min_dwell": args.min_dwell},
        )
    except ValidationError as err:
        first = err.errors()[0]
        raise UserInputError(f"--{'-'.join(map(str, first['loc']))}: {first['msg']}") from None
