"""Evaluate a fine-tuning run (finetune.py): perplexity, and task scores from batched greedy generation.

    ginformer evaluate --run runs/<name> [--data FILE] [--limit N] [--generate N] [--max-new-tokens N]

    loss, perplexity   token-weighted next-token cross-entropy over the answer tokens (the tokens training
                       scores), and exp() of it
    GSM8K              exact match of the generated final answer with the reference number: "strict" reads the
                       number after ``####`` (GSM8K's answer format, which a fine-tuned model learns to write),
                       "flexible" the last number anywhere in the generation
    FOLIO              label accuracy (the first True/False/Uncertain in the generation), beside the majority
                       baseline: always answering the training split's most common label

Generation is greedy, batched with left padding and a KV cache, and stops at the template's end marker (the
paper template's ``<|eot_id|>`` string, or the tokenizer's end token for the chat template) or after
``max_new_tokens``. Without ``--data`` the run's own validation subset is evaluated (the rows training
validated on, so the loss equals the run's last logged val_loss); with ``--data`` any file in the task's format
works, and rows whose group (question or FOLIO story) was in the training split are counted as ``trained_on``.
Results go to ``runs/<name>/eval_<file stem or "val">.json``, every generation to ``..._generations.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ginformer.data.instruct import (
    PAPER_END,
    EvalPrompt,
    InstructExample,
    eval_prompts,
    extract_label,
    gsm8k_extract_flexible,
    gsm8k_extract_strict,
    majority_baseline,
)
from ginformer.evaluate import language_model_loss
from ginformer.finetune import fit_examples, load_finetuned, load_task_examples, task_splits
from ginformer.train import METRICS_FILE, perplexity

VAL_SPLIT = "val"
DEFAULT_MAX_NEW_TOKENS = 256  # GSM8K's worked answers are ~100-200 SmolLM2 tokens; FOLIO needs one word


@dataclass(frozen=True)
class GSM8KScores:
    """Exact match of generated final answers with the references; rates in [0, 1]."""

    strict: float  # the number after "####" equals the reference
    flexible: float  # the last number in the generation equals the reference
    no_strict_answer: float  # share of generations without a "#### <number>" line
    examples: int


@dataclass(frozen=True)
class FolioScores:
    """Label accuracy beside the majority baseline; rates in [0, 1]."""

    accuracy: float  # the first label word in the generation equals the reference
    no_label: float  # share of generations without any label word
    majority_label: str  # the training split's most common label
    majority_accuracy: float  # always answering majority_label, on the same rows
    examples: int


@dataclass(frozen=True)
class FinetuneEvaluation:
    run: str
    method: str
    task: str
    data: str  # "val" (the run's validation subset) or the evaluated file
    trainable_parameters: int
    examples: int  # rows scored for the loss
    trained_on: int  # scored rows whose group is in the run's training split (0 for held-out data)
    loss: float
    perplexity: float
    max_new_tokens: int
    scores: GSM8KScores | FolioScores | None  # on the first `generated` rows; None when nothing was generated

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------- scoring


def score_gsm8k(completions: Sequence[str], references: Sequence[str]) -> GSM8KScores:
    """Strict and flexible exact match of generated answers against normalised reference numbers."""
    _check_lengths(completions, references)
    strict = [gsm8k_extract_strict(text) for text in completions]
    flexible = [gsm8k_extract_flexible(text) for text in completions]
    n = len(references)
    return GSM8KScores(
        strict=sum(s == r for s, r in zip(strict, references)) / n,
        flexible=sum(f == r for f, r in zip(flexible, references)) / n,
        no_strict_answer=sum(s is None for s in strict) / n,
        examples=n,
    )


def score_folio(completions: Sequence[str], references: Sequence[str], majority_label: str) -> FolioScores:
    """Label accuracy of generated answers, and the accuracy of always answering `majority_label`."""
    _check_lengths(completions, references)
    labels = [extract_label(text) for text in completions]
    n = len(references)
    return FolioScores(
        accuracy=sum(label == r for label, r in zip(labels, references)) / n,
        no_label=sum(label is None for label in labels) / n,
        majority_label=majority_label,
        majority_accuracy=sum(r == majority_label for r in references) / n,
        examples=n,
    )


def _check_lengths(completions: Sequence[str], references: Sequence[str]) -> None:
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions for {len(references)} references")
    if not references:
        raise ValueError("nothing to score: no references")


# ---------------------------------------------------------------------------------------------------- generation


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[EvalPrompt],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    stop: str | None = PAPER_END,
) -> list[str]:
    """Greedy completions of each prompt, as text, cut at `stop` (None: only the tokenizer's end token stops).

    Prompts are batched by length and left-padded, since generation appends on the right.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))  # similar lengths share a batch
    stopping = {"stop_strings": [stop], "tokenizer": tokenizer} if stop else {}
    completions: dict[int, str] = {}
    for start in tqdm(range(0, len(order), batch_size), desc="generate", leave=False, disable=None):
        rows = order[start : start + batch_size]
        width = max(len(prompts[i].input_ids) for i in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for row, i in enumerate(rows):
            ids = prompts[i].input_ids
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            **stopping,
        )
        for row, i in enumerate(rows):
            text = tokenizer.decode(output[row, width:], skip_special_tokens=True)
            completions[i] = text.split(stop, 1)[0] if stop else text
    return [completions[i] for i in range(len(prompts))]


# ---------------------------------------------------------------------------------------------------- a run


def evaluate_finetune_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    limit: int | None = None,
    generate: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int | None = None,
    write: bool = True,
) -> FinetuneEvaluation:
    """Evaluate a finished fine-tuning run (its adapter on its base; the base alone for method "none").

    ``limit``: rows scored for the loss (default: the run's validation subset, data.max_val_examples rows; every
    row of a ``data`` file). ``generate``: how many of those rows are scored by generation (default: all; 0:
    none). Rows longer than the run's data.max_length are skipped, as in training.
    """
    for name, value in (("limit", limit), ("generate", generate)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    run_dir = Path(run_dir)
    settings, model, tokenizer = load_finetuned(run_dir)
    data_settings = settings.data
    train, val = task_splits(data_settings)
    if data is None:
        rows, name = val, VAL_SPLIT
        limit = data_settings.max_val_examples if limit is None else limit
    else:
        if not Path(data).is_file():
            raise FileNotFoundError(f"data file not found: {data}")
        rows, name = load_task_examples(data_settings, data), Path(data).stem
    examples, features = fit_examples(rows, tokenizer, data_settings, limit)
    if not examples:
        raise ValueError(f"{data or 'the validation split'}: no row fits data.max_length={data_settings.max_length}")
    batch_size = batch_size or settings.training.per_device_eval_batch_size
    generated = examples[: len(examples) if generate is None else generate]
    scores, completions = None, []
    # As the run computed in training (bf16 autocast or not), so the loss is the one it logged.
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.training.bf16):
        loss = language_model_loss(model, features, tokenizer.pad_token_id, batch_size)
        if generated:
            scores, completions = score_generations(
                model, tokenizer, generated, train, data_settings.task, data_settings.template, max_new_tokens,
                batch_size,
            )
    trained_groups = {e.group for e in train}
    result = FinetuneEvaluation(
        run=str(run_dir),
        method=settings.model.method,
        task=data_settings.task,
        data=VAL_SPLIT if data is None else str(data),
        trainable_parameters=_trainable(run_dir),
        examples=len(examples),
        trained_on=sum(e.group in trained_groups for e in examples),
        loss=loss,
        perplexity=perplexity(loss),
        max_new_tokens=max_new_tokens,
        scores=scores,
    )
    if result.trained_on:
        warnings.warn(
            f"{result.trained_on} of {result.examples} evaluated rows share a question or story with the run's "
            "training split; their scores are not held-out scores",
            stacklevel=2,
        )
    if write:
        (run_dir / f"eval_{name}.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        with (run_dir / f"eval_{name}_generations.jsonl").open("w") as f:
            for example, completion in zip(generated, completions):
                f.write(json.dumps({"line": example.line, "reference": example.reference, "generation": completion}))
                f.write("\n")
    return result


def score_generations(
    model,
    tokenizer,
    examples: Sequence[InstructExample],
    train: Sequence[InstructExample],
    task: str,
    template: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
) -> tuple[GSM8KScores | FolioScores, list[str]]:
    """Generate an answer for every example and score it for `task`; the FOLIO majority label comes from `train`.
    Returns the scores and the completions."""
    prompts = eval_prompts(examples, tokenizer, template)
    stop = PAPER_END if template == "paper" else None
    completions = generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size, stop)
    references = [e.reference for e in examples]
    if task == "gsm8k":
        return score_gsm8k(completions, references), completions
    label, _ = majority_baseline(train, examples)
    return score_folio(completions, references, label), completions


def _trainable(run_dir: Path) -> int:
    """The trainable-parameter count the run recorded when it started."""
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        event = json.loads(line) if line else {}
        if event.get("event") == "start":
            return event["trainable_parameters"]
    raise ValueError(f"{run_dir / METRICS_FILE} has no start event")


def format_finetune_evaluation(result: FinetuneEvaluation) -> str:
    """A small plain-text report of an evaluation."""
    held_out = "held-out" if result.trained_on == 0 else f"{result.trained_on} of them share a training group"
    lines = [
        f"run   {result.run} ({result.method}, {result.trainable_parameters:,} trainable parameters)",
        f"data  {result.task} {result.data}: {result.examples} rows ({held_out})",
        "",
        f"loss        {result.loss:.4f}",
        f"perplexity  {result.perplexity:.3f}",
    ]
    s = result.scores
    if isinstance(s, GSM8KScores):
        lines += [
            f"GSM8K exact match on {s.examples} rows (greedy, at most {result.max_new_tokens} new tokens):",
            f"  strict (#### N)        {s.strict:.3f}   ({s.no_strict_answer:.3f} wrote no '#### N')",
            f"  flexible (last number) {s.flexible:.3f}",
        ]
    elif isinstance(s, FolioScores):
        lines += [
            f"FOLIO label accuracy on {s.examples} rows (greedy, at most {result.max_new_tokens} new tokens):",
            f"  model     {s.accuracy:.3f}   ({s.no_label:.3f} gave no label)",
            f"  majority  {s.majority_accuracy:.3f}   (always '{s.majority_label}')",
        ]
    return "\n".join(lines)
