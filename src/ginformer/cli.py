"""The `ginformer` command. Each subcommand is two functions, one to declare its arguments and one to run it;
adding a subcommand is one entry in COMMANDS. The CLI parses and prints; the work lives in the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence


def _set_option(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override one config value (YAML-parsed), e.g. --set {example}; repeatable",
    )


def _run_config_arguments(parser: argparse.ArgumentParser, config_example: str, set_example: str) -> None:
    parser.add_argument("--config", required=True, help=f"run config YAML, e.g. {config_example}")
    _set_option(parser, set_example)
    flags = parser.add_mutually_exclusive_group()
    flags.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
    flags.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")


def _pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    _run_config_arguments(parser, "configs/protein_demo.yaml", "training.max_steps=20")


def _pretrain(args: argparse.Namespace) -> None:
    from ginformer.experiment import load_settings
    from ginformer.train import pretrain

    settings = load_settings(args.config, args.overrides)
    print(f"run written to {pretrain(settings, resume=args.resume, overwrite=args.overwrite)}")


def _finetune_arguments(parser: argparse.ArgumentParser) -> None:
    _run_config_arguments(parser, "configs/gsm8k_cpu_sparse_gin.yaml", "model.sparse_gin.d_gnn=64 (nested keys too)")


def _finetune(args: argparse.Namespace) -> None:
    from ginformer.finetune import finetune, load_finetune_settings

    settings = load_finetune_settings(args.config, args.overrides)
    print(f"run written to {finetune(settings, resume=args.resume, overwrite=args.overwrite)}")


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", dest="run_dir", required=True,
        help="a run directory written by pretrain or finetune, e.g. runs/protein_demo_gin",
    )
    parser.add_argument(
        "--data",
        help="a file in the run's data format (proteins: .parquet/.csv/.jsonl; GSM8K or FOLIO: .jsonl); "
        "default: the run's validation split",
    )
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's eval batch size)")
    finetuned = parser.add_argument_group("fine-tuning runs")
    finetuned.add_argument(
        "--limit", type=int, help="rows scored for the loss (default: the run's validation subset; all rows of --data)"
    )
    finetuned.add_argument(
        "--generate", type=int, help="how many of those rows are scored by generation (default: all)"
    )
    finetuned.add_argument(
        "--max-new-tokens", type=int, default=256, help="cap on generated tokens per row (default 256)"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from ginformer.finetune import is_finetune_run

    if is_finetune_run(args.run_dir):
        from ginformer.finetune_eval import evaluate_finetune_run, format_finetune_evaluation

        result = evaluate_finetune_run(
            args.run_dir, args.data, args.limit, args.generate, args.max_new_tokens, args.batch_size
        )
        print(format_finetune_evaluation(result))
    else:
        from ginformer.evaluate import evaluate_run, format_evaluation

        result = evaluate_run(args.run_dir, args.data, batch_size=args.batch_size)
        print(format_evaluation(result))
    print(f"\nwritten to {result.run}/eval_{'val' if args.data is None else Path(args.data).stem}.json")


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True,
        help="compare config YAML: pretraining (configs/protein_compare.yaml) or fine-tuning "
        "(configs/gsm8k_compare.yaml)",
    )
    _comparison_options(parser)


def _compare(args: argparse.Namespace) -> None:
    from ginformer.compare import load_compare_settings, run_compare
    from ginformer.finetune_compare import (
        is_finetune_compare_config,
        load_finetune_compare_settings,
        run_finetune_compare,
    )

    if is_finetune_compare_config(args.config):
        root = run_finetune_compare(load_finetune_compare_settings(args.config, args.overrides), args.overwrite)
    else:
        root = run_compare(load_compare_settings(args.config, args.overrides), overwrite=args.overwrite)
    _print_comparison(root)


def _comparison_options(parser: argparse.ArgumentParser) -> None:
    _set_option(parser, "training.max_steps=20 (the base run config every run shares)")
    parser.add_argument("--overwrite", action="store_true", help="delete the comparison directory and train again")


def _demo(args: argparse.Namespace) -> None:
    from ginformer.compare import run_demo

    root, seconds = run_demo(overwrite=args.overwrite, overrides=args.overrides)
    _print_comparison(root)
    print(f"demo wall time: {seconds / 60:.1f} min (finished runs are reused; --overwrite trains again)")


def _print_comparison(root: Path) -> None:
    print()
    print((root / "summary.md").read_text())
    print(f"summary: {root / 'summary.md'}, {root / 'summary.csv'} (per run: {root / 'runs.csv'})")
    print(f"figures: {root / 'figures'}/")


def _graph_arguments(parser: argparse.ArgumentParser) -> None:
    from ginformer import graph_cli

    graph_cli.add_arguments(parser)


def _graph(args: argparse.Namespace) -> None:
    from ginformer import graph_cli

    graph_cli.run(args)


# name -> (help, add_arguments, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "pretrain": ("train a model from scratch as a run config describes", _pretrain_arguments, _pretrain),
    "finetune": (
        "fine-tune a frozen pretrained LLM with Sparse-GIN or LoRA (or evaluate the base: method none)",
        _finetune_arguments,
        _finetune,
    ),
    "evaluate": (
        "loss, perplexity and task scores (label accuracy, GSM8K exact match, FOLIO accuracy) of a trained run",
        _evaluate_arguments,
        _evaluate,
    ),
    "compare": (
        "train variants × seeds (pretraining at a matched size, or fine-tuning methods); write a summary and figures",
        _compare_arguments,
        _compare,
    ),
    "demo": ("the CPU comparison of reference and GIN attention on the bundled proteins", _comparison_options, _demo),
    "graph": ("draw and export the graphs a text induces in a model's attention", _graph_arguments, _graph),
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
    from ginformer.train import TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except TrainingDiverged as err:
        print(f"ginformer {args.command}: stopped: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        # Bad input (a config, a data file, a run directory): one line saying what to fix, no traceback;
        # exit code 2, as argparse uses for usage errors. ConfigError is a ValueError.
        print(f"ginformer {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
