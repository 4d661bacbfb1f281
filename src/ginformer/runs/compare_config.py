"""A compare config: the run config every run shares, the variants, the seeds, and optionally a sweep.

    ginformer compare --config configs/protein_compare.yaml

A compare config is a run config (`model`, `data`, `training`: runs/config.py), the base every run shares,
plus:

    name: protein_compare         runs go to <training.output_root>/<name>/<variant>/seed<k>/
    seeds: [0, 1, 2]              one run per variant and seed (training.seed); the data split never changes
    variants:                     name -> what it changes in the base's `model` section (merged key by key)
      reference: {attention_kind: standard}
      gin: {attention_kind: gin, gin_mlp_multiplier: 0.5}
    target_params: 1_000_000      from scratch: every variant is sized to this many parameters (sizing.py)
    equal_compute: false          from scratch: scale each variant's max_steps so all spend the first's FLOPs
    baseline: true                on a pretrained model: also evaluate the frozen base once, in <name>/base/
    evaluate: {generate: 20, max_new_tokens: 256}   `ginformer evaluate` options for every run
    sweep:                        tune each variant on its own before the seeds run
      grid: {training.learning_rate: [3.0e-4, 1.0e-3, 3.0e-3]}   any --set key -> the values to try
      seeds: [0]                  the sweep's budget: each point of the grid trains with these seeds
      metric: min_val_loss        lower is better, on the validation split

With a sweep, a variant's runs live in <name>/<variant>/<point>/seed<k>/ (the point reads
``training.learning_rate=0.001``); the seeds then run at the point the variant's sweep chose, reusing the sweep's
own runs at that point. Every run's settings are built when the config is read, so a bad variant or grid value
fails before anything trains.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from ginformer.errors import ConfigError
from ginformer.runs.config import (
    SECTIONS,
    RunSettings,
    apply_overrides,
    read_config_file,
    run_settings_from_dict,
    side_name,
)
from ginformer.runs.evaluate import check_options
from ginformer.runs.objectives import OPTIONS
from ginformer.runs.summary import SWEEP_METRICS
from ginformer.settings import build_settings, positive, require
from ginformer.sizing import config_parameters, training_flops_per_token

BASELINE = "base"  # the frozen base's directory and its name in tables
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")  # a comparison or variant name becomes a directory name
# Keys a sweep may not vary: the comparison sets them for every run.
FIXED_KEYS = ("training.seed", "training.run_name", "training.output_root", "model.target_params")


def _distinct_seeds(seeds: list[int], key: str) -> None:
    require(bool(seeds) and len(set(seeds)) == len(seeds), key, seeds, "a non-empty list of distinct integers")


@dataclass
class EvaluateOptions:
    """`ginformer evaluate` options for every run of the comparison."""

    limit: int | None = None
    generate: int | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None

    def __post_init__(self):
        positive(self, "evaluate", "limit", "max_new_tokens", "batch_size")
        require(self.generate is None or self.generate >= 0, "evaluate.generate", self.generate, "an integer >= 0")

    def options(self) -> dict[str, int]:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


@dataclass
class SweepSettings:
    """Each variant trains at every point of `grid` with `seeds`; its seeds then run at its best point."""

    grid: dict[str, list[Any]] = field(default_factory=dict)  # "section.key" -> values, in the order tried
    seeds: list[int] = field(default_factory=lambda: [0])
    metric: Literal[SWEEP_METRICS] = "min_val_loss"

    def __post_init__(self):
        _distinct_seeds(self.seeds, "sweep.seeds")
        for key, values in self.grid.items():
            section = key.split(".", 1)[0]
            require(section in SECTIONS and "." in key, f"sweep.grid.{key}", values,
                    f"a key section.name with a section of {list(SECTIONS)}")
            require(key not in FIXED_KEYS, f"sweep.grid.{key}", values, f"a key other than {', '.join(FIXED_KEYS)} "
                    "(the comparison sets those)")
            distinct = {json.dumps(v, sort_keys=True) for v in values}
            require(bool(values) and len(distinct) == len(values), f"sweep.grid.{key}", values,
                    "a non-empty list of distinct values")

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values ([{}] without a grid): the first key varies slowest."""
        return [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]


def point_name(point: Mapping[str, Any]) -> str:
    """A point of a sweep as a directory name, e.g. training.learning_rate=0.001."""
    return "+".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in point.items())


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied key by key; nested mappings are merged, not replaced."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class CompareSettings:
    """A validated compare config: the base sections, how the runs differ from them, and how they are tuned."""

    name: str  # the comparison's directory under training.output_root
    seeds: list[int]  # training seeds; several, because one seed cannot tell a method from luck
    variants: dict[str, dict[str, Any] | None]  # variant name -> changes to the base's model section
    model: dict[str, Any] = field(default_factory=dict)  # the sections every run starts from
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    target_params: int | None = None  # from scratch: every variant sized to this, so a gap is not a bigger model
    equal_compute: bool = False  # from scratch: steps scaled so every variant spends the first one's FLOPs
    baseline: bool | None = None  # evaluate the frozen base once (default: on a pretrained model)
    evaluate: EvaluateOptions = field(default_factory=EvaluateOptions)
    sweep: SweepSettings = field(default_factory=SweepSettings)

    def __post_init__(self):
        require(bool(NAME.fullmatch(self.name)), "name", self.name, "a directory name (letters, digits, _ . + = -)")
        _distinct_seeds(self.seeds, "seeds")
        require(bool(self.variants), "variants", self.variants, "a non-empty mapping of variant name -> model "
                "settings to change")
        self.variants = {variant: dict(changes or {}) for variant, changes in self.variants.items()}
        for variant, changes in self.variants.items():
            require(bool(NAME.fullmatch(variant)) and variant != BASELINE, "variant name", variant,
                    f"letters, digits, _ . + = - (and not '{BASELINE}')")
            if "target_params" in changes:
                raise ConfigError(f"variant '{variant}': target_params is the comparison's, set once at the top level")
        for key, why in (("run_name", "runs are named <name>/<variant>/seed<k>"), ("seed", "set `seeds`")):
            if key in self.training:
                raise ConfigError(f"training.{key} cannot be set in a compare config: {why}")
        scratch = self.side == "scratch"
        if scratch:
            require(self.target_params is not None and self.target_params > 0, "target_params", self.target_params,
                    "a positive integer: a comparison of models trained from scratch sizes every variant to it")
            if "target_params" in self.model:
                raise ConfigError("model.target_params cannot be set in a compare config: set the top-level "
                                  "target_params")
        elif self.target_params is not None:
            raise ConfigError("target_params sizes models trained from scratch; an adapter's budget is "
                              "model.sparse_gin")
        if self.baseline is None:
            self.baseline = not scratch
        require(not (self.baseline and scratch), "baseline", self.baseline, "false on models trained from scratch")
        require(not self.equal_compute or (scratch and "max_steps" in self.training), "equal_compute",
                self.equal_compute, "false, or true on models trained from scratch with training.max_steps set")

    @property
    def side(self) -> str:
        return side_name(self.model)

    @property
    def root(self) -> Path:
        return Path(self.training.get("output_root", "runs")) / self.name

    def sections(self, variant: str, seed: int, point: Mapping[str, Any] | None = None) -> dict[str, dict]:
        """One run's config: the base, the variant's model changes merged in, the size target, the seed, a sweep's
        point (steps as the base has them, before `equal_compute`)."""
        model = merge(self.model, self.variants[variant])
        if self.target_params is not None:
            model["target_params"] = self.target_params
        directory = self.root / variant / point_name(point) if point else self.root / variant
        training = {**self.training, "seed": seed, "run_name": f"seed{seed}", "output_root": str(directory)}
        overrides = [f"{key}={json.dumps(value)}" for key, value in (point or {}).items()]
        return apply_overrides({"model": model, "data": dict(self.data), "training": training}, overrides)

    def run_settings(self, variant: str, seed: int, point: Mapping[str, Any] | None = None) -> RunSettings:
        """One run's validated settings (see `sections`), its steps matched in compute when asked."""
        sections = self.sections(variant, seed, point)
        if self.equal_compute:
            sections["training"]["max_steps"] = self.compute_matched_steps[variant]
        return self._build(sections, f"variant '{variant}'" + (f" at {point_name(point)}" if point else ""))

    def baseline_settings(self) -> RunSettings:
        """The frozen base, evaluated once: its own numbers, under next-token prediction whatever the variants
        train with (DPO and GRPO train an adapter against this very base)."""
        training = {**{k: v for k, v in self.training.items() if k not in OPTIONS}, "method": "sft",
                    "run_name": BASELINE, "output_root": str(self.root)}
        sections = {"model": {**self.model, "method": "none"}, "data": dict(self.data), "training": training}
        return self._build(sections, "baseline")

    def _build(self, sections: dict[str, dict], where: str) -> RunSettings:
        try:
            return run_settings_from_dict(sections, self.side)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

    def model_configs(self) -> dict:
        """Each variant's GinformerConfig after sizing, built without weights; raises ConfigError naming a variant
        that cannot be sized to target_params. {} on a pretrained model."""
        if self.side != "scratch":
            return {}
        runs = {variant: self._build(self.sections(variant, self.seeds[0]), f"variant '{variant}'")
                for variant in self.variants}
        tokenizer = next(iter(runs.values())).task().tokenizer(None)
        configs = {}
        for variant, run in runs.items():
            try:
                configs[variant] = run.model.to_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
            except ConfigError as err:
                raise ConfigError(f"variant '{variant}': {err}") from None
        return configs

    @cached_property
    def flops_per_token(self) -> dict[str, float]:
        """Training FLOPs per token of each variant's model at its context length ({} on a pretrained model)."""
        return {variant: training_flops_per_token(config, config.max_position_embeddings)
                for variant, config in self.model_configs().items()}

    @cached_property
    def compute_matched_steps(self) -> dict[str, int]:
        """max_steps of each variant so that it spends what the first variant does in training.max_steps."""
        flops = self.flops_per_token
        first, steps = next(iter(self.variants)), self.training["max_steps"]
        return {variant: max(1, round(steps * flops[first] / flops[variant])) for variant in self.variants}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_compare_settings(path: str | Path, overrides: Sequence[str] = ()) -> CompareSettings:
    """Read and validate a compare config; `overrides` (``section.key[.key]=value``) change the base sections."""
    return compare_settings_from_dict(read_config_file(path), overrides)


def compare_settings_from_dict(raw: Any, overrides: Sequence[str] = ()) -> CompareSettings:
    """Validated settings of a parsed compare config; `overrides` change its sections (``training.max_steps=9``)
    or its own keys (``seeds=[0]``, ``target_params=60000``). Every run's settings are built here."""
    if not isinstance(raw, Mapping):
        raise ConfigError("a compare config must be a mapping with keys name, seeds and variants")
    settings = build_settings(CompareSettings, apply_overrides(raw, overrides, depth=1), "")
    first = settings.run_settings(next(iter(settings.variants)), settings.seeds[0])
    for variant in settings.variants:
        for point in settings.sweep.points():
            settings.run_settings(variant, settings.sweep.seeds[0], point)
    options = {k: v for k, v in settings.evaluate.options().items() if k in ("generate", "max_new_tokens")}
    try:
        check_options(first.task(), **options)
    except ConfigError as err:
        raise ConfigError(f"evaluate: {err}") from None
    for key in ("logging_steps", "eval_steps"):
        value, steps = getattr(first.training, key), first.training.max_steps
        if steps is not None and value > steps:
            raise ConfigError(
                f"training.{key}={value} exceeds training.max_steps={steps}: the summary needs logged training "
                "and validation losses"
            )
    return settings


def variant_parameters(settings: CompareSettings) -> dict[str, tuple[int, int]]:
    """(parameter count, hidden size) of every variant after sizing, computed without building weights."""
    return {variant: (config_parameters(config), config.hidden_size)
            for variant, config in settings.model_configs().items()}
