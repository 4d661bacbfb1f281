"""k-hop induction heads, from Sanford, Hsu and Telgarsky, "Transformers, Parallel Computation, and Logarithmic
Depth" (ICML 2024, arXiv:2402.09268), section 4 and Appendix G.

Induction heads complete a bigram: at each symbol, give the symbol that followed its last earlier occurrence
(baebcabebdea → b). k hops repeat this k times, each from where the last one landed (two hops: c). The paper's
Definition 4.1, with find¹(i) the position after the last earlier occurrence of symbol i and findᵏ = find¹ ∘
findᵏ⁻¹: hop_k(X)_i = X at findᵏ(i), undefined (⊥) when a hop finds nothing. Generated as its Appendix G.1 does
(data/synthetic.py: `khop_examples`): a multi-task mixture, each sequence opening with its hop count k (uniform
over `hops`), then N − 1 symbols with no symbol twice in a row; every symbol's answer is labelled, except where
hop_k is ⊥, which the paper leaves out of its error (it does not say whether it trains on ⊥; here ⊥ has no loss).
The defaults are the paper's Table 1: N = 100, |Σ| = 4, k ∈ {0, …, 16}. It trains on 32 fresh examples per step
for 10⁵ steps; here a fixed training set of `num_train_examples` is drawn once, as its finite-sample runs
(Appendix G.5) do.

Metrics (tasks/synthetic.py): accuracy on the answered positions (1 − the paper's token-wise error, pooled over
the hop counts) and at the largest hop count, each beside the best constant answer; the accuracy at each hop
count k is in the evaluation's scores as ``accuracy_k<k>``. The notes hold chance (1/|Σ|) and the paper's result:
a depth-L transformer learns hop_k for k up to about 2^(L−2) (Figure 2, Appendix G.2), the ⌊log₂ k⌋ + 2 layers of
its Theorem 4.2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

from ginformer.data.batches import IGNORE_INDEX
from ginformer.data.synthetic import SYMBOLS, SyntheticExamples, build_khop_tokenizer, khop_examples, label_accuracy
from ginformer.errors import ConfigError
from ginformer.settings import check_fields, positive, require
from ginformer.tasks.base import Column
from ginformer.tasks.synthetic import SyntheticTask, describe_settings

REFERENCE = (
    "Sanford, Hsu & Telgarsky 2024 (arXiv:2402.09268), section 4.2 and Appendix G.2: GPT-2 models of width 128 "
    "with 4 heads, N = 100, |Σ| = 4, hops 0-16 mixed, 10^5 steps of 32 fresh examples; depth L learns hop_k for "
    "k <= 2^(L-2): L = 2 only k = 1 (at least 10% error on every other k), L = 3 at most 1% error for k <= 2, "
    "L = 4 k <= 4, L = 5 k <= 8, L = 6 every k <= 16"
)


@dataclass
class KHopSettings:
    """The paper's multi-hop knobs, and how many examples each split gets."""

    task: Literal["khop"] = "khop"
    sequence_length: int = 100  # the paper's N: the hop-count token and N − 1 symbols (then <|end|>, see above)
    alphabet_size: int = 4  # |Σ|: the symbols a, b, c, …
    hops: list[int] = field(default_factory=lambda: list(range(17)))  # k of each sequence, uniform over these
    num_train_examples: int = 100_000
    num_val_examples: int = 1_700  # the paper scores 100 sequences per hop count
    seed: int = 0  # the examples of both splits; independent of the training seed

    def __post_init__(self) -> None:
        check_fields(self, "data")
        positive(self, "data", "num_train_examples", "num_val_examples")
        require(self.sequence_length >= 2, "data.sequence_length", self.sequence_length,
                ">= 2: the hop token and at least one symbol")
        require(2 <= self.alphabet_size <= len(SYMBOLS), "data.alphabet_size", self.alphabet_size,
                f"in [2, {len(SYMBOLS)}]: no symbol may follow itself, so a sequence needs two, and they are the "
                "letters a-z")
        require(bool(self.hops) and min(self.hops) >= 0 and len(set(self.hops)) == len(self.hops), "data.hops",
                self.hops, "a non-empty list of distinct hop counts >= 0 (0: the identity, 1: induction heads)")


class KHopTask(SyntheticTask):
    name = "khop"
    settings_class = KHopSettings
    reference = REFERENCE
    columns = (
        Column("accuracy", "accuracy", ".3f", figure=True),
        Column("accuracy_max_hops", "acc at max k", ".3f"),
    )
    settings: KHopSettings

    def tokenizer(self, base: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
        return build_khop_tokenizer(self.settings.alphabet_size, max(self.settings.hops))

    def generate(self, n: int, rng: np.random.Generator) -> SyntheticExamples:
        s = self.settings
        return khop_examples(n, sequence_length=s.sequence_length, alphabet_size=s.alphabet_size, hops=s.hops,
                             rng=rng)

    def hops_of(self, examples: SyntheticExamples) -> np.ndarray:
        """(n,) each example's hop count, read off its first token <|hops=k|> (id |Σ| + k)."""
        return examples.input_ids[:, 0] - self.settings.alphabet_size

    def check_examples(self, train: SyntheticExamples, val: SyntheticExamples) -> None:
        """Every hop count has an answer to score in the validation split; a large k in a short sequence is ⊥
        almost everywhere, and a hop count scored on nothing would report no accuracy at all."""
        answered = (val.labels != IGNORE_INDEX).any(axis=1)
        hops = self.hops_of(val)
        s = self.settings
        for k in s.hops:
            if not answered[hops == k].any():
                raise ConfigError(
                    f"data.hops={s.hops}: no validation sequence has a defined {k}-hop answer (data.sequence_length="
                    f"{s.sequence_length}, data.alphabet_size={s.alphabet_size}, data.num_val_examples="
                    f"{s.num_val_examples}); raise sequence_length or num_val_examples, or drop {k} from data.hops"
                )

    def accuracies(self, val: SyntheticExamples, predicted: np.ndarray) -> dict[str, float]:
        hops = self.hops_of(val)
        # Every hop count has answers in the whole validation split (check_examples); `evaluate --limit` may keep
        # rows without some, and those hop counts then have no accuracy rather than a made-up one.
        answered = [k for k in sorted(self.settings.hops) if (val.labels[hops == k] != IGNORE_INDEX).any()]
        by_k = {k: label_accuracy(predicted[hops == k], val.labels[hops == k]) for k in answered}
        hardest = {"accuracy_max_hops": by_k[max(self.settings.hops)]} if max(self.settings.hops) in by_k else {}
        return {"accuracy": label_accuracy(predicted, val.labels), **hardest,
                **{f"accuracy_k{k}": value for k, value in by_k.items()}}

    def chance_levels(self) -> dict[str, int]:
        return {"chance": self.settings.alphabet_size}

    def vocabulary(self) -> str:
        s = self.settings
        return (f"the symbols {SYMBOLS[:s.alphabet_size]} (one character each) and the hop counts "
                f"<|hops=0|> … <|hops={max(s.hops)}|>")

    def describe(self) -> str:
        return describe_settings(self.settings, "sequence_length", "alphabet_size", "hops")
