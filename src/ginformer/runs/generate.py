"""`ginformer generate`: a finished run's model continues a prompt, answers a file of prompts, or chats, with its
task's prompt template and stop string (generation.py is the loop).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch

from ginformer.data.rows import read_records
from ginformer.errors import ConfigError, DataError, MissingInput
from ginformer.files import atomic_write_text, check_output_file, decode_text, refuse_special_file
from ginformer.generation import Sampling, generate_batched, stream


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
            raise ConfigError(f"a {self.task.name} run continues text: conversations ({{role, content}} messages, "
                              "--chat) need an instruction run")
        ids = self.task.prompt_ids(prompt, self.tokenizer)
        if not ids:
            raise DataError("the prompt is empty: give at least one character to continue")
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
            raise DataError(f"{prompts}: {', '.join(too_long[:5])}: the prompt and --max-new-tokens exceed the "
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
            raise ConfigError(f"--chat needs an instruction run; a {self.task.name} run continues text (--prompt)")
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
        raise MissingInput(f"prompts file not found: {path}")
    if path.suffix == ".jsonl":
        rows = []
        for where, row in read_records(path, (".jsonl",))[0]:
            prompt = row.get("prompt", row.get("messages")) if isinstance(row, dict) else None
            if not isinstance(prompt, (str, list)) or not prompt:
                raise DataError(f"{path}: {where}: expected an object with a 'prompt' (text or messages) or "
                                f"'messages'" + (f" ({row})" if isinstance(row, str) else ""))
            rows.append((where, prompt))
        return rows
    lines = decode_text(path.read_bytes(), path).splitlines()
    rows = [(f"line {n}", line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: no prompt in it")
    return rows
