"""Fine-tuning a frozen pretrained LLM with Sparse-GIN or LoRA: ``finetune(settings)`` trains one adapter into a
run directory, on the same Trainer machinery as pretraining (train.py).

    runs/<run_name>/
      config.yaml      the resolved settings, re-loadable with `load_finetune_settings`
      metrics.jsonl    one JSON object per event (the schema of train.py, plus the fields below)
      checkpoint-N/    adapter weights only, optimizer, scheduler, RNG state (what `resume` needs)
      adapter/         the final adapter: adapter_config.json + adapter_model.safetensors (Sparse-GIN's or peft's)
      tokenizer/       the tokenizer the run used (with the pad token it chose)

Fine-tuning adds to train.py's events:
    start    method, base, trainable_parameters, total_parameters; for LoRA its rank and the budget it matched
    train    step_time: mean seconds per optimizer step since the last log (evaluation and saving excluded)
    train, eval, start   graph: {"lambda": [λ_k per layer]} for Sparse-GIN (plus "alpha"/"tau" when they learn),
                         {} for LoRA and for the base
Method "none" trains nothing: its run holds config.yaml, the start event and one evaluation at step 0, the
numbers of the base model that the adapters must beat.

A run config has train.py's three sections; `model` names the base and the method:

    model:    {base: smollm2, method: sparse-gin, sparse_gin: {d_gnn: 155, ...}, lora: {target: attention}}
    data:     {task: gsm8k, source: bundled, template: paper, max_length: 384, ...}
    training: {run_name: gsm8k_sparse_gin, learning_rate: 2.0e-4, ...}   (experiment.TrainingSettings)

`--set model.sparse_gin.d_gnn=64` overrides one value, nested keys included. Unknown keys and bad values raise
ConfigError naming them before any model is loaded. As for pretraining, the same command runs under
``torchrun --nproc_per_node N -m ginformer.cli finetune ...`` and ``accelerate launch``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import peft
import torch
import yaml
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, set_seed

from ginformer.adapter import SparseGINConfig, SparseGINLayer, SparseGINModel, get_sparse_gin_model
from ginformer.adapter.model import WEIGHTS_NAME, decoder_layers
from ginformer.adapter.lora import LoraTarget, get_lora_model, lora_config_for_budget, lora_target_modules
from ginformer.data.instruct import (
    InstructExample,
    OnBadRow,
    PaddingCollator,
    Template,
    load_folio,
    load_gsm8k,
    split_examples,
    tokenize_example,
)
from ginformer.experiment import (
    ConfigError,
    TrainingSettings,
    build_settings,
    require,
    section_mapping,
    unknown_key_message,
)
from ginformer.pretrained import load_base_model
from ginformer.train import (
    CONFIG_FILE,
    METRICS_FILE,
    GuardedTrainer,
    MetricsLogger,
    barrier,
    check_run_dir,
    create_run_dir,
    metrics_event,
    train_until_done_or_diverged,
    training_arguments,
)

ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"
Method = Literal["sparse-gin", "lora", "none"]
Task = Literal["gsm8k", "folio"]

# The paper's fine-tuning hyperparameters (its Table 2), where they differ from pretraining's; logging and
# evaluation every 10 and 50 steps suit short CPU runs (the paper logs per epoch fraction).
FINETUNE_TRAINING_DEFAULTS: dict[str, Any] = {
    "run_name": "finetune",
    "learning_rate": 2e-4,
    "lr_scheduler": "constant_with_warmup",
    "warmup_steps": 50,
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 2,
    "gradient_accumulation_steps": 4,
    "num_train_epochs": 3.0,
    "weight_decay": 0.01,
    "max_grad_norm": 0.5,
    "logging_steps": 10,
    "eval_steps": 50,
    "save_steps": 50,
}


# ---------------------------------------------------------------------------------------------------- settings


@dataclass
class LoraSettings:
    """The LoRA baseline; its rank is matched to the Sparse-GIN budget unless `rank` is given."""

    target: LoraTarget = "attention"  # "attention": q/k/v/o as the paper's first run; "all_linear": its second
    rank: int | None = None  # None: the rank whose trainable count is closest to model.sparse_gin's count
    alpha: float | None = None  # LoRA's α; None: equal to the rank (scale α/r = 1, as the paper's r = α = 50)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank is not None:
            require(self.rank > 0, "model.lora.rank", self.rank, "> 0 or null")
        if self.alpha is not None:
            require(self.alpha > 0, "model.lora.alpha", self.alpha, "> 0 or null")
        require(0.0 <= self.dropout < 1.0, "model.lora.dropout", self.dropout, "in [0, 1)")


@dataclass
class FinetuneModelSettings:
    """The frozen base model and what is trained on top of it."""

    base: str = "smollm2"  # "smollm2" (the bundled SmolLM2-135M-Instruct), a local model directory or a hub id
    method: Method = "sparse-gin"  # "none" trains nothing: the base model's own numbers
    # The Sparse-GIN adapter; for method "lora" it still sets the trainable-parameter budget LoRA is matched to.
    sparse_gin: SparseGINConfig = field(default_factory=SparseGINConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class FinetuneDataSettings:
    """Which task, from where, in which format, and which examples are kept."""

    task: Task = "gsm8k"
    source: str = "bundled"  # "bundled" (data/gsm8k, data/folio), a .jsonl file in the task's format, or a hub id
    hub_config: str | None = None  # the hub dataset's config name (openai/gsm8k needs "main")
    template: Template = "paper"  # "paper": ### User: ...<|eot_id|>### Assistant: ...; "chat": the tokenizer's
    max_length: int = 384  # examples longer than this many tokens are dropped, never cut (a cut loses the answer)
    val_fraction: float = 0.1  # the paper holds out 10%
    split_seed: int = 42  # fixes the split, independent of the training seed
    on_bad_row: OnBadRow = "skip"  # a malformed row is dropped with a warning, or stops the run
    max_train_examples: int | None = None  # keep the first N training examples (short CPU runs)
    max_val_examples: int | None = 100  # validate on the first N validation examples: a fixed, affordable subset

    def __post_init__(self) -> None:
        require(self.max_length >= 2, "data.max_length", self.max_length, ">= 2")
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "in (0, 1)")
        for name in ("max_train_examples", "max_val_examples"):
            value = getattr(self, name)
            if value is not None:
                require(value > 0, f"data.{name}", value, "> 0 or null")


@dataclass
class FinetuneSettings:
    """One fine-tuning run. Its sections have train.py's names, so train.py's run-directory helpers serve it."""

    model: FinetuneModelSettings = field(default_factory=FinetuneModelSettings)
    data: FinetuneDataSettings = field(default_factory=FinetuneDataSettings)
    training: TrainingSettings = field(default_factory=lambda: TrainingSettings(**FINETUNE_TRAINING_DEFAULTS))

    @property
    def run_dir(self) -> Path:
        return Path(self.training.output_root) / self.training.run_name


FINETUNE_SECTIONS: dict[str, type] = {
    "model": FinetuneModelSettings,
    "data": FinetuneDataSettings,
    "training": TrainingSettings,
}


def finetune_settings_from_dict(raw: Mapping[str, Any] | None) -> FinetuneSettings:
    """Validated settings from a nested mapping (a parsed YAML file); missing keys keep their defaults."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a fine-tuning config must be a mapping of sections {list(FINETUNE_SECTIONS)}")
    for section in raw:
        if section not in FINETUNE_SECTIONS:
            raise ConfigError(unknown_key_message("section", str(section), list(FINETUNE_SECTIONS)))
    training = {**FINETUNE_TRAINING_DEFAULTS, **section_mapping(raw.get("training"), "training")}
    return FinetuneSettings(
        model=build_settings(FinetuneModelSettings, raw.get("model"), "model"),
        data=build_settings(FinetuneDataSettings, raw.get("data"), "data"),
        training=build_settings(TrainingSettings, training, "training"),
    )


def load_finetune_settings(path: str | Path | None = None, overrides: Sequence[str] = ()) -> FinetuneSettings:
    """Read a YAML fine-tuning config (or start from defaults), apply `section.key[.key]=value` overrides, validate."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path} must hold a mapping of sections {list(FINETUNE_SECTIONS)}")
    return finetune_settings_from_dict(apply_nested_overrides(raw, overrides))


def apply_nested_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A deep copy of `raw` with each ``a.b[.c]=value`` applied in order; values are parsed as YAML."""
    merged = json.loads(json.dumps(raw))  # a deep copy of plain YAML data
    for text in overrides:
        path, sep, value = text.partition("=")
        keys = path.strip().split(".")
        if not sep or len(keys) < 2 or not all(keys):
            raise ConfigError(f"--set expects section.key=value (e.g. model.sparse_gin.d_gnn=64), got {text!r}")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {path}: cannot parse value {value!r} as YAML ({err.problem})") from None
        node = merged
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {path}: '{'.'.join(keys[: depth + 1])}' holds {child!r}, not a mapping")
            node = child
        node[keys[-1]] = parsed
    return merged


def settings_dict(settings: FinetuneSettings) -> dict[str, dict[str, Any]]:
    return {section: dataclasses.asdict(getattr(settings, section)) for section in FINETUNE_SECTIONS}


# ---------------------------------------------------------------------------------------------------- model


@dataclass
class BuiltModel:
    """A model ready to train, with the numbers the start event records."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    trainable_parameters: int
    total_parameters: int
    lora_rank: int | None = None
    budget: int | None = None  # the Sparse-GIN count LoRA was matched to


def sparse_gin_parameter_count(model: PreTrainedModel, config: SparseGINConfig) -> int:
    """Trainable parameters a Sparse-GIN adapter with `config` adds to `model`, without wrapping it: one
    SparseGINLayer per decoder layer, every parameter of which trains (fixed values are buffers)."""
    hidden_size = model.config.get_text_config().hidden_size
    per_layer = sum(p.numel() for p in SparseGINLayer(hidden_size, config, 0.0).parameters())
    return per_layer * len(decoder_layers(model))


def build_finetune_model(settings: FinetuneModelSettings) -> BuiltModel:
    """Load the base and wrap it as `settings.method` asks; the base's weights are frozen in every case."""
    base, tokenizer = load_base_model(settings.base)
    base.requires_grad_(False)
    total = sum(p.numel() for p in base.parameters())
    if settings.method == "none":
        return BuiltModel(base, tokenizer, 0, total)
    if settings.method == "sparse-gin":
        model = get_sparse_gin_model(base, settings.sparse_gin)
        trainable, total = model.get_nb_trainable_parameters()
        return BuiltModel(model, tokenizer, trainable, total)
    lora = settings.lora
    budget = sparse_gin_parameter_count(base, settings.sparse_gin)
    extra = {"lora_dropout": lora.dropout, **({"lora_alpha": lora.alpha} if lora.alpha is not None else {})}
    if lora.rank is None:
        try:
            config, _ = lora_config_for_budget(base, budget, lora.target, **extra)
        except ValueError as err:
            raise ConfigError(f"model.lora: {err}; set model.lora.rank") from None
    else:
        modules = lora_target_modules(base, lora.target)  # raises, naming the model, when nothing matches
        names = sorted({n.rsplit(".", 1)[-1] for n in modules})
        config = peft.LoraConfig(
            r=lora.rank,
            target_modules=names if lora.target == "attention" else "all-linear",
            task_type="CAUSAL_LM",
            **{"lora_alpha": lora.rank, **extra},
        )
    model = get_lora_model(base, config)
    trainable, total = model.get_nb_trainable_parameters()
    return BuiltModel(model, tokenizer, trainable, total, lora_rank=config.r, budget=budget)


def adapter_graph(model: torch.nn.Module) -> dict[str, list[float]]:
    """The adapter's learned graph scalars per layer: λ always, α and τ when they learn; {} without Sparse-GIN."""
    if not isinstance(model, SparseGINModel):
        return {}
    config = model.sparse_gin_config
    graph = {"lambda": model.adapter_scales()}
    if config.train_alpha:
        graph["alpha"] = [adapter.alpha.item() for adapter in model.adapters]
    if config.train_tau:
        graph["tau"] = [adapter.tau.item() for adapter in model.adapters]
    return graph


# ---------------------------------------------------------------------------------------------------- data


def load_task_examples(settings: FinetuneDataSettings, source: str | Path | None = None) -> list[InstructExample]:
    """Every usable row of the task's data: `source` when given, else the settings' source."""
    source = settings.source if source is None else source
    load = load_gsm8k if settings.task == "gsm8k" else load_folio
    return load(
        None if source == "bundled" else source,
        on_bad_row=settings.on_bad_row,
        hub_config=settings.hub_config,
    )


def task_splits(settings: FinetuneDataSettings) -> tuple[list[InstructExample], list[InstructExample]]:
    """The (train, val) examples of a run, before tokenisation: the grouped split of data/instruct.py."""
    return split_examples(load_task_examples(settings), settings.val_fraction, settings.split_seed)


def fit_examples(
    examples: Sequence[InstructExample],
    tokenizer: PreTrainedTokenizerBase,
    settings: FinetuneDataSettings,
    limit: int | None = None,
) -> tuple[list[InstructExample], list[dict[str, list[int]]]]:
    """The first `limit` (None: all) examples whose tokens fit data.max_length, and their training features.

    Longer rows are dropped, never cut (a cut row loses its answer or its end marker), with one warning giving
    the count; so a run, its evaluation and a comparison all see the same rows.
    """
    kept, features, dropped = [], [], 0
    for example in tqdm(examples, desc="tokenize", leave=False, disable=None):
        if limit is not None and len(kept) == limit:
            break
        feature = tokenize_example(example, tokenizer, settings.template)
        if len(feature["input_ids"]) > settings.max_length:
            dropped += 1
            continue
        kept.append(example)
        features.append(feature)
    if dropped:
        warnings.warn(
            f"{settings.task}: dropped {dropped} of {len(kept) + dropped} examples longer than "
            f"data.max_length={settings.max_length} tokens",
            stacklevel=2,
        )
    return kept, features


def build_finetune_datasets(
    settings: FinetuneDataSettings, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]]]:
    """(train, val) features for Trainer: the first N examples of each split that fit, N as the settings say."""
    train, val = task_splits(settings)
    _, train_features = fit_examples(train, tokenizer, settings, settings.max_train_examples)
    _, val_features = fit_examples(val, tokenizer, settings, settings.max_val_examples)
    if not train_features or not val_features:
        raise ValueError(
            f"{settings.task} ({settings.source}): {len(train_features)} training and {len(val_features)} validation "
            f"examples fit data.max_length={settings.max_length}; both need at least one"
        )
    return train_features, val_features


# ---------------------------------------------------------------------------------------------------- training


class FinetuneMetricsLogger(MetricsLogger):
    """train.py's metrics.jsonl writer, plus λ per layer and the mean wall time of an optimizer step."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._started: float | None = None
        self._elapsed, self._steps = 0.0, 0

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._started is not None:
            self._elapsed += time.perf_counter() - self._started
            self._steps += 1
            self._started = None

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        event = metrics_event(logs, state.global_step, state.epoch, model)
        if event is None:
            return
        if event["event"] in ("train", "eval"):
            event["graph"] = adapter_graph(model)
        if event["event"] == "train":
            event["step_time"] = self._elapsed / self._steps if self._steps else None
            self._elapsed, self._steps = 0.0, 0
        self.write(event)


class _FinetuneTrainer(GuardedTrainer):
    """train.py's Trainer (NaN stop, token-weighted validation loss) whose checkpoints hold the adapter only.

    Trainer saves a module that is no PreTrainedModel as its whole state dict, which would copy the frozen base
    into every checkpoint (and fails on tied embeddings); a Sparse-GIN model saves and resumes its adapter alone.
    peft models already do.
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, SparseGINModel):
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            model.save_pretrained(output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model or self.model, keep_torch_compile=False)
        if not isinstance(model, SparseGINModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        weights = Path(resume_from_checkpoint) / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"cannot resume: {weights} is missing (not a Sparse-GIN checkpoint)")
        model.load_adapter_state_dict(load_file(str(weights)))


def finetune(
    settings: FinetuneSettings,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
) -> Path:
    """Fine-tune as `settings` describe and return the run directory (see the module docstring for its layout).

    `resume` continues from the newest checkpoint; `overwrite` deletes an existing run directory first; without
    either an existing run directory is an error. Raises TrainingDiverged when the loss becomes NaN/inf.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues a run, overwrite deletes it")
    if resume and settings.model.method == "none":
        raise ConfigError("model.method='none' trains nothing, so there is nothing to resume; use --overwrite")
    run_dir = settings.run_dir
    args = training_arguments(settings)
    checkpoint = check_run_dir(settings, resume, overwrite)
    barrier()

    set_seed(settings.training.seed)  # the adapter's initial weights
    built = build_finetune_model(settings.model)
    train_examples, val_examples = build_finetune_datasets(settings.data, built.tokenizer)

    # Only now, with model and data built, does the run directory change: a bad setting leaves it untouched.
    if args.process_index == 0:
        create_run_dir(settings, checkpoint, overwrite)
    barrier()
    metrics = FinetuneMetricsLogger(run_dir / METRICS_FILE)
    trainer = _FinetuneTrainer(
        model=built.model,
        args=args,
        train_dataset=train_examples,
        eval_dataset=val_examples,
        data_collator=PaddingCollator(pad_token_id=built.tokenizer.pad_token_id),
        callbacks=[metrics, *callbacks],
    )
    if args.process_index == 0 and checkpoint is None:
        metrics.write(
            {
                "event": "start",
                "step": 0,
                "epoch": 0.0,
                "method": settings.model.method,
                "base": settings.model.base,
                "trainable_parameters": built.trainable_parameters,
                "total_parameters": built.total_parameters,
                "lora_rank": built.lora_rank,
                "budget": built.budget,
                "world_size": args.world_size,
                "train_examples": len(train_examples),
                "val_examples": len(val_examples),
                "graph": adapter_graph(built.model),
            }
        )
        built.tokenizer.save_pretrained(str(run_dir / TOKENIZER_DIR))
    if settings.model.method == "none":
        trainer.evaluate()  # logged as the eval event at step 0
        return run_dir
    train_until_done_or_diverged(trainer, metrics, checkpoint)
    trainer.save_model(str(run_dir / ADAPTER_DIR))
    return run_dir


# ---------------------------------------------------------------------------------------------------- loading


def is_finetune_run(run_dir: str | Path) -> bool:
    """True for a run directory written by `finetune` (its config names a model.method), False for pretraining."""
    config = Path(run_dir) / CONFIG_FILE
    if not config.is_file():
        return False
    saved = yaml.safe_load(config.read_text()) or {}
    return isinstance(saved.get("model"), Mapping) and "method" in saved["model"]


def load_finetuned(run_dir: str | Path) -> tuple[FinetuneSettings, torch.nn.Module, PreTrainedTokenizerBase]:
    """(settings, model in eval mode, tokenizer) of a finished fine-tuning run: the base with its adapter."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if not is_finetune_run(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a fine-tuning run directory: no {CONFIG_FILE} with a model.method")
    settings = load_finetune_settings(run_dir / CONFIG_FILE)
    adapter = run_dir / ADAPTER_DIR
    method = settings.model.method
    if method != "none" and not adapter.is_dir():
        raise FileNotFoundError(
            f"{run_dir} has no final adapter in {ADAPTER_DIR}/: the run has not finished; continue it with "
            f"`ginformer finetune --config {run_dir / CONFIG_FILE} --resume`"
        )
    base, tokenizer = load_base_model(settings.model.base)
    if (run_dir / TOKENIZER_DIR).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(run_dir / TOKENIZER_DIR)
    if method == "sparse-gin":
        model = SparseGINModel.from_pretrained(base, adapter)
    elif method == "lora":
        model = peft.PeftModel.from_pretrained(base, adapter)
    else:
        model = base
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return settings, model.to(device).eval(), tokenizer
