"""The `ginformer` command. Each subcommand is two functions, one to declare its arguments and one to run it;
adding a subcommand is one entry in COMMANDS. The CLI parses and prints; the work lives in the library."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


def _pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config YAML, e.g. configs/protein_demo.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (YAML-parsed), e.g. --set training.max_steps=20; repeatable",
    )
    flags = parser.add_mutually_exclusive_group()
    flags.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
    flags.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")


def _pretrain(args: argparse.Namespace) -> None:
    from ginformer.experiment import load_settings
    from ginformer.train import TrainingDiverged, pretrain

    settings = load_settings(args.config, args.overrides)
    try:
        run_dir = pretrain(settings, resume=args.resume, overwrite=args.overwrite)
    except TrainingDiverged as err:
        print(f"ginformer pretrain: stopped: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"run written to {run_dir}")


# name -> (help, add_arguments, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "pretrain": ("train a model from scratch as a run config describes", _pretrain_arguments, _pretrain),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ginformer", description="Graph-aware attention for transformers.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        subparser = subcommands.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        # Bad input (a config, a data file, a run directory): one line saying what to fix, no traceback;
        # exit code 2, as argparse uses for usage errors. ConfigError is a ValueError.
        print(f"ginformer {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
