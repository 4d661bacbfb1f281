"""Compare variants over seeds, for any task and either model side: attention kinds at a matched parameter
count (the paper's section 2.2), or fine-tuning methods at a matched trainable budget (its section 4.2).

    ginformer compare --config configs/protein_compare.yaml

A compare config is a run config (`model`, `data`, `training`: runs/config.py), the base every run shares,
plus:

    name: protein_compare         runs go to <training.output_root>/<name>/<variant>/seed<k>/
    seeds: [0, 1, 2]              one run per variant and seed (training.seed); the data split never changes
    variants:                     name -> what it changes in the base's `model` section (merged key by key)
      reference: {attention_kind: standard}
      gin: {attention_kind: gin, gin_mlp_multiplier: 0.5}
    target_params: 1_000_000      from scratch: every variant is sized to this many parameters (sizing.py)
    baseline: true                on a pretrained model: also evaluate the frozen base once, in <name>/base/
    evaluate: {generate: 20, max_new_tokens: 256}   `ginformer evaluate` options for every run

Every run is trained with `train` and evaluated on its validation split with `evaluate_run`; then
``<name>/summary.md`` and ``summary.csv`` (one row per variant: mean ± sample standard deviation over seeds),
``runs.csv`` (one row per run) and the figures in ``<name>/figures/`` are written.

Per-run numbers (from the run's metrics.jsonl and eval_val.json):
    min / final val perplexity   exp(lowest / last validation loss over the evaluations during training)
    min train loss               lowest logged training loss (each is a mean over `logging_steps` steps)
    gap, train/val               min val loss − min train loss, and min train loss / min val loss (Fig. 7)
    the task's metrics           of the final model on the validation split (tasks/: Task.columns)
    s / step, wall time          mean seconds per optimizer step; Trainer's train_runtime
The baseline rows hold what a model that learned nothing scores (the unigram perplexity and the task's majority
baselines, from the training split, on the validation split) and, on a pretrained model, the frozen base.

Figures: train_loss and val_perplexity curves (paper Fig. 4, 9: seeds thin, mean thick); bars of min val
perplexity and min train loss (Fig. 6, 12A); the generalisation gap (Fig. 7); bars of each task metric marked as
a figure; every learned graph scalar per layer at the end (Fig. 5: α, Fig. 12B: λ) and, where it moves, over
training (Fig. 10, 11); validation perplexity against γ when GIN variants differ in it (Fig. 8).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from ginformer.errors import ConfigError, OutputInTheWay
from ginformer.files import atomic_write_text, atomic_writer, check_output_dir
from ginformer.runs.config import (
    SECTIONS,
    RunSettings,
    apply_overrides,
    bundled_config,
    read_config_file,
    run_settings_from_dict,
    side_name,
)
from ginformer.runs.evaluate import VAL, check_options, evaluate_run
from ginformer.runs.run_dir import RunDir
from ginformer.runs.train import changed_settings, train
from ginformer.viz import plots

REQUIRED_KEYS = ("name", "seeds", "variants")
OPTIONAL_KEYS = ("target_params", "baseline", "evaluate")
EVALUATE_KEYS = ("limit", "generate", "max_new_tokens", "batch_size")
COMPARE_FILE = "compare.yaml"  # the resolved compare config, written into the comparison directory
FIGURES_DIR = "figures"
BASELINE = "base"  # the frozen base's directory and its name in tables
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")  # a comparison or variant name becomes a directory name


@dataclass
class CompareSettings:
    """A validated compare config: the base sections and how the runs differ from them."""

    name: str  # the comparison's directory under training.output_root
    seeds: list[int]  # training seeds; several, because one seed cannot tell a method from luck
    variants: dict[str, dict[str, Any]]  # variant name -> changes to the base's model section
    base: dict[str, dict[str, Any]]  # the model, data and training sections every run starts from
    side: str  # "scratch" or "pretrained"
    target_params: int | None = None  # from scratch: every variant sized to this, so a gap is not a bigger model
    baseline: bool = False  # on a pretrained model: evaluate the frozen base once, the numbers adapters must beat
    evaluate: dict[str, int] = field(default_factory=dict)  # evaluate_run options

    @property
    def root(self) -> Path:
        return Path(self.base["training"].get("output_root", "runs")) / self.name

    def _settings(self, model: dict[str, Any], training: dict[str, Any], where: str) -> RunSettings:
        raw = {"model": model, "data": dict(self.base["data"]), "training": {**self.base["training"], **training}}
        try:
            return run_settings_from_dict(raw, self.side)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

    def run_settings(self, variant: str, seed: int) -> RunSettings:
        """One run: the base, the variant's model changes merged in, the size target, the seed."""
        model = merge(self.base["model"], self.variants[variant])
        if self.target_params is not None:
            model["target_params"] = self.target_params
        training = {"seed": seed, "run_name": f"seed{seed}", "output_root": str(self.root / variant)}
        return self._settings(model, training, f"variant '{variant}'")

    def baseline_settings(self) -> RunSettings:
        training = {"run_name": BASELINE, "output_root": str(self.root)}
        return self._settings({**self.base["model"], "method": "none"}, training, "baseline")

    def runs(self) -> list[tuple[str, int, RunSettings]]:
        """(variant, seed, settings) of every run, variant by variant."""
        return [(v, s, self.run_settings(v, s)) for v in self.variants for s in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        optional = {"target_params": self.target_params, "baseline": self.baseline, "evaluate": self.evaluate}
        return {"name": self.name, "seeds": self.seeds, "variants": self.variants, **optional, **self.base}


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied key by key; nested mappings are merged, not replaced."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_compare_settings(path: str | Path, overrides: Sequence[str] = ()) -> CompareSettings:
    """Read and validate a compare config; `overrides` (``section.key[.key]=value``) change the base sections.
    Every run's settings are built here, so a bad variant fails before anything trains."""
    return compare_settings_from_dict(read_config_file(path), overrides)


def compare_settings_from_dict(raw: Any, overrides: Sequence[str] = ()) -> CompareSettings:
    """Validated settings of a parsed compare config; `overrides` change its sections (``training.max_steps=9``)
    or its own keys (``seeds=[0]``, ``target_params=60000``)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a compare config must be a mapping with keys {list(REQUIRED_KEYS)}")
    raw = apply_overrides(raw, overrides, depth=1)
    allowed = [*REQUIRED_KEYS, *OPTIONAL_KEYS, *SECTIONS]
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"unknown key in compare config: '{key}'; allowed: {', '.join(allowed)}")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise ConfigError(f"compare config misses {', '.join(missing)}; it needs {', '.join(REQUIRED_KEYS)}")
    name, seeds, variants = (raw[key] for key in REQUIRED_KEYS)
    if not isinstance(name, str) or not NAME.fullmatch(name):
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

    base = {s: raw.get(s) or {} for s in SECTIONS}
    for section, values in base.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"section '{section}' must be a mapping of keys to values, got {values!r}")
    side = side_name(base["model"])
    for key, why in (("run_name", "runs are named <name>/<variant>/seed<k>"), ("seed", "set `seeds`")):
        if key in base["training"]:
            raise ConfigError(f"training.{key} cannot be set in a compare config: {why}")
    target_params = raw.get("target_params")
    if side == "scratch":
        if not isinstance(target_params, int) or isinstance(target_params, bool) or target_params <= 0:
            raise ConfigError(
                f"target_params={target_params!r} is not allowed: a comparison of models trained from scratch "
                "sizes every variant to the same count; expected a positive integer"
            )
        if "target_params" in base["model"]:
            raise ConfigError("model.target_params cannot be set in a compare config: set the top-level target_params")
    elif target_params is not None:
        raise ConfigError("target_params sizes models trained from scratch; an adapter's budget is model.sparse_gin")
    baseline = raw.get("baseline", side == "pretrained")
    if not isinstance(baseline, bool) or (baseline and side == "scratch"):
        raise ConfigError(f"baseline={baseline!r} is not allowed: true or false, and true only on a pretrained model")
    evaluate = raw.get("evaluate") or {}
    if not isinstance(evaluate, Mapping):
        raise ConfigError(f"evaluate must map {list(EVALUATE_KEYS)} to values, got {evaluate!r}")
    for key, value in evaluate.items():
        if key not in EVALUATE_KEYS:
            raise ConfigError(f"unknown key in evaluate: '{key}'; allowed: {', '.join(EVALUATE_KEYS)}")
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "generate" else 1):
            raise ConfigError(f"evaluate.{key}={value!r} is not allowed: expected an integer >= 1 (generate: >= 0)")

    checked = {}
    for variant, changes in variants.items():
        if not isinstance(variant, str) or not NAME.fullmatch(variant) or variant == BASELINE:
            raise ConfigError(
                f"variant name {variant!r} is not allowed: expected letters, digits, _ . + = - (and not '{BASELINE}')"
            )
        changes = changes or {}
        if not isinstance(changes, Mapping):
            raise ConfigError(f"variant '{variant}' must map model settings to values, got {changes!r}")
        if "target_params" in changes:
            raise ConfigError(f"variant '{variant}': target_params is the comparison's, set once at the top level")
        checked[variant] = json.loads(json.dumps(changes))
    settings = CompareSettings(
        name, list(seeds), checked, {s: dict(v) for s, v in base.items()}, side, target_params, baseline,
        dict(evaluate),
    )
    first = settings.runs()[0][2]  # validates every run's settings now
    options = {k: v for k, v in evaluate.items() if k in ("generate", "max_new_tokens")}
    try:
        check_options(first.task(), **options)
    except ValueError as err:
        raise ConfigError(f"evaluate: {err}") from None
    for key in ("logging_steps", "eval_steps"):
        value, steps = getattr(first.training, key), first.training.max_steps
        if steps is not None and value > steps:
            raise ConfigError(
                f"training.{key}={value} exceeds training.max_steps={steps}: the summary needs logged training "
                "and validation losses"
            )
    return settings


def variant_parameters(settings: CompareSettings) -> dict[str, tuple[int, int]]:
    """(parameter count, hidden size) of every variant after sizing, computed without building weights;
    raises ConfigError naming a variant that cannot be sized to target_params. From scratch only."""
    from ginformer.sizing import config_parameters

    tokenizer = settings.run_settings(next(iter(settings.variants)), settings.seeds[0]).task().tokenizer(None)
    sizes = {}
    for variant in settings.variants:
        model = settings.run_settings(variant, settings.seeds[0]).model
        try:
            config = model.to_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        except ValueError as err:
            raise ConfigError(f"variant '{variant}': {err}") from None
        sizes[variant] = (config_parameters(config), config.hidden_size)
    return sizes


def run_comparison(settings: CompareSettings, overwrite: bool = False, only: Sequence[str] = ()) -> Path:
    """Train and evaluate every (variant, seed) run that is not done yet (and the frozen base when asked),
    then write the summary and figures. Returns the comparison directory.

    `only` ("variant" or "variant/seedK", "base") trains and evaluates just those runs, so several processes
    can share a machine's accelerator; the summary is written once no run is pending."""
    root = settings.root
    check_output_dir(root, "the comparison directory (training.output_root/name)")
    if settings.side == "scratch":
        variant_parameters(settings)  # fail on a variant that cannot be sized before anything trains
    if overwrite and only:
        raise ConfigError("--overwrite deletes the whole comparison, which other --only processes may be writing: "
                          "delete the runs to redo by hand, or drop --only")
    if overwrite and root.exists():
        shutil.rmtree(root)
    plan = planned_runs(settings)
    for _, _, run in plan:
        if _finished(run):
            refuse_changed_run(run.run_dir, run.to_dict())
    if only:
        names = {_name(variant, seed) for variant, seed, _ in plan} | {variant for variant, _, _ in plan}
        unknown = sorted(set(only) - names)
        if unknown:
            raise ConfigError(f"--only {', '.join(unknown)}: no such run; runs: {', '.join(sorted(names))}")
        plan = [(v, s, run) for v, s, run in plan if v in only or _name(v, s) in only]
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / COMPARE_FILE, yaml.safe_dump(settings.to_dict(), sort_keys=False))

    progress = tqdm(plan, desc="compare", unit="run", disable=None)
    for variant, seed, run in progress:
        progress.set_postfix_str(_name(variant, seed))
        run_dir = RunDir(run.run_dir)
        if not _finished(run):
            checkpoint = bool(run_dir.checkpoints())
            train(run, resume=checkpoint, overwrite=run_dir.holds_files() and not checkpoint)
        if not run_dir.evaluation(VAL).is_file():
            evaluate_run(run_dir.path, **settings.evaluate)
    if not pending_runs(settings):
        write_summary(settings)
    return root


def planned_runs(settings: CompareSettings) -> list[tuple[str, int | None, RunSettings]]:
    """Every run of the comparison, the frozen base (seed None) last when there is one."""
    plan = [(variant, seed, run) for variant, seed, run in settings.runs()]
    return plan + ([(BASELINE, None, settings.baseline_settings())] if settings.baseline else [])


def pending_runs(settings: CompareSettings) -> list[str]:
    """The runs not yet trained and evaluated, as "variant/seedK" (or "base")."""
    return [_name(v, s) for v, s, run in planned_runs(settings)
            if not (_finished(run) and RunDir(run.run_dir).evaluation(VAL).is_file())]


def _name(variant: str, seed: int | None) -> str:
    return variant if seed is None else f"{variant}/seed{seed}"


def _finished(run: RunSettings) -> bool:
    """A trained run is finished once its final weights are saved; the frozen base, once it has been evaluated
    (its metrics.jsonl starts before the evaluation, which an interruption can cut off)."""
    run_dir = RunDir(run.run_dir)
    if run.side.trains(run.model):
        return run_dir.final(run.side.final_dir).exists()
    return any(event["event"] == "eval" for event in run_dir.read_metrics())


def refuse_changed_run(run_dir: Path, wanted: dict[str, dict[str, Any]]) -> None:
    """A finished run is reused only when its saved config.yaml holds exactly the `wanted` settings."""
    changed = changed_settings(RunDir(run_dir).read_config(), wanted, SECTIONS)
    if changed:
        raise OutputInTheWay(
            f"{run_dir} was trained with other settings ({', '.join(changed)}); pass --overwrite to retrain "
            "the whole comparison, or choose another name"
        )


def read_evaluation(run_dir: Path) -> dict[str, Any]:
    """A run's evaluation on its validation split (runs/evaluate.py)."""
    return json.loads(RunDir(run_dir).evaluation(VAL).read_text())


# ---------------------------------------------------------------------------------------------------------------
# Summary: pure functions of metrics.jsonl events and evaluation results


@dataclass(frozen=True)
class RunSummary:
    variant: str
    seed: int | None  # None for the frozen base
    parameters: int  # trainable
    hidden_size: int | None  # models trained from scratch
    steps: int
    min_val_perplexity: float
    final_val_perplexity: float  # at the last evaluation: the paper's Fig. 12 measure
    best_step: int  # the step of the lowest validation loss
    min_val_loss: float
    min_train_loss: float | None  # None: nothing trained (the frozen base)
    final_train_loss: float | None
    gap: float | None  # min_val_loss - min_train_loss
    ratio: float | None  # min_train_loss / min_val_loss
    step_time_s: float | None  # mean seconds per optimizer step
    wall_time_s: float | None
    scores: dict[str, float]  # the task's metrics of the final model on the validation split
    graph: dict[str, list[tuple[int, list]]]  # scalar -> (step, value per layer) at every logged event
    adapted: str | None = None  # a Sparse-GIN run: which layers, placement and residual kind (describe_host)


RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunSummary))

# Columns of the per-variant summary: (RunSummary field, header, format); task columns go before the times.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("min_val_perplexity", "min val ppl", ".3f"),
    ("final_val_perplexity", "final val ppl", ".3f"),
    ("min_train_loss", "min train loss", ".4f"),
    ("final_train_loss", "final train loss", ".4f"),
    ("gap", "gap (val − train)", ".4f"),
    ("ratio", "train/val", ".3f"),
)
TIMES: tuple[tuple[str, str, str], ...] = (("step_time_s", "s / step", ".2f"), ("wall_time_s", "wall time (s)", ".0f"))


def run_summary(
    variant: str, seed: int | None, metrics: Sequence[Mapping[str, Any]], evaluation: Mapping[str, Any]
) -> RunSummary:
    """One run's numbers from its metrics.jsonl events and its validation evaluation (runs/evaluate.py)."""
    start = next((e for e in metrics if e["event"] == "start"), None)
    evals = [e for e in metrics if e["event"] == "eval"]
    trains = [e for e in metrics if e["event"] == "train"]
    if start is None or not evals or (seed is not None and not trains):
        raise ConfigError(
            f"{variant} seed {seed}: metrics need a start event, train events and eval events; found "
            f"{sorted({e['event'] for e in metrics})} (lower training.eval_steps/logging_steps below max_steps)"
        )
    best = min(evals, key=lambda e: e["val_loss"])
    min_train = min(e["train_loss"] for e in trains) if trains else None
    step_times = [e["step_time"] for e in trains if e.get("step_time") is not None]
    ends = [e["train_runtime"] for e in metrics if e["event"] == "end"]
    graph: dict[str, dict[int, list]] = {}
    for event in metrics:
        for key, values in (event.get("graph") or {}).items():
            if any(v is not None for v in values):
                graph.setdefault(key, {})[event["step"]] = values
    return RunSummary(
        variant=variant,
        seed=seed,
        parameters=start["parameters"],
        hidden_size=start.get("hidden_size"),
        steps=max(e["step"] for e in metrics),
        min_val_perplexity=math.exp(best["val_loss"]),
        final_val_perplexity=max(evals, key=lambda e: e["step"])["val_perplexity"],
        best_step=best["step"],
        min_val_loss=best["val_loss"],
        min_train_loss=min_train,
        final_train_loss=max(trains, key=lambda e: e["step"])["train_loss"] if trains else None,
        gap=None if min_train is None else best["val_loss"] - min_train,
        ratio=None if min_train is None else min_train / best["val_loss"],
        step_time_s=statistics.fmean(step_times) if step_times else None,
        wall_time_s=sum(ends) if ends else None,
        scores=dict(evaluation["scores"]),
        adapted=start.get("adapted"),
        graph={key: sorted(history.items()) for key, history in graph.items()},
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


def value(run: RunSummary, key: str) -> float | None:
    """A summary column of a run: a RunSummary field, or one of the task's scores."""
    return getattr(run, key) if key in RUN_FIELDS else run.scores.get(key)


def columns(runs: Sequence[RunSummary], task_columns) -> list[tuple[str, str, str]]:
    """(key, header, format) of every column some run fills: the generic ones, the task's, the times."""
    every = [*METRICS, *((c.key, c.header, c.fmt) for c in task_columns), *TIMES]
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


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table with columns padded to their widest cell, so it also reads as plain text."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def read_runs(settings: CompareSettings) -> tuple[list[RunSummary], RunSummary | None, dict[str, Any]]:
    """Every run's summary, the frozen base's (None without one), and the baseline numbers (from the first run's
    evaluation: every run shares the data)."""
    runs, evaluation = [], None
    for variant, seed, run in settings.runs():
        evaluation = read_evaluation(run.run_dir)
        runs.append(run_summary(variant, seed, RunDir(run.run_dir).read_metrics(), evaluation))
    base = None
    if settings.baseline:
        base_dir = settings.baseline_settings().run_dir
        base = run_summary(BASELINE, None, RunDir(base_dir).read_metrics(), read_evaluation(base_dir))
    baselines = {"min_val_perplexity": evaluation["unigram_perplexity"],
                 "final_val_perplexity": evaluation["unigram_perplexity"], **evaluation["baselines"]}
    return runs, base, {**baselines, "examples": evaluation["examples"], "notes": evaluation["notes"]}


def write_summary(settings: CompareSettings) -> Path:
    """summary.md, summary.csv, runs.csv and the figures of a comparison whose runs are all done."""
    root = settings.root
    runs, base, baselines = read_runs(settings)
    task = settings.run_settings(next(iter(settings.variants)), settings.seeds[0]).task()
    figures = write_figures(settings, runs, base, task.columns)
    _write_csv(root, runs, base, baselines, task.columns)
    atomic_write_text(root / "summary.md", summary_markdown(settings, runs, base, baselines, figures))
    return root / "summary.md"


def summary_markdown(
    settings: CompareSettings,
    runs: Sequence[RunSummary],
    base: RunSummary | None,
    baselines: Mapping[str, Any],
    figures: Sequence[Path],
) -> str:
    first = settings.run_settings(next(iter(settings.variants)), settings.seeds[0])
    task, training = first.task(), first.training
    steps = f"max_steps {training.max_steps}" if training.max_steps else f"{training.num_train_epochs:g} epochs"
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
    notes = "; ".join(f"{key}: {value}" for key, value in baselines["notes"].items())
    return "\n".join(
        [
            f"# Comparison `{settings.name}`",
            "",
            f"- models: {shared}; variants (changes to the base `model` section):",
            *changes,
            f"- seeds {settings.seeds} (training.seed; the data split does not depend on it)",
            size,
            f"- data: {task.describe()}, {baselines['examples']} validation examples",
            f"- training: {steps}, batch {training.per_device_train_batch_size} × "
            f"{training.gradient_accumulation_steps} accumulation, learning rate {training.learning_rate:g}, "
            f"bf16 {training.bf16}",
            f"- evaluation options: {settings.evaluate or 'the defaults of ginformer evaluate'}",
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


def _write_csv(
    root: Path, runs: Sequence[RunSummary], base: RunSummary | None, baselines: Mapping[str, Any], task_columns
) -> None:
    keys = [key for key, _, _ in columns([*runs, *([base] if base else [])], task_columns)]
    with atomic_writer(root / "summary.csv", newline="") as f:
        writer = csv.writer(f)
        stats_header = [f"{k}_{s}" for k in keys for s in ("mean", "std")]
        writer.writerow(["variant", "parameters", "seeds", "n_seeds", *stats_header])
        groups = group_by_variant([*runs, *([base] if base else [])])
        for variant, group in groups.items():
            stats = []
            for key in keys:
                present = [value(r, key) for r in group if value(r, key) is not None]
                stats += list(mean_std(present)) if present else ["", ""]
            seeds = " ".join(str(r.seed) for r in group if r.seed is not None)
            writer.writerow([variant, group[0].parameters, seeds, len(group), *stats])
        writer.writerow(["baseline", "", "", "", *(x for k in keys for x in (baselines.get(k, ""), ""))])
    with atomic_writer(root / "runs.csv", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "seed", "parameters", "hidden_size", "steps", "best_step", *keys])
        for run in [*runs, *([base] if base else [])]:
            writer.writerow([run.variant, run.seed, run.parameters, run.hidden_size, run.steps, run.best_step,
                             *(value(run, k) for k in keys)])


# ---------------------------------------------------------------------------------------------------------------
# Figures (viz/plots.py draws them)


def training_curves(runs: Sequence[tuple[str, Path]]) -> dict[str, dict[str, list[list[tuple[int, float]]]]]:
    """metric -> variant -> one (step, value) list per run, for train_loss and val_perplexity."""
    curves: dict[str, dict[str, list]] = {"train_loss": {}, "val_perplexity": {}}
    for variant, run_dir in runs:
        metrics = RunDir(run_dir).read_metrics()
        for key, event in (("train_loss", "train"), ("val_perplexity", "eval")):
            points = sorted({e["step"]: e[key] for e in metrics if e["event"] == event}.items())
            curves[key].setdefault(variant, []).append(points)
    return curves


SYMBOLS = {"sharpening": "α", "gin_eps": "ε", "pna_blend": "PNA λ", "lambda": "λ", "alpha": "α", "tau": "τ"}


def write_figures(
    settings: CompareSettings, runs: Sequence[RunSummary], base: RunSummary | None, task_columns
) -> list[Path]:
    """The comparison's figures (see the module docstring), PNG and SVG in <name>/figures/; returns the paths."""
    out = settings.root / FIGURES_DIR
    groups = group_by_variant(runs)
    curves = training_curves([(variant, run.run_dir) for variant, _, run in settings.runs()])
    paths = []
    paths += plots.plot_curves(curves["train_loss"], "training loss", out / "train_loss",
                               title="Training loss (thin: seeds)")
    paths += plots.plot_curves(curves["val_perplexity"], "validation perplexity", out / "val_perplexity",
                               title="Validation perplexity (thin: seeds)")
    bars = {v: [r.min_val_perplexity for r in g] for v, g in groups.items()}
    if base is not None:
        bars[f"{BASELINE} (frozen)"] = [base.min_val_perplexity]
    paths += plots.plot_bars(bars, "minimum validation perplexity", out / "min_val_perplexity",
                             title="Minimum validation perplexity (bar: mean, line: ± std, dots: seeds)")
    paths += plots.plot_bars({v: [r.min_train_loss for r in g] for v, g in groups.items()},
                             "minimum training loss", out / "min_train_loss", fmt=".4f", title="Minimum training loss")
    paths += plots.plot_generalisation_gap({v: [r.min_train_loss for r in g] for v, g in groups.items()},
                                           {v: [r.min_val_loss for r in g] for v, g in groups.items()},
                                           out / "generalisation_gap")
    for column in task_columns:
        scored = {v: [r.scores[column.key] for r in g] for v, g in groups.items() if column.key in g[0].scores}
        if column.figure and scored:
            paths += plots.plot_bars(scored, column.header, out / f"score_{column.key}", fmt=column.fmt,
                                     title=f"{column.header} of the final models")
    for key in sorted({key for r in runs for key in r.graph}):
        symbol = SYMBOLS.get(key, key)
        final = {v: _mean_per_layer([r.graph[key][-1][1] for r in g]) for v, g in groups.items() if key in g[0].graph}
        paths += plots.plot_per_layer(final, f"{symbol} at the end of training", out / f"{key}_per_layer",
                                      title=f"Learned {symbol} per layer (mean over seeds)")
        for variant, group in groups.items():
            history = _mean_history([r.graph.get(key, []) for r in group])
            if len(history) >= 2 and history[0][1] != history[-1][1] and None not in history[0][1]:
                title = f"{symbol} per layer over training: {variant} (mean over seeds)"
                paths += plots.plot_scalar_heatmap(history, out / f"{key}_over_training_{variant}", symbol=symbol,
                                                   title=title)
                paths += plots.plot_scalar_summary(history, out / f"{key}_summary_{variant}", symbol=symbol,
                                                   title=f"{symbol}: {variant}")
    gamma = _gamma_points(settings, groups)
    if len({x for points in gamma.values() for x, _ in points}) >= 2:
        paths += plots.plot_metric_vs(gamma, "GIN MLP multiplier γ", "minimum validation perplexity",
                                      out / "val_perplexity_vs_gamma", title="Validation perplexity against γ")
    return paths


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


def _mean_per_layer(per_seed: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Mean over seeds of each layer's value; None where a layer has none."""
    return [None if None in layer else statistics.fmean(layer) for layer in zip(*per_seed)]


def _mean_history(histories: Sequence[Sequence[tuple[int, list]]]) -> list[tuple[int, list]]:
    """(step, value per layer averaged over runs) at the steps every run logged."""
    per_run = [dict(history) for history in histories]
    shared = sorted(set.intersection(*(set(h) for h in per_run))) if per_run else []
    return [(step, _mean_per_layer([h[step] for h in per_run])) for step in shared]


# ---------------------------------------------------------------------------------------------------------------
# The demo: `make demo`

DEMO_CONFIG = "protein_compare.yaml"


def run_demo(overwrite: bool = False, overrides: Sequence[str] = ()) -> Path:
    """The CPU comparison of the bundled configs/protein_compare.yaml; returns its directory."""
    return run_comparison(load_compare_settings(bundled_config(DEMO_CONFIG), overrides), overwrite=overwrite)
