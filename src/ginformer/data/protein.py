"""Protein secondary-structure task of the paper (section 4.1): from an amino-acid sequence, predict the most
frequent and the second most frequent secondary-structure class of the protein.

Source: lamm-mit/protein_secondary_structure_from_PDB (Hugging Face), or any local file with its columns. A
1,593-row subset ships with the repository (``data/protein/``, see its SOURCE.md).

Labels. When the source has ``Primary_SS_Type`` and ``Secondary_SS_Type`` (the full hub dataset does), they
are used as given. Otherwise they are derived from ``Secondary_structure``, a per-residue DSSP string:

    DSSP char                 class            DSSP char   class
    H                         AH               I           PHIHELIX
    E                         BS               G           310HELIX
    '~' ' ' '-' 'C' '.'       UNSTRUCTURED     B           BETABRIDGE
    S                         BEND             T           T

The classes are counted over the residues; the primary label is the class with the highest count and the
secondary label the one with the second-highest count. Ties are broken by the fixed order ``SS_CLASSES``
(AH, BS, UNSTRUCTURED, BEND, PHIHELIX, 310HELIX, BETABRIDGE, T): the earlier class wins. The upstream rule
for ties is not published, so this order is our choice. A protein whose residues all fall in one class
gets that class as both labels (the row is kept, not dropped).

Each example is trained as one string (``format_protein_example``):

    <|begin_of_text|><|sequence|>{sequence}<|/sequence|><|{primary}|><|{secondary}|><|eot_id|>
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from ginformer.data.rows import bundled_path, read_records, report_bad_rows
from ginformer.errors import DataError

# The fixed class order: label-token order in the tokenizer, and the tie-break when counts are equal.
SS_CLASSES: tuple[str, ...] = ("AH", "BS", "UNSTRUCTURED", "BEND", "PHIHELIX", "310HELIX", "BETABRIDGE", "T")

DSSP_TO_CLASS: dict[str, str] = {
    "H": "AH",
    "E": "BS",
    "~": "UNSTRUCTURED",
    " ": "UNSTRUCTURED",
    "-": "UNSTRUCTURED",
    "C": "UNSTRUCTURED",
    ".": "UNSTRUCTURED",
    "S": "BEND",
    "I": "PHIHELIX",
    "G": "310HELIX",
    "B": "BETABRIDGE",
    "T": "T",
}

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# X unknown, B Asx, Z Glx, U selenocysteine, O pyrrolysine: rare (2 Z residues in the bundled file), so rows
# holding them are rejected unless the caller opts in with allow_ambiguous=True.
AMBIGUOUS_AMINO_ACIDS = "XBZUO"

TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")
_REQUIRED_COLUMN = "Sequence"
_STRUCTURE_COLUMN = "Secondary_structure"
_LABEL_COLUMNS = ("Primary_SS_Type", "Secondary_SS_Type")

BOS, SEQ_START, SEQ_END, EOT = "<|begin_of_text|>", "<|sequence|>", "<|/sequence|>", "<|eot_id|>"


@dataclass(frozen=True)
class ProteinRecord:
    """One protein, validated: ``sequence`` uses only allowed letters and both labels are in SS_CLASSES."""

    sequence: str
    primary: str  # most frequent class, one of SS_CLASSES
    secondary: str  # second most frequent class (equal to primary when only one class occurs)
    structure: str | None  # per-residue DSSP string; None when the source gave labels but no structure
    row: int  # 0-based row in the source (file order, before any filtering), so problems can be traced back

    @property
    def length(self) -> int:
        """Sequence_length of the upstream dataset."""
        return len(self.sequence)


def derive_labels(structure: str) -> tuple[str, str]:
    """(primary, secondary) class of a DSSP string: the two most frequent classes, ties broken by SS_CLASSES
    order; the primary is repeated when only one class occurs. Raises DataError on an empty string or a
    character outside DSSP_TO_CLASS."""
    if not structure:
        raise DataError("empty secondary structure")
    unknown = sorted(set(structure) - DSSP_TO_CLASS.keys())
    if unknown:
        raise DataError(f"unknown DSSP characters {unknown}; allowed: {sorted(DSSP_TO_CLASS)}")
    counts = Counter()
    for char, n in Counter(structure).items():
        counts[DSSP_TO_CLASS[char]] += n
    ranked = sorted(counts, key=lambda c: (-counts[c], SS_CLASSES.index(c)))
    return ranked[0], ranked[1] if len(ranked) > 1 else ranked[0]


def bundled_protein_path() -> Path:
    """The bundled subset (data/protein/ in a checkout)."""
    return bundled_path("protein/protein_ss_train.parquet")


def load_protein_records(
    source: str | Path,
    *,
    max_length: int | None = 256,
    on_bad_row: Literal["skip", "error"] = "skip",
    allow_ambiguous: bool = False,
) -> list[ProteinRecord]:
    """Load, filter and validate proteins from a .parquet/.csv/.jsonl file or a Hugging Face dataset id.

    A string that is not an existing path and has no table suffix is taken as a hub dataset id and loaded with
    `datasets.load_dataset(id, split="train")`. Rows with ``len(Sequence) >= max_length`` are dropped first
    (the paper keeps ``Sequence_length < 256``; None keeps all), then every remaining row is checked. A bad row
    (missing or empty sequence, a letter outside the amino-acid alphabet, a structure whose length differs from
    the sequence, an unknown DSSP character, a label outside SS_CLASSES) is reported by its line (JSONL, from 1)
    or row (from 0) in the source: ``on_bad_row="skip"`` drops it and issues one warning naming the count and the first
    few, ``"error"`` raises a DataError listing them. A missing column fails the whole source.
    """
    if on_bad_row not in ("skip", "error"):
        raise ValueError(f"on_bad_row must be 'skip' or 'error', got {on_bad_row!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
    rows, name = read_records(source, TABLE_SUFFIXES)
    columns = set(key for _, row in rows if isinstance(row, dict) for key in row)
    has_labels = all(c in columns for c in _LABEL_COLUMNS)
    for column in (_REQUIRED_COLUMN,) if has_labels else (_REQUIRED_COLUMN, _STRUCTURE_COLUMN):
        if column not in columns:
            raise DataError(
                f"{name}: missing column {column!r} (found {sorted(columns)}); need 'Sequence' and "
                "'Secondary_structure', or 'Sequence' with 'Primary_SS_Type' and 'Secondary_SS_Type'"
            )
    alphabet = set(AMINO_ACIDS + AMBIGUOUS_AMINO_ACIDS) if allow_ambiguous else set(AMINO_ACIDS)

    records: list[ProteinRecord] = []
    bad: list[tuple[str, str]] = []
    for row, (where, values) in enumerate(tqdm(rows, desc="proteins", leave=False, disable=None)):
        if isinstance(values, str):  # the reader could not parse this row; values is the reason
            bad.append((where, values))
            continue
        sequence = values.get(_REQUIRED_COLUMN)
        if max_length is not None and isinstance(sequence, str) and len(sequence) >= max_length:
            continue
        try:
            labels = (values.get(c) for c in _LABEL_COLUMNS)
            record = _validate_row(row, sequence, values.get(_STRUCTURE_COLUMN), *labels, has_labels, alphabet)
        except DataError as problem:
            bad.append((where, str(problem)))
            continue
        records.append(record)

    report_bad_rows(name, bad, on_bad_row)
    return records


def _validate_row(
    row: int,
    sequence: object,
    structure: object,
    primary: object,
    secondary: object,
    has_labels: bool,
    alphabet: set[str],
) -> ProteinRecord:
    """One ProteinRecord, or a DataError whose message is the reason the row is bad."""
    if not isinstance(sequence, str) or not sequence:
        raise DataError("empty or missing Sequence")
    letters = sorted(set(sequence) - alphabet)
    if letters:
        hint = "" if set(letters) - set(AMBIGUOUS_AMINO_ACIDS) else " (pass allow_ambiguous=True to keep them)"
        raise DataError(f"letters {letters} are not amino acids in {''.join(sorted(alphabet))}{hint}")
    if structure is not None or not has_labels:
        if not isinstance(structure, str) or not structure:
            raise DataError("empty or missing Secondary_structure")
        if len(structure) != len(sequence):
            raise DataError(f"Secondary_structure has length {len(structure)}, Sequence has {len(sequence)}")
        derived = derive_labels(structure)  # raises on unknown DSSP characters
    if not has_labels:
        return ProteinRecord(sequence, *derived, structure, row)
    for column, value in zip(_LABEL_COLUMNS, (primary, secondary)):
        if value not in SS_CLASSES:
            raise DataError(f"{column} {value!r} is not one of {list(SS_CLASSES)}")
    return ProteinRecord(sequence, primary, secondary, structure, row)


def split_records(
    records: Sequence[ProteinRecord], val_fraction: float = 0.1, seed: int = 42
) -> tuple[list[ProteinRecord], list[ProteinRecord]]:
    """Deterministic (train, val) split, disjoint by sequence.

    The unique sequences are shuffled with `random.Random(seed)` and the first ``round(val_fraction * n)``
    (at least one when val_fraction > 0 and there are two or more) go to validation. Grouping by sequence
    keeps proteins that occur several times (different PDB chains, same chain) on one side, so validation
    never scores a sequence seen in training. Both lists keep the source order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    unique = list(dict.fromkeys(r.sequence for r in records))
    n_val = round(val_fraction * len(unique))
    if val_fraction > 0 and len(unique) >= 2:
        n_val = min(max(n_val, 1), len(unique) - 1)
    random.Random(seed).shuffle(unique)
    val_sequences = set(unique[:n_val])
    train = [r for r in records if r.sequence not in val_sequences]
    val = [r for r in records if r.sequence in val_sequences]
    return train, val


def format_protein_prompt(sequence: str) -> str:
    """The prompt a model completes with the two label tokens and <|eot_id|>."""
    return f"{BOS}{SEQ_START}{sequence}{SEQ_END}"


def format_protein_example(record: ProteinRecord) -> str:
    """The full training text: prompt, <|primary|>, <|secondary|>, <|eot_id|>."""
    return f"{format_protein_prompt(record.sequence)}<|{record.primary}|><|{record.secondary}|>{EOT}"


@dataclass(frozen=True)
class LabelCounts:
    primary: Counter[str]
    secondary: Counter[str]
    pair: Counter[tuple[str, str]]  # (primary, secondary): the task is solved only when both are right


def label_counts(records: Iterable[ProteinRecord]) -> LabelCounts:
    records = list(records)
    return LabelCounts(
        primary=Counter(r.primary for r in records),
        secondary=Counter(r.secondary for r in records),
        pair=Counter((r.primary, r.secondary) for r in records),
    )


@dataclass(frozen=True)
class MajorityBaseline:
    """Accuracy of always answering the most common training label(s): the floor any model must beat."""

    primary: str
    secondary: str
    pair: tuple[str, str]
    primary_accuracy: float
    secondary_accuracy: float
    pair_accuracy: float


def majority_baseline(
    train: Sequence[ProteinRecord], records: Sequence[ProteinRecord] | None = None
) -> MajorityBaseline:
    """Majority labels taken from ``train`` (ties broken by SS_CLASSES order), scored on ``records``
    (``train`` itself when None). The pair is the most common (primary, secondary) combination, which need
    not be (most common primary, most common secondary)."""
    if not train:
        raise ValueError("majority_baseline needs at least one training record")
    scored = train if records is None else records
    if not scored:
        raise ValueError("majority_baseline needs at least one record to score")
    counts = label_counts(train)
    primary = min(counts.primary, key=lambda c: (-counts.primary[c], SS_CLASSES.index(c)))
    secondary = min(counts.secondary, key=lambda c: (-counts.secondary[c], SS_CLASSES.index(c)))
    pair = min(counts.pair, key=lambda p: (-counts.pair[p], SS_CLASSES.index(p[0]), SS_CLASSES.index(p[1])))
    n = len(scored)
    return MajorityBaseline(
        primary=primary,
        secondary=secondary,
        pair=pair,
        primary_accuracy=sum(r.primary == primary for r in scored) / n,
        secondary_accuracy=sum(r.secondary == secondary for r in scored) / n,
        pair_accuracy=sum((r.primary, r.secondary) == pair for r in scored) / n,
    )
