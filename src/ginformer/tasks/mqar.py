"""Multi-query associative recall (MQAR), from Zoology: Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra
and Ré, "Zoology: Measuring and Improving Recall in Efficient Language Models" (arXiv:2312.04927, ICLR 2024).

A sequence lists key-value pairs, then asks for each key again later; after each queried key the model must give
its value. Generated as Zoology's `multiquery_ar` (HazyResearch/zoology, zoology/data/multiquery_ar.py) does, with
its knobs (data/synthetic.py: `mqar_examples`): keys from [1, V/2) and values from [V/2, V),
the queries at power-law spaced gaps after the pairs, a label only after each queried key, so the loss covers
the answers alone, as Zoology's does. The defaults are the smallest setting of Zoology's Figure 2 sweep
(zoology/experiments/paper_configs/iclr24_zoology_figure2/configs.py): sequence length 64, 4 key-value pairs,
vocabulary 8,192, 100,000 training and 3,000 test examples, fillers 0 (random_non_queries false).

Metrics (tasks/synthetic.py): accuracy on the queried positions beside the best constant answer, with chance
(1 / V/2 values), guessing among the sequence's own values (1 / num_kv_pairs: where models stall before they
learn which value goes with which key) and Zoology's attention result in the notes. That result is a plot, not a table: Figure 2
draws MQAR accuracy against model width (64 to 512) for sequence lengths 64 to 512 with 4 to 64 pairs, and
attention (2 layers, 1 head, no MLP) stays at about 1.0 at every width, where the gated convolutions need a width
that grows with the sequence length. The number is read off the plot; Zoology's blog post says the same in words
(to recall over longer sequences the gated convolutions needed more width, attention did not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

from ginformer.data.synthetic import SyntheticExamples, build_mqar_tokenizer, mqar_examples, mqar_value_count
from ginformer.settings import check_fields, positive, require
from ginformer.tasks.synthetic import SyntheticTask, describe_settings

REFERENCE = (
    "Zoology (Arora et al. 2023, arXiv:2312.04927), Figure 2: attention (2 layers, 1 head, no MLP; vocabulary "
    "8,192, 100,000 training examples) at about 1.0 accuracy for every width 64-512, sequence lengths 64-512 "
    "with 4-64 key-value pairs (read off the plot)"
)


@dataclass
class MQARSettings:
    """Zoology's MQAR knobs, and how many examples each split gets."""

    task: Literal["mqar"] = "mqar"
    sequence_length: int = 64  # Zoology's input_seq_len: the pairs, then the queries among fillers
    num_kv_pairs: int = 4  # pairs per sequence, each queried once; needs sequence_length >= 4 × num_kv_pairs
    vocab_size: int = 8192  # keys from [1, V/2), values from [V/2, V); Zoology: large vocabularies separate models
    power_a: float = 0.01  # query gaps g drawn with p(g) ∝ (g + 1)^(power_a − 1): 1 is uniform, 0.01 mostly short
    random_non_queries: bool = False  # fillers 0 (Zoology's Figure 2) or uniform random tokens (its default)
    num_train_examples: int = 100_000  # Zoology's Figure 2
    num_val_examples: int = 3_000  # Zoology's test set
    seed: int = 0  # the examples of both splits; independent of the training seed

    def __post_init__(self) -> None:
        check_fields(self, "data")
        positive(self, "data", "sequence_length", "num_kv_pairs", "vocab_size", "power_a", "num_train_examples",
                 "num_val_examples")
        n, length = self.num_kv_pairs, self.sequence_length
        # 2n positions for the pairs, then each of the n queries at its own even offset after them.
        require(length >= 4 * n, "data.num_kv_pairs", n,
                f"at most data.sequence_length / 4 = {length // 4}: the pairs take 2 × {n} positions and each query "
                f"an even offset after them, so a sequence needs 4 × {n} = {4 * n}; lower num_kv_pairs or raise "
                "sequence_length")
        require(self.vocab_size // 2 - 1 >= n, "data.vocab_size", self.vocab_size,
                f"at least 2 × {n} + 2 = {2 * n + 2} for data.num_kv_pairs={n}: a sequence's keys are distinct "
                f"tokens of [1, vocab_size/2) and its values of [vocab_size/2, vocab_size); raise vocab_size or "
                "lower num_kv_pairs")


class MQARTask(SyntheticTask):
    name = "mqar"
    settings_class = MQARSettings
    reference = REFERENCE
    settings: MQARSettings

    def tokenizer(self, base: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
        return build_mqar_tokenizer(self.settings.vocab_size)

    def generate(self, n: int, rng: np.random.Generator) -> SyntheticExamples:
        s = self.settings
        return mqar_examples(n, sequence_length=s.sequence_length, num_kv_pairs=s.num_kv_pairs,
                             vocab_size=s.vocab_size, power_a=s.power_a, random_non_queries=s.random_non_queries,
                             rng=rng)

    def chance_levels(self) -> dict[str, int]:
        # A model that has learned to answer with a value, but not which, guesses among the sequence's values.
        return {"chance": mqar_value_count(self.settings.vocab_size),
                "a value of the sequence": self.settings.num_kv_pairs}

    def vocabulary(self) -> str:
        return f"the integers 0 … {self.settings.vocab_size - 1}, separated by spaces"

    def describe(self) -> str:
        return describe_settings(self.settings, "sequence_length", "num_kv_pairs", "vocab_size", "power_a")
