"""A comparison's report: ``summary.md``, ``summary.csv`` (one row per variant: mean ± sample standard deviation
over seeds), ``runs.csv`` (one row per run), ``sweep.csv`` and the figures in ``figures/``.

Figures: train_loss and val_perplexity curves (paper Fig. 4, 9: seeds thin, mean thick), validation perplexity
against training FLOPs (from scratch); bars of min val perplexity and min train loss (Fig. 6, 12A); the
generalisation gap (Fig. 7); bars of each task metric marked as a figure; every learned graph scalar per layer at
the end (Fig. 5: α, Fig. 12B: λ) and, where it moves, over training (Fig. 10, 11); validation perplexity against
γ when GIN variants differ in it (Fig. 8); each swept key's metric against its values.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ginformer.files import atomic_write_text, atomic_writer
from ginformer.runs.compare_config import BASELINE, CompareSettings, point_name
from ginformer.runs.summary import (
    Results,
    RunSummary,
    format_mean_std,
    group_by_variant,
    mean_history,
    mean_per_layer,
    mean_std,
    value,
)
from ginformer.viz import run_figures

FIGURES_DIR = "figures"

# Columns of the per-variant summary: (RunSummary field, header, format); task columns go before the costs.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("min_val_perplexity", "min val ppl", ".3f"),
    ("final_val_perplexity", "final val ppl", ".3f"),
    ("min_train_loss", "min train loss", ".4f"),
    ("final_train_loss", "final train loss", ".4f"),
    ("gap", "gap (val − train)", ".4f"),
    ("ratio", "train/val", ".3f"),
)
REWARDS: tuple[tuple[str, str, str], ...] = (
    ("train_reward", "train reward (2nd half)", ".3f"),
    ("val_reward", "val reward", ".3f"),
    ("val_reward_accuracy", "val reward accuracy", ".3f"),
)
COSTS: tuple[tuple[str, str, str], ...] = (
    ("flops_per_token", "train FLOPs / token", ".3g"),
    ("step_time_s", "s / step", ".2f"),
    ("wall_time_s", "wall time (s)", ".0f"),
)
CURVE_LABELS = {"train_loss": "training loss", "val_perplexity": "validation perplexity", "reward": "reward",
                "val_reward": "validation reward", "val_reward_accuracy": "validation reward accuracy"}
SYMBOLS = {"sharpening": "α", "gin_eps": "ε", "pna_blend": "PNA λ", "lambda": "λ", "alpha": "α", "tau": "τ"}


def columns(runs: Sequence[RunSummary], task_columns) -> list[tuple[str, str, str]]:
    """(key, header, format) of every column some run fills: the generic ones, the task's, the costs."""
    every = [*METRICS, *REWARDS, *((c.key, c.header, c.fmt) for c in task_columns), *COSTS]
    return [c for c in every if any(value(r, c[0]) is not None for r in runs)]


def cell(values: Sequence[float | None], fmt: str) -> str:
    present = [v for v in values if v is not None]
    return format_mean_std(present, fmt) if present else ""


def summary_table(
    runs: Sequence[RunSummary], task_columns, baselines: Mapping[str, float], base: RunSummary | None = None
) -> str:
    """Per variant: mean ± std over seeds of every column; then the baseline rows (unigram and majority; the
    frozen base when there is one)."""
    shown = columns([*runs, *([base] if base else [])], task_columns)
    headers = ["variant", "parameters", "seeds", *(header for _, header, _ in shown)]
    rows = [
        [variant, "/".join(f"{p:,}" for p in sorted({r.parameters for r in group})),
         ",".join(str(r.seed) for r in group), *(cell([value(r, key) for r in group], fmt) for key, _, fmt in shown)]
        for variant, group in group_by_variant(runs).items()
    ]
    if base is not None:
        rows.append([f"{BASELINE} (frozen)", "0", "", *(cell([value(base, key)], fmt) for key, _, fmt in shown)])
    rows.append(["baseline (unigram; majority)", "", "",
                 *(format(baselines[key], fmt) if key in baselines else "" for key, _, fmt in shown)])
    return markdown_table(headers, rows)


def sweep_table(settings: CompareSettings, results: Results) -> str:
    """Per variant and point: the sweep's metric (mean over the sweep's seeds), the chosen point marked."""
    metric = settings.sweep.metric
    rows = []
    for variant, choice in results.sweeps.items():
        for point, mean in choice.means:
            chosen = point == choice.point
            edge = f" (edge of the grid: {', '.join(choice.at_edge)})" if chosen and choice.at_edge else ""
            rows.append([variant, point_name(point), f"{mean:.4f}", ("**chosen**" if chosen else "") + edge])
    return markdown_table(["variant", "point", f"{metric} (mean of sweep seeds)", ""], rows)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table with columns padded to their widest cell, so it also reads as plain text."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def write_report(settings: CompareSettings, results: Results) -> Path:
    """summary.md, summary.csv, runs.csv (and sweep.csv) and the figures of a comparison whose runs are done."""
    root = settings.root
    task = settings.run_settings(next(iter(settings.variants)), settings.seeds[0]).task()
    figures = write_figures(settings, results, task.columns)
    _write_csv(root, results, task.columns)
    if results.sweeps:
        _write_sweep_csv(root, results)
    atomic_write_text(root / "summary.md", summary_markdown(settings, results, figures))
    return root / "summary.md"


def summary_markdown(settings: CompareSettings, results: Results, figures: Sequence[Path]) -> str:
    first = settings.run_settings(next(iter(settings.variants)), settings.seeds[0])
    task, training = first.task(), first.training
    runs, base, baselines = results.runs, results.base, results.baselines
    steps = f"max_steps {training.max_steps}" if training.max_steps else f"{training.num_train_epochs:g} epochs"
    if settings.equal_compute:
        steps = "max_steps " + ", ".join(f"{v} {n}" for v, n in settings.compute_matched_steps.items()) + \
            " (equal compute: each spends the first variant's training FLOPs)"
    per_run_columns = columns(runs, task.columns)
    per_run = markdown_table(
        ["variant", "seed", "parameters", "hidden", "steps", "best step", *(h for _, h, _ in per_run_columns)],
        [[r.variant, r.seed, f"{r.parameters:,}", r.hidden_size or "", r.steps, r.best_step,
          *("" if value(r, k) is None else format(value(r, k), f) for k, _, f in per_run_columns)] for r in runs],
    )
    changes = [f"  - {v}: {json.dumps(c) if c else '(the base settings)'}" for v, c in settings.variants.items()]
    # Families differ in where a branch can join (placement) and which layers have attention to adapt: say so.
    adapted = {r.variant: r.adapted for r in runs if r.adapted}
    changes += [f"  - {v} adapts {description}" for v, description in adapted.items()]
    model = first.model
    shared = (f"trained from scratch, {model.num_hidden_layers} layers × {model.num_attention_heads} heads"
              if settings.side == "scratch" else f"the frozen base {model.base}")
    size = (f"- size target: {settings.target_params:,} parameters per variant" if settings.target_params else
            "- trainable budget: the Sparse-GIN adapter's count (model.sparse_gin); LoRA's rank is matched to it")
    rate = f"learning rate {training.learning_rate:g}"
    if results.sweeps:
        rate = "each variant's point chosen by its sweep: " + ", ".join(
            f"{v} {point_name(c.point)}" for v, c in results.sweeps.items())
    notes = "; ".join(f"{key}: {value}" for key, value in baselines["notes"].items())
    flops = ("- compute: training FLOPs per token counted from each model's shapes (sizing.py) at its context "
             f"length {model.max_position_embeddings}" if settings.side == "scratch" else None)
    sweep = [] if not results.sweeps else [
        "## Sweep",
        "",
        f"Each variant trained at every point of {json.dumps(settings.sweep.grid)} with seeds {settings.sweep.seeds}; "
        f"the point with the lowest mean {settings.sweep.metric} on the validation split was chosen and its seeds "
        "run (the sweep's own runs at that point are among them). A chosen value at the edge of its grid may not "
        "be the best one: widen the grid.",
        "",
        sweep_table(settings, results),
        "",
    ]
    return "\n".join(
        [
            f"# Comparison `{settings.name}`",
            "",
            f"- models: {shared}; variants (changes to the base `model` section):",
            *changes,
            f"- seeds {settings.seeds} (training.seed; the data split does not depend on it)",
            size,
            *([flops] if flops else []),
            f"- data: {task.describe()}, {baselines['examples']} validation examples",
            f"- training: {steps}, batch {training.per_device_train_batch_size} × "
            f"{training.gradient_accumulation_steps} accumulation, {rate}, bf16 {training.bf16}",
            f"- evaluation options: {settings.evaluate.options() or 'the defaults of ginformer evaluate'}",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
            "",
            "Mean ± sample standard deviation over seeds.",
            "",
            summary_table(runs, task.columns, baselines, base),
            "",
            "Baseline rows: the unigram model's perplexity (training-split token frequencies, no context) and the "
            "task's majority baselines, on the same validation rows"
            + (f" ({notes})" if notes else "")
            + ("; the frozen base model, trained on nothing." if base else "."),
            "",
            *sweep,
            "## Runs",
            "",
            per_run,
            "",
            "## Figures",
            "",
            *[f"- {path.relative_to(settings.root)}" for path in figures if path.suffix == ".png"],
            "",
        ]
    )


def _write_csv(root: Path, results: Results, task_columns) -> None:
    every = [*results.runs, *([results.base] if results.base else [])]
    keys = [key for key, _, _ in columns(every, task_columns)]
    with atomic_writer(root / "summary.csv", newline="") as f:
        writer = csv.writer(f)
        stats_header = [f"{k}_{s}" for k in keys for s in ("mean", "std")]
        writer.writerow(["variant", "parameters", "seeds", "n_seeds", *stats_header])
        for variant, group in group_by_variant(every).items():
            stats = []
            for key in keys:
                present = [value(r, key) for r in group if value(r, key) is not None]
                stats += list(mean_std(present)) if present else ["", ""]
            seeds = " ".join(str(r.seed) for r in group if r.seed is not None)
            writer.writerow([variant, group[0].parameters, seeds, len(group), *stats])
        writer.writerow(["baseline", "", "", "", *(x for k in keys for x in (results.baselines.get(k, ""), ""))])
    with atomic_writer(root / "runs.csv", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "seed", "parameters", "hidden_size", "steps", "best_step", *keys])
        for run in every:
            writer.writerow([run.variant, run.seed, run.parameters, run.hidden_size, run.steps, run.best_step,
                             *(value(run, k) for k in keys)])


def _write_sweep_csv(root: Path, results: Results) -> None:
    with atomic_writer(root / "sweep.csv", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "point", "mean_metric", "chosen", "at_edge"])
        for variant, choice in results.sweeps.items():
            for point, mean in choice.means:
                chosen = point == choice.point
                writer.writerow([variant, point_name(point), mean, chosen, " ".join(choice.at_edge) if chosen else ""])


def write_figures(settings: CompareSettings, results: Results, task_columns) -> list[Path]:
    """The comparison's figures (see the module docstring), PNG and SVG in <name>/figures/; returns the paths."""
    out = settings.root / FIGURES_DIR
    runs, base, curves = results.runs, results.base, results.curves
    groups = group_by_variant(runs)
    paths = []
    for key, label in CURVE_LABELS.items():
        if key in curves:
            paths += run_figures.plot_curves(curves[key], label, out / key, title=f"{label.capitalize()} (thin: seeds)")
    by_flops = _against_flops(settings, curves.get("val_perplexity", {}))
    if by_flops:
        paths += run_figures.plot_curves(by_flops, "validation perplexity", out / "val_perplexity_vs_flops",
                                   xlabel="training FLOPs", title="Validation perplexity against compute (thin: seeds)")
    bars = {v: [r.min_val_perplexity for r in g] for v, g in groups.items()}
    if base is not None:
        bars[f"{BASELINE} (frozen)"] = [base.min_val_perplexity]
    if all(None not in values for values in bars.values()):  # DPO's and GRPO's losses have no perplexity
        paths += run_figures.plot_bars(bars, "minimum validation perplexity", out / "min_val_perplexity",
                                 title="Minimum validation perplexity (bar: mean, line: ± std, dots: seeds)")
    paths += run_figures.plot_bars({v: [r.min_train_loss for r in g] for v, g in groups.items()},
                             "minimum training loss", out / "min_train_loss", fmt=".4f", title="Minimum training loss")
    if all(r.gap is not None for r in runs):  # GRPO's losses on the two splits do not compare
        paths += run_figures.plot_generalisation_gap({v: [r.min_train_loss for r in g] for v, g in groups.items()},
                                                     {v: [r.min_val_loss for r in g] for v, g in groups.items()},
                                                     out / "generalisation_gap")
    for column in task_columns:
        scored = {v: [r.scores[column.key] for r in g] for v, g in groups.items() if column.key in g[0].scores}
        if column.figure and scored:
            paths += run_figures.plot_bars(scored, column.header, out / f"score_{column.key}", fmt=column.fmt,
                                     title=f"{column.header} of the final models")
    for key in sorted({key for r in runs for key in r.graph}):
        symbol = SYMBOLS.get(key, key)
        final = {v: mean_per_layer([r.graph[key][-1][1] for r in g]) for v, g in groups.items() if key in g[0].graph}
        paths += run_figures.plot_per_layer(final, f"{symbol} at the end of training", out / f"{key}_per_layer",
                                      title=f"Learned {symbol} per layer (mean over seeds)")
        for variant, group in groups.items():
            history = mean_history([r.graph.get(key, []) for r in group])
            if len(history) >= 2 and history[0][1] != history[-1][1] and None not in history[0][1]:
                title = f"{symbol} per layer over training: {variant} (mean over seeds)"
                paths += run_figures.plot_scalar_heatmap(history, out / f"{key}_over_training_{variant}", symbol=symbol,
                                                   title=title)
                paths += run_figures.plot_scalar_summary(history, out / f"{key}_summary_{variant}", symbol=symbol,
                                                   title=f"{symbol}: {variant}")
    gamma = _gamma_points(settings, groups)
    if len({x for points in gamma.values() for x, _ in points}) >= 2:
        paths += run_figures.plot_metric_vs(gamma, "GIN MLP multiplier γ", "minimum validation perplexity",
                                      out / "val_perplexity_vs_gamma", title="Validation perplexity against γ")
    for key, values in settings.sweep.grid.items():
        numeric = len(values) > 1 and all(isinstance(v, (int, float)) and v > 0 for v in values)
        if numeric:
            points = {v: [(p[key], mean) for p, mean in c.means] for v, c in results.sweeps.items()}
            paths += run_figures.plot_metric_vs(points, key, f"{settings.sweep.metric} (mean of sweep seeds)",
                                          out / f"sweep_{key}", title=f"Sweep of {key}", power_fit=False)
    return paths


def _against_flops(settings: CompareSettings, curves: Mapping[str, list]) -> dict[str, list]:
    """The curves with each step as the training FLOPs spent by then (nominal: every example a full context)."""
    if not settings.flops_per_token:
        return {}
    first = settings.run_settings(next(iter(settings.variants)), settings.seeds[0])
    training, context = first.training, first.model.max_position_embeddings
    tokens_per_step = training.per_device_train_batch_size * training.gradient_accumulation_steps * context
    return {variant: [[(step * tokens_per_step * settings.flops_per_token[variant], y) for step, y in run]
                      for run in runs] for variant, runs in curves.items()}


def _gamma_points(settings: CompareSettings, groups: Mapping[str, list[RunSummary]]) -> dict[str, list]:
    """(γ, min val perplexity) of every run of a variant with GIN layers (paper Fig. 8); {} on a pretrained model."""
    if settings.side != "scratch":
        return {}
    points = {}
    for variant, group in groups.items():
        model = settings.run_settings(variant, settings.seeds[0]).model
        kinds = {model.attention_kind} if isinstance(model.attention_kind, str) else set(model.attention_kind)
        if "gin" in kinds:
            points[variant] = [(model.gin_mlp_multiplier, r.min_val_perplexity) for r in group]
    return points
