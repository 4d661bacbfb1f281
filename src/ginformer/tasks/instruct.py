"""Instruction tasks for fine-tuning a pretrained model (paper section 4.2): GSM8K and FOLIO.

Each row is a user turn and the assistant's answer, formatted with the paper's template or the tokenizer's chat
template (data/instruct.py); the loss falls on the answer only. Rows longer than `data.max_length` tokens are
dropped, never cut (a cut row loses its answer or its end marker), with one warning giving the count, so a run,
its evaluation and a comparison all see the same rows.

Metrics beside loss and perplexity, from greedy generation (stopping at the template's end marker):
    gsm8k   exact match of the final number: "strict" reads the number after ``####``, "flexible" the last
            number anywhere; beside them the majority baseline: always answering the training split's most
            common final number
    folio   label accuracy (the first True/False/Uncertain in the generation), beside the majority label's
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ginformer.data.instruct import (
    PAPER_END,
    InstructExample,
    OnBadRow,
    Template,
    extract_label,
    gsm8k_extract_flexible,
    gsm8k_extract_strict,
    load_folio,
    load_gsm8k,
    majority_baseline,
    encode_generation_prompt,
    split_examples,
    tokenize_example,
)
from ginformer.data.batches import target_counts
from ginformer.runs.generate import generate_batched
from ginformer.runs.settings import check_fields, positive, require
from ginformer.tasks.base import Column, Feature, Generation, HeldOut, Losses, Scores, Splits, Task


@dataclass
class InstructSettings:
    """Which rows, from where, in which template, and which are kept."""

    task: str = "gsm8k"  # "gsm8k" or "folio": the row format and the metrics
    source: str = "bundled"  # "bundled" (data/gsm8k, data/folio), a .jsonl file in the task's format, or a hub id
    hub_config: str | None = None  # the hub dataset's config name (openai/gsm8k needs "main")
    template: Template = "paper"  # "paper": ### User: ...<|eot_id|>### Assistant: ...; "chat": the tokenizer's
    max_length: int = 384  # examples longer than this many tokens are dropped, never cut (a cut loses the answer)
    val_fraction: float = 0.1  # the paper holds out 10%
    split_seed: int = 42  # fixes the split, independent of the training seed
    on_bad_row: OnBadRow = "skip"  # a malformed row is dropped with a warning, or stops the run
    max_train_examples: int | None = None  # keep the first N training examples (short CPU runs)
    max_val_examples: int | None = 100  # validate on the first N validation examples: a fixed, affordable subset

    def __post_init__(self) -> None:
        check_fields(self, "data")
        require(self.max_length >= 2, "data.max_length", self.max_length, ">= 2")
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "in (0, 1)")
        positive(self, "data", "max_train_examples", "max_val_examples")


class InstructTask(Task):
    """What GSM8K and FOLIO share: rows, the grouped split, templates, length filtering, generation."""

    model_sides = frozenset({"pretrained"})  # a from-scratch model would first have to learn the language
    evaluate_options = frozenset({"generate", "max_new_tokens"})
    settings_class = InstructSettings
    settings: InstructSettings
    default_max_new_tokens: ClassVar[int]  # when `evaluate` is not told

    def load(self, source: str | Path, on_bad_row: OnBadRow, hub_config: str | None) -> list[InstructExample]:
        raise NotImplementedError

    def examples(self, source: str | Path | None = None) -> list[InstructExample]:
        """Every usable row: of `source` when given, else of the settings' source."""
        s = self.settings
        source = s.source if source is None else source
        return self.load(None if source == "bundled" else source, on_bad_row=s.on_bad_row, hub_config=s.hub_config)

    def splits(self) -> tuple[list[InstructExample], list[InstructExample]]:
        """The (train, val) rows before tokenisation: the grouped split of data/instruct.py."""
        return split_examples(self.examples(), self.settings.val_fraction, self.settings.split_seed)

    def fit(
        self, examples: list[InstructExample], tokenizer: PreTrainedTokenizerBase, limit: int | None
    ) -> tuple[list[InstructExample], list[Feature]]:
        """The first `limit` (None: all) examples whose tokens fit data.max_length, and their features."""
        s = self.settings
        kept, features, dropped = [], [], 0
        for example in tqdm(examples, desc="tokenize", leave=False, disable=None):
            if limit is not None and len(kept) == limit:
                break
            feature = tokenize_example(example, tokenizer, s.template)
            if len(feature["input_ids"]) > s.max_length:
                dropped += 1
                continue
            kept.append(example)
            features.append(feature)
        if dropped:
            warnings.warn(
                f"{s.task}: dropped {dropped} of {len(kept) + dropped} examples longer than "
                f"data.max_length={s.max_length} tokens",
                stacklevel=2,
            )
        return kept, features

    def tokenizer(self, base: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
        return base

    def datasets(self, tokenizer: PreTrainedTokenizerBase) -> Splits:
        s = self.settings
        train, val = self.splits()
        _, train_features = self.fit(train, tokenizer, s.max_train_examples)
        _, val_features = self.fit(val, tokenizer, s.max_val_examples)
        if not train_features or not val_features:
            raise ValueError(
                f"{s.task} ({s.source}): {len(train_features)} training and {len(val_features)} validation "
                f"examples fit data.max_length={s.max_length}; both need at least one"
            )
        return Splits(train_features, val_features, longest=max(len(f["input_ids"]) for f in
                                                                 train_features + val_features))

    def held_out(self, tokenizer: PreTrainedTokenizerBase, data: Path | None, limit: int | None) -> HeldOut:
        s = self.settings
        train, val = self.splits()
        if data is None:
            rows, name = val, "val"
            limit = s.max_val_examples if limit is None else limit
        else:
            rows, name = self.examples(data), data.stem
        examples, features = self.fit(rows, tokenizer, limit)
        if not examples:
            raise ValueError(f"{data or 'the validation split'}: no row fits data.max_length={s.max_length}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # training reported the dropped rows already
            _, train_features = self.fit(train, tokenizer, s.max_train_examples)
        groups = {e.group for e in train}
        counts = target_counts(train_features, len(tokenizer))
        return HeldOut(name, features, examples, train, counts, sum(e.group in groups for e in examples))

    def generate_answers(
        self, model, tokenizer: PreTrainedTokenizerBase, examples: list[InstructExample], generation: Generation
    ) -> list[str]:
        """Greedy answers as text, cut at the template's end marker (the paper's ``<|eot_id|>`` string; the
        tokenizer's end token for the chat template)."""
        stop = PAPER_END if self.settings.template == "paper" else None
        prompts = [encode_generation_prompt(e, tokenizer, self.settings.template) for e in examples]
        new = generate_batched(model, tokenizer, prompts,
                               max_new_tokens=generation.max_new_tokens or self.default_max_new_tokens,
                               batch_size=generation.batch_size, stop=stop)
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in new]
        return [text.split(stop, 1)[0] if stop else text for text in texts]

    def score(self, model, tokenizer, held_out: HeldOut, generation: Generation, losses: Losses) -> Scores:
        rows = list(held_out.rows)[: generation.rows]
        if not rows:
            return Scores()
        completions = self.generate_answers(model, tokenizer, rows, generation)
        scores = self.score_answers(completions, rows, held_out.train_rows)
        generations = [{"line": e.line, "reference": e.reference, "generation": c} for e, c in zip(rows, completions)]
        return Scores(scores.values, scores.baselines, {**scores.notes, "scored_rows": len(rows)}, generations)

    def score_answers(
        self, completions: list[str], rows: list[InstructExample], train: list[InstructExample]
    ) -> Scores:
        raise NotImplementedError

    def prompt_ids(self, text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """`text` as the user's turn in the run's template; the model writes the assistant's answer."""
        example = InstructExample(user=text, answer="", reference="", group="", line=0)
        return encode_generation_prompt(example, tokenizer, self.settings.template)


class GSM8KTask(InstructTask):
    name = "gsm8k"
    default_max_new_tokens = 256  # worked answers are ~100-200 SmolLM2 tokens
    columns = (
        Column("strict", "GSM8K strict", ".3f", figure=True),
        Column("flexible", "GSM8K flexible", ".3f"),
        Column("no_strict_answer", "no '#### N'", ".3f"),
    )

    def load(self, source, on_bad_row, hub_config):
        return load_gsm8k(source, on_bad_row=on_bad_row, hub_config=hub_config)

    def score_answers(self, completions, rows, train) -> Scores:
        return score_gsm8k(completions, [e.reference for e in rows], [e.reference for e in train])


class FolioTask(InstructTask):
    name = "folio"
    default_max_new_tokens = 8  # the answer is one label word
    columns = (
        Column("accuracy", "FOLIO accuracy", ".3f", figure=True),
        Column("no_label", "no label", ".3f"),
    )

    def load(self, source, on_bad_row, hub_config):
        return load_folio(source, on_bad_row=on_bad_row, hub_config=hub_config)

    def score_answers(self, completions, rows, train) -> Scores:
        label, _ = majority_baseline(train, rows)
        return score_folio(completions, [e.reference for e in rows], label)


def score_gsm8k(completions: list[str], references: list[str], train_references: list[str]) -> Scores:
    """Strict and flexible exact match of generated answers against normalised reference numbers, beside the
    accuracy of always answering the most common training answer."""
    _check_lengths(completions, references)
    strict = [gsm8k_extract_strict(text) for text in completions]
    flexible = [gsm8k_extract_flexible(text) for text in completions]
    n = len(references)
    counts = Counter(train_references)
    majority = min(counts, key=lambda r: (-counts[r], r)) if counts else None
    majority_accuracy = sum(r == majority for r in references) / n
    return Scores(
        values={
            "strict": sum(s == r for s, r in zip(strict, references)) / n,
            "flexible": sum(f == r for f, r in zip(flexible, references)) / n,
            "no_strict_answer": sum(s is None for s in strict) / n,
        },
        baselines={"strict": majority_accuracy, "flexible": majority_accuracy},
        notes={"majority_answer": majority},
    )


def score_folio(completions: list[str], references: list[str], majority_label: str) -> Scores:
    """Label accuracy of generated answers, beside the accuracy of always answering `majority_label`."""
    _check_lengths(completions, references)
    labels = [extract_label(text) for text in completions]
    n = len(references)
    return Scores(
        values={
            "accuracy": sum(label == r for label, r in zip(labels, references)) / n,
            "no_label": sum(label is None for label in labels) / n,
        },
        baselines={"accuracy": sum(r == majority_label for r in references) / n},
        notes={"majority_label": majority_label},
    )


def _check_lengths(completions: list[str], references: list[str]) -> None:
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions for {len(references)} references")
    if not references:
        raise ValueError("nothing to score: no references")
