"""The `ginformer` command. Each subcommand is two functions, one to declare its arguments and one to run it;
adding a subcommand is one entry in COMMANDS. The CLI parses and prints; the work lives in the library."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from ginformer.errors import ConfigError, GinformerError


def _set_option(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config value (YAML-parsed, nested keys with dots), e.g. --set {example}; repeatable",
    )


def _run_config_arguments(parser: argparse.ArgumentParser, config_example: str, set_example: str) -> None:
    parser.add_argument(
        "--config", required=True, help=f"run config YAML (a path, or a bundled config's name), e.g. {config_example}"
    )
    _set_option(parser, set_example)
    flags = parser.add_mutually_exclusive_group()
    flags.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
    flags.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")


def _train(args: argparse.Namespace, side: str) -> None:
    from ginformer.runs.config import load_run_settings
    from ginformer.runs.train import train

    settings = load_run_settings(args.config, args.overrides, side=side)
    print(f"run written to {train(settings, resume=args.resume, overwrite=args.overwrite)}")


def _pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    _run_config_arguments(parser, "configs/shakespeare_char_cpu.yaml", "training.max_steps=20")


def _pretrain(args: argparse.Namespace) -> None:
    _train(args, "scratch")


def _finetune_arguments(parser: argparse.ArgumentParser) -> None:
    _run_config_arguments(parser, "configs/gsm8k_cpu_sparse_gin.yaml", "model.sparse_gin.d_gnn=64")


def _finetune(args: argparse.Namespace) -> None:
    _train(args, "pretrained")


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", dest="run_dir", required=True, help="a finished run directory, e.g. runs/shakespeare")
    parser.add_argument("--data", help="a file in the run's data format; default: the run's validation split")
    parser.add_argument(
        "--limit", type=int, help="rows (or blocks) scored: default the run's validation subset, all rows of --data"
    )
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's eval batch size)")
    generated = parser.add_argument_group("tasks scored on generated answers (gsm8k, folio)")
    generated.add_argument("--generate", type=int, help="how many of those rows are scored by generation (default all)")
    generated.add_argument("--max-new-tokens", type=int, help="cap on generated tokens per row (default: the task's)")
    harness = parser.add_argument_group("lm-evaluation-harness (installed with the integrations extra)")
    harness.add_argument("--lm-eval", action="append", metavar="TASK", help="score the run on this lm-eval task "
                         "instead: lm-eval's name, gsm8k_bundled (lm-eval's GSM8K on local rows; --data names "
                         "another GSM8K-format file) or a task YAML; repeatable. --limit caps the documents")
    harness.add_argument("--lm-eval-tasks", action="append", type=Path, default=[], metavar="PATH",
                         help="a task YAML, or a directory of them, for lm-eval to know (e.g. on a local JSON file); "
                         "a task whose YAML has !function tags runs that Python code when it is named")
    harness.add_argument("--num-fewshot", type=int, help="shots per document (default: each task's own)")


def _evaluate(args: argparse.Namespace) -> None:
    from ginformer.runs.evaluate import VAL, evaluate_run, format_evaluation
    from ginformer.runs.run_dir import RunDir
    from ginformer.tasks import TASKS

    if args.lm_eval:
        return _evaluate_lm_eval(args)
    for flag, value in (("--num-fewshot", args.num_fewshot), ("--lm-eval-tasks", args.lm_eval_tasks or None)):
        if value is not None:
            raise ConfigError(f"{flag} applies to --lm-eval only")
    result = evaluate_run(
        args.run_dir, args.data, limit=args.limit, generate=args.generate, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    print(format_evaluation(result, TASKS[result.task].columns))
    print(f"\nwritten to {RunDir(result.run).evaluation(VAL if args.data is None else Path(args.data).stem)}")


def _evaluate_lm_eval(args: argparse.Namespace) -> None:
    from ginformer.integrations.lm_eval import (
        evaluate_run_lm_eval,
        format_results,
        output_path,
    )

    for flag, value in (("--generate", args.generate), ("--max-new-tokens", args.max_new_tokens)):
        if value is not None:
            raise ConfigError(f"{flag} does not apply to --lm-eval: the task's config says how it generates")
    results = evaluate_run_lm_eval(
        args.run_dir, args.lm_eval, task_paths=args.lm_eval_tasks, num_fewshot=args.num_fewshot, limit=args.limit,
        batch_size=args.batch_size or 1, gsm8k_source=args.data,
    )
    print(format_results(results))
    print(f"written to {output_path(args.run_dir, args.lm_eval)}")


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="compare config YAML, e.g. configs/shakespeare_compare_cpu.yaml"
    )
    _comparison_options(parser)
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT[/seedK]",
                        help="train and evaluate only these runs (repeatable; a sweep's run is "
                        "VARIANT/POINT/seedK), e.g. to share a GPU between processes; the summary is written once "
                        "every run is done")


def _compare(args: argparse.Namespace) -> None:
    from ginformer.runs.compare import pending_runs, run_comparison
    from ginformer.runs.compare_config import load_compare_settings

    settings = load_compare_settings(args.config, args.overrides)
    root = run_comparison(settings, overwrite=args.overwrite, only=args.only)
    pending = pending_runs(settings)
    if pending:
        print(f"{root}: {len(pending)} run(s) still to train ({', '.join(pending)}); the summary comes once they are")
    else:
        _print_comparison(root)


def _comparison_options(parser: argparse.ArgumentParser) -> None:
    _set_option(parser, "training.max_steps=20 (the base run config every run shares)")
    parser.add_argument("--overwrite", action="store_true", help="delete the comparison directory and train again")


def _demo(args: argparse.Namespace) -> None:
    from ginformer.runs.compare import run_demo

    started = time.perf_counter()
    root = run_demo(overwrite=args.overwrite, overrides=args.overrides)
    _print_comparison(root)
    minutes = (time.perf_counter() - started) / 60
    print(f"demo wall time: {minutes:.1f} min (finished runs are reused; --overwrite trains again)")


def _print_comparison(root: Path) -> None:
    print()
    print((root / "summary.md").read_text())
    print(f"summary: {root / 'summary.md'}, {root / 'summary.csv'} (per run: {root / 'runs.csv'})")
    print(f"figures: {root / 'figures'}/")


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", dest="run_dir", required=True, help="a finished run directory")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="the text to continue (protein runs: a residue sequence; instruction runs: "
                      "the user's turn)")
    what.add_argument("--prompts", type=Path, help="a .txt file (a prompt per line) or a .jsonl file (rows with "
                      "'prompt' or 'messages'), answered in batches into --output")
    what.add_argument("--chat", action="store_true", help="a conversation on the terminal, keeping its history")
    parser.add_argument("--output", type=Path, help="the JSONL file --prompts writes (default: <prompts>.out.jsonl)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per answer (default 200)")
    parser.add_argument("--temperature", type=float, help="sample at this temperature (default: greedy decoding)")
    parser.add_argument("--top-k", type=int, help="sample from the k most likely tokens only")
    parser.add_argument("--top-p", type=float, help="sample from the smallest set of tokens with probability p")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default 0)")
    parser.add_argument("--batch-size", type=int, help="prompts generated together with --prompts (default 8)")


def _generate(args: argparse.Namespace) -> None:
    from ginformer.files import check_output_file
    from ginformer.generation import Sampling
    from ginformer.runs.generate import RunGenerator

    if args.prompts is None:
        for flag, value in (("--output", args.output), ("--batch-size", args.batch_size)):
            if value is not None:
                raise ConfigError(f"{flag} applies to --prompts only")
    sampled = any(value is not None for value in (args.temperature, args.top_k, args.top_p))
    temperature = 1.0 if args.temperature is None else args.temperature
    options = {"max_new_tokens": args.max_new_tokens, "seed": args.seed,
               "sampling": Sampling(temperature, args.top_k, args.top_p) if sampled else None}
    output = None
    if args.prompts is not None:  # checked before the model loads: a bad output path is found in a second
        output = args.output or args.prompts.with_suffix(".out.jsonl")
        check_output_file(output, "--output", inputs=[args.prompts])
    generator = RunGenerator(args.run_dir)
    if args.prompt is not None:
        generator.continue_text(args.prompt, **options)
    elif args.chat:
        generator.chat(_user_lines(), **options)
    else:
        count = generator.complete_file(args.prompts, output, batch_size=args.batch_size or 8, **options)
        print(f"{count} completions written to {output}")


def _user_lines():
    """The user's turns, one per line of standard input, each after a prompt when it is a terminal."""
    while True:
        if sys.stdin.isatty():
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if sys.stdin.isatty():
            print("model> ", end="", flush=True)
        yield line


def _graph_arguments(parser: argparse.ArgumentParser) -> None:
    from ginformer.viz.draw import LAYOUTS, GraphRequest
    from ginformer.viz.explorer import DEFAULT_WINDOW, PRECISIONS

    defaults = GraphRequest(text="")
    parser.add_argument("--model", default=defaults.model, help="a run directory (its model/, or a fine-tuning run's "
                        "base with its Sparse-GIN adapter/), a model directory, a hub id, or 'smollm2' for the bundled "
                        "SmolLM2-135M-Instruct (default)")
    parser.add_argument("--adapter", type=Path, help="a saved Sparse-GIN adapter directory to attach to --model")
    parser.add_argument("--text", required=True, help="the text whose attention graphs to draw")
    parser.add_argument("--layer", type=int, action="append", dest="layers", metavar="L",
                        help="layer to draw (negative counts from the end); repeatable; default: the middle layer, "
                        "with --html every layer")
    parser.add_argument("--head", type=int, metavar="H", help="also draw head H alone, and use it for the graph")
    parser.add_argument("--window", type=_window, metavar="START:STOP", help="show only tokens START..STOP-1 "
                        "(as a Python slice); the model still reads the whole text. With --html: the tokens kept at "
                        f"full resolution (default the first {DEFAULT_WINDOW}), the whole text being in the overview")
    parser.add_argument("--top-k", type=int, default=defaults.top_k, help="edges drawn per token in the causal graph")
    parser.add_argument("--layout", choices=LAYOUTS, default=defaults.layout, help="causal graph layout")
    parser.add_argument("--gamma", type=float, default=defaults.gamma, help="colour-scale exponent of the heatmaps: "
                        "< 1 shows the weak edges next to strong attention sinks (1 is linear)")
    for name, meaning in (("alpha", "sigmoid slope α"), ("tau", "sigmoid centre τ"), ("epsilon", "edge threshold ε")):
        parser.add_argument(f"--{name}", type=float, help=f"Sparse-GIN {meaning} for the stages (default: the "
                            "adapter's, else SparseGINConfig's)")
    parser.add_argument("--out", type=Path, help="output directory (default runs/graphs/<model>-<first words>)")
    page = parser.add_argument_group("the explorer page (--html)")
    page.add_argument("--html", action="store_true", help="write explorer.html, one self-contained page to explore "
                      "every layer and head in a browser, instead of the figures")
    page.add_argument("--compare", metavar="MODEL", help="a second model (as --model) shown beside the first; an "
                      "adapted model (--adapter, or a fine-tuned run) is shown beside its base without it")
    page.add_argument("--heads", type=_heads, metavar="H,H,...", help="keep only these heads (default all)")
    page.add_argument("--precision", choices=PRECISIONS, default=defaults.precision, help="how weights are stored: "
                      "uint8 (8 bits on a square-root scale, default) or float16 (twice the size)")
    page.add_argument("--overview", type=int, default=defaults.overview, metavar="CELLS", help="cells a side of the "
                      f"whole-text heatmaps (default {defaults.overview}): a longer text is shown in blocks of tokens")


def _window(text: str) -> tuple[int, int | None]:
    from ginformer.viz.draw import parse_window

    try:
        return parse_window(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _spans(numbers: list[int]) -> str:
    """[0, 1, 2, 3, 7] -> "0–3, 7"."""
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in spans)


def _heads(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        message = f"heads {text!r} must be head numbers separated by commas, e.g. 0,3,5"
        raise argparse.ArgumentTypeError(message) from None


def _graph(args: argparse.Namespace) -> None:
    from ginformer.viz.draw import GraphRequest, draw_attention_graphs

    request = GraphRequest(**{k: v for k, v in vars(args).items() if k not in ("command", "run")})
    drawn = draw_attention_graphs(request)
    shown = "" if drawn.window is None else f", window {drawn.window[0]}:{drawn.window[1]}"
    layers = _spans(drawn.layers)
    print(f"layer{'s' if len(drawn.layers) > 1 else ''} {layers}, {drawn.tokens} tokens{shown} -> {drawn.out}/")
    width = max(map(len, drawn.files))
    for name, description in drawn.files.items():
        print(f"  {name:<{width}}  {description}")


# name -> (help, add_arguments, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "pretrain": ("train a model from scratch (GIN, PNA or standard attention) on any task", _pretrain_arguments,
                 _pretrain),
    "finetune": ("fine-tune a frozen pretrained LLM with Sparse-GIN or LoRA (or evaluate the base: method none)",
                 _finetune_arguments, _finetune),
    "evaluate": ("loss and perplexity of a trained run, and its task's metrics beside their baselines",
                 _evaluate_arguments, _evaluate),
    "compare": ("train variants × seeds at a matched size or budget; write a summary and figures",
                _compare_arguments, _compare),
    "generate": ("continue a prompt with a trained run's model, streaming to the terminal", _generate_arguments,
                 _generate),
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


def _library_notes() -> logging.Handler:
    """A handler that shows the library's logged notes (e.g. which data format it read) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ginformer: %(message)s"))
    logger = logging.getLogger("ginformer")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


BUG = 70  # the exit status of an exception that is not the library's own (sysexits' EX_SOFTWARE)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0; 1 when training diverged; 2 for input the message says how to fix (as argparse's usage
    errors); 70 for a bug, after its traceback."""
    from ginformer.runs.train import TrainingDiverged

    args = build_parser().parse_args(argv)
    notes = _library_notes()
    try:
        args.run(args)
    except TrainingDiverged as err:
        print(f"ginformer {args.command}: stopped: {err}", file=sys.stderr)
        return 1
    except GinformerError as err:
        message = " ".join(str(err).split())  # one line, whatever the library's message looked like
        print(f"ginformer {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 (anything else is a bug: shown whole, and said to be one)
        traceback.print_exc()
        print(f"ginformer {args.command}: this is a bug in ginformer or in a library it calls, not a problem with "
              "your input: please report it with the traceback above", file=sys.stderr)
        return BUG
    finally:
        logging.getLogger("ginformer").removeHandler(notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
