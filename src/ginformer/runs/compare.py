"""Compare variants over seeds, for any task and either model side: attention kinds at a matched parameter
count (the paper's section 2.2), or fine-tuning methods at a matched trainable budget (its section 4.2).

    ginformer compare --config configs/protein_compare.yaml

The config (runs/compare_config.py) names the variants, the seeds and an optional sweep. Every run is trained
with `train` and evaluated on its validation split with `evaluate_run`: a variant's sweep first, then its seeds at
the point the sweep chose (runs/summary.py chooses); once every run is done, the report (runs/report.py) is
written. The comparison is resumable: a run with a final model is not trained again (its config.yaml must equal
what the compare config asks for), a run with a checkpoint resumes, and an evaluated run is not evaluated again.
Nothing is deleted unless ``overwrite=True``, which removes the whole comparison directory first.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from tqdm.auto import tqdm

from ginformer.errors import ConfigError, OutputInTheWay
from ginformer.files import atomic_write_text, check_output_dir
from ginformer.runs.compare_config import (
    BASELINE,
    CompareSettings,
    load_compare_settings,
    point_name,
    variant_parameters,
)
from ginformer.runs.config import SECTIONS, RunSettings, bundled_config
from ginformer.runs.evaluate import VAL, evaluate_run
from ginformer.runs.report import write_report
from ginformer.runs.run_dir import RunDir
from ginformer.runs.summary import Results, RunSummary, SweepChoice, choose_point, run_summary, training_curves
from ginformer.runs.train import changed_settings, train

COMPARE_FILE = "compare.yaml"  # the resolved compare config, written into the comparison directory


@dataclass(frozen=True)
class Run:
    """One run of a comparison: a variant's seed at a sweep's point ({} without a sweep), or the frozen base."""

    variant: str
    seed: int | None  # None: the frozen base
    point: dict[str, Any]
    settings: RunSettings

    @property
    def name(self) -> str:
        """How --only names it: variant/seedK, variant/<point>/seedK in a sweep, or base."""
        if self.seed is None:
            return self.variant
        return "/".join([self.variant, *([point_name(self.point)] if self.point else []), f"seed{self.seed}"])

    @property
    def done(self) -> bool:
        return finished(self.settings) and RunDir(self.settings.run_dir).has_evaluation(VAL)


def sweep_runs(settings: CompareSettings) -> list[Run]:
    """Every run of every variant's sweep ([] without a sweep)."""
    if not settings.sweep.grid:
        return []
    return [Run(variant, seed, point, settings.run_settings(variant, seed, point))
            for variant in settings.variants for point in settings.sweep.points() for seed in settings.sweep.seeds]


def seed_runs(settings: CompareSettings, chosen: dict[str, dict[str, Any]]) -> list[Run]:
    """The seeds of each variant whose point is known (every variant's, without a sweep), the base last."""
    runs = [Run(variant, seed, chosen[variant], settings.run_settings(variant, seed, chosen[variant]))
            for variant in settings.variants if variant in chosen for seed in settings.seeds]
    return runs + ([Run(BASELINE, None, {}, settings.baseline_settings())] if settings.baseline else [])


def sweep_choices(settings: CompareSettings) -> dict[str, SweepChoice]:
    """The choice of each variant whose sweep runs are all done."""
    by_variant: dict[str, list[Run]] = {}
    for run in sweep_runs(settings):
        by_variant.setdefault(run.variant, []).append(run)
    choices = {}
    for variant, runs in by_variant.items():
        if all(run.done for run in runs):
            tried = [(point, [read_run(settings, r) for r in runs if r.point == point])
                     for point in settings.sweep.points()]
            choices[variant] = choose_point(tried, settings.sweep.grid, settings.sweep.metric)
    return choices


def chosen_points(settings: CompareSettings) -> dict[str, dict[str, Any]]:
    if not settings.sweep.grid:
        return {variant: {} for variant in settings.variants}
    return {variant: choice.point for variant, choice in sweep_choices(settings).items()}


def run_comparison(settings: CompareSettings, overwrite: bool = False, only: Sequence[str] = ()) -> Path:
    """Train and evaluate every run that is not done yet (each variant's sweep, then its seeds at the chosen
    point, and the frozen base when asked), then write the report. Returns the comparison directory.

    `only` ("variant", "variant/seedK", "variant/<point>/seedK" or "base") trains and evaluates just those runs,
    so several processes can share a machine's accelerator; the report is written once no run is pending."""
    root = settings.root
    check_output_dir(root, "the comparison directory (training.output_root/name)")
    if settings.side == "scratch":
        variant_parameters(settings)  # fail on a variant that cannot be sized before anything trains
    if overwrite and only:
        raise ConfigError("--overwrite deletes the whole comparison, which other --only processes may be writing: "
                          "delete the runs to redo by hand, or drop --only")
    if overwrite and root.exists():
        shutil.rmtree(root)
    every = {*settings.variants, *([BASELINE] if settings.baseline else [])}
    every |= {run.name for run in sweep_runs(settings)}
    every |= {f"{variant}/seed{seed}" for variant in settings.variants for seed in settings.seeds}
    unknown = sorted(set(only) - every)
    if unknown:
        raise ConfigError(f"--only {', '.join(unknown)}: no such run; runs: {', '.join(sorted(every))}")
    for run in [*sweep_runs(settings), *seed_runs(settings, chosen_points(settings))]:
        if finished(run.settings):
            refuse_changed_run(run.settings.run_dir, run.settings.to_dict())
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / COMPARE_FILE, yaml.safe_dump(settings.to_dict(), sort_keys=False))

    chosen = chosen_points(settings)
    waiting = sorted(name for name in only if name.count("/") == 1 and name.split("/")[0] not in {*chosen, *only})
    if waiting:
        raise ConfigError(f"--only {', '.join(waiting)}: the variant's sweep is not finished, so its point is not "
                          "chosen yet: run the sweep first (--only <variant>)")
    _train_and_evaluate(settings, [run for run in sweep_runs(settings) if _selected(run, only, {})], "sweep")
    chosen = chosen_points(settings)
    _train_and_evaluate(settings, [run for run in seed_runs(settings, chosen) if _selected(run, only, chosen)],
                        "compare")
    if not pending_runs(settings):
        write_report(settings, read_results(settings))
    return root


def _selected(run: Run, only: Sequence[str], chosen: dict[str, dict[str, Any]]) -> bool:
    """Whether --only asks for `run`: by its variant, its name, or variant/seedK at the variant's chosen point."""
    at_chosen = f"{run.variant}/seed{run.seed}" in only and run.point == chosen.get(run.variant)
    return not only or run.variant in only or run.name in only or at_chosen


def _train_and_evaluate(settings: CompareSettings, runs: Sequence[Run], stage: str) -> None:
    progress = tqdm(runs, desc=stage, unit="run", disable=None)
    for run in progress:
        progress.set_postfix_str(run.name)
        run_dir = RunDir(run.settings.run_dir)
        if not finished(run.settings):
            checkpoint = bool(run_dir.checkpoints())
            train(run.settings, resume=checkpoint, overwrite=run_dir.holds_files() and not checkpoint)
        if not run_dir.has_evaluation(VAL):
            evaluate_run(run_dir.path, settings=run.settings, **settings.evaluate.options())


def pending_runs(settings: CompareSettings) -> list[str]:
    """The runs not yet trained and evaluated, by their --only names; while a variant's sweep is, so are its seeds
    (but those the sweep runs itself)."""
    chosen = chosen_points(settings)
    pending = [run.name for run in [*sweep_runs(settings), *seed_runs(settings, chosen)] if not run.done]
    return pending + [f"{variant}/seed{seed}" for variant in settings.variants if variant not in chosen
                      for seed in settings.seeds if seed not in settings.sweep.seeds]


def finished(run: RunSettings) -> bool:
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


def read_run(settings: CompareSettings, run: Run) -> RunSummary:
    """A finished run's numbers (runs/summary.py) from its metrics.jsonl and its validation evaluation."""
    run_dir = RunDir(run.settings.run_dir)
    return run_summary(run.variant, run.seed, run_dir.read_metrics(), run_dir.read_evaluation(VAL),
                       settings.flops_per_token.get(run.variant))


def read_results(settings: CompareSettings) -> Results:
    """What the report shows, from the runs of a comparison that is done (the baseline numbers from the first
    run's evaluation: every run shares the data)."""
    choices = sweep_choices(settings)
    runs = [run for run in seed_runs(settings, chosen_points(settings)) if run.seed is not None]
    summaries = [read_run(settings, run) for run in runs]
    base = None
    if settings.baseline:
        base_dir = RunDir(settings.baseline_settings().run_dir)
        base = run_summary(BASELINE, None, base_dir.read_metrics(), base_dir.read_evaluation(VAL))
    evaluation = RunDir(runs[0].settings.run_dir).read_evaluation(VAL)
    baselines = {"min_val_perplexity": evaluation["unigram_perplexity"],
                 "final_val_perplexity": evaluation["unigram_perplexity"], **evaluation["baselines"],
                 "examples": evaluation["examples"], "notes": evaluation["notes"]}
    metrics: dict[str, list] = {}
    for run in runs:
        metrics.setdefault(run.variant, []).append(RunDir(run.settings.run_dir).read_metrics())
    return Results(summaries, base, baselines, training_curves(metrics), choices)


DEMO_CONFIG = "protein_compare.yaml"


def run_demo(overwrite: bool = False, overrides: Sequence[str] = ()) -> Path:
    """The CPU comparison of the bundled configs/protein_compare.yaml (`make demo`); returns its directory."""
    return run_comparison(load_compare_settings(bundled_config(DEMO_CONFIG), overrides), overwrite=overwrite)
