"""Generation for any model with transformers' `generate`: batched, left-padded prompts through its KV cache
(`generate_batched`), or one prompt streamed to the terminal (`stream`), greedy or sampled.

Evaluation generates greedily (protein labels, GSM8K answers, FOLIO labels); `ginformer generate` samples with
temperature, top-k and top-p. A ginformer model, a frozen base, a Sparse-GIN or a peft LoRA model all work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, TextStreamer

from ginformer.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """Sampling instead of greedy decoding (transformers' names and meanings)."""

    temperature: float = 1.0
    top_k: int | None = None  # keep the k most likely tokens; None: all
    top_p: float | None = None  # keep the smallest set whose probability reaches p; None: all

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0 (greedy decoding is the default), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict:
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k or 0,
                "top_p": 1.0 if self.top_p is None else self.top_p}


def decoding(tokenizer: PreTrainedTokenizerBase, stop: str | None, sampling: Sampling | None) -> dict:
    """generate()'s keyword arguments for greedy or sampled decoding, stopping at `stop` when given."""
    options = {"stop_strings": [stop], "tokenizer": tokenizer} if stop else {}
    return {**options, **(sampling.generate_kwargs() if sampling else {"do_sample": False})}


@torch.no_grad()
def generate_batched(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    stop: str | None = None,
    sampling: Sampling | None = None,
) -> list[list[int]]:
    """The new token ids generated after each prompt (greedy unless `sampling`), in the order of `prompts`.

    Prompts are batched by length and left-padded (generation appends on the right). A row stops at the
    tokenizer's end token or, when `stop` is given, once its text contains `stop`; the positions after a
    stopped row's end hold the pad id.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    options = decoding(tokenizer, stop, sampling)
    generated: dict[int, list[int]] = {}
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
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            **options,
        )
        for row, i in enumerate(rows):
            generated[i] = output[row, width:].tolist()
    return [generated[i] for i in range(len(prompts))]


class StopStreamer(TextStreamer):
    """Prints generated text as it comes, up to a stop string (the paper template's ``<|eot_id|>``) that the
    tokenizer writes as ordinary tokens: text that may begin the stop string is held back until it cannot."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: str | None):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop, self.pending, self.stopped = stop, "", False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.stopped:
            self.pending += text
            if self.stop and self.stop in self.pending:
                self.pending, self.stopped = self.pending.split(self.stop, 1)[0], True
        hold = 0 if self.stopped or stream_end or not self.stop else len(self.stop) - 1
        shown = max(0, len(self.pending) - hold)
        print(self.pending[:shown], flush=True, end="\n" if stream_end else "")
        self.pending = self.pending[shown:]


@torch.no_grad()
def stream(
    model, tokenizer: PreTrainedTokenizerBase, prompt: Sequence[int], *, max_new_tokens: int,
    sampling: Sampling | None = None, window: int | None = None, stop: str | None = None,
) -> list[int]:
    """Generate after one prompt, printing the text to stdout as it comes; returns the new token ids.

    A model that was trained on blocks of `window` tokens has never seen a later position, so once the text
    outgrows the window it reads only the last `window` tokens, one new token at a time (as nanoGPT samples).
    """
    device = next(model.parameters()).device
    streamer = StopStreamer(tokenizer, stop)
    options = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
               **decoding(tokenizer, stop, sampling)}
    if window is None or len(prompt) + max_new_tokens <= window:
        input_ids = torch.tensor([list(prompt)], device=device)  # (1, T)
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                max_new_tokens=max_new_tokens, streamer=streamer, **options)
        return output[0, input_ids.shape[1] :].tolist()
    ids, new = list(prompt), []
    streamer.put(torch.tensor([ids]))  # the prompt, which the streamer skips
    for _ in range(max_new_tokens):
        context = torch.tensor([ids[-window:]], device=device)  # (1, ≤ window)
        token = model.generate(input_ids=context, attention_mask=torch.ones_like(context), max_new_tokens=1,
                               **options)[0, -1].item()
        ids.append(token)
        new.append(token)
        streamer.put(torch.tensor([token]))
        if token == tokenizer.eos_token_id or streamer.stopped:
            break
    streamer.end()
    return new
