"""`himari-ray vast offers|up|status|logs|pull|down`: searches on rented Vast.ai GPU instances."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from himari_ray.cli.common import DEFAULT_SPACE, add_command, new_path, positive, quote, seed
from himari_ray.types import UserInputError


def _price(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise UserInputError(f"{flag}: expected a number, got {text!r}") from None
        if not value > 0:
            raise UserInputError(f"{flag}: must be > 0, got {text}")
        return value

    return parse


def _instance_id(flag: str):
    """An argparse type for a Vast instance id: its decimal digits (ids run to 8 digits and more, past the
    bound a count has), or one line naming the flag."""

    def parse(text: str) -> int:
        from himari_ray.types import MAX_ID, valid_id

        value = valid_id(text.strip())
        if value is None:
            raise UserInputError(f"{flag}: expected an instance id (digits, 1 to {MAX_ID}), got {quote(text)}")
        return value

    return parse


def _filter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", help="GPU model, e.g. RTX_4090, H100_SXM; a wrong name lists them (default: any).")
    p.add_argument("--gpus", type=positive("--gpus"), help="Fewest GPUs per instance (default: 1).")
    p.add_argument("--max-price", type=_price("--max-price"), help="Highest price per instance, $/hour (default: any).")
    p.add_argument(
        "--min-reliability", type=_price("--min-reliability"), help="Lowest host reliability, 0-1 (default: 0.95)."
    )
    p.add_argument("--disk", type=_price("--disk"), help="Disk per instance in GB (default: 30).")
    p.add_argument(
        "--filter", default="", help="More conditions: 'num_gpus>=2 dph<=1.5 gpu_ram>=24 reliability>=0.98'."
    )


def _offer_filter(args: argparse.Namespace):
    from himari_ray.launch.offers import OfferFilter, gpu_name, parse_filter

    values = {}
    if args.gpu:
        values["gpu_name"] = gpu_name(args.gpu)
    for flag, field in (
        ("gpus", "min_gpus"),
        ("max_price", "max_dph"),
        ("min_reliability", "min_reliability"),
        ("disk", "min_disk_gb"),
    ):
        if getattr(args, flag) is not None:
            values[field] = getattr(args, flag)
    try:
        base = OfferFilter(**values)
    except ValueError as exc:
        raise UserInputError(f"offer filter: {str(exc).splitlines()[-1].strip()}") from None
    return parse_filter(args.filter, base) if args.filter.strip() else base


def _client():
    from himari_ray.launch.vast import VastClient, load_api_key

    return VastClient(load_api_key())


def register(sub: argparse._SubParsersAction) -> None:
    v = add_command(
        sub,
        "vast",
        "Run searches on rented Vast.ai GPU instances that share one study.",
        [
            "himari-ray vast offers --filter 'gpu=RTX_4090 dph<=0.5'",
            "himari-ray vast up pnl_cost --out runs/vast --instances 2",
        ],
    )
    vs = v.add_subparsers(dest="vast_command", required=True, parser_class=type(v))

    o = add_command(
        vs,
        "offers",
        "List the offers a launch with these filters would rent, cheapest first.",
        "himari-ray vast offers --limit 5",
    )
    _filter_flags(o)
    o.add_argument("--limit", type=positive("--limit"), default=20, help="Show at most N offers.")
    o.set_defaults(run=run_offers)

    u = add_command(
        vs,
        "up",
        "Rent instances, search on each into one study, pull results, destroy them.",
        "himari-ray vast up pnl_cost --out runs/vast --instances 2 --trials 16",
    )
    u.add_argument("space", nargs="?", default=DEFAULT_SPACE, help="Space file or bundled name.")
    u.add_argument(
        "--out", type=new_path("--out"), required=True, help="Launch directory (new or empty): state, ledger, results."
    )
    u.add_argument("--instances", type=positive("--instances"), default=1, help="Instances to rent.")
    u.add_argument(
        "--trials", type=positive("--trials"), help="Trials over all instances (default: the space's budget)."
    )
    u.add_argument("--seed", type=seed(), help="Sampler seed of the first instance (default: the space's).")
    u.add_argument("--storage", help="The study on this machine, a SQLAlchemy URL (default: sqlite in --out).")
    u.add_argument("--image", help="Docker image (default: a PyTorch CUDA runtime image).")
    u.add_argument("--install", help="Command installing himari-ray on a box (default: the pinned release).")
    u.add_argument(
        "--ready-timeout", type=positive("--ready-timeout"), default=900, help="Seconds to wait for each box."
    )
    u.add_argument("--keep", action="store_true", help="Leave the instances running after the searches end.")
    _filter_flags(u)
    u.set_defaults(run=run_up)

    for name, helptext in (
        ("status", "Each instance's state, the study's progress, the cost so far."),
        ("logs", "The last lines of each running instance's on-start and search logs."),
        ("pull", "Copy each running instance's results into <dir>/boxes/."),
        ("down", "Destroy every instance of a launch."),
    ):
        p = add_command(vs, name, helptext, f"himari-ray vast {name} runs/vast")
        p.add_argument("dir", type=Path, help="The launch directory (--out of `vast up`).")
        if name == "logs":
            p.add_argument(
                "--instance", type=_instance_id("--instance"), help="Only this instance id (default: every instance)."
            )
            p.add_argument("--lines", type=positive("--lines"), default=40, help="Lines per log.")
        p.set_defaults(run=run_manage)


def run_offers(args: argparse.Namespace) -> int:
    from himari_ray.launch.launcher import find_offers
    from himari_ray.launch.offers import format_offers
    from himari_ray.launch.vast import VastError

    f = _offer_filter(args)
    client = _client()
    try:
        offers, note = find_offers(client, f)
    except VastError as exc:
        raise UserInputError(f"Vast offers: {exc}") from None
    print(format_offers(offers[: args.limit]))
    if note:  # offers Vast returned without a field the filter checks: never listed nor rented, but counted
        print(f"warning: {note}", file=sys.stderr)
    return 0


def run_up(args: argparse.Namespace) -> int:
    from himari_ray.launch.launcher import LaunchConfig, up
    from himari_ray.search.space import load_space

    f = _offer_filter(args)
    client = _client()
    space, _ = load_space(args.space)
    storage = args.storage or f"sqlite:///{args.out.resolve() / 'study.db'}"
    extra = {k: v for k, v in (("image", args.image), ("install", args.install)) if v}
    cfg = LaunchConfig(
        space=args.space,
        instances=args.instances,
        trials=args.trials or space.budget.trials,
        seed=space.budget.seed if args.seed is None else args.seed,
        storage=storage,
        ready_timeout_s=args.ready_timeout,
        keep=args.keep,
        **extra,
    )
    return up(cfg, f, args.out, client)


def run_manage(args: argparse.Namespace) -> int:
    from himari_ray.launch import manage
    from himari_ray.launch.vast import VastError

    client = _client()
    try:
        if args.vast_command == "down":
            return manage.down(args.dir, client)
        if args.vast_command == "logs":
            return manage.logs(args.dir, client, instance=args.instance, lines=args.lines)
        return getattr(manage, args.vast_command)(args.dir, client)
    except VastError as exc:  # an answer Vast gave mid-command (a box without an SSH address, ...)
        raise UserInputError(f"Vast: {exc}") from None
