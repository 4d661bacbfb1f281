"""Instruction data for Sparse-GIN and LoRA fine-tuning (paper, section 4.2): GSM8K and FOLIO.

The paper fine-tunes on mlabonne/orca-math-word-problems-80k and on lamm-mit/SAGI-1-SYMBOLIC_DATA_PLUS_REASONING
_DATA_V1_100K; neither can be bundled, so two openly licensed stand-ins ship with the repository (see the
SOURCE.md files): GSM8K (grade-school maths with worked answers ending in ``#### <number>``, same
question/answer schema as orca-math) under ``data/gsm8k/`` and FOLIO (first-order-logic reasoning: premises, a
conclusion, a True/False/Uncertain label) under ``data/folio/``.

Pipeline::

    load_gsm8k / load_folio          -> [InstructExample]  (user text, assistant text, reference, group)
    split_examples                   -> train, val         (90/10, seed 42, grouped: no leakage)
    tokenize_example                 -> {input_ids, attention_mask, labels}  for transformers' Trainer
    encode_generation_prompt + gsm8k_extract_* / extract_label  for generation-based scoring

Two prompt templates. ``"paper"`` is the paper's plain-text format, whatever the tokenizer::

    ### User: {user}<|eot_id|>### Assistant: {answer}<|eot_id|>

(``<|eot_id|>`` is a single token for Llama 3 and several ordinary tokens for SmolLM2; either way the model
learns to write it, and generation stops on the string.) ``"chat"`` renders the tokenizer's own chat template.

The prompt is what the model is given; the completion is what it must write and is the only part with labels.
They are tokenized separately and concatenated, so training sees exactly the prompt tokens that generation
later starts from (tokenizing the joined string could merge tokens across the boundary).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ginformer.data.batches import IGNORE_INDEX
from ginformer.data.rows import HUB_ID, bundled_path, load_hub_dataset, read_jsonl, report_bad_rows

Template = Literal["paper", "chat"]
OnBadRow = Literal["skip", "error"]

PAPER_END = "<|eot_id|>"
PAPER_USER = "### User: "
PAPER_ASSISTANT = "### Assistant:"

# The fixed split seed: every run, every machine, the same validation rows.
SPLIT_SEED = 42

# FOLIO's third class is "Unknown" in v0.0 train and "Uncertain" elsewhere: one label, spelled "Uncertain".
FOLIO_LABELS: tuple[str, ...] = ("True", "False", "Uncertain")
_FOLIO_LABEL_SPELLINGS = {"true": "True", "false": "False", "uncertain": "Uncertain", "unknown": "Uncertain"}
FOLIO_QUESTION = "True, False, or Uncertain?"

BUNDLED = {"gsm8k": "gsm8k/train.jsonl", "folio": "folio/folio-train.jsonl"}  # under data/


@dataclass(frozen=True)
class InstructExample:
    """One validated question/answer pair, ready to format."""

    user: str  # the user's turn: a GSM8K question, or FOLIO premises + conclusion + question
    answer: str  # the assistant's turn the model is trained to write
    reference: str  # what scoring compares with: GSM8K's normalised final number, FOLIO's label
    group: str  # rows sharing a group always land in the same split (see split_examples)
    line: int  # 1-based line in the JSONL file (or 1-based row of a hub split), to trace problems back


# ---------------------------------------------------------------------------------------------------- loading


def load_gsm8k(
    source: str | Path | None = None,
    *,
    on_bad_row: OnBadRow = "skip",
    hub_config: str | None = None,
    hub_split: str = "train",
) -> list[InstructExample]:
    """GSM8K-style rows (``question``, ``answer`` ending in ``#### <number>``) from a JSONL file or a hub id.

    ``source`` None is the bundled file. A string that is not an existing path is loaded with
    ``datasets.load_dataset(source, hub_config, split=hub_split)`` (``openai/gsm8k`` needs ``hub_config="main"``).
    A bad row (invalid JSON, missing key, empty text, no ``#### <number>``) is reported by line:
    ``on_bad_row="skip"`` drops it with one warning naming the count and the first few, ``"error"`` raises a
    ValueError listing them. Rows are grouped by question text, so duplicated questions share a split.
    """
    rows, name = _read_rows(source, "gsm8k", hub_config, hub_split, on_bad_row)
    return _validate_rows(rows, name, _gsm8k_example, on_bad_row)


def load_folio(
    source: str | Path | None = None,
    *,
    on_bad_row: OnBadRow = "skip",
    hub_config: str | None = None,
    hub_split: str = "train",
) -> list[InstructExample]:
    """FOLIO rows (``story_id``, ``premises``, ``conclusion``, ``label``) from a JSONL file or a hub id.

    ``premises`` is a list of sentences (v0.0 files) or one newline-separated string (the hub's FOLIO v2).
    ``label`` is True, False, Uncertain or Unknown (any case; Unknown is read as Uncertain). Bad rows (invalid
    JSON, missing key, empty premises or conclusion, unknown label) are handled as in :func:`load_gsm8k`.

    Groups: each row's group is its story, and stories that share a premise sentence are merged into one group
    (a few FOLIO stories are variants of one another), so no premise is seen in training and scored in val.
    """
    rows, name = _read_rows(source, "folio", hub_config, hub_split, on_bad_row)
    return _merge_groups_sharing_premises(_validate_rows(rows, name, _folio_example, on_bad_row))


def folio_user_text(premises: Sequence[str], conclusion: str) -> str:
    """The user's turn for a FOLIO row: premises one per line, the conclusion, the question."""
    return "\n".join([*premises, f"Conclusion: {conclusion}", FOLIO_QUESTION])


def _gsm8k_example(row: dict, line: int) -> InstructExample:
    question, answer = _text_field(row, "question"), _text_field(row, "answer")
    final = gsm8k_extract_strict(answer)
    if final is None:
        raise ValueError("answer has no final '#### <number>' line")
    return InstructExample(user=question, answer=answer, reference=final, group=question, line=line)


def _folio_example(row: dict, line: int) -> InstructExample:
    if "story_id" not in row or row["story_id"] is None or str(row["story_id"]).strip() == "":
        raise ValueError("missing key 'story_id'")
    if "premises" not in row:
        raise ValueError("missing key 'premises'")
    premises = row["premises"]
    if isinstance(premises, str):
        premises = premises.split("\n")
    if not isinstance(premises, list) or not all(isinstance(p, str) for p in premises):
        raise ValueError(f"'premises' must be a list of strings or one string, got {type(row['premises']).__name__}")
    premises = [p.strip() for p in premises if p.strip()]
    if not premises:
        raise ValueError("'premises' is empty")
    conclusion = _text_field(row, "conclusion")
    if "label" not in row:
        raise ValueError("missing key 'label'")
    label = _FOLIO_LABEL_SPELLINGS.get(str(row["label"]).strip().lower())
    if label is None:
        raise ValueError(f"label {row['label']!r} is not one of ['True', 'False', 'Uncertain', 'Unknown']")
    user = folio_user_text(premises, conclusion)
    return InstructExample(user=user, answer=label, reference=label, group=f"story {row['story_id']}", line=line)


def _text_field(row: dict, key: str) -> str:
    if key not in row:
        raise ValueError(f"missing key {key!r}")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} is empty or not a string")
    return value.strip()


def _validate_rows(rows, name: str, make, on_bad_row: OnBadRow) -> list[InstructExample]:
    """Examples from (line, row-or-problem) pairs; bad rows collected and reported together."""
    examples: list[InstructExample] = []
    bad: list[tuple[int, str]] = []
    for line, row in tqdm(rows, desc=name, leave=False, disable=None):
        try:
            if isinstance(row, str):  # the reader could not parse this line; row is the reason
                raise ValueError(row)
            examples.append(make(row, line))
        except ValueError as problem:
            bad.append((line, str(problem)))
    report_bad_rows(name, bad, on_bad_row, where="line", stacklevel=4)  # called by the public loaders
    if not examples:
        raise ValueError(f"{name}: no usable rows")
    return examples


def _read_rows(
    source: str | Path | None,
    bundled: Literal["gsm8k", "folio"],
    hub_config: str | None,
    hub_split: str,
    on_bad_row: OnBadRow,
) -> tuple[list[tuple[int, dict | str]], str]:
    """(line, row) pairs and a name for messages; a line that is not a JSON object comes as (line, reason)."""
    if on_bad_row not in ("skip", "error"):
        raise ValueError(f"on_bad_row must be 'skip' or 'error', got {on_bad_row!r}")
    path = bundled_path(BUNDLED[bundled]) if source is None else Path(source)
    if path.exists():
        if path.is_dir():
            raise ValueError(f"{path} is a directory; expected a .jsonl file")
        return list(read_jsonl(path)), str(path)
    if isinstance(source, Path) or path.suffix in (".jsonl", ".json") or not HUB_ID.match(str(source)):
        raise FileNotFoundError(f"{bundled} source file not found: {path} (and it is not a hub id owner/name)")
    dataset = load_hub_dataset(str(source), hub_config, hub_split, local_formats=".jsonl")
    return list(enumerate(dataset, start=1)), f"hub dataset {source!r} ({hub_split})"


def _merge_groups_sharing_premises(examples: list[InstructExample]) -> list[InstructExample]:
    """Union-find over stories: two stories sharing any premise sentence get one group (the smallest name)."""
    parent: dict[str, str] = {}

    def root(group: str) -> str:
        while parent.setdefault(group, group) != group:
            group = parent[group]
        return group

    first_story_of: dict[str, str] = {}
    for example in examples:
        for premise in example.user.split("\n")[:-2]:  # the last two lines are the conclusion and the question
            other = first_story_of.setdefault(premise, example.group)
            a, b = root(example.group), root(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [
        example if root(example.group) == example.group else _replace_group(example, root(example.group))
        for example in examples
    ]


def _replace_group(example: InstructExample, group: str) -> InstructExample:
    return InstructExample(example.user, example.answer, example.reference, group, example.line)


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


# ---------------------------------------------------------------------------------------------------- format


def format_example(
    example: InstructExample, template: Template = "paper", tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[str, str]:
    """(prompt, completion) texts: the model reads the prompt and is trained to write the completion.

    ``"paper"``: prompt ``### User: {user}<|eot_id|>### Assistant:``, completion `` {answer}<|eot_id|>``; joined
    they are the paper's format exactly. The space stays with the answer because BPE tokenizers attach a
    leading space to the following word. ``"chat"``: the tokenizer's chat template with a generation prompt,
    and the rest of the rendered conversation (the answer and the template's end-of-turn marker).
    """
    if template == "paper":
        return f"{PAPER_USER}{example.user}{PAPER_END}{PAPER_ASSISTANT}", f" {example.answer}{PAPER_END}"
    if template != "chat":
        raise ValueError(f"template must be 'paper' or 'chat', got {template!r}")
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("template='chat' needs a tokenizer with a chat template; use template='paper'")
    user = [{"role": "user", "content": example.user}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": example.answer}], tokenize=False, add_generation_prompt=False
    )
    if not full.startswith(prompt):
        raise ValueError(
            f"the chat template of {tokenizer.name_or_path!r} does not render the generation prompt as a prefix "
            "of the conversation, so the answer tokens cannot be told apart; use template='paper'"
        )
    return prompt, full[len(prompt) :]


def encode_prompt(prompt: str, tokenizer: PreTrainedTokenizerBase, template: Template = "paper") -> list[int]:
    """Token ids of a prompt, as training and generation both see it.

    A rendered chat template already holds its special tokens (``<|begin_of_text|>`` for Llama 3), so none are
    added. The paper template gets the tokenizer's BOS only if the tokenizer adds one by itself (Llama 3 does,
    SmolLM2 does not), as the paper's training pipeline did; nothing else (no EOS) is added.
    """
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if template == "paper" and _adds_bos(tokenizer):
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


# ---------------------------------------------------------------------------------------------------- tokenize


def tokenize_example(
    example: InstructExample, tokenizer: PreTrainedTokenizerBase, template: Template = "paper"
) -> dict[str, list[int]]:
    """``input_ids`` = prompt + completion tokens, ``labels`` = -100 on the prompt and the completion's ids on
    the completion (answer and end marker), ``attention_mask`` all ones. Unpadded, untruncated."""
    prompt, completion = format_example(example, template, tokenizer)
    prompt_ids = encode_prompt(prompt, tokenizer, template)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return {
        "input_ids": prompt_ids + completion_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(completion_ids)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    }


# ---------------------------------------------------------------------------------------------------- evaluate


def encode_generation_prompt(
    example: InstructExample, tokenizer: PreTrainedTokenizerBase, template: Template = "paper"
) -> list[int]:
    """The ids generation starts from: exactly the prompt tokens training saw before the answer (see
    encode_prompt). With the paper template, stop generation on the string ``<|eot_id|>``."""
    prompt, _ = format_example(example, template, tokenizer)
    return encode_prompt(prompt, tokenizer, template)


# A number as written in maths answers: optional sign (not a hyphen inside "10-5"), optional $, digits with or
# without thousands commas, optional decimals; or a bare decimal such as ".5".
_NUMBER = r"(?:(?<![\w.])-)?\$?\s?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_NUMBER_RE = re.compile(_NUMBER)
_STRICT_RE = re.compile(r"####\s*(" + _NUMBER + ")")
_LABEL_RE = re.compile(r"\b(true|false|uncertain|unknown)\b", re.IGNORECASE)


def normalize_number(text: str) -> str | None:
    """Canonical spelling of a number so equal values compare equal: no ``$``, no commas, no spaces, no trailing
    ``.``, no trailing decimal zeros ("$1,234.50" -> "1234.5", "3.00" -> "3", "-0" -> "0"). None if not a number."""
    cleaned = text.strip().replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    if not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def gsm8k_extract_strict(text: str) -> str | None:
    """The normalised number right after the first ``####`` (GSM8K's final-answer marker); None if absent."""
    match = _STRICT_RE.search(text)
    return normalize_number(match.group(1)) if match else None


def gsm8k_extract_flexible(text: str) -> str | None:
    """The normalised last number anywhere in the text; None if the text holds no number."""
    numbers = _NUMBER_RE.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def extract_label(text: str) -> str | None:
    """The first True / False / Uncertain (or Unknown, read as Uncertain) word in the text, any case; else None."""
    match = _LABEL_RE.search(text)
    return _FOLIO_LABEL_SPELLINGS[match.group(1).lower()] if match else None


def majority_baseline(
    train: Sequence[InstructExample], scored: Sequence[InstructExample]
) -> tuple[str, float]:
    """(label, accuracy): the most common reference in ``train`` (ties: the earliest in FOLIO_LABELS, then
    alphabetical) and its accuracy on ``scored``. The floor a FOLIO model must beat."""
    if not train or not scored:
        raise ValueError("majority_baseline needs non-empty train and scored examples")
    counts = Counter(e.reference for e in train)
    order = {label: i for i, label in enumerate(FOLIO_LABELS)}
    label = min(counts, key=lambda r: (-counts[r], order.get(r, len(order)), r))
    return label, sum(e.reference == label for e in scored) / len(scored)
