"""Compare attention variants at a matched parameter count over several seeds (the paper's section 2.2).

    ginformer compare --config configs/protein_compare.yaml

A compare config is a run config (the `model`, `data` and `training` sections of `ginformer pretrain`), the base
every run shares, plus four keys:

    name: protein_compare          runs go to <training.output_root>/<name>/<variant>/seed<k>/
    seeds: [0, 1]                  one run per variant and seed (training.seed); the data split never changes
    target_params: 2_000_000       every variant is sized to this many parameters (sizing.py)
    variants:                      name -> the model settings it changes from the base
      reference: {attention_kind: standard}
      gin: {attention_kind: gin, gin_mlp_multiplier: 0.5}

Every run is trained with `pretrain` and evaluated on its validation split with `evaluate_run`; then
``<name>/summary.md`` and ``summary.csv`` (one row per variant: mean ± sample standard deviation over seeds),
``runs.csv`` (one row per run) and the figures in ``<name>/figures/`` are written.

Per-run numbers (all from the run's metrics.jsonl and eval_val.json):
    min val perplexity   exp(lowest validation loss over the evaluations during training)
    min train loss       lowest logged training loss (each is a mean over `logging_steps` steps)
    gap                  min val loss − min train loss: how much better the model does on what it trained on
    train/val            min train loss / min val loss (the paper's Fig. 7B); 1 means no overfitting
    accuracies           label accuracy of the final model on the validation split (evaluate.py)
    wall time            Trainer's train_runtime (a resumed run counts the time since its resume)
The baseline row holds what a model that learned nothing would score: the unigram perplexity and the
majority-class accuracies, both from the training split, scored on the validation split.

The comparison is resumable: a run with a final model is not trained again (its config.yaml must equal what the
compare config asks for), a run with a checkpoint resumes, and an evaluated run is not evaluated again. Nothing
is deleted unless ``overwrite=True``, which removes the whole comparison directory first.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from ginformer.experiment import (
    SECTIONS,
    ConfigError,
    ExperimentSettings,
    ModelSettings,
    TrainingSettings,
    apply_overrides,
    settings_from_dict,
    settings_to_dict,
)

COMPARE_KEYS = ("name", "seeds", "target_params", "variants")
COMPARE_FILE = "compare.yaml"  # the resolved compare config, written into the comparison directory
EVAL_FILE = "eval_val.json"
FIGURES_DIR = "figures"
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "protein_compare.yaml"
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")  # it becomes a directory name


@dataclass
class CompareSettings:
    """A validated compare config: the base sections and how the runs differ from them."""

    name: str  # the comparison's directory under training.output_root
    seeds: list[int]  # training seeds; several, because one seed cannot tell a method from luck
    target_params: int  # every variant is sized to this count, so a difference is not just a bigger model
    variants: dict[str, dict[str, Any]]  # variant name -> model settings that differ from the base
    base: dict[str, dict[str, Any]]  # the model, data and training sections every run starts from

    @property
    def root(self) -> Path:
        return Path(self.base["training"].get("output_root", TrainingSettings.output_root)) / self.name

    def run_settings(self, variant: str, seed: int) -> ExperimentSettings:
        """The settings of one run: base, then the variant's model changes, the size target and the seed."""
        raw = {
            "model": {**self.base.get("model", {}), **self.variants[variant], "target_params": self.target_params},
            "data": dict(self.base.get("data", {})),
            "training": {**self.base.get("training", {}), "seed": seed, "run_name": f"seed{seed}"},
        }
        raw["training"]["output_root"] = str(self.root / variant)
        try:
            return settings_from_dict(raw)
        except ConfigError as err:
            raise ConfigError(f"variant '{variant}': {err}") from None

    def runs(self) -> list[tuple[str, int, ExperimentSettings]]:
        """(variant, seed, settings) of every run, variant by variant."""
        return [(v, s, self.run_settings(v, s)) for v in self.variants for s in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seeds": self.seeds, "target_params": self.target_params,
                "variants": self.variants, **self.base}


def load_compare_settings(path: str | Path, overrides: Sequence[str] = ()) -> CompareSettings:
    """Read and validate a compare config; ``overrides`` (``section.key=value``) change the base sections.
    Every run's settings are built here, so a bad variant fails before anything trains."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"compare config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    return compare_settings_from_dict(raw, overrides)


def compare_settings_from_dict(raw: Any, overrides: Sequence[str] = ()) -> CompareSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"a compare config must be a mapping with keys {list(COMPARE_KEYS)}, got {type(raw).__name__}"
        )
    allowed = [*COMPARE_KEYS, *SECTIONS]
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"unknown key in compare config: '{key}'; allowed: {', '.join(allowed)}")
    missing = [key for key in COMPARE_KEYS if key not in raw]
    if missing:
        raise ConfigError(f"compare config misses {', '.join(missing)}; it needs {', '.join(COMPARE_KEYS)}")
    name, seeds, target_params, variants = (raw[key] for key in COMPARE_KEYS)
    if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
        raise ConfigError(f"name={name!r} is not allowed: expected a directory name (letters, digits, _ . + = -)")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"seeds={seeds!r} is not allowed: expected a non-empty list of distinct integers")
    if not isinstance(target_params, int) or isinstance(target_params, bool) or target_params <= 0:
        raise ConfigError(f"target_params={target_params!r} is not allowed: expected a positive integer")
    if not isinstance(variants, Mapping) or not variants:
        raise ConfigError("variants must be a non-empty mapping of variant name -> model settings")

    base = apply_overrides({s: raw.get(s) or {} for s in SECTIONS}, overrides)
    for section, values in base.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"section '{section}' must be a mapping of keys to values, got {values!r}")
    for key, why in (("run_name", "set `name`: runs are named <name>/<variant>/seed<k>"), ("seed", "set `seeds`")):
        if key in base["training"]:
            raise ConfigError(f"training.{key} cannot be set in a compare config: {why}")
    if "target_params" in base["model"]:
        raise ConfigError("model.target_params cannot be set in a compare config: set the top-level target_params")

    model_keys = [f.name for f in dataclasses.fields(ModelSettings) if f.name != "target_params"]
    checked: dict[str, dict[str, Any]] = {}
    for variant, changes in variants.items():
        if not isinstance(variant, str) or not VARIANT_NAME.fullmatch(variant):
            raise ConfigError(f"variant name {variant!r} is not allowed: expected letters, digits, _ . + = -")
        changes = changes or {}
        if not isinstance(changes, Mapping):
            raise ConfigError(f"variant '{variant}' must map model settings to values, got {changes!r}")
        for key in changes:
            if key not in model_keys:
                raise ConfigError(
                    f"variant '{variant}': unknown model setting '{key}'; allowed: {', '.join(model_keys)}"
                )
        checked[variant] = dict(changes)
    settings = CompareSettings(name, list(seeds), target_params, checked, {s: dict(v) for s, v in base.items()})
    training = settings.runs()[0][2].training  # validates every run's settings now
    for key in ("logging_steps", "eval_steps"):
        if training.max_steps is not None and getattr(training, key) > training.max_steps:
            raise ConfigError(
                f"training.{key}={getattr(training, key)} exceeds training.max_steps={training.max_steps}: "
                "the summary needs logged training and validation losses"
            )
    return settings


def variant_parameters(settings: CompareSettings) -> dict[str, tuple[int, int]]:
    """(parameter count, hidden size) of every variant after sizing, computed without building weights;
    raises ConfigError naming a variant that cannot be sized to target_params."""
    from ginformer.data.tokenizer import build_protein_tokenizer
    from ginformer.sizing import config_parameters

    tokenizer = build_protein_tokenizer()
    sizes = {}
    for variant in settings.variants:
        model = settings.run_settings(variant, settings.seeds[0]).model
        try:
            config = model.to_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        except ValueError as err:
            raise ConfigError(f"variant '{variant}': {err}") from None
        sizes[variant] = (config_parameters(config), config.hidden_size)
    return sizes


def run_compare(settings: CompareSettings, overwrite: bool = False) -> Path:
    """Train and evaluate every (variant, seed) run that is not done yet, then write the summary and figures.
    Returns the comparison directory."""
    from ginformer.evaluate import evaluate_run
    from ginformer.train import MODEL_DIR, pretrain

    root = settings.root
    sizes = variant_parameters(settings)  # fail on a variant that cannot be sized before anything trains
    if overwrite and root.exists():
        shutil.rmtree(root)
    plan = settings.runs()
    for _, _, run in plan:
        if (run.run_dir / MODEL_DIR / "config.json").is_file():
            refuse_changed_run(run.run_dir, settings_to_dict(run))
    root.mkdir(parents=True, exist_ok=True)
    (root / COMPARE_FILE).write_text(yaml.safe_dump(settings.to_dict(), sort_keys=False))

    progress = tqdm(plan, desc="compare", unit="run", disable=None)
    for variant, seed, run in progress:
        progress.set_postfix_str(f"{variant} seed {seed} ({sizes[variant][0] / 1e6:.2f} M parameters)")
        run_dir = run.run_dir
        if not (run_dir / MODEL_DIR / "config.json").is_file():
            checkpoint = any(run_dir.glob("checkpoint-*"))
            pretrain(run, resume=checkpoint, overwrite=run_dir.exists() and not checkpoint)
        if not (run_dir / EVAL_FILE).is_file():
            evaluate_run(run_dir)
    write_summary(settings)
    return root


def refuse_changed_run(run_dir: Path, wanted: Mapping[str, Mapping[str, Any]]) -> None:
    """A finished run is reused only when its saved config.yaml holds exactly the `wanted` settings."""
    from ginformer.train import CONFIG_FILE

    saved = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    changed = [
        f"{section}.{key}"
        for section, values in wanted.items()
        for key, value in values.items()
        if saved.get(section, {}).get(key) != value
    ]
    if changed:
        raise FileExistsError(
            f"{run_dir} was trained with other settings ({', '.join(changed)}); pass --overwrite to retrain "
            "the whole comparison, or choose another name"
        )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The events of a run's metrics.jsonl, in order."""
    from ginformer.train import METRICS_FILE

    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line]


def training_curves(runs: Sequence[tuple[str, Path]]) -> dict[str, dict[str, list[list[tuple[int, float]]]]]:
    """metric -> variant -> one (step, value) list per run, for train_loss and val_perplexity.

    runs: (variant, run directory) pairs, one per seed."""
    curves: dict[str, dict[str, list]] = {"train_loss": {}, "val_perplexity": {}}
    for variant, run_dir in runs:
        metrics = read_metrics(run_dir)
        for key, event in (("train_loss", "train"), ("val_perplexity", "eval")):
            points = sorted({e["step"]: e[key] for e in metrics if e["event"] == event}.items())
            curves[key].setdefault(variant, []).append(points)
    return curves


# ---------------------------------------------------------------------------------------------------------------
# Summary: pure functions of metrics.jsonl events and evaluation results


@dataclass(frozen=True)
class RunSummary:
    variant: str
    seed: int
    parameters: int
    hidden_size: int
    steps: int
    min_val_perplexity: float
    best_step: int  # the step of the lowest validation loss
    min_val_loss: float
    min_train_loss: float
    gap: float  # min_val_loss - min_train_loss
    ratio: float  # min_train_loss / min_val_loss
    primary: float
    secondary: float
    both: float
    non_label: float
    wall_time_s: float
    sharpening: list[float | None]  # α per layer at the end of training; None for a layer without one


# Columns of the per-variant summary: (RunSummary field, header, format).
METRICS: tuple[tuple[str, str, str], ...] = (
    ("min_val_perplexity", "min val ppl", ".3f"),
    ("min_train_loss", "min train loss", ".4f"),
    ("gap", "gap (val − train)", ".4f"),
    ("ratio", "train/val", ".3f"),
    ("primary", "primary acc", ".3f"),
    ("secondary", "secondary acc", ".3f"),
    ("both", "both acc", ".3f"),
    ("non_label", "non-label", ".3f"),
    ("wall_time_s", "wall time (s)", ".0f"),
)


def run_summary(
    variant: str, seed: int, metrics: Sequence[Mapping[str, Any]], evaluation: Mapping[str, Any]
) -> RunSummary:
    """One run's numbers from its metrics.jsonl events and its validation evaluation (evaluate.py)."""
    start = next((e for e in metrics if e["event"] == "start"), None)
    evals = [e for e in metrics if e["event"] == "eval"]
    trains = [e for e in metrics if e["event"] == "train"]
    if start is None or not evals or not trains:
        raise ValueError(
            f"{variant} seed {seed}: metrics need a start event, train events and eval events; found "
            f"{sorted({e['event'] for e in metrics})} (lower training.eval_steps/logging_steps below max_steps)"
        )
    best = min(evals, key=lambda e: e["val_loss"])
    min_train = min(e["train_loss"] for e in trains)
    last = max((e for e in metrics if e.get("graph")), key=lambda e: e["step"], default=None)
    accuracy = evaluation["accuracy"]
    return RunSummary(
        variant=variant,
        seed=seed,
        parameters=start["parameters"],
        hidden_size=start["hidden_size"],
        steps=max(e["step"] for e in metrics),
        min_val_perplexity=math.exp(best["val_loss"]),
        best_step=best["step"],
        min_val_loss=best["val_loss"],
        min_train_loss=min_train,
        gap=best["val_loss"] - min_train,
        ratio=min_train / best["val_loss"],
        primary=accuracy["primary"],
        secondary=accuracy["secondary"],
        both=accuracy["both"],
        non_label=accuracy["non_label"],
        wall_time_s=sum(e["train_runtime"] for e in metrics if e["event"] == "end"),
        sharpening=list(last["graph"].get("sharpening", [])) if last else [],
    )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the deviation of a single value is 0."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Sequence[float], fmt: str) -> str:
    mean, std = mean_std(values)
    return format(mean, fmt) if len(values) == 1 else f"{mean:{fmt}} ± {std:{fmt}}"


def group_by_variant(runs: Sequence[RunSummary]) -> dict[str, list[RunSummary]]:
    groups: dict[str, list[RunSummary]] = {}
    for run in runs:
        groups.setdefault(run.variant, []).append(run)
    return groups


def summary_table(runs: Sequence[RunSummary], baseline: Mapping[str, float]) -> str:
    """The per-variant markdown table: mean ± std over seeds, and a baseline row (what `baseline` names)."""
    headers = ["variant", "parameters", "seeds", *(header for _, header, _ in METRICS)]
    rows = []
    for variant, group in group_by_variant(runs).items():
        parameters = sorted({r.parameters for r in group})
        rows.append(
            [
                variant,
                "/".join(f"{p:,}" for p in parameters),
                ",".join(str(r.seed) for r in group),
                *(format_mean_std([getattr(r, field) for r in group], fmt) for field, _, fmt in METRICS),
            ]
        )
    rows.append(
        ["baseline", "", "", *(format(baseline[f], fmt) if f in baseline else "" for f, _, fmt in METRICS)]
    )
    return markdown_table(headers, rows)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table with columns padded to their widest cell, so it also reads as plain text."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def read_runs(settings: CompareSettings) -> tuple[list[RunSummary], dict[str, Any]]:
    """Every run's summary and the baseline numbers (from the first run's evaluation: every run shares the data)."""
    runs, evaluation = [], None
    for variant, seed, run in settings.runs():
        evaluation = json.loads((run.run_dir / EVAL_FILE).read_text())
        runs.append(run_summary(variant, seed, read_metrics(run.run_dir), evaluation))
    majority = evaluation["baseline"]
    baseline = {
        "min_val_perplexity": evaluation["unigram_perplexity"],
        "primary": majority["primary_accuracy"],
        "secondary": majority["secondary_accuracy"],
        "both": majority["pair_accuracy"],
        "examples": evaluation["examples"],
        "majority": [majority["primary"], majority["secondary"], list(majority["pair"])],
    }
    return runs, baseline


def write_summary(settings: CompareSettings) -> Path:
    """summary.md, summary.csv, runs.csv and the figures of a comparison whose runs are all done."""
    root = settings.root
    runs, baseline = read_runs(settings)
    figures = write_figures(settings, runs, training_curves([(v, run.run_dir) for v, _, run in settings.runs()]))
    _write_csv(root, runs, baseline)
    (root / "summary.md").write_text(summary_markdown(settings, runs, baseline, figures))
    return root / "summary.md"


def summary_markdown(
    settings: CompareSettings, runs: Sequence[RunSummary], baseline: Mapping[str, Any], figures: Sequence[Path]
) -> str:
    first = settings.run_settings(next(iter(settings.variants)), settings.seeds[0])
    data, training = first.data, first.training
    steps = "max_steps " + str(training.max_steps) if training.max_steps else f"{training.num_train_epochs:g} epochs"
    per_run = markdown_table(
        ["variant", "seed", "parameters", "hidden", "steps", "min val ppl", "best step", "min train loss",
         "primary", "secondary", "both", "wall time (s)"],
        [[r.variant, r.seed, f"{r.parameters:,}", r.hidden_size, r.steps, f"{r.min_val_perplexity:.3f}", r.best_step,
          f"{r.min_train_loss:.4f}", f"{r.primary:.3f}", f"{r.secondary:.3f}", f"{r.both:.3f}", f"{r.wall_time_s:.0f}"]
         for r in runs],
    )
    majority = baseline["majority"]
    return "\n".join(
        [
            f"# Comparison `{settings.name}`",
            "",
            f"- variants: {', '.join(settings.variants)}; seeds {settings.seeds} (training.seed; the data split is "
            f"fixed by data.split_seed={data.split_seed})",
            f"- size target: {settings.target_params:,} parameters per variant",
            f"- data: {data.source}, proteins shorter than {data.max_length} residues, "
            f"{baseline['examples']} validation proteins, loss on {data.loss_on} tokens",
            f"- training: {steps}, batch {training.per_device_train_batch_size} × "
            f"{training.gradient_accumulation_steps} accumulation, learning rate {training.learning_rate:g}",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}",
            "",
            "Mean ± sample standard deviation over seeds.",
            "",
            summary_table(runs, baseline),
            "",
            "Baseline row: the val perplexity of a unigram model (training-split token frequencies, no context) and "
            f"the accuracy of always answering the training split's majority labels ({majority[0]}; {majority[1]}; "
            f"pair {majority[2][0]}, {majority[2][1]}), on the same validation proteins.",
            "",
            "- min val ppl: exp(lowest validation loss during training); min train loss: lowest logged training loss",
            "- gap: min val loss − min train loss; train/val: min train loss / min val loss",
            "- accuracies: greedy generation of the two label tokens by the final model on the validation split; "
            "non-label: share of generated tokens that are no class token",
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


def _write_csv(root: Path, runs: Sequence[RunSummary], baseline: Mapping[str, Any]) -> None:
    fields = [field for field, _, _ in METRICS]
    with (root / "summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        columns = [f"{m}_{s}" for m in fields for s in ("mean", "std")]
        writer.writerow(["variant", "parameters", "seeds", "n_seeds", *columns])
        for variant, group in group_by_variant(runs).items():
            stats = [x for m in fields for x in mean_std([getattr(r, m) for r in group])]
            writer.writerow([variant, group[0].parameters, " ".join(str(r.seed) for r in group), len(group), *stats])
        writer.writerow(["baseline", "", "", "", *(x for m in fields for x in (baseline.get(m, ""), ""))])
    with (root / "runs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([field.name for field in dataclasses.fields(RunSummary)])
        for run in runs:
            writer.writerow([" ".join(map(str, v)) if isinstance(v, list) else v for v in dataclasses.astuple(run)])


# ---------------------------------------------------------------------------------------------------------------
# Figures (plots.py draws them)


def write_figures(
    settings: CompareSettings, runs: Sequence[RunSummary], curves: Mapping[str, Mapping[str, list]]
) -> list[Path]:
    """The paper's Fig. 4–8 for this comparison, as PNG and SVG in <name>/figures/; returns the paths.

    Fig. 5 needs a variant with a learnable sharpening α and Fig. 8 GIN variants with two or more values of the
    MLP multiplier γ; without them those figures are not drawn.
    """
    from ginformer.viz import plots

    out = settings.root / FIGURES_DIR
    groups = group_by_variant(runs)
    paths = []
    paths += plots.plot_curves(curves["train_loss"], "training loss", out / "fig4a_train_loss",
                               title="Training loss (thin: seeds)")
    paths += plots.plot_curves(curves["val_perplexity"], "validation perplexity", out / "fig4b_val_perplexity",
                               title="Validation perplexity (thin: seeds)")
    learned = {
        v: _mean_per_layer([r.sharpening for r in group])
        for v, group in groups.items()
        if _learns_sharpening(settings.run_settings(v, settings.seeds[0]).model)
    }
    if learned:
        paths += plots.plot_per_layer(learned, "sharpening α (end of training)", out / "fig5_sharpening_per_layer",
                                      title="Learned sharpening α per layer (mean over seeds)", reference=1.0)
    paths += plots.plot_bars({v: [r.min_val_perplexity for r in g] for v, g in groups.items()},
                             "minimum validation perplexity", out / "fig6a_min_val_perplexity",
                             title="Minimum validation perplexity (bar: mean, line: ± std, dots: seeds)")
    paths += plots.plot_bars({v: [r.min_train_loss for r in g] for v, g in groups.items()},
                             "minimum training loss", out / "fig6b_min_train_loss", fmt=".4f",
                             title="Minimum training loss")
    paths += plots.plot_generalisation_gap({v: [r.min_train_loss for r in g] for v, g in groups.items()},
                                           {v: [r.min_val_loss for r in g] for v, g in groups.items()},
                                           out / "fig7_generalisation_gap")
    gamma = {
        v: [(settings.run_settings(v, r.seed).model.gin_mlp_multiplier, r.min_val_perplexity) for r in group]
        for v, group in groups.items()
        if "gin" in _kinds(settings.run_settings(v, settings.seeds[0]).model)
    }
    if len({x for points in gamma.values() for x, _ in points}) >= 2:
        paths += plots.plot_metric_vs(gamma, "GIN MLP multiplier γ", "minimum validation perplexity",
                                      out / "fig8_val_perplexity_vs_gamma", title="Validation perplexity against γ")
    return paths


def _kinds(model: ModelSettings) -> set[str]:
    return {model.attention_kind} if isinstance(model.attention_kind, str) else set(model.attention_kind)


def _learns_sharpening(model: ModelSettings) -> bool:
    return model.learn_sharpening and _kinds(model) != {"standard"}


def _mean_per_layer(per_seed: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Mean over seeds of each layer's value; None where a layer has none."""
    return [None if None in layer else statistics.fmean(layer) for layer in zip(*per_seed)]


# ---------------------------------------------------------------------------------------------------------------
# The demo: `make demo`


def run_demo(overwrite: bool = False, overrides: Sequence[str] = ()) -> tuple[Path, float]:
    """Run the CPU comparison of configs/protein_compare.yaml; returns its directory and the wall time (s)."""
    if not DEMO_CONFIG.is_file():
        raise FileNotFoundError(f"demo config not found at {DEMO_CONFIG}: run the demo from a checkout")
    started = time.perf_counter()
    root = run_compare(load_compare_settings(DEMO_CONFIG, overrides), overwrite=overwrite)
    return root, time.perf_counter() - started
