"""Synthetic relational tasks, generated from a seed: Zoology's multi-query associative recall (MQAR) and the
k-hop induction heads of Sanford, Hsu & Telgarsky. Pure functions of their knobs and a seed; nothing is read or
downloaded. `tasks/mqar.py` and `tasks/khop.py` turn them into tasks.

An example is a row of token ids and a row of labels of the same length, -100 where there is no loss. As
everywhere in ginformer (data/batches.py) labels are the causal-LM targets the model shifts: ``labels[t]`` is
what the model must predict at position ``t - 1``, from ``input_ids[: t]``. Only the positions that ask a question
carry a label, so the loss and the accuracy cover exactly the answers.

    mqar      keys and values from disjoint halves of the vocabulary; n key-value pairs, then the n keys again
              at power-law spaced positions; the label after each queried key is its value
    khop      a hop-count token, then symbols with no symbol twice in a row, then <|end|>; the label after each
              symbol is hop_k of it (Sanford et al.'s Definition 4.1), none where hop_k is undefined (⊥)
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ginformer.data.batches import IGNORE_INDEX
from ginformer.data.tokenizer import PAD, UNK


class SyntheticExamples(torch.utils.data.Dataset):
    """Map-style dataset of generated examples for Trainer: ``input_ids`` and ``labels``, both (n, T) int64.

    Kept as two arrays rather than n dicts of Python lists: 100,000 examples of 64 tokens are 100 MB as arrays
    and several GB as lists. Rows are turned into lists one at a time, when Trainer asks for them.
    """

    def __init__(self, input_ids: np.ndarray, labels: np.ndarray):
        if input_ids.ndim != 2 or input_ids.shape != labels.shape:
            raise ValueError(f"input_ids and labels must be (n, T) of one shape, got {input_ids.shape} and "
                             f"{labels.shape}")
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids[i].tolist(), "labels": self.labels[i].tolist()}

    def first(self, n: int | None) -> SyntheticExamples:
        """The first `n` examples (all of them when None)."""
        return self if n is None else SyntheticExamples(self.input_ids[:n], self.labels[:n])

    def target_counts(self, vocab_size: int) -> np.ndarray:
        """(V,) how often each token is a scored target: the unigram and majority baselines count these."""
        targets = self.labels[:, 1:]
        return np.bincount(targets[targets != IGNORE_INDEX], minlength=vocab_size)


def label_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of the labelled positions (labels != -100) where `predictions` (same shape, aligned with the labels:
    ``predictions[:, t]`` is what the model predicted at position t - 1) equal the label."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    scored = labels != IGNORE_INDEX
    if not scored.any():
        raise ValueError("no labelled position to score")
    return float((predictions[scored] == labels[scored]).mean())


# ---------------------------------------------------------------------------------------------------- mqar


def mqar_value_count(vocab_size: int) -> int:
    """How many value tokens an MQAR vocabulary has: the upper half, [V // 2, V)."""
    return vocab_size - vocab_size // 2


def mqar_examples(
    n: int,
    *,
    sequence_length: int,
    num_kv_pairs: int,
    vocab_size: int,
    power_a: float,
    random_non_queries: bool,
    rng: np.random.Generator,
) -> SyntheticExamples:
    """`n` MQAR examples, as Zoology's `multiquery_ar` (zoology/data/multiquery_ar.py) builds them:

    - keys: `num_kv_pairs` distinct tokens from [1, V // 2) (0 is the filler); values: as many distinct tokens
      from [V // 2, V), so a key is never a value;
    - the sequence opens with the pairs ``k1 v1 k2 v2 …``, then leaves ``sequence_length - 2·num_kv_pairs``
      positions for the queries: key i once more at the even offset 2·g_i after the pairs, the gaps g_i distinct,
      drawn over [0, space), space = (sequence_length - 2·num_kv_pairs) // 2, with p(g) ∝ (g + 1)^(power_a − 1)
      (power_a = 1: uniform; Zoology's 0.01 puts most queries soon after the pairs), so keys come back in a
      random order;
    - every other position holds 0, or a uniform random token of the whole vocabulary with `random_non_queries`;
    - the label after each queried key is its value (the model predicts it at the key); nothing else has one.

    Zoology seeds numpy's global generator; here `rng` is passed in, so the same seed gives the same examples
    wherever it is called (the distribution is Zoology's, the draws are not bit-for-bit theirs).
    """
    context = 2 * num_kv_pairs
    space = (sequence_length - context) // 2
    if space < num_kv_pairs or vocab_size // 2 - 1 < num_kv_pairs:
        raise ValueError(f"{num_kv_pairs} key-value pairs do not fit a sequence of {sequence_length} tokens and a "
                         f"vocabulary of {vocab_size} (tasks/mqar.py checks the settings)")
    log_p = (power_a - 1.0) * np.log(np.arange(1, space + 1))
    # Gaps without replacement, each draw in proportion to p among the gaps left (numpy's choice(replace=False,
    # p=p), which Zoology calls row by row): the largest log p + Gumbel noise, for every row at once.
    gaps = np.argsort(-(log_p + rng.gumbel(size=(n, space))), axis=1)[:, :num_kv_pairs]
    keys = np.stack([rng.choice(vocab_size // 2 - 1, size=num_kv_pairs, replace=False) for _ in range(n)]) + 1
    values = np.stack([rng.choice(mqar_value_count(vocab_size), size=num_kv_pairs, replace=False)
                       for _ in range(n)]) + vocab_size // 2
    rows, pairs = np.arange(n)[:, None], np.arange(num_kv_pairs)
    input_ids = np.zeros((n, sequence_length), dtype=np.int64)
    input_ids[:, 2 * pairs], input_ids[:, 2 * pairs + 1] = keys, values
    queries = context + 2 * gaps  # (n, num_kv_pairs): key i comes back at queries[:, i]
    input_ids[rows, queries] = keys
    labels = np.full((n, sequence_length), IGNORE_INDEX, dtype=np.int64)
    labels[rows, queries + 1] = values  # predicted at the query; queries + 1 <= sequence_length - 1
    if random_non_queries:
        # As Zoology: every 0 (the filler of the query region) becomes a uniform token of the whole vocabulary.
        fillers = input_ids == 0
        input_ids[fillers] = rng.integers(vocab_size, size=int(fillers.sum()))
    return SyntheticExamples(input_ids, labels)


def build_mqar_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """One id per integer token, written as the integer: "0" … str(V - 1) are ids 0 … V - 1, so a prompt reads as
    Zoology prints its examples ("2 8 4 7 0 0 4"), words split by whitespace. <|pad|> (V) pads; <|unk|> (V + 1)
    stands for any other word, which `MQARTask.prompt_ids` refuses."""
    vocab = {str(i): i for i in range(vocab_size)}
    vocab.update({PAD: vocab_size, UNK: vocab_size + 1})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (PAD, UNK)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, unk_token=UNK,
                                   clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------------------------------------------- k-hop

END = "<|end|>"
SYMBOLS = "abcdefghijklmnopqrstuvwxyz"  # the alphabet Σ, as the paper writes its examples ("baebcabebdea")


def hop_token(k: int) -> str:
    return f"<|hops={k}|>"


def hop_targets(symbols: np.ndarray, hops: np.ndarray) -> np.ndarray:
    """hop_k of every position of each row of `symbols` (n, M) for that row's k in `hops` (n,); -1 where it is
    undefined (⊥). Sanford et al.'s Definition 4.1, 0-based: find¹(i) = p + 1 for the last p < i with
    symbols[p] = symbols[i] (none when there is no such p), findᵏ = find¹ ∘ findᵏ⁻¹, find⁰(i) = i, and
    hop_k(i) = symbols[findᵏ(i)]."""
    n, m = symbols.shape
    rows = np.arange(n)
    find1 = np.full((n, m), -1, dtype=np.int64)
    last = np.full((n, int(symbols.max(initial=0)) + 1), -1, dtype=np.int64)  # last position of each symbol so far
    for i in range(m):
        seen = last[rows, symbols[:, i]]
        find1[:, i] = np.where(seen >= 0, seen + 1, -1)
        last[rows, symbols[:, i]] = i
    found = np.broadcast_to(np.arange(m), (n, m)).copy()  # find⁰: every position finds itself
    at_k = np.where(hops[:, None] == 0, found, -1)
    for step in range(1, int(hops.max(initial=0)) + 1):
        found = np.where(found >= 0, np.take_along_axis(find1, np.maximum(found, 0), axis=1), -1)
        at_k = np.where(hops[:, None] == step, found, at_k)
    return np.where(at_k >= 0, np.take_along_axis(symbols, np.maximum(at_k, 0), axis=1), -1)


def khop_examples(
    n: int, *, sequence_length: int, alphabet_size: int, hops: list[int], rng: np.random.Generator
) -> SyntheticExamples:
    """`n` examples of the multi-hop task of Sanford et al. (their Appendix G.1), in the ids of
    `build_khop_tokenizer`:

    - k uniform over `hops`; the example opens with its hop token <|hops=k|>;
    - then ``sequence_length - 1`` symbols of an alphabet of `alphabet_size`, the first uniform, each next one
      uniform over the symbols other than the one before it (the paper's inputs with no repeating elements), so
      the paper's N is `sequence_length`: the hop token and the symbols;
    - then <|end|>, which is only there to carry the label of the last symbol (labels sit one position to the
      right of where the model answers);
    - the label after each symbol is hop_k at that symbol, none where hop_k is ⊥ (the paper scores those out).
    """
    m = sequence_length - 1
    # No symbol twice in a row: add 1 … |Σ| - 1 (mod |Σ|) to the one before.
    steps = rng.integers(1, alphabet_size, size=(n, m))
    steps[:, 0] = rng.integers(alphabet_size, size=n)
    symbols = np.cumsum(steps, axis=1) % alphabet_size
    k = rng.choice(np.asarray(hops), size=n)
    targets = hop_targets(symbols, k)
    hop_ids = alphabet_size + np.asarray(k)  # <|hops=k|> is id |Σ| + k
    end_id = alphabet_size + max(hops) + 1
    input_ids = np.concatenate([hop_ids[:, None], symbols, np.full((n, 1), end_id)], axis=1).astype(np.int64)
    labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
    labels[:, 2:] = np.where(targets >= 0, targets, IGNORE_INDEX)  # symbol at position p answers at label p + 1
    return SyntheticExamples(input_ids, labels)


def build_khop_tokenizer(alphabet_size: int, max_hops: int) -> PreTrainedTokenizerFast:
    """Ids 0 … |Σ| - 1: the symbols a, b, c, …; then <|hops=0|> … <|hops=max_hops|>, <|end|>, <|pad|>, <|unk|>.
    Every character is one token, so "<|hops=2|>baebcabebdea" is a prompt; hop tokens are ordinary added tokens
    (a decoded answer still shows them), the others special."""
    vocab = {SYMBOLS[i]: i for i in range(alphabet_size)}
    hop_tokens = [hop_token(k) for k in range(max_hops + 1)]
    specials = [END, PAD, UNK]
    vocab.update({token: alphabet_size + i for i, token in enumerate(hop_tokens + specials)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # every character alone
    backend.decoder = decoders.Fuse()  # join without spaces, so decode(encode(text)) == text
    # Added tokens are matched before pre-tokenization, so "<|hops=2|>" is one id rather than ten characters.
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in hop_tokens])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, unk_token=UNK,
                                   clean_up_tokenization_spaces=False)
