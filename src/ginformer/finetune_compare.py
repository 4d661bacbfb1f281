"""Compare fine-tuning methods over several seeds (the paper's Fig. 9-12): Sparse-GIN, LoRA at the same
trainable-parameter budget, Sparse-GIN with a fixed λ, with a smaller GNN, with self-loops only, ...

    ginformer compare --config configs/gsm8k_compare.yaml

A fine-tuning compare config is a fine-tuning run config (finetune.py: `model`, `data`, `training`), the base
every run shares, plus:

    name: gsm8k_compare         runs go to <training.output_root>/<name>/<variant>/seed<k>/
    seeds: [0, 1]               one run per variant and seed (training.seed); the data split never changes
    variants:                   name -> what it changes in the base's `model` section (merged key by key)
      sparse_gin: {}
      lora: {method: lora}      its rank is matched to the base's model.sparse_gin budget
      fixed_lambda: {sparse_gin: {train_scale: false, scale_init: ramp}}
    baseline: true              also evaluate the frozen base once (method none), in <name>/base/
    evaluate: {generate: 20, max_new_tokens: 256}   generation-scored rows per run (0: perplexity only)

Every run is trained with `finetune` and evaluated with `evaluate_finetune_run` on its validation subset; then
``<name>/summary.md``, ``summary.csv`` (per variant: mean ± sample standard deviation over seeds), ``runs.csv``
and the figures in ``<name>/figures/`` are written:

    fig9a_train_loss, fig9b_val_perplexity     curves per variant, seeds thin, mean thick
    fig10_lambda_<variant>                     λ as a layer × step heatmap (mean over seeds), for each learned λ
    fig11_lambda_<variant>                     mean λ over layers per step, and λ per layer at the end
    fig12a_val_perplexity                      final validation perplexity per variant, error bars over seeds
    fig12b_final_lambda                        final λ per layer of every Sparse-GIN variant

The comparison resumes like `ginformer compare` for pretraining: a finished run trained with the same settings
is reused, an interrupted one resumes from its checkpoint, an evaluated one is not evaluated again.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from ginformer.compare import (
    VARIANT_NAME,
    format_mean_std,
    group_by_variant,
    markdown_table,
    mean_std,
    read_metrics,
    refuse_changed_run,
    training_curves,
)
from ginformer.experiment import ConfigError
from ginformer.finetune import (
    ADAPTER_DIR,
    FINETUNE_SECTIONS,
    FinetuneSettings,
    finetune,
    finetune_settings_from_dict,
    settings_dict,
)
from ginformer.train import METRICS_FILE

COMPARE_KEYS = ("name", "seeds", "variants")
OPTIONAL_KEYS = ("baseline", "evaluate")
EVALUATE_KEYS = ("generate", "max_new_tokens", "batch_size")
COMPARE_FILE = "compare.yaml"
EVAL_FILE = "eval_val.json"
FIGURES_DIR = "figures"
BASELINE = "base"  # the baseline's directory and its name in tables


@dataclass
class FinetuneCompareSettings:
    """A validated fine-tuning compare config."""

    name: str  # the comparison's directory under training.output_root
    seeds: list[int]  # several, because one seed cannot tell a method from luck
    variants: dict[str, dict[str, Any]]  # variant -> changes to the base's model section
    base: dict[str, dict[str, Any]]  # the model, data and training sections every run starts from
    baseline: bool = True  # evaluate the frozen base model once: the numbers every adapter must beat
    evaluate: dict[str, Any] = dataclasses.field(default_factory=dict)  # evaluate_finetune_run options

    @property
    def root(self) -> Path:
        return Path(self.base["training"].get("output_root", "runs")) / self.name

    def run_settings(self, variant: str, seed: int) -> FinetuneSettings:
        """One run: the base, the variant's model changes merged in, the seed."""
        raw = {
            "model": _merge(self.base["model"], self.variants[variant]),
            "data": dict(self.base["data"]),
            "training": {
                **self.base["training"],
                "seed": seed,
                "run_name": f"seed{seed}",
                "output_root": str(self.root / variant),
            },
        }
        try:
            return finetune_settings_from_dict(raw)
        except ConfigError as err:
            raise ConfigError(f"variant '{variant}': {err}") from None

    def baseline_settings(self) -> FinetuneSettings:
        raw = {
            "model": {**self.base["model"], "method": "none"},
            "data": dict(self.base["data"]),
            "training": {**self.base["training"], "run_name": BASELINE, "output_root": str(self.root)},
        }
        return finetune_settings_from_dict(raw)

    def runs(self) -> list[tuple[str, int, FinetuneSettings]]:
        return [(v, s, self.run_settings(v, s)) for v in self.variants for s in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seeds": self.seeds,
            "variants": self.variants,
            "baseline": self.baseline,
            "evaluate": self.evaluate,
            **self.base,
        }


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied key by key; nested mappings are merged, not replaced."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def is_finetune_compare_config(path: str | Path) -> bool:
    """True for a fine-tuning compare config: its `model` section names a method or a base model, which a
    pretraining compare config (compare.py) never does. A file that cannot be read is left to the loaders."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    model = raw.get("model") if isinstance(raw, Mapping) else None
    return isinstance(model, Mapping) and bool({"method", "base"} & set(model))


def load_finetune_compare_settings(path: str | Path, overrides: Sequence[str] = ()) -> FinetuneCompareSettings:
    """Read and validate a fine-tuning compare config; `overrides` (``section.key[.key]=value``) change the base."""
    from ginformer.finetune import apply_nested_overrides

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"compare config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path} must hold a mapping with keys {list(COMPARE_KEYS)}")
    sections = apply_nested_overrides({s: raw.get(s) or {} for s in FINETUNE_SECTIONS}, overrides)
    return finetune_compare_settings_from_dict({**raw, **sections})


def finetune_compare_settings_from_dict(raw: Any) -> FinetuneCompareSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a compare config must be a mapping with keys {list(COMPARE_KEYS)}")
    allowed = [*COMPARE_KEYS, *OPTIONAL_KEYS, *FINETUNE_SECTIONS]
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"unknown key in compare config: '{key}'; allowed: {', '.join(allowed)}")
    missing = [key for key in COMPARE_KEYS if key not in raw]
    if missing:
        raise ConfigError(f"compare config misses {', '.join(missing)}; it needs {', '.join(COMPARE_KEYS)}")
    name, seeds, variants = (raw[key] for key in COMPARE_KEYS)
    if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
        raise ConfigError(f"name={name!r} is not allowed: expected a directory name (letters, digits, _ . + = -)")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"seeds={seeds!r} is not allowed: expected a non-empty list of distinct integers")
    if not isinstance(variants, Mapping) or not variants:
        raise ConfigError("variants must be a non-empty mapping of variant name -> model settings to change")
    baseline = raw.get("baseline", True)
    if not isinstance(baseline, bool):
        raise ConfigError(f"baseline={baseline!r} is not allowed: expected true or false")
    evaluate = raw.get("evaluate") or {}
    if not isinstance(evaluate, Mapping):
        raise ConfigError(f"evaluate must map {list(EVALUATE_KEYS)} to values, got {evaluate!r}")
    for key, value in evaluate.items():
        if key not in EVALUATE_KEYS:
            raise ConfigError(f"unknown key in evaluate: '{key}'; allowed: {', '.join(EVALUATE_KEYS)}")
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key != "generate" else 0):
            raise ConfigError(f"evaluate.{key}={value!r} is not allowed: expected an integer >= 1 (generate: >= 0)")

    base = {s: dict(raw.get(s) or {}) for s in FINETUNE_SECTIONS}
    for key, why in (("run_name", "runs are named <name>/<variant>/seed<k>"), ("seed", "set `seeds`")):
        if key in base["training"]:
            raise ConfigError(f"training.{key} cannot be set in a compare config: {why}")
    checked = {}
    for variant, changes in variants.items():
        if not isinstance(variant, str) or not VARIANT_NAME.fullmatch(variant) or variant == BASELINE:
            raise ConfigError(
                f"variant name {variant!r} is not allowed: expected letters, digits, _ . + = - (and not '{BASELINE}')"
            )
        changes = changes or {}
        if not isinstance(changes, Mapping):
            raise ConfigError(f"variant '{variant}' must map model settings to values, got {changes!r}")
        checked[variant] = json.loads(json.dumps(changes))
    settings = FinetuneCompareSettings(name, list(seeds), checked, base, baseline, dict(evaluate))
    settings.runs()  # every run's settings are validated now, before anything trains
    return settings


def run_finetune_compare(settings: FinetuneCompareSettings, overwrite: bool = False) -> Path:
    """Train and evaluate every run not done yet (and the baseline), then write the summary and figures."""
    from ginformer.finetune_eval import evaluate_finetune_run

    root = settings.root
    if overwrite and root.exists():
        shutil.rmtree(root)
    plan = settings.runs()
    for _, _, run in plan:
        if (run.run_dir / ADAPTER_DIR).is_dir():
            refuse_changed_run(run.run_dir, settings_dict(run))
    root.mkdir(parents=True, exist_ok=True)
    (root / COMPARE_FILE).write_text(yaml.safe_dump(settings.to_dict(), sort_keys=False))

    if settings.baseline:
        base = settings.baseline_settings()
        if not (base.run_dir / METRICS_FILE).is_file():
            finetune(base, overwrite=base.run_dir.exists())
        plan = [*plan, (BASELINE, None, base)]
    progress = tqdm(plan, desc="compare", unit="run", disable=None)
    for variant, seed, run in progress:
        progress.set_postfix_str(variant if seed is None else f"{variant} seed {seed}")
        run_dir = run.run_dir
        if seed is not None and not (run_dir / ADAPTER_DIR).is_dir():
            checkpoint = any(run_dir.glob("checkpoint-*"))
            finetune(run, resume=checkpoint, overwrite=run_dir.exists() and not checkpoint)
        if not (run_dir / EVAL_FILE).is_file():
            evaluate_finetune_run(run_dir, **settings.evaluate)
    write_summary(settings)
    return root


# ---------------------------------------------------------------------------------------------------------------
# Summary: pure functions of metrics.jsonl events and evaluation results


@dataclass(frozen=True)
class FinetuneRunSummary:
    variant: str
    seed: int | None  # None for the baseline
    method: str
    trainable_parameters: int
    steps: int
    final_val_perplexity: float  # at the last evaluation: the paper's Fig. 12 measure
    min_val_perplexity: float
    final_train_loss: float | None  # the last logged training loss (a mean over logging_steps); None: baseline
    min_train_loss: float | None
    step_time_s: float | None  # mean seconds per optimizer step
    wall_time_s: float | None
    strict: float | None  # GSM8K exact match, strict and flexible
    flexible: float | None
    accuracy: float | None  # FOLIO label accuracy
    final_lambda: list[float]  # λ per layer at the end ([] without Sparse-GIN)
    lambda_history: list[tuple[int, list[float]]]  # (step, λ per layer) at every logged event


# Columns of the per-variant summary: (FinetuneRunSummary field, header, format); a column no run fills is left out.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("final_val_perplexity", "final val ppl", ".3f"),
    ("min_val_perplexity", "min val ppl", ".3f"),
    ("final_train_loss", "final train loss", ".4f"),
    ("min_train_loss", "min train loss", ".4f"),
    ("strict", "GSM8K strict", ".3f"),
    ("flexible", "GSM8K flexible", ".3f"),
    ("accuracy", "FOLIO accuracy", ".3f"),
    ("step_time_s", "s / step", ".2f"),
    ("wall_time_s", "wall time (s)", ".0f"),
)


def finetune_run_summary(
    variant: str, seed: int | None, metrics: Sequence[Mapping[str, Any]], evaluation: Mapping[str, Any]
) -> FinetuneRunSummary:
    """One run's numbers from its metrics.jsonl events and its validation evaluation (finetune_eval.py)."""
    start = next((e for e in metrics if e["event"] == "start"), None)
    evals = [e for e in metrics if e["event"] == "eval"]
    trains = [e for e in metrics if e["event"] == "train"]
    if start is None or not evals or (start["method"] != "none" and not trains):
        raise ValueError(
            f"{variant} seed {seed}: metrics need a start event, eval events and (for an adapter) train events; found "
            f"{sorted({e['event'] for e in metrics})} (lower training.eval_steps/logging_steps below max_steps)"
        )
    last_eval = max(evals, key=lambda e: e["step"])
    step_times = [e["step_time"] for e in trains if e.get("step_time") is not None]
    history = sorted({e["step"]: e["graph"]["lambda"] for e in metrics if e.get("graph", {}).get("lambda")}.items())
    scores = evaluation.get("scores") or {}
    ends = [e["train_runtime"] for e in metrics if e["event"] == "end"]
    return FinetuneRunSummary(
        variant=variant,
        seed=seed,
        method=start["method"],
        trainable_parameters=start["trainable_parameters"],
        steps=max(e["step"] for e in metrics),
        final_val_perplexity=last_eval["val_perplexity"],
        min_val_perplexity=min(e["val_perplexity"] for e in evals),
        final_train_loss=max(trains, key=lambda e: e["step"])["train_loss"] if trains else None,
        min_train_loss=min(e["train_loss"] for e in trains) if trains else None,
        step_time_s=statistics.fmean(step_times) if step_times else None,
        wall_time_s=sum(ends) if ends else None,
        strict=scores.get("strict"),
        flexible=scores.get("flexible"),
        accuracy=scores.get("accuracy"),
        final_lambda=list(history[-1][1]) if history else [],
        lambda_history=[(step, list(lam)) for step, lam in history],
    )


def mean_lambda_history(runs: Sequence[FinetuneRunSummary]) -> list[tuple[int, list[float]]]:
    """(step, λ per layer averaged over the runs) at the steps every run logged."""
    per_run = [dict(r.lambda_history) for r in runs]
    shared = sorted(set.intersection(*(set(h) for h in per_run))) if per_run else []
    return [(step, [statistics.fmean(layer) for layer in zip(*(h[step] for h in per_run))]) for step in shared]


def summary_table(runs: Sequence[FinetuneRunSummary], baseline: FinetuneRunSummary | None) -> str:
    """Per variant: mean ± std over seeds of every metric any run has; the baseline (frozen base) last."""
    columns = [(f, h, fmt) for f, h, fmt in METRICS if any(getattr(r, f) is not None for r in runs)]
    headers = ["variant", "method", "trainable", "seeds", *(h for _, h, _ in columns)]
    rows = []
    for variant, group in group_by_variant(runs).items():
        rows.append(
            [
                variant,
                group[0].method,
                "/".join(f"{p:,}" for p in sorted({r.trainable_parameters for r in group})),
                ",".join(str(r.seed) for r in group),
                *(_cell([getattr(r, f) for r in group], fmt) for f, _, fmt in columns),
            ]
        )
    if baseline is not None:
        rows.append(
            [f"{BASELINE} (frozen)", "none", "0", "", *(_cell([getattr(baseline, f)], fmt) for f, _, fmt in columns)]
        )
    return markdown_table(headers, rows)


def _cell(values: Sequence[float | None], fmt: str) -> str:
    present = [v for v in values if v is not None]
    return format_mean_std(present, fmt) if present else ""


def read_runs(settings: FinetuneCompareSettings) -> tuple[list[FinetuneRunSummary], FinetuneRunSummary | None]:
    """Every run's summary, and the baseline's (None when the comparison has none)."""
    plan = [(v, s, run.run_dir) for v, s, run in settings.runs()]
    if settings.baseline:
        plan.append((BASELINE, None, settings.baseline_settings().run_dir))
    summaries = []
    for variant, seed, run_dir in plan:
        evaluation = json.loads((run_dir / EVAL_FILE).read_text())
        summaries.append(finetune_run_summary(variant, seed, read_metrics(run_dir), evaluation))
    if settings.baseline:
        return summaries[:-1], summaries[-1]
    return summaries, None


def write_summary(settings: FinetuneCompareSettings) -> Path:
    """summary.md, summary.csv, runs.csv and the figures of a comparison whose runs are all done."""
    root = settings.root
    runs, baseline = read_runs(settings)
    curves = training_curves([(variant, run.run_dir) for variant, _, run in settings.runs()])
    figures = write_figures(root / FIGURES_DIR, runs, curves)
    _write_csv(root, runs, baseline)
    (root / "summary.md").write_text(summary_markdown(settings, runs, baseline, figures))
    return root / "summary.md"


def summary_markdown(
    settings: FinetuneCompareSettings,
    runs: Sequence[FinetuneRunSummary],
    baseline: FinetuneRunSummary | None,
    figures: Sequence[Path],
) -> str:
    first = settings.run_settings(next(iter(settings.variants)), settings.seeds[0])
    data, training = first.data, first.training
    steps = f"max_steps {training.max_steps}" if training.max_steps else f"{training.num_train_epochs:g} epochs"
    per_run = markdown_table(
        ["variant", "seed", "trainable", "steps", "final val ppl", "min val ppl", "final train loss",
         "strict", "flexible", "accuracy", "s / step"],
        [[r.variant, r.seed, f"{r.trainable_parameters:,}", r.steps, f"{r.final_val_perplexity:.3f}",
          f"{r.min_val_perplexity:.3f}", _fmt(r.final_train_loss, ".4f"), _fmt(r.strict, ".3f"),
          _fmt(r.flexible, ".3f"), _fmt(r.accuracy, ".3f"), _fmt(r.step_time_s, ".2f")] for r in runs],
    )
    changes = [f"  - {v}: {json.dumps(c) if c else '(the base settings)'}" for v, c in settings.variants.items()]
    generate = settings.evaluate.get("generate")
    return "\n".join(
        [
            f"# Fine-tuning comparison `{settings.name}`",
            "",
            f"- base model: {first.model.base}; variants (changes to the base `model` section):",
            *changes,
            f"- seeds {settings.seeds} (training.seed; the split is fixed by data.split_seed={data.split_seed})",
            f"- data: {data.task} ({data.source}), {data.template} template, rows of at most {data.max_length} "
            f"tokens, validation on the first {data.max_val_examples} held-out rows that fit",
            f"- training: {steps}, batch {training.per_device_train_batch_size} × "
            f"{training.gradient_accumulation_steps} accumulation, learning rate {training.learning_rate:g}, "
            f"bf16 {training.bf16}",
            f"- generation: {_generation_scope(generate)}",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}",
            "",
            "Mean ± sample standard deviation over seeds.",
            "",
            summary_table(runs, baseline),
            "",
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


def _generation_scope(generate: int | None) -> str:
    if generate == 0:
        return "none (scored by perplexity only)"
    return f"greedy, {'all validation rows' if generate is None else f'the first {generate} rows'}"


def _fmt(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _write_csv(root: Path, runs: Sequence[FinetuneRunSummary], baseline: FinetuneRunSummary | None) -> None:
    fields = [f for f, _, _ in METRICS]
    with (root / "summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        stats_header = [f"{m}_{s}" for m in fields for s in ("mean", "std")]
        writer.writerow(["variant", "method", "trainable", "n_seeds", *stats_header])
        groups = group_by_variant(runs)
        if baseline is not None:
            groups[BASELINE] = [baseline]
        for variant, group in groups.items():
            stats = []
            for m in fields:
                present = [getattr(r, m) for r in group if getattr(r, m) is not None]
                stats += list(mean_std(present)) if present else ["", ""]
            writer.writerow([variant, group[0].method, group[0].trainable_parameters, len(group), *stats])
    with (root / "runs.csv").open("w", newline="") as f:
        names = [f.name for f in dataclasses.fields(FinetuneRunSummary) if f.name != "lambda_history"]
        writer = csv.writer(f)
        writer.writerow(names)
        for run in [*runs, *([baseline] if baseline else [])]:
            values = [getattr(run, name) for name in names]
            writer.writerow([" ".join(f"{x:.6g}" for x in v) if isinstance(v, list) else v for v in values])


# ---------------------------------------------------------------------------------------------------------------
# Figures (plots.py draws them)


def write_figures(
    out: Path, runs: Sequence[FinetuneRunSummary], curves: Mapping[str, Mapping[str, list]]
) -> list[Path]:
    """The paper's Fig. 9-12 for these runs, as PNG and SVG in `out`; returns the paths. λ figures are drawn
    for Sparse-GIN variants only (Fig. 10 and 11 for those whose λ changed during training)."""
    from ginformer.viz import plots

    groups = group_by_variant(runs)
    paths = []
    paths += plots.plot_curves(curves["train_loss"], "training loss", out / "fig9a_train_loss",
                               title="Training loss (thin: seeds)")
    paths += plots.plot_curves(curves["val_perplexity"], "validation perplexity", out / "fig9b_val_perplexity",
                               title="Validation perplexity (thin: seeds)")
    for variant, group in groups.items():
        history = mean_lambda_history(group)
        if len(history) < 2 or history[0][1] == history[-1][1]:
            continue  # no λ, or a fixed one: nothing moves
        paths += plots.plot_lambda_heatmap(history, out / f"fig10_lambda_{variant}",
                                           title=f"λ per layer over training: {variant} (mean over seeds)")
        paths += plots.plot_lambda_summary(history, out / f"fig11_lambda_{variant}", title=f"λ: {variant}")
    paths += plots.plot_bars({v: [r.final_val_perplexity for r in g] for v, g in groups.items()},
                             "final validation perplexity", out / "fig12a_val_perplexity",
                             title="Validation perplexity (bar: mean, line: ± std, dots: seeds)")
    final = {v: _mean_layers([r.final_lambda for r in g]) for v, g in groups.items() if g[0].final_lambda}
    if final:
        paths += plots.plot_per_layer(final, "λ at the end of training", out / "fig12b_final_lambda",
                                      title="Final λ per layer (mean over seeds)")
    return paths


def _mean_layers(per_seed: Sequence[Sequence[float]]) -> list[float]:
    return [statistics.fmean(layer) for layer in zip(*per_seed)]
