"""From text to batches: the labels of a training example and the one collator every task's examples use.

A training example is ``{"input_ids": [...], "labels": [...]}`` of equal length; a label of -100 (torch's
``cross_entropy`` ignore index) gives its position no loss. The collator pads a batch on the right and marks
padding by position, never by id (SmolLM2 pads with its end-of-turn token, which is also a label inside
chat-template answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def tokenize_with_prompt(
    text: str, tokenizer: PreTrainedTokenizerBase, prompt: str | None = None
) -> dict[str, list[int]]:
    """{input_ids, labels} for one training text. With a `prompt` (a prefix of `text`), its tokens get no loss,
    so only the completion is learned."""
    input_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    labels = list(input_ids)
    if prompt is not None:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if input_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(f"prompt {prompt!r} does not tokenise as a prefix of {text!r}")
        labels[: len(prompt_ids)] = [IGNORE_INDEX] * len(prompt_ids)
    return {"input_ids": input_ids, "labels": labels}


@dataclass(frozen=True)
class CausalLMCollator:
    """Right-pads a batch of {input_ids, labels} to its longest example; padding gets no attention and no loss."""

    pad_token_id: int

    def __post_init__(self) -> None:
        if not isinstance(self.pad_token_id, int) or isinstance(self.pad_token_id, bool):
            raise ValueError(f"pad_token_id must be an int, got {self.pad_token_id!r}; set tokenizer.pad_token")

    def __call__(self, examples: Sequence[dict[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        length = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)  # (B, T)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            if len(example["labels"]) != n:
                raise ValueError(f"example {row}: {n} input_ids but {len(example['labels'])} labels")
            input_ids[row, :n] = torch.as_tensor(example["input_ids"])
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.as_tensor(example["labels"])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def target_counts(examples: Sequence[dict[str, Sequence[int]]], vocab_size: int) -> np.ndarray:
    """(V,) how often each token is a scored next-token target (labels[1:] that are not -100) in `examples`."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for example in examples:
        targets = np.asarray(example["labels"][1:], dtype=np.int64)
        counts += np.bincount(targets[targets != IGNORE_INDEX], minlength=vocab_size)
    return counts
