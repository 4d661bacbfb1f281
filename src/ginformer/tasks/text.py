"""Any text corpus, for language modelling: a model trained from scratch (GIN, PNA or standard attention), or a
pretrained model fine-tuned on more text.

The corpus (a .txt file, a folder of them, a .jsonl/.parquet text column or a hub dataset) is split by position
(the last `val_fraction` of the characters, as nanoGPT does) or by whole documents, tokenised (`char`: a
vocabulary of the training text's characters, saved with the run; `byte`; or any Hugging Face tokenizer),
memory-mapped, and packed into blocks of `block_size` tokens with no padding (data/text.py).

Metrics beside loss and perplexity: bits per character, loss × (tokens per character) / ln 2, which compares
models whatever their tokenizer, beside the unigram model's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

from ginformer.data.rows import bundled_path
from ginformer.data.text import CorpusSplit, PackedBlocks, TokenizedCorpus, tokenize_corpus, tokenize_source
from ginformer.settings import ConfigError, check_fields, positive, require
from ginformer.tasks.base import Column, Generation, HeldOut, Losses, Scores, Splits, Task

BUNDLED_CORPUS = "tinyshakespeare/input.txt"


def default_cache_dir() -> Path:
    """Where token ids are memory-mapped between runs: $GINFORMER_CACHE, else ~/.cache/ginformer."""
    return Path(os.environ.get("GINFORMER_CACHE", Path.home() / ".cache" / "ginformer")) / "corpora"


@dataclass
class TextSettings:
    """The corpus, its tokenizer, its split and its blocks."""

    task: Literal["text"] = "text"
    source: str = "bundled"  # "bundled" (Tiny Shakespeare), a .txt file, a folder of .txt, a .jsonl/.parquet, a hub id
    text_column: str = "text"  # the column holding the text, for .jsonl, .parquet and hub sources
    # "char" (the training text's characters), "byte", or a tokenizer directory / hub id ("smollm2": the bundled
    # SmolLM2's). None: "char" from scratch; a fine-tuned pretrained model always reads with its own tokenizer.
    tokenizer: str | None = None
    block_size: int = 256  # tokens per training block: the context the model learns to use
    split: Literal["position", "document"] = "position"  # the last val_fraction of the text, or whole documents
    val_fraction: float = 0.1  # nanoGPT holds out 10%
    split_seed: int = 42  # which documents validate (split: document)
    max_val_blocks: int | None = None  # validate on the first N validation blocks (evaluation cost)
    cache_dir: str | None = None  # token ids are memory-mapped here; None: $GINFORMER_CACHE or ~/.cache/ginformer

    def __post_init__(self) -> None:
        check_fields(self, "data")
        require(self.block_size >= 2, "data.block_size", self.block_size, ">= 2 (a block predicts its next tokens)")
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "in (0, 1)")
        positive(self, "data", "max_val_blocks")


class TextTask(Task):
    name = "text"
    settings_class = TextSettings
    columns = (Column("bits_per_char", "bits/char", ".4f", figure=True),)
    settings: TextSettings
    _corpus: TokenizedCorpus | None = None

    def check_model_side(self, side: str) -> None:
        super().check_model_side(side)
        if side == "pretrained" and self.settings.tokenizer is not None:
            raise ConfigError(
                f"data.tokenizer={self.settings.tokenizer!r}: a pretrained model reads text with its own tokenizer; "
                "leave data.tokenizer unset"
            )

    @property
    def source(self) -> str | Path:
        return bundled_path(BUNDLED_CORPUS) if self.settings.source == "bundled" else self.settings.source

    def tokenized(self, tokenizer: str | PreTrainedTokenizerBase) -> TokenizedCorpus:
        """The corpus in `tokenizer`'s ids, memory-mapped; the last one is kept, since a run asks for it three
        times (its tokenizer, its datasets, its evaluation)."""
        if self._corpus is None or self._corpus.tokenizer is not tokenizer:
            s = self.settings
            self._corpus = tokenize_corpus(
                self.source, text_column=s.text_column, tokenizer=tokenizer, split=s.split,
                val_fraction=s.val_fraction, split_seed=s.split_seed, cache_dir=s.cache_dir or default_cache_dir(),
            )
        return self._corpus

    def tokenizer(self, base: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
        # From scratch, a char vocabulary comes from the training text: tokenising builds it.
        return base if base is not None else self.tokenized(self.settings.tokenizer or "char").tokenizer

    def datasets(self, tokenizer: PreTrainedTokenizerBase) -> Splits:
        corpus = self.tokenized(tokenizer)
        blocks = self.settings.block_size
        val = PackedBlocks(corpus.val.ids, blocks)
        sizes = (f"{len(corpus.train.ids):,} training and {len(corpus.val.ids):,} validation tokens in blocks of "
                 f"data.block_size={blocks}, a block needs 2 at least")
        return Splits(PackedBlocks(corpus.train.ids, blocks), _first(val, self.settings.max_val_blocks), blocks,
                      sizes)

    def held_out(self, tokenizer: PreTrainedTokenizerBase, data: Path | None, limit: int | None) -> HeldOut:
        """The blocks of the validation split or of a whole file; `rows` holds the split they come from, whose
        characters turn the loss into bits per character."""
        if data is not None and Path(data).resolve() == Path(self.source).resolve():
            raise ConfigError(f"{data} is the run's training corpus; leave out --data to score its held-out split")
        corpus = self.tokenized(tokenizer)
        if data is None:
            split, name, limit = corpus.val, "val", self.settings.max_val_blocks if limit is None else limit
        else:
            split, name = tokenize_source(data, tokenizer, self.settings.text_column), Path(data).stem
        blocks = _first(PackedBlocks(split.ids, self.settings.block_size), limit)
        counts = block_target_counts(corpus.train.ids, blocks.block_size, len(tokenizer))
        return HeldOut(name, blocks, [split], [], counts, 0)

    def score(self, model, tokenizer, held_out: HeldOut, generation: Generation, losses: Losses) -> Scores:
        (split,) = held_out.rows
        per_char = tokens_per_character(split)
        return Scores(
            values={"bits_per_char": losses.loss * per_char / math.log(2)},
            baselines={"bits_per_char": losses.unigram * per_char / math.log(2)},
            notes={"tokens_per_character": per_char},
        )

    def prompt_ids(self, text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def context_length(self) -> int:
        return self.settings.block_size

    def describe(self) -> str:
        s = self.settings
        tokenizer = s.tokenizer or "char or the base's"  # the default: from scratch, char; a pretrained model's own
        return (f"text ({s.source}, {tokenizer} tokenizer, blocks of {s.block_size}, "
                f"{s.split} split {s.val_fraction:g})")


def _first(blocks: PackedBlocks, limit: int | None) -> PackedBlocks:
    """The first `limit` blocks (all of them when None)."""
    if limit is None or limit >= len(blocks):
        return blocks
    return PackedBlocks(blocks.ids[: limit * blocks.block_size], blocks.block_size)


def tokens_per_character(split: CorpusSplit) -> float:
    """Tokens per character of a split: turns a loss per token into one per character."""
    return len(split.ids) / split.characters


def block_target_counts(ids: np.ndarray, block_size: int, vocab_size: int) -> np.ndarray:
    """(V,) how often each token is a next-token target when `ids` are packed into blocks: every token but the
    first of each block."""
    return np.bincount(ids, minlength=vocab_size) - np.bincount(ids[::block_size], minlength=vocab_size)
