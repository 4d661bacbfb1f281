"""Instruction tasks for fine-tuning a pretrained model (paper section 4.2): any instruction data, and GSM8K and
FOLIO as presets that add their metrics.

    instruct   a .jsonl/.json/.parquet file or hub dataset in TRL's shapes (text, prompt/completion, messages;
               data/instruct.py), formatted with the tokenizer's chat template or the paper's; loss and
               perplexity on the validation split, and a few generated answers for a look
    gsm8k      grade-school maths: exact match of the final number, "strict" after ``####``, "flexible" the last
               number anywhere, beside always answering the training split's most common final number
    folio      first-order logic: label accuracy (the first True/False/Uncertain), beside the majority label's

Rows longer than `data.max_length` tokens are dropped with a count, never cut silently (a cut row loses its
answer or its end marker), or with `data.truncate: left` cut from the left keeping the last assistant turn
whole; a run, its evaluation and a comparison all see the same rows.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar, Literal, Mapping, Sequence

from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ginformer.data.batches import target_counts
from ginformer.data.instruct import (
    FORMATS,
    PAPER_END,
    InstructData,
    InstructExample,
    Message,
    OnBadRow,
    Template,
    encode_generation_prompt,
    load_instruct,
    rejected_example,
    split_examples,
    tokenize_example,
    trl_completion,
    trl_prompt,
    truncate_left,
)
from ginformer.data.reasoning import (
    extract_label,
    gsm8k_extract_flexible,
    gsm8k_extract_strict,
    load_folio,
    load_gsm8k,
    majority_baseline,
)
from ginformer.errors import ConfigError, DataError
from ginformer.generation import generate_batched
from ginformer.settings import check_fields, positive, require
from ginformer.tasks.base import Column, Feature, Generation, HeldOut, Losses, Scores, Splits, Task

log = logging.getLogger(__name__)


@dataclass
class InstructSettings:
    """Which rows, from where, in which shape and template, and which are kept."""

    task: str = "instruct"  # "instruct", or a preset that reads its own rows and adds metrics: "gsm8k", "folio"
    source: str = "bundled"  # a .jsonl/.json/.parquet file or a hub id; "bundled": a preset's data/gsm8k, data/folio
    hub_config: str | None = None  # the hub dataset's config name (openai/gsm8k needs "main")
    hub_split: str = "train"  # the hub split to read (the validation split is cut from it)
    format: Literal["auto", "text", "prompt_completion", "messages", "preference"] = "auto"  # auto: from the columns
    columns: dict[str, str] = field(default_factory=dict)  # our name -> yours, e.g. {prompt: question}
    # "chat": the tokenizer's chat template; "paper": ### User: ...<|eot_id|>### Assistant: ...<|eot_id|>.
    # None: chat for conversations (messages, conversational prompt/completion), paper for plain strings.
    template: Template | None = None
    max_length: int = 384  # examples longer than this many tokens are dropped (or cut, see truncate)
    truncate: Literal["drop", "left"] = "drop"  # left: cut from the left, keeping the last assistant turn whole
    val_fraction: float = 0.1  # the paper holds out 10%
    split_seed: int = 42  # fixes the split, independent of the training seed
    on_bad_row: OnBadRow = "skip"  # a malformed row is dropped with a warning, or stops the run
    max_train_examples: int | None = None  # keep the first N training examples (short CPU runs)
    max_val_examples: int | None = 100  # validate on the first N validation examples: a fixed, affordable subset

    def __post_init__(self) -> None:
        check_fields(self, "data")
        require(self.max_length >= 2, "data.max_length", self.max_length, ">= 2")
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "in (0, 1)")
        positive(self, "data", "max_train_examples", "max_val_examples")
        names = sorted({name for names in FORMATS.values() for name in names})
        for ours in self.columns:
            require(ours in names, f"data.columns.{ours}", self.columns[ours], f"keys among {names}")


class InstructTask(Task):
    """Any instruction data: the rows, the grouped split, templates, length filtering, generated samples."""

    name = "instruct"
    settings_class = InstructSettings
    model_sides = frozenset({"pretrained"})  # a from-scratch model would first have to learn the language
    objectives = frozenset({"sft", "dpo"})  # DPO on preference rows; GRPO needs a reward, which the presets have
    evaluate_options = frozenset({"generate", "max_new_tokens"})
    conversational: ClassVar[bool] = True
    default_max_new_tokens: ClassVar[int] = 256  # when `evaluate` is not told
    default_generations: ClassVar[int | None] = 5  # rows generated for a look; None: all (scored presets)
    settings: InstructSettings

    def check_model_side(self, side: str) -> None:
        super().check_model_side(side)
        if self.settings.source == "bundled":
            raise ConfigError("data.source: task 'instruct' reads your data: a .jsonl/.json/.parquet file or a hub "
                              "id (the bundled sets are the presets data.task=gsm8k and data.task=folio)")

    def load(self, source: str | Path) -> InstructData:
        s = self.settings
        data = load_instruct(source, format=s.format, columns=s.columns, on_bad_row=s.on_bad_row,
                             hub_config=s.hub_config, hub_split=s.hub_split)
        if s.format == "auto":
            log.info("%s: read as %s rows (data.format: auto)", source, data.format)
        return data

    @cached_property
    def data(self) -> InstructData:
        """The rows of the settings' source, read once."""
        return self.load(self.settings.source)

    def examples(self, source: str | Path | None = None) -> list[InstructExample]:
        """Every usable row: of `source` when given, else of the settings' source."""
        return self.data.examples if source is None else self.load(source).examples

    @property
    def template(self) -> Template:
        """The template set, else chat for conversations and paper for plain prompt/completion strings."""
        if self.settings.template is not None:
            return self.settings.template
        return "chat" if self.data.conversational else "paper"

    def splits(self) -> tuple[list[InstructExample], list[InstructExample]]:
        """The (train, val) rows before tokenisation: the grouped split of data/instruct.py."""
        return split_examples(self.examples(), self.settings.val_fraction, self.settings.split_seed)

    def fit(
        self, examples: list[InstructExample], tokenizer: PreTrainedTokenizerBase, limit: int | None
    ) -> tuple[list[InstructExample], list[Feature]]:
        """The first `limit` (None: all) examples that fit data.max_length (cut from the left when
        data.truncate says so), and their features."""
        s = self.settings
        kept, features, dropped = [], [], 0
        for example in tqdm(examples, desc="tokenize", leave=False, disable=None):
            if limit is not None and len(kept) == limit:
                break
            feature = tokenize_example(example, tokenizer, self.template)
            if len(feature["input_ids"]) > s.max_length:
                feature = truncate_left(feature, s.max_length) if s.truncate == "left" else None
                if feature is None:
                    dropped += 1
                    continue
            kept.append(example)
            features.append(feature)
        if dropped:
            how = " whose last assistant turn alone is" if s.truncate == "left" else ""
            warnings.warn(
                f"{s.task}: dropped {dropped} of {len(kept) + dropped} examples{how} longer than "
                f"data.max_length={s.max_length} tokens",
                stacklevel=2,
            )
        return kept, features

    def tokenizer(self, base: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
        return base

    def datasets(self, tokenizer: PreTrainedTokenizerBase) -> Splits:
        s = self.settings
        train, val = self.splits()
        _, train_features = self.fit(train, tokenizer, s.max_train_examples)
        _, val_features = self.fit(val, tokenizer, s.max_val_examples)
        if not train_features or not val_features:
            raise DataError(
                f"{s.task} ({s.source}): {len(train_features)} training and {len(val_features)} validation "
                f"examples fit data.max_length={s.max_length}; both need at least one"
            )
        longest = max(len(f["input_ids"]) for f in train_features + val_features)
        return Splits(train_features, val_features, longest)

    def preference_splits(self, tokenizer: PreTrainedTokenizerBase) -> Splits:
        """DPO's rows, {prompt, chosen, rejected} in TRL's shapes (data/instruct.py: trl_prompt), from preference
        rows whose chosen and rejected renderings both fit data.max_length."""
        if self.data.format != "preference":
            raise DataError(f"{self.settings.source}: training.method=dpo needs preference rows (prompt, chosen, "
                            f"rejected), but these are {self.data.format} rows")
        template = self.template

        def row(example: InstructExample) -> dict:
            return {"prompt": trl_prompt(example, template, tokenizer),
                    "chosen": trl_completion(example.messages[-1:], template),
                    "rejected": trl_completion(example.rejected, template)}

        def length(example: InstructExample) -> int:
            return max(len(tokenize_example(e, tokenizer, template)["input_ids"])
                       for e in (example, rejected_example(example)))

        return self.trl_splits(row, length)

    def prompt_splits(self, tokenizer: PreTrainedTokenizerBase, completion_length: int) -> Splits:
        """GRPO's rows, {prompt, reference} (the prompt in TRL's shape, the reference the reward scores against),
        from rows whose prompt and `completion_length` new tokens fit data.max_length."""
        template = self.template
        return self.trl_splits(
            lambda e: {"prompt": trl_prompt(e, template, tokenizer), "reference": e.reference},
            lambda e: len(encode_generation_prompt(e, tokenizer, template)) + completion_length)

    def trl_splits(self, row: Callable[[InstructExample], dict], length: Callable[[InstructExample], int]) -> Splits:
        """Train and validation rows for TRL's trainers, which tokenize rows themselves: the first
        max_train_examples and max_val_examples rows whose `length` fits data.max_length, as `row` shapes them."""
        s = self.settings
        parts, longest, dropped = [], 0, 0
        for examples, limit in zip(self.splits(), (s.max_train_examples, s.max_val_examples)):
            rows = []
            for example in examples:
                if limit is not None and len(rows) == limit:
                    break
                tokens = length(example)
                if tokens > s.max_length:
                    dropped += 1
                    continue
                rows.append(row(example))
                longest = max(longest, tokens)
            parts.append(rows)
        if dropped:
            warnings.warn(f"{s.task}: dropped {dropped} rows longer than data.max_length={s.max_length} tokens",
                          stacklevel=2)
        if not all(parts):
            raise DataError(f"{s.task} ({s.source}): {len(parts[0])} training and {len(parts[1])} validation rows "
                            f"fit data.max_length={s.max_length}; both need at least one")
        return Splits(Dataset.from_list(parts[0]), Dataset.from_list(parts[1]), longest)

    def reward(self, completions: list[str], references: list[str]) -> list[float]:
        """GRPO's reward of each completion (text, cut at the template's end marker) against its reference."""
        raise ConfigError(f"task '{self.name}' has no reward for GRPO")  # refused with the config first

    def held_out(self, tokenizer: PreTrainedTokenizerBase, data: Path | None, limit: int | None) -> HeldOut:
        s = self.settings
        train, val = self.splits()
        if data is None:
            rows, name = val, "val"
            limit = s.max_val_examples if limit is None else limit
        else:
            rows, name = self.examples(data), data.stem
        examples, features = self.fit(rows, tokenizer, limit)
        if not examples:
            raise DataError(f"{data or 'the validation split'}: no row fits data.max_length={s.max_length}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # training reported the dropped rows already
            _, train_features = self.fit(train, tokenizer, s.max_train_examples)
        counts = target_counts(train_features, len(tokenizer))
        groups = {e.group for e in train}
        return HeldOut(name, features, examples, train, counts, sum(e.group in groups for e in examples))

    def generate_answers(
        self, model, tokenizer: PreTrainedTokenizerBase, examples: list[InstructExample], generation: Generation
    ) -> list[str]:
        """Greedy answers as text, cut at the template's end marker (the paper's ``<|eot_id|>`` string; the
        tokenizer's end token for the chat template)."""
        stop = self.stop_string()
        prompts = [encode_generation_prompt(e, tokenizer, self.template) for e in examples]
        new = generate_batched(model, tokenizer, prompts,
                               max_new_tokens=generation.max_new_tokens or self.default_max_new_tokens,
                               batch_size=generation.batch_size, stop=stop)
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in new]
        return [text.split(stop, 1)[0] if stop else text for text in texts]

    def score(self, model, tokenizer, held_out: HeldOut, generation: Generation, losses: Losses) -> Scores:
        count = self.default_generations if generation.rows is None else generation.rows
        rows = [e for e in held_out.rows if e.text is None][:count]  # a text row has no prompt to answer
        if not rows:
            return Scores()
        completions = self.generate_answers(model, tokenizer, rows, generation)
        scores = self.score_answers(completions, rows, held_out.train_rows)
        generations = [{"where": e.where, "prompt": e.prompt[-1].content, "reference": e.reference or e.answer,
                        "generation": c} for e, c in zip(rows, completions)]
        return Scores(scores.values, scores.baselines, {**scores.notes, "generated_rows": len(rows)}, generations)

    def score_answers(
        self, completions: list[str], rows: list[InstructExample], train: list[InstructExample]
    ) -> Scores:
        """Metrics of generated answers; none for arbitrary data, whose answers are kept for a look."""
        return Scores()

    def prompt_ids(self, prompt: str | Sequence[Mapping[str, str]], tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """A text as the user's turn, or a conversation so far ({role, content} messages), in the run's template;
        the model writes the assistant's next turn."""
        if isinstance(prompt, str):
            return encode_generation_prompt((Message("user", prompt),), tokenizer, self.template)
        try:
            messages = tuple(Message(m["role"], m["content"]) for m in prompt)
        except (KeyError, TypeError):
            raise DataError(f"a conversation must be a list of {{role, content}} messages, got {prompt!r}") from None
        return encode_generation_prompt(messages, tokenizer, self.template)

    def stop_string(self) -> str | None:
        return PAPER_END if self.template == "paper" else None

    def describe(self) -> str:
        s = self.settings
        return f"{s.task} ({s.source}), {self.template} template, rows of at most {s.max_length} tokens"


class _Preset(InstructTask):
    """An instruction set with its own reader, its bundled copy and its metrics; plain strings, paper template."""

    default_generations = None
    objectives = frozenset({"sft", "grpo"})  # their rows have no rejected answers: DPO reads preference rows

    def check_model_side(self, side: str) -> None:
        Task.check_model_side(self, side)
        s = self.settings
        if s.format != "auto" or s.columns:
            raise ConfigError(f"data.format and data.columns do not apply to task '{self.name}', which reads its own "
                              "rows; use data.task=instruct for other data")

    def load(self, source: str | Path) -> InstructData:
        s = self.settings
        examples = self.reader(None if source == "bundled" else source, on_bad_row=s.on_bad_row,
                               hub_config=s.hub_config, hub_split=s.hub_split)
        return InstructData(examples, "prompt_completion", conversational=False)


class GSM8KTask(_Preset):
    name = "gsm8k"
    reader = staticmethod(load_gsm8k)
    default_max_new_tokens = 256  # worked answers are ~100-200 SmolLM2 tokens
    columns = (
        Column("strict", "GSM8K strict", ".3f", figure=True),
        Column("flexible", "GSM8K flexible", ".3f"),
        Column("no_strict_answer", "no '#### N'", ".3f"),
    )

    def score_answers(self, completions, rows, train) -> Scores:
        return score_gsm8k(completions, [e.reference for e in rows], [e.reference for e in train])

    def reward(self, completions: list[str], references: list[str]) -> list[float]:
        """1 where the answer's last number is the reference (the flexible match: an answer need not learn the
        ``#### N`` form first to earn it), else 0."""
        return [float(gsm8k_extract_flexible(c) == r) for c, r in zip(completions, references)]


class FolioTask(_Preset):
    name = "folio"
    reader = staticmethod(load_folio)
    default_max_new_tokens = 8  # the answer is one label word
    columns = (
        Column("accuracy", "FOLIO accuracy", ".3f", figure=True),
        Column("no_label", "no label", ".3f"),
    )

    def score_answers(self, completions, rows, train) -> Scores:
        label, _ = majority_baseline(train, rows)
        return score_folio(completions, [e.reference for e in rows], label)

    def reward(self, completions: list[str], references: list[str]) -> list[float]:
        """1 where the answer's first label is the reference's, else 0."""
        return [float(extract_label(c) == r) for c, r in zip(completions, references)]


def score_gsm8k(completions: list[str], references: list[str], train_references: list[str]) -> Scores:
    """Strict and flexible exact match of generated answers against normalised reference numbers, beside the
    accuracy of always answering the most common training answer."""
    _check_lengths(completions, references)
    strict = [gsm8k_extract_strict(text) for text in completions]
    flexible = [gsm8k_extract_flexible(text) for text in completions]
    n = len(references)
    counts = Counter(train_references)
    majority = min(counts, key=lambda r: (-counts[r], r)) if counts else None
    majority_accuracy = sum(r == majority for r in references) / n
    return Scores(
        values={
            "strict": sum(s == r for s, r in zip(strict, references)) / n,
            "flexible": sum(f == r for f, r in zip(flexible, references)) / n,
            "no_strict_answer": sum(s is None for s in strict) / n,
        },
        baselines={"strict": majority_accuracy, "flexible": majority_accuracy},
        notes={"majority_answer": majority},
    )


def score_folio(completions: list[str], references: list[str], majority_label: str) -> Scores:
    """Label accuracy of generated answers, beside the accuracy of always answering `majority_label`."""
    _check_lengths(completions, references)
    labels = [extract_label(text) for text in completions]
    n = len(references)
    return Scores(
        values={
            "accuracy": sum(label == r for label, r in zip(labels, references)) / n,
            "no_label": sum(label is None for label in labels) / n,
        },
        baselines={"accuracy": sum(r == majority_label for r in references) / n},
        notes={"majority_label": majority_label},
    )


def _check_lengths(completions: list[str], references: list[str]) -> None:
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions for {len(references)} references")
    if not references:
        raise ValueError("nothing to score: no references")
