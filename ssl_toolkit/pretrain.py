"""`accelerate launch -m ssl_toolkit.pretrain RECIPE.yaml [section.key=value ...]` (or plain `python -m`)."""

from __future__ import annotations

import argparse
import sys

from ssl_toolkit.config import ConfigError, load_config


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="ssl_toolkit.pretrain", description=__doc__)
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.batch_size=64")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.recipe, args.overrides)
        from ssl_toolkit.engine import TrainingDiverged, pretrain  # after the config is known good

        try:
            pretrain(config)
        except TrainingDiverged as error:
            print(f"error: {error}", file=sys.stderr)
            return 3
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
