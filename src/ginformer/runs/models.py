"""The model side of a run, independent of its task: a model trained from scratch, or a frozen pretrained model
with Sparse-GIN, LoRA or nothing on top.

    scratch      model: {attention_kind: gin, num_hidden_layers: 6, ..., target_params: 25_000_000}
    pretrained   model: {base: smollm2, method: sparse-gin, sparse_gin: {d_gnn: 155}, lora: {target: attention}}

A `model` section that names `base` or `method` is a pretrained one; `ginformer pretrain` and `finetune` say which
they expect. Each side builds its model for a tokenizer, says where a finished run keeps it (`model/`: weights
and tokenizer; `adapter/`: adapter weights and tokenizer), loads it back, and reports the learned graph scalars
that metrics.jsonl records (α, ε, PNA's λ per layer from scratch; Sparse-GIN's λ, and α, τ when they learn).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import peft
import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)

from ginformer.adapter import (
    SparseGINConfig,
    SparseGINLayer,
    SparseGINModel,
    SparseGINPeftConfig,
    get_sparse_gin_model,
)
from ginformer.adapter.host import HostMismatch, probe
from ginformer.adapter.hub import CONFIG_NAME
from ginformer.adapter.lora import LoraTarget, get_lora_model, lora_config_for_budget, lora_target_modules
from ginformer.errors import CheckpointError, ConfigError, MissingInput
from ginformer.files import UnsafeFileError, read_text_file
from ginformer.modeling import GinformerConfig, GinformerForCausalLM
from ginformer.pretrained import WeightsMismatch, load_base_model, load_base_tokenizer, load_exactly
from ginformer.settings import build_settings, check_fields, positive, require
from ginformer.sizing import count_parameters, size_config

# ---------------------------------------------------------------------------------------------------- settings


# The paper's protein model at ~25 M parameters; every graph option keeps GinformerConfig's default (modeling.py
# documents each). Of Llama's own options only these sizes are set from a run config.
PAPER_SIZES: dict[str, Any] = {
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": None,  # one key/value head per query head
    "hidden_size": 512,  # chosen by sizing instead when target_params is set
    "intermediate_size": 2048,  # feed-forward width; 512 × 4 gives the reference model its ~25 M parameters
    "max_position_embeddings": 512,  # must cover the longest example: 256 residues plus 5 marker tokens
    "attention_dropout": 0.0,  # on the attention weights (the adjacency of graph layers) in training
}


def _as_setting(config_field: dataclasses.Field) -> tuple[str, Any, dataclasses.Field]:
    """A GinformerConfig field as a run-config field, typed in the terms `settings.coerce` checks: a number that may
    be an int or a float is a float, a sequence is a list."""
    options = typing.get_args(config_field.type) or (config_field.type,)
    options = [list[str] if typing.get_origin(o) is tuple else o for o in options]
    options = [o for i, o in enumerate(options) if o not in options[:i] and not (o is int and float in options)]
    default = PAPER_SIZES.get(config_field.name, config_field.default)
    if isinstance(default, (list, tuple)):
        return config_field.name, functools.reduce(operator.or_, options), field(default_factory=lambda: list(default))
    return config_field.name, functools.reduce(operator.or_, options), field(default=default)


class _ScratchModel:
    """A Llama decoder trained from scratch whose attention may be a GNN: GinformerConfig's own options and Llama's
    sizes (PAPER_SIZES), by the same names and defaults, plus how sizing picks the hidden size. `vocab_size` and
    the special-token ids come from the tokenizer."""

    def __post_init__(self) -> None:
        check_fields(self, "model")
        positive(self, "model", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size",
                 "max_position_embeddings", "target_params")
        require(self.attention_dropout is not None and 0.0 <= self.attention_dropout < 1.0, "model.attention_dropout",
                self.attention_dropout, "in [0, 1)")
        try:
            self.to_config(vocab_size=64, sized=False)  # GinformerConfig checks the values it owns
        except ConfigError as err:
            raise ConfigError(f"model: {err}") from None

    def to_config(self, vocab_size: int, sized: bool = True, **token_ids: int | None) -> GinformerConfig:
        """The GinformerConfig these settings describe, sized to target_params when set and `sized`."""
        values = dataclasses.asdict(self)
        target_params, scale_intermediate = values.pop("target_params"), values.pop("scale_intermediate")
        if values["num_key_value_heads"] is None:
            values["num_key_value_heads"] = self.num_attention_heads
        config = GinformerConfig(vocab_size=vocab_size, **values, **token_ids)
        if sized and target_params is not None:
            config = size_config(config, target_params, scale_intermediate=scale_intermediate)
        return config


_LLAMA_FIELDS = {f.name for f in dataclasses.fields(LlamaConfig)}
# Built from GinformerConfig itself, so an option added there is a run-config key with nothing else to change.
ScratchModelSettings = dataclasses.make_dataclass(
    "ScratchModelSettings",
    [
        *(_as_setting(f) for f in dataclasses.fields(GinformerConfig) if f.name in PAPER_SIZES or f.name not in
          _LLAMA_FIELDS),
        # Sizing (sizing.py): compare attention kinds at an equal parameter count, as the paper does.
        ("target_params", int | None, field(default=None)),  # pick hidden_size so the model has about this many
        ("scale_intermediate", bool, field(default=False)),  # sizing keeps the feed-forward width (the paper's best)
    ],
    bases=(_ScratchModel,),
)
ScratchModelSettings.__module__, ScratchModelSettings.__doc__ = __name__, _ScratchModel.__doc__


@dataclass
class LoraSettings:
    """The LoRA baseline; its rank is matched to the Sparse-GIN budget unless `rank` is given."""

    target: LoraTarget = "attention"  # "attention": q/k/v/o as the paper's first run; "all_linear": its second
    rank: int | None = None  # None: the rank whose trainable count is closest to model.sparse_gin's count
    alpha: float | None = None  # LoRA's α; None: equal to the rank (scale α/r = 1, as the paper's r = α = 50)
    dropout: float = 0.0
    # rsLoRA (Kalajdzievski, 2023): scale α/√r instead of α/r, which keeps higher ranks learning; with the default
    # α = r the scale becomes √r.
    use_rslora: bool = False
    # DoRA (Liu et al., 2024): a trained magnitude vector per wrapped layer beside the low-rank direction; the budget
    # matching counts those vectors, so DoRA gets a lower rank at the same trainable count.
    use_dora: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "model.lora")
        positive(self, "model.lora", "rank", "alpha")
        require(0.0 <= self.dropout < 1.0, "model.lora.dropout", self.dropout, "in [0, 1)")


@dataclass
class PretrainedModelSettings:
    """A frozen pretrained model and what is trained on top of it."""

    base: str = "smollm2"  # "smollm2" (the bundled SmolLM2-135M-Instruct), a local model directory or a hub id
    # Run the Python code a base's config names (its own model class, tokenizer): that code runs on this machine
    # with your rights, so only for a base you trust. False: such a base is refused.
    trust_remote_code: bool = False
    # The frozen base's weights: bfloat16 halves their memory (what a 3B base needs); trained adapters (Sparse-GIN,
    # LoRA) stay float32 either way.
    base_dtype: Literal["float32", "bfloat16"] = "float32"
    # How the base computes attention: eager for families that have no sdpa (Gemma 2, gpt-oss). Sparse-GIN's graph
    # is the same under either (its probe checks it against eager).
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    method: Literal["sparse-gin", "lora", "none"] = "sparse-gin"  # "none" trains nothing: the base's own numbers
    # The Sparse-GIN adapter; for method "lora" it still sets the trainable-parameter budget LoRA is matched to.
    sparse_gin: SparseGINConfig = field(default_factory=SparseGINConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)


# ---------------------------------------------------------------------------------------------------- sides


@dataclass
class BuiltModel:
    """A model ready to train, with what the run's start event records about it."""

    model: torch.nn.Module
    record: dict[str, Any]  # side-specific facts for the start event (hidden size; method, base, LoRA rank)
    peft_config: peft.PeftConfig | None = None  # the adapter, when the trainer wraps `model` (the base) with it


class ModelSide(ABC):
    """Building, saving and loading one kind of model; see the module docstring."""

    name: str
    settings_class: type
    final_dir: str  # what a finished run holds, inside its directory
    default_task: str
    training_defaults: Mapping[str, Any]  # TrainingSettings values that differ from the paper's Table 1

    @abstractmethod
    def base_tokenizer(self, settings) -> PreTrainedTokenizerBase | None:
        """The pretrained model's tokenizer (None from scratch: the task builds one)."""

    @abstractmethod
    def build(self, settings, tokenizer: PreTrainedTokenizerBase, peft_route: bool = False) -> BuiltModel:
        """The model to train; on the `peft_route` (a pretrained model only) the base and the adapter's peft
        config, which the trainer puts together."""

    def trains(self, settings) -> bool:
        return True

    def parameters(self, model: torch.nn.Module) -> tuple[int, int]:
        """(the parameters the run reports as its size, all of them), for the start event: a pretrained model's
        trainable ones, as the adapters are compared at an equal trainable budget."""
        every = list(model.parameters())
        return sum(p.numel() for p in every if p.requires_grad), sum(p.numel() for p in every)

    @abstractmethod
    def load(self, run_dir: Path, settings) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
        """The finished run's model (on the GPU when there is one, in eval mode) and tokenizer."""

    def save(self, trainer: Trainer, directory: Path, data: str) -> None:
        """Write the finished model (and tokenizer) to `directory`, as Trainer saves it; `data` describes what it
        was trained on."""
        trainer.save_model(str(directory))

    @abstractmethod
    def graph_scalars(self, model: torch.nn.Module) -> dict[str, list]:
        """Learned graph scalars per layer, for metrics.jsonl and the comparison figures."""

    @abstractmethod
    def describe(self, settings) -> str: ...


class Scratch(ModelSide):
    name = "scratch"
    settings_class = ScratchModelSettings
    final_dir = "model"
    default_task = "protein"
    training_defaults: Mapping[str, Any] = {}

    def base_tokenizer(self, settings: ScratchModelSettings) -> None:
        return None

    def parameters(self, model: torch.nn.Module) -> tuple[int, int]:
        """Every parameter, fixed graph scalars included: the count sizing matches across attention kinds."""
        count = count_parameters(model)
        return count, count

    def build(self, settings: ScratchModelSettings, tokenizer: PreTrainedTokenizerBase,
              peft_route: bool = False) -> BuiltModel:
        """A freshly initialised GinformerForCausalLM for this tokenizer, sized to target_params when set."""
        config = settings.to_config(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return BuiltModel(GinformerForCausalLM(config), {"hidden_size": config.hidden_size})

    def load(self, run_dir: Path, settings: ScratchModelSettings):
        import ginformer  # noqa: F401  (registers the ginformer model type with the Auto classes)

        directory = run_dir / self.final_dir
        model = read_weights(directory, lambda: load_exactly(
            AutoModelForCausalLM, str(directory), pretrained_model_name_or_path=directory, trust_remote_code=False))
        return model.to(_device()).eval(), AutoTokenizer.from_pretrained(directory, trust_remote_code=False)

    def graph_scalars(self, model: torch.nn.Module) -> dict[str, list]:
        return model.graph_parameters() if hasattr(model, "graph_parameters") else {}

    def describe(self, settings: ScratchModelSettings) -> str:
        kinds = settings.attention_kind if isinstance(settings.attention_kind, str) else "/".join(
            settings.attention_kind)
        return f"{kinds} attention, {settings.num_hidden_layers} layers × {settings.num_attention_heads} heads"


def _sparse_gin(base: PreTrainedModel, settings: PretrainedModelSettings):
    return SparseGINPeftConfig(**settings.sparse_gin.to_dict()), {}


def _wrap_sparse_gin(base: PreTrainedModel, config: SparseGINPeftConfig):
    model = get_sparse_gin_model(base, config.sparse_gin_config())
    return model, {"adapted": model.describe_host(), "adapted_layers": model.adapted_layers}


def _wrap_lora(base: PreTrainedModel, config: peft.LoraConfig):
    return get_lora_model(base, config), {}


def _lora(base: PreTrainedModel, settings: PretrainedModelSettings):
    lora = settings.lora
    try:
        budget = sparse_gin_parameter_count(base, settings.sparse_gin)
    except HostMismatch as err:
        if lora.rank is None:
            raise ConfigError(f"model.lora: its budget is Sparse-GIN's count, but {err}; set model.lora.rank") from None
        budget = None
    extra = {"lora_dropout": lora.dropout, "use_rslora": lora.use_rslora, "use_dora": lora.use_dora,
             **({"lora_alpha": lora.alpha} if lora.alpha is not None else {})}
    if lora.rank is None:
        try:
            config, _ = lora_config_for_budget(base, budget, lora.target, **extra)
        except ConfigError as err:
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
    return config, {"lora_rank": config.r, "budget": budget}


@dataclass(frozen=True)
class Method:
    """An adapter method: its peft config for a base (with start-event extras), how our Trainer's model wraps the
    base with it (TRL's trainers wrap the base themselves: runs/objectives.py), how a saved adapter loads."""

    config: Callable[[PreTrainedModel, PretrainedModelSettings], tuple[peft.PeftConfig, dict[str, Any]]]
    wrap: Callable[[PreTrainedModel, Any], tuple[torch.nn.Module, dict[str, Any]]]
    load: Callable[[PreTrainedModel, Path], torch.nn.Module]


METHODS: dict[str, Method | None] = {  # None: no adapter, the base's own numbers
    "none": None,
    "sparse-gin": Method(_sparse_gin, _wrap_sparse_gin, SparseGINModel.from_pretrained),
    "lora": Method(_lora, _wrap_lora, peft.PeftModel.from_pretrained),
}


class Pretrained(ModelSide):
    name = "pretrained"
    settings_class = PretrainedModelSettings
    final_dir = "adapter"
    default_task = "gsm8k"
    # The paper's fine-tuning hyperparameters (its Table 2), where they differ from pretraining's; logging and
    # evaluation every 10 and 50 steps suit short CPU runs (the paper logs per epoch fraction).
    training_defaults: Mapping[str, Any] = {
        "run_name": "finetune",
        "learning_rate": 2e-4,
        "warmup_steps": 50,
        "per_device_train_batch_size": 1,
        "per_device_eval_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "num_train_epochs": 3.0,
        "max_grad_norm": 0.5,
        "logging_steps": 10,
        "eval_steps": 50,
        "save_steps": 50,
    }

    def base_tokenizer(self, settings: PretrainedModelSettings) -> PreTrainedTokenizerBase:
        return load_base_tokenizer(settings.base, settings.trust_remote_code)

    def build(self, settings: PretrainedModelSettings, tokenizer: PreTrainedTokenizerBase,
              peft_route: bool = False) -> BuiltModel:
        """Load the base and wrap it as `settings.method` asks; the base's weights are frozen in every case. On the
        `peft_route` the model is the base and the adapter its peft config: the trainer wraps it."""
        base, _ = load_base_model(
            settings.base, dtype=getattr(torch, settings.base_dtype), attn_implementation=settings.attn_implementation,
            trust_remote_code=settings.trust_remote_code,
        )
        base.requires_grad_(False)
        record = {"method": settings.method, "base": settings.base}
        method = METHODS[settings.method]
        if method is None:
            return BuiltModel(base, record)
        config, extras = method.config(base, settings)
        if peft_route:
            return BuiltModel(base, {**record, **extras}, peft_config=config)
        model, wrapped = method.wrap(base, config)
        return BuiltModel(model, {**record, **extras, **wrapped})

    def trains(self, settings: PretrainedModelSettings) -> bool:
        return settings.method != "none"

    def load(self, run_dir: Path, settings: PretrainedModelSettings):
        adapter = run_dir / self.final_dir
        if settings.method == "sparse-gin":
            check_adapter_description(adapter)
        base, tokenizer = load_base_model(
            settings.base, dtype=getattr(torch, settings.base_dtype), attn_implementation=settings.attn_implementation,
            trust_remote_code=settings.trust_remote_code,
        )
        method = METHODS[settings.method]
        model = base if method is None else read_weights(adapter, lambda: method.load(base, adapter))
        if method is not None:
            tokenizer = AutoTokenizer.from_pretrained(adapter, trust_remote_code=False)
        return model.to(_device()).eval(), tokenizer

    def save(self, trainer: Trainer, directory: Path, data: str) -> None:
        """A Sparse-GIN adapter as save_pretrained writes it (peft's files and a model card with the data and the last
        validation loss); LoRA as peft writes it."""
        model = trainer.accelerator.unwrap_model(trainer.model)
        if not isinstance(model, SparseGINModel):
            return super().save(trainer, directory, data)
        state_dict = trainer.accelerator.get_state_dict(trainer.model)  # on every process: FSDP gathers its shards
        if trainer.args.should_save:
            evals = [log["eval_loss"] for log in trainer.state.log_history if "eval_loss" in log]
            metrics = {"val_loss": evals[-1], "val_perplexity": math.exp(evals[-1])} if evals else None
            model.save_pretrained(directory, state_dict=state_dict, data=data, metrics=metrics)
            trainer.processing_class.save_pretrained(directory)

    def graph_scalars(self, model: torch.nn.Module) -> dict[str, list]:
        """λ always, α and τ when they learn; {} without Sparse-GIN. `model` is a SparseGINModel, or a peft model
        with Sparse-GIN's branches (what TRL's trainers train)."""
        if isinstance(model, SparseGINModel):
            config, adapters = model.sparse_gin_config, model.adapters
        elif isinstance(model, peft.PeftModel) and isinstance(model.peft_config[model.active_adapter],
                                                                SparseGINPeftConfig):
            config = model.peft_config[model.active_adapter]
            adapters = model.get_base_model().sparse_gin.sparse_gin_branches[model.active_adapter]
        else:
            return {}
        graph = {"lambda": [adapter.scale.item() for adapter in adapters]}
        if config.train_alpha:
            graph["alpha"] = [adapter.alpha.item() for adapter in adapters]
        if config.train_tau:
            graph["tau"] = [adapter.tau.item() for adapter in adapters]
        return graph

    def describe(self, settings: PretrainedModelSettings) -> str:
        return f"{settings.method} on {settings.base}"


MODEL_SIDES: dict[str, ModelSide] = {side.name: side for side in (Scratch(), Pretrained())}


def side_of(settings: ScratchModelSettings | PretrainedModelSettings) -> ModelSide:
    return next(side for side in MODEL_SIDES.values() if isinstance(settings, side.settings_class))


def sparse_gin_parameter_count(model: PreTrainedModel, config: SparseGINConfig) -> int:
    """Trainable parameters a Sparse-GIN adapter with `config` adds to `model`, without wrapping it: one
    SparseGINLayer per layer the probe would adapt (a hybrid's linear-attention layers get none), every parameter
    of which trains (fixed values are buffers)."""
    hidden_size = model.config.get_text_config().hidden_size
    per_layer = sum(p.numel() for p in SparseGINLayer(hidden_size, config, 0.0).parameters())
    return per_layer * len(probe(model, config.placement))


def read_weights(directory: Path, load: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`load()`, with a saved model that cannot be read reported as one clear error naming the directory: a
    weights file that is truncated or corrupt as such, any other fault (a config field, weights that do not fit)
    as what it is."""
    try:
        return load()
    except (WeightsMismatch, UnsafeFileError):
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as err:
        if not directory.is_dir():
            raise MissingInput(f"{directory} is missing: the run has not finished") from None
        damaged = next((f"{p.name} is truncated or corrupt" for p in sorted(directory.glob("*.safetensors"))
                        if _weights_damaged(p)), None)
        if damaged:
            raise CheckpointError(
                f"{directory}: {damaged}: train the run again, or resume it from a checkpoint") from None
        raise CheckpointError(f"{directory}: the saved model cannot be loaded ({type(err).__name__}: {err})") from None


def _weights_damaged(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt"):
            return False
    except (SafetensorError, OSError):
        return True


def check_adapter_description(directory: Path) -> None:
    """A saved Sparse-GIN adapter's description (adapter_config.json, or the one inside Trainer's model.safetensors)
    holds a valid SparseGINConfig: a wrong field is named, before any weight is read."""
    if not directory.is_dir():
        raise MissingInput(f"{directory} is missing: the run has not finished")
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        return  # Trainer's layout: its description is checked as the adapter loads
    try:
        payload = json.loads(read_text_file(config_file, "adapter config"))
    except (json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err})") from None
    config = payload.get("config") if isinstance(payload, dict) else None
    try:
        build_settings(SparseGINConfig, config, "config")
    except ConfigError as err:
        raise ConfigError(f"{config_file}: {err}; fix the field, or save the adapter again") from None


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
