"""What the generated tasks (mqar, khop) share: examples made from a seed, a loss only on the answers, and
accuracy on the answers beside the best constant answer, the chance level and the published result.

The training and validation examples come from two independent random streams of one seed
(``numpy.random.default_rng([data.seed, 0])`` and ``[data.seed, 1]``), so they do not depend on the training seed
and a comparison's runs all see the same examples; validation examples that happen to equal a training example are
counted (``trained_on``, which `ginformer evaluate` warns about), not assumed away.

Metrics beside loss and perplexity:

    accuracy   the share of answer positions where the model's most likely next token (over the whole vocabulary,
               as Zoology scores) is the answer; beside it the best constant answer: the training split's most
               frequent answer, scored on the same validation positions
    notes      chance (one over the number of possible answers), what guessing among the answers the sequence
               itself offers scores (MQAR: one of its values), and the published result to compare with
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ginformer.data.batches import IGNORE_INDEX
from ginformer.data.synthetic import SyntheticExamples, label_accuracy
from ginformer.errors import ConfigError
from ginformer.tasks.base import Column, Generation, HeldOut, Losses, Scores, Splits, Task

TRAIN, VAL = 0, 1  # the stream of each split: default_rng([seed, TRAIN]) and default_rng([seed, VAL])


class SyntheticTask(Task):
    """A task whose examples a pure generator makes from `data.seed`; see the module docstring. A subclass gives
    the generator, the tokenizer, the chance level and the published reference."""

    model_sides = frozenset({"scratch"})  # its tokens exist in no pretrained vocabulary
    columns: ClassVar[tuple[Column, ...]] = (Column("accuracy", "accuracy", ".3f", figure=True),)
    reference: ClassVar[str]  # the published result, printed beside ours in every evaluation and comparison
    _examples: tuple[SyntheticExamples, SyntheticExamples] | None = None

    @abstractmethod
    def generate(self, n: int, rng: np.random.Generator) -> SyntheticExamples:
        """`n` examples drawn with `rng`."""

    @abstractmethod
    def chance_levels(self) -> dict[str, int]:
        """What a model scores that guesses uniformly, as the number of answers it guesses among: "chance" (every
        possible answer), and any guess the sequence itself narrows down."""

    @abstractmethod
    def vocabulary(self) -> str:
        """The tokens a prompt may use, in words, for the message when it uses another."""

    def check_examples(self, train: SyntheticExamples, val: SyntheticExamples) -> None:
        """Refuse settings whose examples leave something unscored; nothing to refuse by default."""

    def examples(self) -> tuple[SyntheticExamples, SyntheticExamples]:
        """(train, val), generated once per task object: its datasets and its held-out split are the same rows."""
        if self._examples is None:
            s = self.settings
            train = self.generate(s.num_train_examples, np.random.default_rng([s.seed, TRAIN]))
            val = self.generate(s.num_val_examples, np.random.default_rng([s.seed, VAL]))
            self.check_examples(train, val)
            self._examples = train, val
        return self._examples

    def datasets(self, tokenizer: PreTrainedTokenizerBase) -> Splits:
        train, val = self.examples()
        return Splits(train, val, longest=train.input_ids.shape[1])

    def held_out(self, tokenizer: PreTrainedTokenizerBase, data: Path | None, limit: int | None) -> HeldOut:
        if data is not None:
            raise ConfigError(
                f"--data {data}: a {self.name} run generates its examples from data.seed and reads no file; leave "
                "out --data to score its validation examples"
            )
        train, val = self.examples()
        val = val.first(limit)
        trained = {row.tobytes() for row in train.input_ids}
        return HeldOut(
            name="val",
            features=val,
            rows=[val],
            train_rows=[train],
            train_counts=train.target_counts(len(tokenizer)),
            trained_on=sum(row.tobytes() in trained for row in val.input_ids),
        )

    def score(self, model, tokenizer, held_out: HeldOut, generation: Generation, losses: Losses) -> Scores:
        (val,) = held_out.rows
        predicted = predictions(model, val, generation.batch_size)
        majority = int(np.argmax(held_out.train_counts))
        constant = np.full_like(val.labels, majority)
        guesses = {name: f"1/{n} = {1 / n:.4f}" for name, n in self.chance_levels().items()}
        return Scores(
            values=self.accuracies(val, predicted),
            baselines=self.accuracies(val, constant),
            notes={"best constant answer": tokenizer.convert_ids_to_tokens(majority), **guesses,
                   "published": self.reference},
        )

    def accuracies(self, val: SyntheticExamples, predicted: np.ndarray) -> dict[str, float]:
        """The task's accuracy values for predictions aligned with `val.labels`."""
        return {"accuracy": label_accuracy(predicted, val.labels)}

    def prompt_ids(self, text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """The prompt's tokens; a word or character outside the task's vocabulary is refused rather than read as
        <|unk|>, a token no example holds."""
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
            if token == tokenizer.unk_token_id:
                raise ConfigError(f"--prompt: {text[start:end]!r} is no token of a {self.name} run; its tokens are "
                                  f"{self.vocabulary()}")
        return encoded["input_ids"]


@torch.no_grad()
def predictions(model, examples: SyntheticExamples, batch_size: int) -> np.ndarray:
    """The model's most likely next token at every position, aligned with the labels (``[:, t]`` is predicted at
    position t - 1; column 0, which nothing predicts, is -100). Examples are all of one length: no padding."""
    device = next(model.parameters()).device
    predicted = np.full(examples.labels.shape, IGNORE_INDEX, dtype=np.int64)
    for start in range(0, len(examples), batch_size):
        ids = torch.as_tensor(examples.input_ids[start : start + batch_size], device=device)  # (B, T)
        logits = model(input_ids=ids).logits  # (B, T, V)
        predicted[start : start + len(ids), 1:] = logits[:, :-1].argmax(-1).cpu().numpy()
    return predicted


def describe_settings(settings: Any, *knobs: str) -> str:
    """``name (knob value, …; n training / m validation examples, data seed s)`` for comparison summaries."""
    shown = ", ".join(f"{knob} {getattr(settings, knob)}" for knob in knobs)
    return (f"{settings.task} ({shown}; {settings.num_train_examples:,} training / {settings.num_val_examples:,} "
            f"validation examples, data seed {settings.seed})")
