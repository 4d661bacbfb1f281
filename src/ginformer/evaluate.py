"""Evaluate a trained protein run: language-model loss and perplexity, and label accuracy from generation.

    ginformer evaluate --run runs/<name> [--data FILE]

Three kinds of number, each beside the baseline it must beat:

    loss, perplexity   token-weighted mean next-token cross-entropy over the same tokens training scored
                       (`data.loss_on`), and exp() of it; beside it the perplexity of a unigram model (training
                       token frequencies, no context), the floor for a model that learned anything about order
    label accuracy     the model greedily generates two tokens after ``<|begin_of_text|><|sequence|>{sequence}
                       <|/sequence|>``: the first must be the primary class, the second the secondary class;
                       "both" needs the two right. Generation is unconstrained, so a model may answer with a
                       residue or the end token: ``non_label`` is the share of generated tokens that are no class
                       token at all
    majority baseline  always answering the most common label(s) of the run's training split, scored on the same
                       records (data/protein.py, `majority_baseline`)

Without ``--data`` the run's own validation split is evaluated: the same file, filters, split seed and
``max_val_examples`` as training, so the loss equals the run's last logged ``val_loss``. With ``--data`` any file
in the dataset's format works; proteins that were in the run's training split are counted (``trained_on``), since
scores on them are not held-out scores. The result goes to ``runs/<name>/eval_<file stem or "val">.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ginformer.data.protein import (
    SS_CLASSES,
    MajorityBaseline,
    ProteinRecord,
    bundled_protein_path,
    format_protein_example,
    format_protein_prompt,
    load_protein_records,
    majority_baseline,
    split_records,
)
from ginformer.data.tokenizer import label_token_ids
from ginformer.experiment import DataSettings, load_settings
from ginformer.train import (
    CONFIG_FILE,
    IGNORE_INDEX,
    MODEL_DIR,
    CausalLMCollator,
    perplexity,
    token_nll,
    tokenize_example,
)

VAL_SPLIT = "val"  # the name of the run's own validation split in file names and reports


@dataclass(frozen=True)
class LabelScores:
    """Label accuracy over ``examples`` proteins; every rate is in [0, 1]."""

    primary: float  # first generated token is the primary class
    secondary: float  # second generated token is the secondary class
    both: float  # both right: the task as the paper poses it
    non_label: float  # share of the 2·examples generated tokens that are not a class token
    examples: int


@dataclass(frozen=True)
class Evaluation:
    run: str
    data: str  # "val" (the run's validation split) or the evaluated file
    examples: int
    trained_on: int  # evaluated proteins whose sequence is in the run's training split (0 for held-out data)
    loss: float
    perplexity: float
    unigram_perplexity: float  # perplexity of training-set token frequencies on the same tokens
    accuracy: LabelScores
    baseline: MajorityBaseline  # majority labels of the run's training split, scored on the evaluated proteins

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate_run(
    run_dir: str | Path, data: str | Path | None = None, batch_size: int | None = None, write: bool = True
) -> Evaluation:
    """Evaluate the final model of a run on its validation split (``data=None``) or on a protein file.

    ``batch_size`` defaults to the run's ``per_device_eval_batch_size``; ``write`` saves the result as
    ``run_dir/eval_<name>.json``. Raises FileNotFoundError for a missing run, model or data file.
    """
    run_dir = Path(run_dir)
    if data is not None and not Path(data).is_file():
        raise FileNotFoundError(f"data file not found: {data}")
    settings, model, tokenizer = load_run(run_dir)
    train, val = run_splits(settings.data)
    if data is None:
        records, name = val, VAL_SPLIT
    else:
        records, name = _file_records(Path(data), settings.data), Path(data).stem
    batch_size = batch_size or settings.training.per_device_eval_batch_size

    prompt_only = settings.data.loss_on == "labels"

    def encode(record: ProteinRecord) -> dict[str, list[int]]:  # as training encodes it, so the losses compare
        prompt = format_protein_prompt(record.sequence) if prompt_only else None
        return tokenize_example(format_protein_example(record), tokenizer, prompt)

    examples = [encode(r) for r in records]
    loss = language_model_loss(model, examples, tokenizer.pad_token_id, batch_size)
    generated = generate_labels(model, tokenizer, [r.sequence for r in records], batch_size)
    trained = {r.sequence for r in train}
    result = Evaluation(
        run=str(run_dir),
        data=VAL_SPLIT if data is None else str(data),
        examples=len(records),
        trained_on=sum(r.sequence in trained for r in records),
        loss=loss,
        perplexity=perplexity(loss),
        unigram_perplexity=perplexity(unigram_loss([encode(r) for r in train], examples, len(tokenizer))),
        accuracy=score_labels(generated, records, label_token_ids(tokenizer)),
        baseline=majority_baseline(train, records),
    )
    if result.trained_on:
        warnings.warn(
            f"{result.trained_on} of {result.examples} evaluated proteins are in the run's training split; "
            "their scores are not held-out scores",
            stacklevel=2,
        )
    if write:
        (run_dir / f"eval_{name}.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def load_run(run_dir: str | Path):
    """(settings, model in eval mode, tokenizer) of a finished run directory written by `pretrain`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ginformer  # noqa: F401  (registers the ginformer model type with the Auto classes)

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}")
    model_dir = run_dir / MODEL_DIR
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{run_dir} has no final model in {MODEL_DIR}/: the run has not finished; continue it with "
            f"`ginformer pretrain --config {run_dir / CONFIG_FILE} --resume`"
        )
    settings = load_settings(run_dir / CONFIG_FILE)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return settings, model, tokenizer


def run_splits(settings: DataSettings) -> tuple[list[ProteinRecord], list[ProteinRecord]]:
    """The (train, val) records a run with these data settings trained and validated on (as `build_datasets`)."""
    source = bundled_protein_path() if settings.source == "bundled" else settings.source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # training already reported the skipped rows
        records = load_protein_records(
            source, max_length=settings.max_length, on_bad_row="skip", allow_ambiguous=settings.allow_ambiguous
        )
    train, val = split_records(records, val_fraction=settings.val_fraction, seed=settings.split_seed)
    return train[: settings.max_train_examples], val[: settings.max_val_examples]


def _file_records(path: Path, settings: DataSettings) -> list[ProteinRecord]:
    records = load_protein_records(
        path, max_length=settings.max_length, on_bad_row=settings.on_bad_row, allow_ambiguous=settings.allow_ambiguous
    )
    if not records:
        raise ValueError(
            f"{path}: no protein left to evaluate after filtering (the run keeps sequences shorter than "
            f"data.max_length={settings.max_length})"
        )
    return records


@torch.no_grad()
def language_model_loss(model, examples: Sequence[dict[str, list[int]]], pad_token_id: int, batch_size: int) -> float:
    """Token-weighted mean next-token cross-entropy over {input_ids, labels} examples (labels -100 unscored)."""
    collate = CausalLMCollator(pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(examples), batch_size), desc="loss", leave=False, disable=None):
        batch = {k: v.to(device) for k, v in collate(list(examples[start : start + batch_size])).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, tokens = token_nll(logits, batch["labels"])
        total_nll += nll.sum().item()
        total_tokens += int(tokens.sum().item())
    if total_tokens == 0:
        raise ValueError("no token to score: every label is -100")
    return total_nll / total_tokens


def unigram_loss(
    train_examples: Sequence[dict[str, list[int]]], eval_examples: Sequence[dict[str, list[int]]], vocab_size: int
) -> float:
    """Cross-entropy on the evaluated targets of token frequencies counted on the training targets (add-one
    smoothed over the vocabulary): what a model scores that ignores the context. Targets are the tokens the
    language-model loss scores (labels[1:] that are not -100)."""

    def targets(examples):
        return [t for e in examples for t in e["labels"][1:] if t != IGNORE_INDEX]

    counts = Counter(targets(train_examples))
    total = sum(counts.values()) + vocab_size
    scored = targets(eval_examples)
    if not scored:
        raise ValueError("no token to score: every label is -100")
    return -sum(math.log((counts[t] + 1) / total) for t in scored) / len(scored)


@torch.no_grad()
def generate_labels(model, tokenizer, sequences: Sequence[str], batch_size: int = 16) -> list[tuple[int, int]]:
    """The two token ids a model greedily generates after each sequence's prompt, with its KV cache.

    Prompts are batched by length and left-padded (generation appends on the right); a row whose generation
    ended early (the end token first) gets the pad id in its second slot.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    prompts = [tokenizer(format_protein_prompt(s), add_special_tokens=False)["input_ids"] for s in sequences]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    generated: dict[int, tuple[int, int]] = {}
    for start in tqdm(range(0, len(order), batch_size), desc="generate", leave=False, disable=None):
        rows = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for row, i in enumerate(rows):
            input_ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            attention_mask[row, width - len(prompts[i]) :] = 1
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=2,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = output[:, width:].tolist()  # (B, ≤ 2)
        for row, i in enumerate(rows):
            first, second = (new[row] + [pad, pad])[:2]
            generated[i] = (first, second)
    return [generated[i] for i in range(len(prompts))]


def score_labels(
    generated: Sequence[tuple[int, int]], records: Sequence[ProteinRecord], label_ids: Sequence[int]
) -> LabelScores:
    """Accuracy of generated (primary, secondary) token ids against the records' labels; ``label_ids`` are the
    class token ids in SS_CLASSES order (`label_token_ids`)."""
    if len(generated) != len(records):
        raise ValueError(f"{len(generated)} generations for {len(records)} records")
    if not records:
        raise ValueError("no records to score")
    if len(label_ids) != len(SS_CLASSES):
        raise ValueError(f"label_ids must list {len(SS_CLASSES)} ids in SS_CLASSES order, got {len(label_ids)}")
    class_of = dict(zip(label_ids, SS_CLASSES))
    primary = [class_of.get(first) == r.primary for (first, _), r in zip(generated, records)]
    secondary = [class_of.get(second) == r.secondary for (_, second), r in zip(generated, records)]
    non_label = sum(token not in class_of for pair in generated for token in pair)
    n = len(records)
    return LabelScores(
        primary=sum(primary) / n,
        secondary=sum(secondary) / n,
        both=sum(p and s for p, s in zip(primary, secondary)) / n,
        non_label=non_label / (2 * n),
        examples=n,
    )


def format_evaluation(result: Evaluation) -> str:
    """A small plain-text table of an evaluation, the majority baseline beside every accuracy."""
    b, a = result.baseline, result.accuracy
    held_out = "held-out" if result.trained_on == 0 else f"{result.trained_on} of them in the training split"
    lines = [
        f"run   {result.run}",
        f"data  {result.data}: {result.examples} proteins ({held_out})",
        "",
        f"{'':<12}{'model':>10}{'baseline':>10}",
        f"{'loss':<12}{result.loss:>10.4f}{math.log(result.unigram_perplexity):>10.4f}   baseline: unigram",
        f"{'perplexity':<12}{result.perplexity:>10.3f}{result.unigram_perplexity:>10.3f}",
        f"{'primary':<12}{a.primary:>10.3f}{b.primary_accuracy:>10.3f}   majority: {b.primary}",
        f"{'secondary':<12}{a.secondary:>10.3f}{b.secondary_accuracy:>10.3f}   majority: {b.secondary}",
        f"{'both':<12}{a.both:>10.3f}{b.pair_accuracy:>10.3f}   majority: {b.pair[0]}, {b.pair[1]}",
        f"non-label generations: {a.non_label:.3f} of {2 * a.examples} generated tokens",
    ]
    return "\n".join(lines)
