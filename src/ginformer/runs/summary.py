"""A comparison's statistics: pure functions of metrics.jsonl events and evaluation results (no file is read here).

Per-run numbers (`run_summary`):
    min / final val perplexity   exp(lowest / last validation loss over the evaluations during training); none
                                 for DPO and GRPO, whose loss is not a next-token cross-entropy
    rewards                      DPO: the last evaluation's reward accuracy (chosen scored above rejected); GRPO:
                                 the mean reward of the sampled completions over the last half of training, and
                                 on the validation prompts at the last evaluation
    min train loss               lowest logged training loss (each is a mean over `logging_steps` steps)
    gap, train/val               min val loss − min train loss, and min train loss / min val loss (Fig. 7); none
                                 for GRPO, whose loss on the two splits does not compare
    the task's metrics           of the final model on the validation split (tasks/: Task.columns)
    FLOPs / token, s / step      the training cost of a token (sizing.py); mean seconds per optimizer step
    wall time                    Trainer's train_runtime
A variant's number is the mean and sample standard deviation over its seeds (`mean_std`). A sweep's value is
chosen per variant by `choose_point`: the lowest mean of the sweep's metric on the validation split.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ginformer.errors import ConfigError
from ginformer.runs.objectives import OBJECTIVES


@dataclass(frozen=True)
class RunSummary:
    variant: str
    seed: int | None  # None for the frozen base
    parameters: int  # trainable
    hidden_size: int | None  # models trained from scratch
    steps: int
    min_val_perplexity: float | None  # None: an objective whose loss is not a cross-entropy (DPO, GRPO)
    final_val_perplexity: float | None  # at the last evaluation: the paper's Fig. 12 measure
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
    flops_per_token: float | None = None  # training FLOPs per token (models trained from scratch)
    train_reward: float | None = None  # GRPO: mean reward over the train events of the last half of training
    val_reward: float | None = None  # GRPO: on the validation prompts, at the last evaluation
    val_reward_accuracy: float | None = None  # DPO: share of validation pairs whose chosen answer scores higher


RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunSummary))
# What a sweep may choose by: lower is better for each.
SWEEP_METRICS = ("min_val_loss", "min_val_perplexity", "final_val_perplexity")


def run_summary(
    variant: str,
    seed: int | None,
    metrics: Sequence[Mapping[str, Any]],
    evaluation: Mapping[str, Any],
    flops_per_token: float | None = None,
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
    last = max(evals, key=lambda e: e["step"])
    objective = OBJECTIVES[start.get("objective", "sft")]
    steps = max(e["step"] for e in metrics)
    late_rewards = [e["reward"] for e in trains if "reward" in e and e["step"] > steps / 2]
    min_train = min(e["train_loss"] for e in trains) if trains else None
    has_gap = min_train is not None and objective.comparable_across_splits
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
        steps=steps,
        min_val_perplexity=math.exp(best["val_loss"]) if objective.cross_entropy else None,
        final_val_perplexity=last["val_perplexity"] if objective.cross_entropy else None,
        best_step=best["step"],
        min_val_loss=best["val_loss"],
        min_train_loss=min_train,
        final_train_loss=max(trains, key=lambda e: e["step"])["train_loss"] if trains else None,
        gap=best["val_loss"] - min_train if has_gap else None,
        ratio=min_train / best["val_loss"] if has_gap else None,
        step_time_s=statistics.fmean(step_times) if step_times else None,
        wall_time_s=sum(ends) if ends else None,
        scores=dict(evaluation["scores"]),
        adapted=start.get("adapted"),
        graph={key: sorted(history.items()) for key, history in graph.items()},
        flops_per_token=flops_per_token,
        train_reward=statistics.fmean(late_rewards) if late_rewards else None,
        val_reward=last.get("val_reward"),
        val_reward_accuracy=last.get("val_reward_accuracy"),
    )


def value(run: RunSummary, key: str) -> float | None:
    """A summary column of a run: a RunSummary field, or one of the task's scores."""
    return getattr(run, key) if key in RUN_FIELDS else run.scores.get(key)


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


# The curves a comparison draws: an event's key and the event that holds it.
CURVES = (("train_loss", "train"), ("val_perplexity", "eval"), ("reward", "train"), ("val_reward", "eval"),
          ("val_reward_accuracy", "eval"))


def training_curves(metrics: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]]) -> dict[str, dict[str, list]]:
    """metric -> variant -> one (step, value) list per run, from each variant's runs' metrics.jsonl events, for
    every metric of CURVES that some run logged (a run without it adds no list)."""
    curves: dict[str, dict[str, list]] = {}
    for variant, runs in metrics.items():
        for events in runs:
            for key, event in CURVES:
                points = sorted({e["step"]: e[key] for e in events if e["event"] == event and key in e}.items())
                if points:
                    curves.setdefault(key, {}).setdefault(variant, []).append(points)
    return curves


@dataclass(frozen=True)
class SweepChoice:
    """What a variant's sweep chose: the point, every point's mean metric, and the keys it sits at an edge of."""

    point: dict[str, Any]
    means: list[tuple[dict[str, Any], float]]  # (point, mean of the metric over the sweep's seeds), grid order
    at_edge: list[str]  # keys whose chosen value is the smallest or largest of the grid: widen it


def choose_point(
    tried: Sequence[tuple[Mapping[str, Any], Sequence[RunSummary]]], grid: Mapping[str, Sequence[Any]], metric: str
) -> SweepChoice:
    """The point of the grid with the lowest mean `metric` over its runs (ties: the first in grid order)."""
    means = [(dict(point), statistics.fmean(value(r, metric) for r in runs)) for point, runs in tried]
    point, _ = min(means, key=lambda pair: pair[1])
    at_edge = [key for key, values in grid.items()
               if len(values) > 1 and all(isinstance(v, (int, float)) for v in values)
               and point[key] in (min(values), max(values))]
    return SweepChoice(point, means, at_edge)


@dataclass(frozen=True)
class Results:
    """Everything a comparison's report shows, read from its finished runs."""

    runs: list[RunSummary]  # the seeds of every variant (at its chosen point)
    base: RunSummary | None  # the frozen base, when evaluated
    baselines: dict[str, Any]  # what a model that learned nothing scores, with "examples" and "notes"
    curves: dict[str, dict[str, list]]  # training_curves of the runs
    sweeps: dict[str, SweepChoice]  # variant -> its sweep's choice ({} without a sweep)


def mean_per_layer(per_seed: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Mean over seeds of each layer's value; None where a layer has none."""
    return [None if None in layer else statistics.fmean(layer) for layer in zip(*per_seed)]


def mean_history(histories: Sequence[Sequence[tuple[int, list]]]) -> list[tuple[int, list]]:
    """(step, value per layer averaged over runs) at the steps every run logged."""
    per_run = [dict(history) for history in histories]
    shared = sorted(set.intersection(*(set(h) for h in per_run))) if per_run else []
    return [(step, mean_per_layer([h[step] for h in per_run])) for step in shared]
