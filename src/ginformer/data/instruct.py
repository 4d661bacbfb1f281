"""Instruction data for fine-tuning, in the shapes TRL's trainers read.

    text                {"text": "..."}                                   loss on every token
    prompt_completion   {"prompt": "...", "completion": "..."}            loss on the completion only
                        or conversational: prompt and completion are lists of {role, content} messages
    messages            {"messages": [{role: system|user|assistant, content}, ...]}
                                                                          loss on every assistant turn only
    preference          {"prompt": "...", "chosen": "...", "rejected": "..."}
                        or conversational: a list of messages and one assistant message each; DPO prefers
                        chosen to rejected, SFT trains on chosen

`load_instruct` reads a .jsonl, .json or .parquet file or a hub dataset, maps other column names onto these
(`columns={"prompt": "question", "completion": "answer"}`), decides the shape from the columns when asked to
(`format="auto"`), and validates every row: a bad row is named by file and line (or row) and skipped or fatal.
Every row becomes an `InstructExample`: a conversation whose trained assistant turns carry the loss (a plain
prompt/completion pair is the conversation [user: prompt, assistant: completion]), or a text.

Two templates render a conversation. ``"paper"`` is the paper's plain-text format, whatever the tokenizer::

    ### System: {system}<|eot_id|>### User: {user}<|eot_id|>### Assistant: {answer}<|eot_id|>

(``<|eot_id|>`` is a single token for Llama 3 and several ordinary tokens for SmolLM2; either way the model
learns to write it, and generation stops on the string.) ``"chat"`` renders the tokenizer's own chat template.
The rendering is cut into segments at every trained assistant turn (`segments`): a turn's text and its
end-of-turn marker carry the loss, the template's text around it does not, and each segment is tokenised on its
own, so no token straddles a boundary and training sees exactly the prompt tokens generation starts from.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ginformer.data.batches import IGNORE_INDEX
from ginformer.data.rows import read_records, report_bad_rows
from ginformer.errors import ConfigError, DataError

Template = Literal["paper", "chat"]
Format = Literal["text", "prompt_completion", "messages", "preference"]
OnBadRow = Literal["skip", "error"]

FORMATS: dict[str, tuple[str, ...]] = {  # a shape and the columns that make it
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".json", ".parquet")

PAPER_END = "<|eot_id|>"
PAPER_HEADERS = {"system": "### System: ", "user": "### User: ", "assistant": "### Assistant:"}

SPLIT_SEED = 42  # the fixed split seed: every run, every machine, the same validation rows


@dataclass(frozen=True)
class Message:
    role: str  # system, user or assistant
    content: str
    trained: bool = False  # an assistant turn whose text the loss falls on


@dataclass(frozen=True)
class InstructExample:
    """One validated row: a conversation (`messages`) or a plain `text`."""

    messages: tuple[Message, ...]  # empty for a text row
    text: str | None = None  # a text row: every token carries the loss
    rejected: tuple[Message, ...] = ()  # a preference row: the completion it ranks below its last trained turn
    reference: str = ""  # what generation is scored against (GSM8K's final number, FOLIO's label); "" if nothing
    group: str = ""  # rows sharing a group always land in the same split (see split_examples)
    where: str = ""  # "line 12" (JSONL) or "row 3": traces a row back to its source

    @property
    def prompt(self) -> tuple[Message, ...]:
        """The conversation before its last trained turn: what a model is given to generate that turn."""
        last = max(i for i, m in enumerate(self.messages) if m.trained)
        return self.messages[:last]

    @property
    def answer(self) -> str:
        """The last trained turn's text."""
        return next(m.content for m in reversed(self.messages) if m.trained)


def conversation(prompt: str, answer: str, system: str | None = None, **fields) -> InstructExample:
    """The single-turn conversation [system], user: prompt, assistant: answer (trained)."""
    head = (Message("system", system),) if system else ()
    return InstructExample((*head, Message("user", prompt), Message("assistant", answer, trained=True)), **fields)


# ---------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class InstructData:
    examples: list[InstructExample]
    format: Format  # the format the rows were read in
    conversational: bool  # messages, or prompt/completion as lists of messages: the chat template suits them


def load_instruct(
    source: str | Path,
    *,
    format: Format | Literal["auto"] = "auto",
    columns: Mapping[str, str] | None = None,
    on_bad_row: OnBadRow = "skip",
    hub_config: str | None = None,
    hub_split: str = "train",
) -> InstructData:
    """Every usable row of `source` as an InstructExample, with the format it was read in.

    `columns` maps our names (text, prompt, completion, messages) to the source's: a mapped column must be in the
    source, and it wins over a source column that happens to bear our name. `format="auto"` picks the
    format from the columns (messages, then prompt/completion, then text); rows with another format's columns
    are an error naming rows that disagree. Within the format, a bad row (missing or empty field, an unknown
    role, a conversation with no assistant turn or whose last message is not the assistant's) is skipped with one
    warning naming it (`on_bad_row="skip"`) or fatal ("error"). Rows are grouped by their prompt, so repeated
    prompts share a split side.
    """
    if on_bad_row not in ("skip", "error"):
        raise ValueError(f"on_bad_row must be 'skip' or 'error', got {on_bad_row!r}")
    columns = dict(columns or {})
    names = {**{name: name for names in FORMATS.values() for name in names}, **columns}
    records, name = read_records(source, SUFFIXES, hub_config=hub_config, hub_split=hub_split)
    if not any(isinstance(row, dict) for _, row in records):
        report_bad_rows(name, records, "error")  # the reader's reasons: no row is an object at all
        raise DataError(f"{name}: no rows in it")
    _check_columns(records, columns, name)
    rows = [(where, _rename(row, columns)) for where, row in records]
    chosen = _detect_format(rows, name, names) if format == "auto" else format
    if chosen not in FORMATS:
        raise ValueError(f"format must be one of {['auto', *FORMATS]}, got {format!r}")
    examples, bad = [], []
    for where, row in tqdm(rows, desc=name, leave=False, disable=None):
        try:
            if isinstance(row, str):  # the reader could not parse this row; row is the reason
                raise DataError(row)
            examples.append(_PARSERS[chosen](row, where, names))
        except DataError as problem:
            bad.append((where, str(problem)))
    report_bad_rows(name, bad, on_bad_row)
    if not examples:
        raise DataError(f"{name}: no usable {chosen} rows")
    conversational = chosen == "messages" or (
        chosen in ("prompt_completion", "preference") and any(isinstance(row.get("prompt"), list) for _, row in rows
                                                              if isinstance(row, dict)))
    return InstructData(examples, chosen, conversational)


def _check_columns(records: list[tuple[str, dict | str]], columns: Mapping[str, str], name: str) -> None:
    """Each column the mapping names is in the source, and no two of our names take the same column."""
    taken: dict[str, str] = {}
    for ours, theirs in columns.items():
        if theirs in taken:
            raise ConfigError(f"the column mapping gives '{theirs}' to both {taken[theirs]} and {ours}: map each of "
                              "our names to its own column")
        taken[theirs] = ours
    found = {key for _, row in records if isinstance(row, dict) for key in row}
    for ours, theirs in columns.items():
        if theirs not in found:
            raise ConfigError(f"{name}: the column mapping {{{ours}: {theirs}}} names a column '{theirs}' that no row "
                              f"has (columns: {', '.join(sorted(found))}); fix data.columns")


def _rename(row: dict | str, columns: Mapping[str, str]) -> dict | str:
    """The row with each mapped column under our name. A column that already bears one of the mapped names of ours
    is dropped: the mapping says where that field is, and another column of the same name must not stand in."""
    if isinstance(row, str):
        return row
    ours_of = {theirs: ours for ours, theirs in columns.items()}
    renamed = {key: value for key, value in row.items() if key not in ours_of and key not in columns}
    renamed.update((ours_of[key], value) for key, value in row.items() if key in ours_of)
    return renamed


def _detect_format(rows: list[tuple[str, dict | str]], name: str, names: Mapping[str, str]) -> Format:
    """The format whose columns the rows have. Rows with another format's columns are an error naming them; a
    row with none is left to the parser, which names its missing field."""
    seen: dict[str, str] = {}  # format -> the first row in it
    for where, row in rows:
        if isinstance(row, dict):
            found = next((f for f, needed in FORMATS.items() if all(c in row for c in needed)), None)
            if found is not None:
                seen.setdefault(found, where)
    if not seen:
        wanted = "; ".join(f"{f}: {', '.join(names[c] for c in cs)}" for f, cs in FORMATS.items())
        raise DataError(f"{name}: no row has the columns of a format ({wanted}); map yours with data.columns, "
                        "e.g. {prompt: question, completion: answer}")
    if len(seen) > 1:
        disagree = ", ".join(f"{where} is {f}" for f, where in seen.items())
        raise DataError(f"{name}: rows disagree on the format ({disagree}); give each file one format")
    return next(iter(seen))


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"'{field}' is empty or not a string")
    return value


def _messages(value: object, field: str, trained: bool) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"'{field}' must be a non-empty list of {{role, content}} messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise DataError(f"{field}[{i}] is not a {{role, content}} message")
        role = message["role"]
        if role not in ROLES:
            raise DataError(f"{field}[{i}]: role {role!r} is not one of {list(ROLES)}")
        if role == "system" and (i > 0 or field == "completion"):
            raise DataError(f"{field}[{i}]: a system message may only come first")
        messages.append(Message(role, _text(message["content"], f"{field}[{i}].content"),
                                trained and role == "assistant"))
    return tuple(messages)


def _checked(messages: tuple[Message, ...], field: str) -> tuple[Message, ...]:
    if not any(m.role == "assistant" for m in messages):
        raise DataError(f"'{field}' has no assistant turn: nothing to learn")
    if messages[-1].role != "assistant":
        raise DataError(f"'{field}' ends with a {messages[-1].role} message, not the assistant's")
    if next(m.role for m in messages if m.role != "system") == "assistant":
        raise DataError(f"'{field}' starts with an assistant turn: there is no prompt to answer")
    return messages


def _parse_text(row: dict, where: str, names: Mapping[str, str]) -> InstructExample:
    return InstructExample((), text=_text(row.get("text"), names["text"]), group=row["text"], where=where)


def _parse_prompt_completion(row: dict, where: str, names: Mapping[str, str]) -> InstructExample:
    for field in ("prompt", "completion"):
        if row.get(field) is None:
            raise DataError(f"missing '{names[field]}'")
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        prompt, completion = _text(prompt, names["prompt"]), _text(completion, names["completion"])
        return conversation(prompt, completion, group=prompt, where=where)
    if not isinstance(prompt, list) or not isinstance(completion, list):
        raise DataError(f"'{names['prompt']}' and '{names['completion']}' must both be strings or both be lists "
                        "of messages")
    messages = _checked(_messages(prompt, names["prompt"], False) + _messages(completion, names["completion"], True),
                        names["completion"])
    return InstructExample(messages, group=json.dumps(prompt, sort_keys=True), where=where)


def _parse_messages(row: dict, where: str, names: Mapping[str, str]) -> InstructExample:
    messages = _checked(_messages(row.get("messages"), names["messages"], True), names["messages"])
    last = max(i for i, m in enumerate(messages) if m.trained)
    return InstructExample(messages, group=json.dumps([[m.role, m.content] for m in messages[:last]]), where=where)


def _parse_preference(row: dict, where: str, names: Mapping[str, str]) -> InstructExample:
    for field in ("prompt", "chosen", "rejected"):
        if row.get(field) is None:
            raise DataError(f"missing '{names[field]}'")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt_messages = (Message("user", _text(prompt, names["prompt"])),)
    else:
        prompt_messages = _messages(prompt, names["prompt"], False)
    chosen, rejected = (_completion(row[field], names[field]) for field in ("chosen", "rejected"))
    messages = _checked(prompt_messages + chosen, names["chosen"])
    group = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    return InstructExample(messages, rejected=rejected, group=group, where=where)


def _completion(value: object, field: str) -> tuple[Message, ...]:
    """A preference row's chosen or rejected completion: a string, or a list of one assistant message (TRL's two
    shapes); ranking longer completions against each other is not what DPO's pairs mean."""
    if isinstance(value, str):
        return (Message("assistant", _text(value, field), trained=True),)
    messages = _messages(value, field, True)
    if len(messages) != 1 or messages[0].role != "assistant":
        raise DataError(f"'{field}' must be a string or a list of one assistant message")
    return messages


_PARSERS = {"text": _parse_text, "prompt_completion": _parse_prompt_completion, "messages": _parse_messages,
            "preference": _parse_preference}


# ---------------------------------------------------------------------------------------------------- split


def split_examples(
    examples: Sequence[InstructExample], val_fraction: float = 0.1, seed: int = SPLIT_SEED
) -> tuple[list[InstructExample], list[InstructExample]]:
    """Deterministic (train, val) split that never cuts a group.

    The groups, in order of first appearance, are shuffled with ``random.Random(seed)``; whole groups go to
    validation until it holds at least ``round(val_fraction * len(examples))`` rows (one group at least when
    val_fraction > 0; never all groups). Why groups: a FOLIO story contributes several rows with the same
    premises; were they spread over both sides, validation would score premises the model was trained on
    (leakage) and overstate generalisation. Both lists keep the source order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    groups = list(dict.fromkeys(e.group for e in examples))
    random.Random(seed).shuffle(groups)
    sizes = Counter(e.group for e in examples)
    target = round(val_fraction * len(examples))
    if val_fraction > 0:
        target = max(target, 1)
    val_groups: set[str] = set()
    n_val = 0
    for group in groups[:-1]:  # the last group always stays in train
        if n_val >= target:
            break
        val_groups.add(group)
        n_val += sizes[group]
    train = [e for e in examples if e.group not in val_groups]
    val = [e for e in examples if e.group in val_groups]
    return train, val


# ---------------------------------------------------------------------------------------------------- render


def segments(
    example: InstructExample, template: Template, tokenizer: PreTrainedTokenizerBase
) -> list[tuple[str, bool]]:
    """The rendered example as (text, trained) segments that join to the whole rendering.

    A text row is its text and the end token, all trained. A conversation is cut at every trained assistant
    turn: the turn's text up to and including its end-of-turn marker is trained; the template's text around it
    (headers, the newline after a marker, other turns) is not.
    """
    if example.text is not None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"{tokenizer.name_or_path!r} has no end token to close a text row with")
        return [(example.text, True), (tokenizer.eos_token, True)]
    render = _RENDERERS[template]
    parts: list[tuple[str, bool]] = []
    rendered = ""  # the rendering up to the end of the last trained turn, all of it in `parts`
    for i, message in enumerate(example.messages):
        if not message.trained:
            continue
        before = render(example.messages[:i], tokenizer, True)
        after = render(example.messages[: i + 1], tokenizer, False)
        if not after.startswith(before) or not before.startswith(rendered):
            raise ConfigError(
                f"the {template} template of {tokenizer.name_or_path!r} does not render each turn as a prefix of "
                "the next, so the assistant's tokens cannot be told apart; use data.template=paper"
            )
        end = _end_of_turn(after, len(before), template, tokenizer)
        parts += [(before[len(rendered) :], False), (after[len(before) : end], True)]
        rendered = after[:end]
    parts.append((render(example.messages, tokenizer, False)[len(rendered) :], False))
    return [(text, trained) for text, trained in parts if text]


def _end_of_turn(rendering: str, start: int, template: Template, tokenizer: PreTrainedTokenizerBase) -> int:
    """Where a turn starting at `start` ends: just after its end-of-turn marker (the paper's <|eot_id|>, the
    tokenizer's end token), so that the separator a template writes after the marker carries no loss."""
    marker = PAPER_END if template == "paper" else tokenizer.eos_token
    found = rendering.rfind(marker, start) if marker else -1
    return len(rendering) if found < 0 else found + len(marker)


def _paper(messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, generation_prompt: bool) -> str:
    """The paper's format; the space of an answer stays with it, as BPE tokenizers attach it to the next word."""
    text = "".join(
        f"{PAPER_HEADERS['assistant']} {m.content}{PAPER_END}" if m.role == "assistant"
        else f"{PAPER_HEADERS[m.role]}{m.content}{PAPER_END}"
        for m in messages
    )
    return text + (PAPER_HEADERS["assistant"] if generation_prompt else "")


def _chat(messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{tokenizer.name_or_path!r} has no chat template; use data.template=paper")
    if not messages:
        return ""
    turns = [{"role": m.role, "content": m.content} for m in messages]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)


_RENDERERS = {"paper": _paper, "chat": _chat}


# ---------------------------------------------------------------------------------------------------- tokenize


def tokenize_example(
    example: InstructExample, tokenizer: PreTrainedTokenizerBase, template: Template = "paper"
) -> dict[str, list[int]]:
    """``input_ids`` of the rendered example and ``labels``: the ids on trained segments, -100 elsewhere. Each
    segment is tokenised on its own. Unpadded, untruncated."""
    input_ids: list[int] = _bos(tokenizer, template)
    labels: list[int] = [IGNORE_INDEX] * len(input_ids)
    for text, trained in segments(example, template, tokenizer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    return {"input_ids": input_ids, "labels": labels}


def truncate_left(feature: dict[str, list[int]], max_length: int) -> dict[str, list[int]] | None:
    """The last `max_length` tokens of an example, or None when that would cut its last trained turn: the
    earliest turns go first, the answer the model must learn stays whole."""
    labels = feature["labels"]
    last = len(labels) - 1
    while last >= 0 and labels[last] == IGNORE_INDEX:
        last -= 1
    first = last
    while first > 0 and labels[first - 1] != IGNORE_INDEX:
        first -= 1
    if len(labels) - first > max_length:
        return None
    return {key: values[-max_length:] for key, values in feature.items()}


def encode_generation_prompt(
    example: InstructExample | Sequence[Message], tokenizer: PreTrainedTokenizerBase, template: Template = "paper"
) -> list[int]:
    """The ids a model generates the next assistant turn from: an example's prompt (the turns before its last
    trained turn) or a conversation so far, with the template's generation prompt. They are exactly the tokens
    training saw before that turn. With the paper template, stop generation on the string ``<|eot_id|>``."""
    messages = example.prompt if isinstance(example, InstructExample) else tuple(example)
    return _bos(tokenizer, template) + tokenizer(
        _RENDERERS[template](messages, tokenizer, True), add_special_tokens=False
    )["input_ids"]


def rejected_example(example: InstructExample) -> InstructExample:
    """A preference row with its rejected completion in place of the chosen one."""
    return InstructExample(example.prompt + example.rejected, reference=example.reference, group=example.group,
                           where=example.where)


# ---------------------------------------------------------------------------------------------------- TRL's shapes


def trl_prompt(example: InstructExample, template: Template, tokenizer: PreTrainedTokenizerBase) -> str | list[dict]:
    """An example's prompt as TRL's DPO and GRPO trainers take it: with the paper template its text up to the
    assistant's header (TRL adds the BOS the tokenizer adds, as `encode_generation_prompt` does); with the chat
    template the conversation as {role, content} messages, which TRL renders with the tokenizer's template."""
    if template == "paper":
        return _paper(example.prompt, tokenizer, True)
    return [{"role": m.role, "content": m.content} for m in example.prompt]


def trl_completion(messages: Sequence[Message], template: Template) -> str | list[dict]:
    """A completion in the shape of `trl_prompt`'s: the paper template's text after the assistant's header (TRL
    appends the tokenizer's end token to it), or the assistant's message."""
    if template == "paper":
        return "".join(f" {m.content}{PAPER_END}" for m in messages)
    return [{"role": m.role, "content": m.content} for m in messages]


def _bos(tokenizer: PreTrainedTokenizerBase, template: Template) -> list[int]:
    """A rendered chat template already holds its special tokens (Llama 3's <|begin_of_text|>). The paper
    template gets the tokenizer's BOS only if the tokenizer adds one by itself (Llama 3 does, SmolLM2 does not),
    as the paper's training pipeline did."""
    bos = tokenizer.bos_token_id
    adds = bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
    return [bos] if template == "paper" and adds else []
