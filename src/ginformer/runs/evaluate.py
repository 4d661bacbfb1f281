"""Evaluate a finished run, of any task and any model side: loss and perplexity, and the task's own metrics,
each beside the baseline it must beat.

    ginformer evaluate --run runs/<name> [--data FILE] [--limit N] [--generate N] [--max-new-tokens N]

    loss, perplexity   token-weighted mean next-token cross-entropy over the tokens training scores, and exp()
                       of it; beside it the unigram model's (training-split token frequencies, add-one
                       smoothed, no context): the floor for a model that learned anything about order
    the task's         protein label accuracy, bits per character, GSM8K exact match, FOLIO accuracy, MQAR and
                       k-hop accuracy (tasks/), beside the majority or unigram baseline

Without ``--data`` the run's own validation split is scored (the rows training validated on, so the loss equals
the run's last logged val_loss); with ``--data`` any file in the task's format, and rows that were in the run's
training split are counted (``trained_on``): their scores are not held-out scores. The result goes to
``runs/<name>/eval_<file stem or "val">.json``, generated answers to ``..._generations.jsonl``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ginformer.data.batches import CausalLMCollator, target_counts
from ginformer.errors import ConfigError, DataError, MissingInput, OutputInTheWay
from ginformer.files import check_output_file, refuse_special_file
from ginformer.runs.config import RunSettings, load_run_settings
from ginformer.runs.run_dir import RunDir
from ginformer.runs.train import perplexity
from ginformer.runs.trainers import token_nll
from ginformer.tasks import Column, Generation, Losses, Task

VAL = "val"  # the name of the run's own validation split in evaluation files


@dataclass(frozen=True)
class Evaluation:
    run: str
    task: str
    model: str  # what was trained: "gin attention, 4 layers × 4 heads", "sparse-gin on smollm2"
    parameters: int  # trainable parameters
    data: str  # "val" (the run's validation split) or the evaluated file
    examples: int  # rows (or blocks) scored for the loss
    trained_on: int  # of them, rows that were in the run's training split (0 for held-out data)
    loss: float
    perplexity: float
    unigram_perplexity: float  # training-split token frequencies on the same tokens
    scores: dict[str, float]  # the task's metrics (tasks/: Task.columns)
    baselines: dict[str, float]  # the same metrics for the majority or unigram baseline
    notes: dict[str, Any]  # what the baselines are, how many rows were generated, ...

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def finished_run_settings(run_dir: Path) -> RunSettings:
    """The settings of a finished run directory; a clear error for a missing, foreign or unfinished one."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise MissingInput(f"run directory not found: {run_dir}")
    if not run.config_path.is_file():
        raise MissingInput(f"{run_dir} is not a run directory: it has no {run.config_path.name}")
    settings = load_run_settings(run.config_path)
    side = settings.side
    if side.trains(settings.model) and not run.final(side.final_dir).is_dir():
        verb = "pretrain" if side.name == "scratch" else "finetune"
        raise MissingInput(
            f"{run_dir} has no {side.final_dir}/: the run has not finished; continue it with "
            f"`ginformer {verb} --config {run.config_path} --resume`"
        )
    return settings


def load_run(run_dir: str | Path) -> tuple[RunSettings, torch.nn.Module, Any]:
    """(settings, model in eval mode, tokenizer) of a finished run directory."""
    settings = finished_run_settings(Path(run_dir))
    model, tokenizer = settings.side.load(Path(run_dir), settings.model)
    return settings, model, tokenizer


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    limit: int | None = None,
    generate: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    write: bool = True,
    settings: RunSettings | None = None,
) -> Evaluation:
    """Evaluate the final model of a run on its validation split (``data=None``) or on a file in its format.

    ``limit``: rows scored (default: the run's validation subset; every row of a file). ``generate``: how many
    of those a generation-scored task generates for (default all; 0: none); ``max_new_tokens`` caps each
    answer. ``batch_size`` defaults to the run's evaluation batch size. ``settings``: the finished run's, where
    the caller holds them already (compare, which just trained it), instead of read again from its config file.
    """
    run_dir = Path(run_dir)
    for name, value in (("limit", limit), ("generate", generate), ("max_new_tokens", max_new_tokens),
                        ("batch_size", batch_size)):
        if value is not None and value < (0 if name == "generate" else 1):
            raise ConfigError(f"{name} must be >= {0 if name == 'generate' else 1}, got {value}")
    if data is not None:
        refuse_special_file(data, "data file")
        if not Path(data).is_file():
            raise MissingInput(f"data file not found: {data}")
        if Path(data).stem == VAL:
            raise OutputInTheWay(f"{data}: its results would go to {RunDir(run_dir).evaluation(VAL).name}, the run's "
                                 "own validation evaluation (which comparisons read): rename the file")
    if write:
        check_output_file(RunDir(run_dir).evaluation(VAL if data is None else Path(data).stem), "the evaluation file")
    settings = settings or finished_run_settings(run_dir)
    task = settings.task()
    check_options(task, generate=generate, max_new_tokens=max_new_tokens)
    model, tokenizer = settings.side.load(run_dir, settings.model)
    held_out = task.held_out(tokenizer, None if data is None else Path(data), limit)
    batch_size = batch_size or settings.training.per_device_eval_batch_size
    generation = Generation(generate, max_new_tokens, batch_size)
    device = next(model.parameters()).device
    # As the run computed in training (bf16 autocast or not), so the loss is the one it logged.
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.training.bf16):
        loss = language_model_loss(model, held_out.features, tokenizer.pad_token_id, batch_size)
        unigram = unigram_loss(held_out.train_counts, target_counts(held_out.features, len(tokenizer)))
        scores = task.score(model, tokenizer, held_out, generation, Losses(loss, unigram))
    result = Evaluation(
        run=str(run_dir),
        task=task.name,
        model=settings.side.describe(settings.model),
        parameters=_trainable_parameters(run_dir),
        data=VAL if data is None else str(data),
        examples=len(held_out.features),
        trained_on=held_out.trained_on,
        loss=loss,
        perplexity=perplexity(loss),
        unigram_perplexity=perplexity(unigram),
        scores=scores.values,
        baselines=scores.baselines,
        notes=scores.notes,
    )
    if result.trained_on:
        warnings.warn(
            f"{result.trained_on} of {result.examples} evaluated rows are in the run's training split; their "
            "scores are not held-out scores",
            stacklevel=2,
        )
    if write:
        RunDir(run_dir).write_evaluation(held_out.name, result.to_dict(), scores.generations)
    return result


def check_options(task: Task, **options: Any) -> None:
    """An option the task does not read is an error, not silently dropped."""
    for name, value in options.items():
        if value is not None and name not in task.evaluate_options:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} does not apply to a {task.name} run: it is scored without free generation")


@torch.no_grad()
def language_model_loss(model, examples: Sequence[dict[str, list[int]]], pad_token_id: int, batch_size: int) -> float:
    """Token-weighted mean next-token cross-entropy over {input_ids, labels} examples (labels -100 unscored)."""
    collate = CausalLMCollator(pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(examples), batch_size), desc="loss", leave=False, disable=None):
        batch = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
        batch = {k: v.to(device) for k, v in collate(batch).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, tokens = token_nll(logits, batch["labels"])
        total_nll += nll.sum().item()
        total_tokens += int(tokens.sum().item())
    if total_tokens == 0:
        raise DataError("no token to score: every label is -100")
    return total_nll / total_tokens


def unigram_loss(train_counts: np.ndarray, eval_counts: np.ndarray) -> float:
    """Cross-entropy on the evaluated targets of token frequencies counted on the training targets, add-one
    smoothed over the vocabulary: what a model scores that ignores the context. Both are (V,) target counts."""
    scored = eval_counts.sum()
    if scored == 0:
        raise DataError("no token to score: every label is -100")
    log_p = np.log((train_counts + 1) / (train_counts.sum() + len(train_counts)))
    return float(-(eval_counts * log_p).sum() / scored)


def _trainable_parameters(run_dir: Path) -> int:
    """The trainable-parameter count the run recorded when it started."""
    return RunDir(run_dir).start_event()["parameters"]


def format_evaluation(result: Evaluation, columns: Sequence[Column]) -> str:
    """A small plain-text table of an evaluation, the baseline beside every number that has one."""
    held_out = "held-out" if result.trained_on == 0 else f"{result.trained_on} of them in the training split"
    lines = [
        f"run   {result.run} ({result.model}, {result.parameters:,} trainable parameters)",
        f"data  {result.task} {result.data}: {result.examples} examples ({held_out})",
        "",
        f"{'':<16}{'model':>10}{'baseline':>10}",
        f"{'loss':<16}{result.loss:>10.4f}{math.log(result.unigram_perplexity):>10.4f}   unigram",
        f"{'perplexity':<16}{result.perplexity:>10.3f}{result.unigram_perplexity:>10.3f}   unigram",
    ]
    for column in columns:
        if column.key in result.scores:
            baseline = result.baselines.get(column.key)
            shown = "" if baseline is None else format(baseline, column.fmt)
            lines.append(f"{column.header:<16}{result.scores[column.key]:>10{column.fmt}}{shown:>10}")
    if result.notes:
        lines += ["", "  ".join(f"{key}: {value}" for key, value in result.notes.items())]
    return "\n".join(lines)
