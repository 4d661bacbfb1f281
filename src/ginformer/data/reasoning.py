"""GSM8K and FOLIO, the two instruction sets that ship with ginformer (paper section 4.2), and what scores them.

The paper fine-tunes on mlabonne/orca-math-word-problems-80k and on lamm-mit/SAGI-1-SYMBOLIC_DATA_PLUS_REASONING
_DATA_V1_100K; neither can be bundled, so two openly licensed stand-ins ship with the repository (see the
SOURCE.md files): GSM8K (grade-school maths with worked answers ending in ``#### <number>``, the same
question/answer schema as orca-math) under ``data/gsm8k/`` and FOLIO (first-order-logic reasoning: premises, a
conclusion, a True/False/Uncertain label) under ``data/folio/``.

Each row becomes the single-turn conversation [user: question, assistant: answer] of data/instruct.py, with the
reference its generation is scored against: GSM8K's normalised final number, FOLIO's label.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

from tqdm.auto import tqdm

from ginformer.data.instruct import InstructExample, OnBadRow, conversation
from ginformer.data.rows import bundled_path, read_records, report_bad_rows
from ginformer.errors import DataError

BUNDLED = {"gsm8k": "gsm8k/train.jsonl", "folio": "folio/folio-train.jsonl"}  # under data/

# FOLIO's third class is "Unknown" in v0.0 train and "Uncertain" elsewhere: one label, spelled "Uncertain".
FOLIO_LABELS: tuple[str, ...] = ("True", "False", "Uncertain")
_FOLIO_LABEL_SPELLINGS = {"true": "True", "false": "False", "uncertain": "Uncertain", "unknown": "Uncertain"}
FOLIO_QUESTION = "True, False, or Uncertain?"


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
    DataError listing them. Rows are grouped by question text, so duplicated questions share a split.
    """
    return _load(source, "gsm8k", _gsm8k_example, on_bad_row, hub_config, hub_split)


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
    return _merge_groups_sharing_premises(_load(source, "folio", _folio_example, on_bad_row, hub_config, hub_split))


def folio_user_text(premises: Sequence[str], conclusion: str) -> str:
    """The user's turn for a FOLIO row: premises one per line, the conclusion, the question."""
    return "\n".join([*premises, f"Conclusion: {conclusion}", FOLIO_QUESTION])


def _load(source, bundled: str, make, on_bad_row: OnBadRow, hub_config, hub_split) -> list[InstructExample]:
    """Examples from the rows of `source` (the bundled file when None); bad rows collected and reported together."""
    if on_bad_row not in ("skip", "error"):
        raise ValueError(f"on_bad_row must be 'skip' or 'error', got {on_bad_row!r}")
    rows, name = read_records(bundled_path(BUNDLED[bundled]) if source is None else source, (".jsonl",),
                              hub_config=hub_config, hub_split=hub_split)
    examples: list[InstructExample] = []
    bad: list[tuple[str, str]] = []
    for where, row in tqdm(rows, desc=name, leave=False, disable=None):
        try:
            if isinstance(row, str):  # the reader could not parse this line; row is the reason
                raise DataError(row)
            examples.append(make(row, where))
        except DataError as problem:
            bad.append((where, str(problem)))
    report_bad_rows(name, bad, on_bad_row, stacklevel=4)  # called by the public loaders
    if not examples:
        raise DataError(f"{name}: no usable rows")
    return examples


def _gsm8k_example(row: dict, where: str) -> InstructExample:
    question, answer = _text_field(row, "question"), _text_field(row, "answer")
    final = gsm8k_extract_strict(answer)
    if final is None:
        raise DataError("answer has no final '#### <number>' line")
    return conversation(question, answer, reference=final, group=question, where=where)


def _folio_example(row: dict, where: str) -> InstructExample:
    if "story_id" not in row or row["story_id"] is None or str(row["story_id"]).strip() == "":
        raise DataError("missing key 'story_id'")
    if "premises" not in row:
        raise DataError("missing key 'premises'")
    premises = row["premises"]
    if isinstance(premises, str):
        premises = premises.split("\n")
    if not isinstance(premises, list) or not all(isinstance(p, str) for p in premises):
        raise DataError(f"'premises' must be a list of strings or one string, got {type(row['premises']).__name__}")
    premises = [p.strip() for p in premises if p.strip()]
    if not premises:
        raise DataError("'premises' is empty")
    conclusion = _text_field(row, "conclusion")
    if "label" not in row:
        raise DataError("missing key 'label'")
    label = _FOLIO_LABEL_SPELLINGS.get(str(row["label"]).strip().lower())
    if label is None:
        raise DataError(f"label {row['label']!r} is not one of ['True', 'False', 'Uncertain', 'Unknown']")
    user = folio_user_text(premises, conclusion)
    return conversation(user, label, reference=label, group=f"story {row['story_id']}", where=where)


def _text_field(row: dict, key: str) -> str:
    if key not in row:
        raise DataError(f"missing key {key!r}")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{key!r} is empty or not a string")
    return value.strip()


def _merge_groups_sharing_premises(examples: list[InstructExample]) -> list[InstructExample]:
    """Union-find over stories: two stories sharing any premise sentence get one group (the smallest name)."""
    parent: dict[str, str] = {}

    def root(group: str) -> str:
        while parent.setdefault(group, group) != group:
            group = parent[group]
        return group

    first_story_of: dict[str, str] = {}
    for example in examples:
        user = example.prompt[-1].content
        for premise in user.split("\n")[:-2]:  # the last two lines are the conclusion and the question
            other = first_story_of.setdefault(premise, example.group)
            a, b = root(example.group), root(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [dataclasses.replace(example, group=root(example.group)) for example in examples]


# ---------------------------------------------------------------------------------------------------- scoring


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
