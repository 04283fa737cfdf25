"""The `ssl-toolkit` command: `pretrain`, `probe`."""

from __future__ import annotations

import argparse
import sys

from ssl_toolkit import pretrain
from ssl_toolkit.config import ConfigError


def _probe(args: argparse.Namespace) -> int:
    from ssl_toolkit.eval.probe import run_probe

    result = run_probe(args.run_dir, args.overrides, features=args.features, baselines=args.baselines)
    lines = [f"linear probe on {args.run_dir} ({result['features']} features, dim {result['feature_dim']}):"]
    lines.append(f"  pretrained encoder   top-1 {100 * result['top1']:.2f}%   AUROC {result['auroc']:.4f}")
    if args.baselines:
        lines.append(f"  same backbone, untrained  top-1 {100 * result['random_init_top1']:.2f}%")
        lines.append(f"  raw pixels                top-1 {100 * result['raw_pixels_top1']:.2f}%")
    lines.append(f"  written to {args.run_dir}/probe.json")
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-toolkit", description="Self-supervised pretraining and evaluation."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain.build_parser(commands.add_parser("pretrain", help="pretrain an encoder from a recipe"))
    probe = commands.add_parser("probe", help="linear probe on a run's frozen pre-projection features")
    probe.add_argument("run_dir", help="run directory written by pretraining, e.g. runs/quickstart")
    probe.add_argument("overrides", nargs="*", help="section.key=value applied to the run's config")
    probe.add_argument(
        "--baselines", action="store_true", help="also probe the untrained backbone and raw pixels"
    )
    probe.add_argument("--features", default="backbone", choices=["backbone", "projection"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            return pretrain.run(args)
        return _probe(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
