"""Run configs: one YAML file with three sections, each a typed dataclass.

    model:     what is trained: from scratch (runs/models.py: ScratchModelSettings), or a pretrained model with
               Sparse-GIN, LoRA or nothing (PretrainedModelSettings)
    data:      the task and its settings: `data.task` picks the task (tasks/), the rest is its settings class
    training:  optimisation and bookkeeping (TrainingSettings below, shared by every run)

Every field has a default, so a file only names what it changes. `--set training.max_steps=20` overrides one
value, `--set model.sparse_gin.d_gnn=64` a nested one; values are parsed as YAML (`true`, `1e-4`, `[gin, pna]`).
Unknown keys and bad values raise `ConfigError` naming the key and what is allowed, before any data is read or
model built. A config file is looked for where it is named, then among the configs that ship with the package
(`ginformer pretrain --config shakespeare_char_cpu.yaml` works outside a checkout).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
from transformers.training_args import OptimizerNames

from ginformer.files import atomic_write_text, read_text_file, refuse_special_file
from ginformer.runs.models import MODEL_SIDES, ModelSide, side_of
from ginformer.runs.objectives import OBJECTIVES, Objective
from ginformer.settings import (
    ConfigError,
    build_settings,
    check_fields,
    load_yaml,
    positive,
    require,
    section_mapping,
    unknown_key_message,
)
from ginformer.tasks import TASKS, Task

SECTIONS = ("model", "data", "training")


@dataclass
class TrainingSettings:
    """Optimisation and bookkeeping; defaults are the paper's Table 1 (a model side may change some)."""

    run_name: str = "pretrain"  # the run writes to <output_root>/<run_name>/
    output_root: str = "runs"
    learning_rate: float = 1e-4
    lr_scheduler: Literal["constant_with_warmup", "constant", "linear", "cosine", "inverse_sqrt"] = "constant_with_warmup"
    min_lr_ratio: float = 0.0  # cosine decays to learning_rate × this (nanoGPT: 0.1); other schedules ignore it
    warmup_steps: int = 250
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999  # nanoGPT's small models use 0.99: the second moment adapts faster
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
    # Recompute each decoder layer's activations in backward instead of keeping them: memory for long contexts and
    # big bases, at about one extra forward pass of time; Sparse-GIN's gradients are unchanged (tested).
    gradient_checkpointing: bool = False
    optim: str = "adamw_torch"  # the optimizer, by Trainer's name: adamw_torch_fused, adafactor, sgd, ...
    # Trainer's loggers, beside metrics.jsonl: "tensorboard" writes event files to <run>/runs/ (offline), "wandb",
    # "mlflow", ... each needs its package installed. Empty: none.
    report_to: list[str] = field(default_factory=list)
    # The loss (runs/objectives.py): "sft" next-token prediction; on a pretrained model also "dpo" (preference rows)
    # and "grpo" (sampled completions scored by the task's reward), with the frozen base as the reference.
    method: Literal["sft", "dpo", "grpo"] = "sft"
    beta: float | None = None  # DPO's β; GRPO's KL coefficient (None: 0.1 for DPO, 0.04 for GRPO)
    num_generations: int | None = None  # GRPO: completions sampled per prompt (None: 4)
    max_completion_length: int | None = None  # GRPO: new tokens per completion (None: the task's answer length)

    def __post_init__(self) -> None:
        check_fields(self, "training")
        require(
            bool(self.run_name) and "/" not in self.run_name and self.run_name not in (".", ".."),
            "training.run_name",
            self.run_name,
            "a non-empty directory name without '/'",
        )
        positive(self, "training", "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps", "num_train_epochs", "logging_steps", "eval_steps", "save_steps",
                 "max_steps", "save_total_limit", "num_generations", "max_completion_length")
        require(self.beta is None or self.beta >= 0, "training.beta", self.beta, ">= 0")
        require(self.warmup_steps >= 0, "training.warmup_steps", self.warmup_steps, ">= 0")
        require(self.weight_decay >= 0, "training.weight_decay", self.weight_decay, ">= 0")
        require(0 <= self.adam_beta1 < 1, "training.adam_beta1", self.adam_beta1, "in [0, 1)")
        require(0 < self.adam_beta2 < 1, "training.adam_beta2", self.adam_beta2, "in (0, 1)")
        require(0 <= self.min_lr_ratio < 1, "training.min_lr_ratio", self.min_lr_ratio, "in [0, 1)")
        require(self.max_grad_norm >= 0, "training.max_grad_norm", self.max_grad_norm, ">= 0 (0 disables clipping)")
        optimizers = [name.value for name in OptimizerNames]
        require(self.optim in optimizers, "training.optim", self.optim, f"one of Trainer's optimizers {optimizers}")
        for logger in self.report_to:
            require(logger in INTEGRATION_TO_CALLBACK, "training.report_to", self.report_to,
                    f"a list of Trainer's loggers among {sorted(INTEGRATION_TO_CALLBACK)}")


@dataclass
class RunSettings:
    """One run: what to train, on which task, how."""

    model: Any  # ScratchModelSettings | PretrainedModelSettings
    data: Any  # the task's settings class
    training: TrainingSettings = field(default_factory=TrainingSettings)

    @property
    def run_dir(self) -> Path:
        return Path(self.training.output_root) / self.training.run_name

    @property
    def side(self) -> ModelSide:
        return side_of(self.model)

    def task(self) -> Task:
        return TASKS[self.data.task](self.data)

    @property
    def objective(self) -> Objective:
        return OBJECTIVES[self.training.method]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {section: dataclasses.asdict(getattr(self, section)) for section in SECTIONS}


def side_name(model: Mapping[str, Any] | None) -> str:
    """The model side a `model` section describes: "pretrained" when it names a base or a method."""
    return "pretrained" if model and {"base", "method"} & set(model) else "scratch"


def run_settings_from_dict(raw: Mapping[str, Any] | None, side: str | None = None) -> RunSettings:
    """Validated settings from a nested mapping (a parsed YAML file); missing keys keep their defaults.
    `side` ("scratch" or "pretrained") is what the caller expects; None reads it off the model section."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a run config must be a mapping of sections {list(SECTIONS)}, got {type(raw).__name__}")
    for section in raw:
        if section not in SECTIONS:
            raise ConfigError(unknown_key_message("section", str(section), list(SECTIONS)))
    model = section_mapping(raw.get("model"), "model")
    model_side = MODEL_SIDES[side or side_name(model)]
    _check_side(model, model_side)
    data = section_mapping(raw.get("data"), "data")
    task_name = data.get("task", model_side.default_task)
    if task_name not in TASKS:
        raise ConfigError(unknown_key_message("data.task", str(task_name), list(TASKS)))
    task = TASKS[task_name]
    training = {**model_side.training_defaults, **section_mapping(raw.get("training"), "training")}
    try:
        data_settings = build_settings(task.settings_class, {**data, "task": task_name}, "data")
    except ConfigError as err:
        raise ConfigError(f"{err} (the data settings of task '{task_name}')") from None
    settings = RunSettings(
        model=build_settings(model_side.settings_class, model, "model"),
        data=data_settings,
        training=build_settings(TrainingSettings, training, "training"),
    )
    task = settings.task()
    task.check_model_side(model_side.name)
    settings.objective.check(task, model_side.name, settings.training)
    if settings.objective.peft_route and not model_side.trains(settings.model):
        raise ConfigError(f"training.method={settings.training.method!r} trains an adapter; model.method='none' "
                          "trains nothing and its numbers are the base's own: use training.method=sft with it")
    return settings


def _check_side(model: Mapping[str, Any], side: ModelSide) -> None:
    """Keys that belong to the other model side mean the config was given to the wrong command."""
    own = {f.name for f in dataclasses.fields(side.settings_class)}
    for other in MODEL_SIDES.values():
        foreign = (set(model) - own) & {f.name for f in dataclasses.fields(other.settings_class)}
        if other is not side and foreign:
            verb = {"scratch": "ginformer pretrain", "pretrained": "ginformer finetune"}[other.name]
            raise ConfigError(
                f"model.{sorted(foreign)[0]} describes a {other.name} model, not a {side.name} one: "
                f"run this config with `{verb}`"
            )


def apply_overrides(raw: Mapping[str, Any] | None, overrides: Sequence[str], depth: int = 2) -> dict[str, Any]:
    """A deep copy of `raw` with each ``a.b[.c]=value`` applied in order; values are parsed as YAML. Keys are at
    least `depth` deep: a run config's are section.key; a compare config also has top-level keys (depth 1)."""
    merged = json.loads(json.dumps(raw or {}))  # a deep copy of plain YAML data
    for text in overrides:
        path, sep, value = text.partition("=")
        keys = path.strip().split(".")
        if not sep or len(keys) < depth or not all(keys):
            raise ConfigError(f"--set expects section.key=value (e.g. training.max_steps=20), got {text!r}")
        parsed = load_yaml(value, f"--set {path}") if value.strip() else None
        node = merged
        for level, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {path}: '{'.'.join(keys[: level + 1])}' holds {child!r}, not a mapping")
            node = child
        node[keys[-1]] = parsed
    return merged


def bundled_configs() -> list[str]:
    """The names of the configs that ship with the package."""
    return sorted(p.name for p in resources.files("ginformer.configs").iterdir() if p.name.endswith(".yaml"))


def bundled_config(name: str) -> Path:
    """The path of a config that ships with the package (configs/ in a checkout)."""
    return Path(str(resources.files("ginformer.configs") / name))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping: the path as given, else a bundled config of that name (.yaml optional)."""
    path = Path(path)
    refuse_special_file(path, "config file")
    if not path.is_file():
        bundled = bundled_config(path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
        if path.parent != Path(".") or not bundled.is_file():
            raise ConfigError(f"config file not found: {path} (bundled configs: {', '.join(bundled_configs())})")
        path = bundled
    raw = load_yaml(read_text_file(path), str(path))
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path} must hold a mapping of keys to values, got {type(raw).__name__}")
    return dict(raw)


def load_run_settings(
    path: str | Path | None = None, overrides: Sequence[str] = (), side: str | None = None
) -> RunSettings:
    """Read a YAML run config (or start from defaults when `path` is None), apply overrides, validate."""
    raw = read_config_file(path) if path is not None else {}
    return run_settings_from_dict(apply_overrides(raw, overrides), side)


def settings_yaml(settings: RunSettings) -> str:
    """The settings as a run config file's text, which `load_run_settings` reads back."""
    return yaml.safe_dump(settings.to_dict(), sort_keys=False)


def save_run_settings(settings: RunSettings, path: str | Path) -> None:
    atomic_write_text(path, settings_yaml(settings))
