"""The task interface: what differs between experiments, and nothing else.

A task owns its data: the settings of its `data` section, reading and validating rows (bad rows named by file
and row), the tokenizer, the train and validation datasets, the metrics it adds to loss and perplexity, and
the columns and figures those metrics get in a comparison. Everything else (building the model, training,
evaluating the loss, comparing variants over seeds, generating) is the run layer's, the same for every task.

    task = TASKS[settings.data.task](settings.data)
    tokenizer = task.tokenizer(base_tokenizer)          # None when the model is trained from scratch
    splits = task.datasets(tokenizer)                   # what Trainer trains and validates on
    held_out = task.held_out(tokenizer, data, limit)    # what `ginformer evaluate` scores
    scores = task.score(model, tokenizer, held_out, generation, losses)

Adding a task is one module with a `Task` subclass and its settings dataclass, registered in `tasks/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from transformers import PreTrainedTokenizerBase

from ginformer.errors import ConfigError

Feature = dict[str, list[int]]  # {"input_ids", "labels"}: one training example, labels -100 where no loss


@dataclass(frozen=True)
class Splits:
    """What a run trains and validates on."""

    train: Sequence[Feature]
    val: Sequence[Feature]
    longest: int  # tokens in the longest example: checked against the model's positions before training
    source_sizes: str = ""  # what the examples were made from, for the message when a split is empty


@dataclass(frozen=True)
class HeldOut:
    """What `evaluate` scores: features for the loss, and the task's own rows for the metrics it adds."""

    name: str  # "val" for the run's validation split, else the evaluated file's stem
    features: Sequence[Feature]
    rows: Sequence[Any]  # the task's rows behind `features`, in the same order (generation reads them)
    train_rows: Sequence[Any]  # the run's training rows: majority baselines count their labels
    train_counts: np.ndarray  # (V,) how often each token is a training target: the unigram baseline
    trained_on: int  # evaluated rows that were also in the training split (0 for held-out data)


@dataclass(frozen=True)
class Column:
    """One metric a task adds, as evaluation reports and comparisons show it."""

    key: str  # in Scores.values (and Scores.baselines where there is a baseline)
    header: str
    fmt: str
    figure: bool = False  # drawn as bars over variants in a comparison


@dataclass(frozen=True)
class Generation:
    """How much `evaluate` generates, for tasks scored on generated text."""

    rows: int | None  # how many held-out rows are scored by generation; None: all
    max_new_tokens: int | None  # a cap on each answer; None: the task's default
    batch_size: int


@dataclass(frozen=True)
class Losses:
    loss: float  # the model's token-weighted mean cross-entropy on the held-out features (nats)
    unigram: float  # the same for training-split token frequencies


@dataclass(frozen=True)
class Scores:
    values: dict[str, float] = field(default_factory=dict)  # the task's metrics, keyed by Column.key
    baselines: dict[str, float] = field(default_factory=dict)  # what a model that learned nothing scores
    notes: dict[str, Any] = field(default_factory=dict)  # what the baselines are (the majority label, ...)
    generations: list[dict[str, Any]] = field(default_factory=list)  # written beside the evaluation


class Task(ABC):
    """One kind of experiment's data and metrics; see the module docstring."""

    name: ClassVar[str]
    settings_class: ClassVar[type]
    # The model sides it serves: "scratch" (a model trained from scratch) and/or "pretrained" (a frozen base).
    model_sides: ClassVar[frozenset[str]] = frozenset({"scratch", "pretrained"})
    # The training objectives it has data for (runs/objectives.py): "sft" (next-token loss), "dpo", "grpo".
    objectives: ClassVar[frozenset[str]] = frozenset({"sft"})
    columns: ClassVar[tuple[Column, ...]] = ()
    # `evaluate` options the task reads, among "generate" and "max_new_tokens"; others are refused.
    evaluate_options: ClassVar[frozenset[str]] = frozenset()
    # Whether `prompt_ids` takes a conversation ({role, content} messages) as well as a text: `generate --chat`.
    conversational: ClassVar[bool] = False

    def __init__(self, settings: Any):
        self.settings = settings

    @abstractmethod
    def tokenizer(self, base: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
        """The run's tokenizer: `base` is the pretrained model's (None for a model trained from scratch)."""

    @abstractmethod
    def datasets(self, tokenizer: PreTrainedTokenizerBase) -> Splits:
        """The training and validation examples."""

    @abstractmethod
    def held_out(self, tokenizer: PreTrainedTokenizerBase, data: Path | None, limit: int | None) -> HeldOut:
        """The validation split (`data` None) or a file in the task's format; its first `limit` rows (None: all
        of a file; a run's own `max_val_examples` for the validation split)."""

    def score(self, model, tokenizer, held_out: HeldOut, generation: Generation, losses: Losses) -> Scores:
        """The task's own metrics beside their baselines; none by default (loss and perplexity only)."""
        return Scores()

    @abstractmethod
    def prompt_ids(self, text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Token ids a model continues for `ginformer generate --prompt text`."""

    def stop_string(self) -> str | None:
        """Text that ends an answer where the tokenizer has no end token for it (the paper template's)."""
        return None

    def context_length(self) -> int | None:
        """The longest context the task trains on, when it is shorter than the model's positions (text blocks)."""
        return None

    def check_model_side(self, side: str) -> None:
        """Refuse a model side the task cannot serve, before anything is loaded."""
        if side not in self.model_sides:
            kinds = {"scratch": "a model trained from scratch (ginformer pretrain)",
                     "pretrained": "a pretrained model (ginformer finetune)"}
            needs = " or ".join(kinds[k] for k in sorted(self.model_sides))
            raise ConfigError(f"data.task={self.name!r} needs {needs}")

    def describe(self) -> str:
        """One line on the data, for comparison summaries."""
        return f"{self.name} ({getattr(self.settings, 'source', '')})"
