"""The paper's protein task (section 2.2): from an amino-acid sequence, generate the most and the second most
frequent secondary-structure class. Trained from scratch with the fixed protein tokenizer.

Metrics beside loss and perplexity: label accuracy of two greedily generated tokens (primary, secondary, both,
and the share of generated tokens that are no class token), beside the majority baseline of the training split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transformers import PreTrainedTokenizerBase

from ginformer.data.batches import target_counts, tokenize_with_prompt
from ginformer.data.protein import (
    BOS,
    SS_CLASSES,
    ProteinRecord,
    bundled_protein_path,
    format_protein_example,
    format_protein_prompt,
    load_protein_records,
    majority_baseline,
    split_records,
)
from ginformer.data.tokenizer import build_protein_tokenizer, label_token_ids
from ginformer.errors import DataError
from ginformer.generation import generate_batched
from ginformer.settings import check_fields, positive, require
from ginformer.tasks.base import Column, Feature, Generation, HeldOut, Losses, Scores, Splits, Task


@dataclass
class ProteinSettings:
    """Where the proteins come from, which are kept, and which tokens carry the loss."""

    task: Literal["protein"] = "protein"
    source: str = "bundled"  # "bundled" (the subset in data/protein/), a .parquet/.csv/.jsonl path, or a hub id
    max_length: int = 256  # keep proteins shorter than this many residues (the paper's filter)
    val_fraction: float = 0.1  # the paper holds out 10%
    split_seed: int = 42  # the split is fixed by this seed, independent of the training seed
    on_bad_row: Literal["skip", "error"] = "skip"  # a malformed row is dropped with a warning, or stops the run
    allow_ambiguous: bool = False  # keep sequences with X, B, Z, U, O residues
    loss_on: Literal["all", "labels"] = "all"  # "labels": loss only on the two structure tokens + end token
    max_train_examples: int | None = None  # keep only the first N training examples (fast CPU runs)
    max_val_examples: int | None = None  # evaluate on the first N validation examples (evaluation cost)

    def __post_init__(self) -> None:
        check_fields(self, "data")
        positive(self, "data", "max_length", "max_train_examples", "max_val_examples")
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "in (0, 1)")


class ProteinTask(Task):
    name = "protein"
    settings_class = ProteinSettings
    model_sides = frozenset({"scratch"})  # its label and marker tokens exist in no pretrained vocabulary
    columns = (
        Column("primary", "primary acc", ".3f"),
        Column("secondary", "secondary acc", ".3f"),
        Column("both", "both acc", ".3f", figure=True),
        Column("non_label", "non-label", ".3f"),
    )
    settings: ProteinSettings

    def tokenizer(self, base: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
        return build_protein_tokenizer()

    def records(self, source: str | Path | None = None, on_bad_row: str | None = None) -> list[ProteinRecord]:
        s = self.settings
        source = source or (bundled_protein_path() if s.source == "bundled" else s.source)
        return load_protein_records(
            source, max_length=s.max_length, on_bad_row=on_bad_row or s.on_bad_row, allow_ambiguous=s.allow_ambiguous
        )

    def splits(self) -> tuple[list[ProteinRecord], list[ProteinRecord]]:
        """The (train, val) records of a run, before tokenisation."""
        s = self.settings
        train, val = split_records(self.records(), val_fraction=s.val_fraction, seed=s.split_seed)
        train, val = train[: s.max_train_examples], val[: s.max_val_examples]
        if not train or not val:
            raise DataError(
                f"{s.source}: {len(train)} training and {len(val)} validation proteins after filtering "
                f"(data.max_length={s.max_length}); both need at least one"
            )
        return train, val

    def encode(self, record: ProteinRecord, tokenizer: PreTrainedTokenizerBase) -> Feature:
        prompt = format_protein_prompt(record.sequence) if self.settings.loss_on == "labels" else None
        return tokenize_with_prompt(format_protein_example(record), tokenizer, prompt)

    def datasets(self, tokenizer: PreTrainedTokenizerBase) -> Splits:
        train, val = self.splits()
        features = [self.encode(r, tokenizer) for r in train], [self.encode(r, tokenizer) for r in val]
        return Splits(*features, longest=max(len(f["input_ids"]) for f in features[0] + features[1]))

    def held_out(self, tokenizer: PreTrainedTokenizerBase, data: Path | None, limit: int | None) -> HeldOut:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # training already reported the skipped rows
            train, val = self.splits()
        if data is None:
            records, name = val, "val"
        else:
            records, name = self.records(data), data.stem
            if not records:
                raise DataError(
                    f"{data}: no protein left to evaluate after filtering (the run keeps sequences shorter than "
                    f"data.max_length={self.settings.max_length})"
                )
        records = records[:limit]
        trained = {r.sequence for r in train}
        return HeldOut(
            name=name,
            features=[self.encode(r, tokenizer) for r in records],
            rows=records,
            train_rows=train,
            train_counts=target_counts([self.encode(r, tokenizer) for r in train], len(tokenizer)),
            trained_on=sum(r.sequence in trained for r in records),
        )

    def score(self, model, tokenizer, held_out: HeldOut, generation: Generation, losses: Losses) -> Scores:
        """Greedy generation of the two label tokens after each prompt, scored against the records' labels."""
        prompts = [tokenizer(format_protein_prompt(r.sequence), add_special_tokens=False)["input_ids"]
                   for r in held_out.rows]
        new = generate_batched(model, tokenizer, prompts, max_new_tokens=2, batch_size=generation.batch_size)
        pad = tokenizer.pad_token_id
        pairs = [tuple((ids + [pad, pad])[:2]) for ids in new]  # a row that stopped early has pad in its place
        values = score_labels(pairs, held_out.rows, label_token_ids(tokenizer))
        majority = majority_baseline(held_out.train_rows, held_out.rows)
        return Scores(
            values=values,
            baselines={
                "primary": majority.primary_accuracy,
                "secondary": majority.secondary_accuracy,
                "both": majority.pair_accuracy,
            },
            notes={"majority": {"primary": majority.primary, "secondary": majority.secondary,
                                "pair": list(majority.pair)}},
        )

    def prompt_ids(self, text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """A bare residue sequence is wrapped in the task's markers, so the model answers with the two labels;
        text that already starts with the begin token is used as written."""
        prompt = text if text.startswith(BOS) else format_protein_prompt(text.strip())
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def score_labels(
    generated: list[tuple[int, int]], records: list[ProteinRecord], label_ids: list[int]
) -> dict[str, float]:
    """Accuracy of generated (primary, secondary) token ids against the records' labels; ``label_ids`` are the
    class token ids in SS_CLASSES order (`label_token_ids`). `non_label`: share of generated tokens that are
    no class token."""
    if len(generated) != len(records):
        raise ValueError(f"{len(generated)} generations for {len(records)} records")
    if not records:
        raise ValueError("no records to score")
    if len(label_ids) != len(SS_CLASSES):
        raise ValueError(f"label_ids must list {len(SS_CLASSES)} ids in SS_CLASSES order, got {len(label_ids)}")
    class_of = dict(zip(label_ids, SS_CLASSES))
    primary = [class_of.get(first) == r.primary for (first, _), r in zip(generated, records)]
    secondary = [class_of.get(second) == r.secondary for (_, second), r in zip(generated, records)]
    n = len(records)
    return {
        "primary": sum(primary) / n,
        "secondary": sum(secondary) / n,
        "both": sum(p and s for p, s in zip(primary, secondary)) / n,
        "non_label": sum(token not in class_of for pair in generated for token in pair) / (2 * n),
    }
