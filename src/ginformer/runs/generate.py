"""The one generation loop: batched, left-padded prompts through `model.generate` with its KV cache.

Evaluation uses it greedily (protein labels, GSM8K answers, FOLIO labels); `ginformer generate` samples with
temperature, top-k and top-p and streams to the terminal. Any model with transformers' `generate` works: a
ginformer model, a frozen base, a Sparse-GIN or a peft LoRA model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, TextStreamer

from ginformer.data.rows import read_records
from ginformer.files import atomic_write_text, check_output_file, decode_text, refuse_special_file


@dataclass(frozen=True)
class Sampling:
    """Sampling instead of greedy decoding (transformers' names and meanings)."""

    temperature: float = 1.0
    top_k: int | None = None  # keep the k most likely tokens; None: all
    top_p: float | None = None  # keep the smallest set whose probability reaches p; None: all

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (greedy decoding is the default), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict:
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k or 0,
                "top_p": 1.0 if self.top_p is None else self.top_p}


def _decoding(tokenizer: PreTrainedTokenizerBase, stop: str | None, sampling: Sampling | None) -> dict:
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
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    options = _decoding(tokenizer, stop, sampling)
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
               **_decoding(tokenizer, stop, sampling)}
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


class RunGenerator:
    """A finished run's model, ready to generate. Prompts go through the run's task, so a protein run wraps a bare
    residue sequence in its markers and an instruction run puts a prompt, or a whole conversation, in its
    template; answers stop where the task's turns end."""

    def __init__(self, run_dir: str | Path):
        from ginformer.runs.evaluate import load_run

        settings, self.model, self.tokenizer = load_run(run_dir)
        self.task = settings.task()
        self.window = self.task.context_length() or getattr(self.model.config, "max_position_embeddings", None)
        self.stop = self.task.stop_string()

    def encode(self, prompt: str | Sequence[Mapping[str, str]]) -> list[int]:
        """A text, or a conversation so far as {role, content} messages (instruction runs)."""
        if not isinstance(prompt, str) and not self.task.conversational:
            raise ValueError(f"a {self.task.name} run continues text: conversations ({{role, content}} messages, "
                             "--chat) need an instruction run")
        ids = self.task.prompt_ids(prompt, self.tokenizer)
        if not ids:
            raise ValueError("the prompt is empty: give at least one character to continue")
        return ids

    def text(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text.split(self.stop, 1)[0] if self.stop else text

    def continue_text(self, prompt: str, *, max_new_tokens: int = 200, sampling: Sampling | None = None,
                      seed: int = 0) -> str:
        """Continue one prompt, streaming to stdout; returns the generated text."""
        torch.manual_seed(seed)
        return self.text(stream(self.model, self.tokenizer, self.encode(prompt), max_new_tokens=max_new_tokens,
                                sampling=sampling, window=self.window, stop=self.stop))

    def complete_file(self, prompts: str | Path, output: str | Path, *, max_new_tokens: int = 200,
                      sampling: Sampling | None = None, seed: int = 0, batch_size: int = 8) -> int:
        """Answer every prompt of a file, batched, into a JSONL of {where, prompt, completion}; returns the count.

        `prompts`: a .txt file (one prompt per line) or a .jsonl file whose rows hold a `prompt` (a string, or a
        list of {role, content} messages) or `messages` (a conversation so far). `output` is written whole when
        every answer is done, and may not be `prompts`."""
        check_output_file(output, "output file", inputs=[prompts])
        rows = read_prompts(Path(prompts))
        torch.manual_seed(seed)
        ids = [self.encode(prompt) for _, prompt in rows]
        window = self.window or max(map(len, ids)) + max_new_tokens
        too_long = [where for (where, _), prompt in zip(rows, ids) if len(prompt) + max_new_tokens > window]
        if too_long:
            raise ValueError(f"{prompts}: {', '.join(too_long[:5])}: the prompt and --max-new-tokens exceed the "
                             f"{window} positions the model was trained on")
        new = generate_batched(self.model, self.tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               stop=self.stop, sampling=sampling)
        atomic_write_text(output, "".join(
            json.dumps({"where": where, "prompt": prompt, "completion": self.text(answer)}, ensure_ascii=False) + "\n"
            for (where, prompt), answer in zip(rows, new)))
        return len(rows)

    def chat(self, lines: Iterable[str], *, max_new_tokens: int = 256, sampling: Sampling | None = None,
             seed: int = 0, show: Callable[[str], None] = print) -> list[dict[str, str]]:
        """A conversation: each line is the user's next turn, the model answers (streamed) with the whole history
        in the run's template. "/reset" forgets the history; "/exit" or the end of input ends. Returns the
        conversation as messages."""
        if not self.task.conversational:  # before the user types a turn
            raise ValueError(f"--chat needs an instruction run; a {self.task.name} run continues text (--prompt)")
        torch.manual_seed(seed)
        messages: list[dict[str, str]] = []
        show("chat with the model: /reset forgets the conversation, /exit or Ctrl-D ends it")
        for line in lines:
            text = line.strip()
            if text == "/exit":
                break
            if text == "/reset":
                messages = []
                show("(conversation forgotten)")
                continue
            if not text:
                continue
            messages.append({"role": "user", "content": text})
            new = stream(self.model, self.tokenizer, self.encode(messages), max_new_tokens=max_new_tokens,
                         sampling=sampling, window=self.window, stop=self.stop)
            messages.append({"role": "assistant", "content": self.text(new).strip()})
        return messages


def read_prompts(path: Path) -> list[tuple[str, str | list]]:
    """(where, prompt) pairs of a prompts file: .txt lines, or .jsonl rows with `prompt` or `messages`."""
    refuse_special_file(path, "prompts file")
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    if path.suffix == ".jsonl":
        rows = []
        for where, row in read_records(path, (".jsonl",))[0]:
            prompt = row.get("prompt", row.get("messages")) if isinstance(row, dict) else None
            if not isinstance(prompt, (str, list)) or not prompt:
                raise ValueError(f"{path}: {where}: expected an object with a 'prompt' (text or messages) or "
                                 f"'messages'" + (f" ({row})" if isinstance(row, str) else ""))
            rows.append((where, prompt))
        return rows
    lines = decode_text(path.read_bytes(), path).splitlines()
    rows = [(f"line {n}", line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no prompt in it")
    return rows
