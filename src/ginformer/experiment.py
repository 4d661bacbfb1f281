"""Run configs for `ginformer pretrain`: typed settings, YAML files, `--set` overrides, validation.

A run is described by one YAML file with three sections, each a dataclass below:

    model:    {attention_kind: gin, num_hidden_layers: 6, ..., target_params: 25_000_000}
    data:     {source: bundled, max_length: 256, loss_on: all, ...}
    training: {run_name: gin_paper, learning_rate: 1.0e-4, ...}

Every field has a default, so a file only names what it changes. `--set training.max_steps=20` overrides
one field; its value is parsed as YAML (`true`, `1e-4`, `[gin, standard]` all work). Unknown keys and bad
values raise `ConfigError` naming the key and what is allowed, before any data is read or model built.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml


class ConfigError(ValueError):
    """A run config names an unknown key or holds a bad value; the message says which and what is allowed."""


@dataclass
class ModelSettings:
    """The model a run trains from scratch: a Llama decoder whose attention may be a GNN.

    Every field but the last two is a `GinformerConfig` field of the same name and default (modeling.py
    documents what each graph option does); the defaults are the paper's best protein model at ~25 M
    parameters. `vocab_size` and the special-token ids come from the tokenizer, not from here.
    """

    # Size: the paper uses 6 layers × 8 heads and no grouped keys/values.
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None  # None: one key/value head per query head
    hidden_size: int = 512  # chosen by sizing instead when target_params is set
    intermediate_size: int = 2048  # feed-forward width; 512 × 4 gives the reference model its ~25 M parameters
    max_position_embeddings: int = 512  # must cover the longest example: 256 residues plus 5 marker tokens
    attention_dropout: float = 0.0
    # Graph attention (GinformerConfig).
    attention_kind: str | list[str] = "gin"  # "standard" | "gin" | "pna", or a list with one kind per layer
    adjacency_activation: str = "softmax"
    sharpening_init: float = 1.0  # α at step 0; 1.0 is plain softmax
    learn_sharpening: bool = True  # a trainable α per layer: the paper's best
    sharpness_init: float = 1.0
    learn_sharpness: bool = False
    threshold_init: float = 0.0
    learn_threshold: bool = True
    refinement: str = "none"
    refinement_threshold: float = 0.05
    adjacency_top_k: int = 8
    gin_self_term: str = "one_plus_eps"
    gin_eps_init: float = 0.0
    learn_gin_eps: bool = True
    gin_mlp_multiplier: float = 0.5  # γ; 0.5 generalised best in the paper
    gin_mlp_dropout: float = 0.0
    node_features: str = "v_proj"
    use_o_proj: bool = False  # the paper's best model has no output projection after the GIN MLP
    pna_aggregators: list[str] = field(default_factory=lambda: ["sum", "mean", "max", "var"])
    pna_scalers: list[str] = field(default_factory=lambda: ["identity"])
    pna_degree_delta: float = 4.6
    pna_blend_init: float = 0.5
    learn_pna_blend: bool = True
    pna_mlp_multiplier: float = 1.0
    # Sizing (sizing.py): compare attention kinds at an equal parameter count, as the paper does.
    target_params: int | None = None  # pick hidden_size so the model has about this many parameters
    scale_intermediate: bool = False  # sizing keeps the feed-forward width (the paper's best variant)

    def __post_init__(self) -> None:
        _check_types(self, "model")
        for name in ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"):
            _positive(self, "model", name)
        _positive(self, "model", "max_position_embeddings")
        if self.target_params is not None:
            _positive(self, "model", "target_params")
        try:
            self.to_config(vocab_size=64, sized=False)  # GinformerConfig checks the values it owns
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None

    def to_config(self, vocab_size: int, sized: bool = True, **token_ids: int | None):
        """The GinformerConfig these settings describe, sized to target_params when set and `sized`."""
        from ginformer.modeling import GinformerConfig
        from ginformer.sizing import size_config

        values = dataclasses.asdict(self)
        target_params = values.pop("target_params")
        scale_intermediate = values.pop("scale_intermediate")
        if values["num_key_value_heads"] is None:
            values["num_key_value_heads"] = self.num_attention_heads
        config = GinformerConfig(vocab_size=vocab_size, **values, **token_ids)
        if sized and target_params is not None:
            config = size_config(config, target_params, scale_intermediate=scale_intermediate)
        return config


@dataclass
class DataSettings:
    """Where the examples come from, which are kept, and which tokens carry the loss."""

    source: str = "bundled"  # "bundled" (the subset in data/protein/), a .parquet/.csv/.jsonl path, or a hub id
    max_length: int = 256  # keep proteins shorter than this many residues (the paper's filter)
    val_fraction: float = 0.1  # the paper holds out 10%
    split_seed: int = 42  # the split is fixed by this seed, independent of the training seed
    on_bad_row: Literal["skip", "error"] = "skip"  # a malformed row is dropped with a warning, or stops the run
    allow_ambiguous: bool = False  # keep sequences with X, B, Z, U, O residues
    loss_on: Literal["all", "labels"] = "all"  # "labels": loss only on the two structure tokens + end token
    max_train_examples: int | None = None  # keep only the first N training examples (fast CPU runs)
    max_val_examples: int | None = None  # evaluate on the first N validation examples (evaluation cost)

    def __post_init__(self) -> None:
        _check_types(self, "data")
        _positive(self, "data", "max_length")
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "in (0, 1)")
        for name in ("max_train_examples", "max_val_examples"):
            if getattr(self, name) is not None:
                _positive(self, "data", name)


@dataclass
class TrainingSettings:
    """Optimisation and bookkeeping; defaults are the paper's Table 1."""

    run_name: str = "pretrain"  # the run writes to <output_root>/<run_name>/
    output_root: str = "runs"
    learning_rate: float = 1e-4
    lr_scheduler: Literal["constant_with_warmup", "constant", "linear", "cosine"] = "constant_with_warmup"
    warmup_steps: int = 250
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    num_train_epochs: float = 9.0  # used unless max_steps is set
    max_steps: int | None = None  # optimizer steps; overrides num_train_epochs
    logging_steps: int = 100  # the paper logs train and validation loss every 100 steps
    eval_steps: int = 100
    save_steps: int = 100  # a checkpoint every N steps, plus one at the end
    save_total_limit: int | None = None  # keep only the newest N checkpoints
    seed: int = 42  # model init, dropout and data order
    bf16: bool = False  # bfloat16 autocast; on CPUs without bf16 units it is slower
    torch_compile: bool = False  # torch.compile the model (Trainer's option): slow first steps, maybe faster later

    def __post_init__(self) -> None:
        _check_types(self, "training")
        require(
            bool(self.run_name) and "/" not in self.run_name and self.run_name not in (".", ".."),
            "training.run_name",
            self.run_name,
            "a non-empty directory name without '/'",
        )
        _positive(self, "training", "learning_rate")
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
            "logging_steps",
            "eval_steps",
            "save_steps",
        ):
            _positive(self, "training", name)
        for name in ("max_steps", "save_total_limit"):
            if getattr(self, name) is not None:
                _positive(self, "training", name)
        require(self.warmup_steps >= 0, "training.warmup_steps", self.warmup_steps, ">= 0")
        require(self.weight_decay >= 0, "training.weight_decay", self.weight_decay, ">= 0")
        require(self.max_grad_norm >= 0, "training.max_grad_norm", self.max_grad_norm, ">= 0 (0 disables clipping)")


@dataclass
class ExperimentSettings:
    """One run: what to build, what to train it on, how to train it."""

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    @property
    def run_dir(self) -> Path:
        return Path(self.training.output_root) / self.training.run_name


SECTIONS: dict[str, type] = {"model": ModelSettings, "data": DataSettings, "training": TrainingSettings}


def settings_from_dict(raw: Mapping[str, Any] | None) -> ExperimentSettings:
    """Build validated settings from a nested mapping (a parsed YAML file); missing keys keep their defaults."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a run config must be a mapping of sections {list(SECTIONS)}, got {type(raw).__name__}")
    for section in raw:
        if section not in SECTIONS:
            raise ConfigError(unknown_key_message("section", str(section), list(SECTIONS)))
    sections = {section: build_settings(cls, raw.get(section), section) for section, cls in SECTIONS.items()}
    return ExperimentSettings(**sections)


def section_mapping(values: Any, where: str) -> dict[str, Any]:
    """A config section as a dict; a missing (None) section is empty."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"section '{where}' must be a mapping of keys to values, got {values!r}")
    return dict(values)


def build_settings(cls: type, values: Any, where: str):
    """`cls(**values)` with unknown keys refused, each value checked against its annotation (nested dataclasses
    built the same way), and the class's own ValueError reported as a ConfigError naming `where`."""
    values = section_mapping(values, where)
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    checked = {}
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(unknown_key_message(f"key in '{where}'", f"{where}.{key}", allowed))
        if dataclasses.is_dataclass(hints[key]):
            checked[key] = build_settings(hints[key], value, f"{where}.{key}")
        else:
            checked[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**checked)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None

def settings_to_dict(settings: ExperimentSettings) -> dict[str, dict[str, Any]]:
    return {section: dataclasses.asdict(getattr(settings, section)) for section in SECTIONS}


def parse_override(text: str) -> tuple[str, str, Any]:
    """`"training.max_steps=20"` -> `("training", "max_steps", 20)`; the value is parsed as YAML."""
    path, sep, value = text.partition("=")
    section, dot, key = path.strip().partition(".")
    if not sep or not dot or not section or not key or "." in key:
        raise ConfigError(f"--set expects section.key=value (e.g. training.max_steps=20), got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {path}: cannot parse value {value!r} as YAML ({err.problem})") from None
    return section, key, parsed


def apply_overrides(raw: Mapping[str, Any] | None, overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the nested mapping `raw` with each `section.key=value` override applied in order."""
    merged: dict[str, Any] = {
        section: dict(values) if isinstance(values, Mapping) else values for section, values in (raw or {}).items()
    }
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(unknown_key_message("section", section, list(SECTIONS)))
        values = merged.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"section '{section}' must be a mapping of keys to values, got {values!r}")
        merged[section] = {**values, key: value}
    return merged


def load_settings(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentSettings:
    """Read a YAML run config (or start from defaults when `path` is None), apply overrides, validate."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"{path} must hold a mapping of sections {list(SECTIONS)}, got {type(raw).__name__}")
    return settings_from_dict(apply_overrides(raw, overrides))


def save_settings(settings: ExperimentSettings, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(settings_to_dict(settings), sort_keys=False))


def unknown_key_message(what: str, name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name.rsplit(".", 1)[-1], allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {what}: '{name}'{hint}; allowed: {', '.join(allowed)}"


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def _positive(obj: Any, section: str, name: str) -> None:
    value = getattr(obj, name)
    require(value > 0, f"{section}.{name}", value, "> 0")


def _check_types(obj: Any, section: str) -> None:
    """Check (and gently coerce) every field against its annotation: ints where ints are due, and so on."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{section}.{f.name}"
        setattr(obj, f.name, _coerce(getattr(obj, f.name), hints[f.name], key))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} is not allowed: expected {_describe(annotation)}")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        require(value in allowed, key, value, f"one of {list(allowed)}")
        return value
    if origin is list:
        (item,) = typing.get_args(annotation)
        require(isinstance(value, list), key, value, _describe(annotation))
        return [_coerce(v, item, key) for v in value]
    if annotation is type(None):
        require(value is None, key, value, "null")
        return None
    if annotation is bool:
        require(isinstance(value, bool), key, value, "true or false")
        return value
    if annotation is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if annotation is float:
        # PyYAML reads `1e-4` (no dot) as a string; accept it as the number it plainly is.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        require(ok, key, value, "a finite number")
        return float(value)
    if annotation is str:
        require(isinstance(value, str), key, value, "a string")
        return value
    raise TypeError(f"{key}: unsupported annotation {annotation!r}")


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"a list of {_describe(typing.get_args(annotation)[0])}"
    if origin is Literal:
        return f"one of {list(typing.get_args(annotation))}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        annotation, str(annotation)
    )
