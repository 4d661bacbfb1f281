"""Sparse-GIN as a peft tuner: `peft.get_peft_model(base, SparseGINPeftConfig(...))` is a real `peft.PeftModel`, so
whatever recognises peft models takes it as one. TRL's DPO, GRPO, KTO and RLOO trainers then use the frozen base as
the reference (they disable the adapter, as for LoRA; λ starts at 0, so an untrained adapter is the base) instead of
loading a second copy of the base; and peft's named adapters come with it:

    model = get_peft_model(base, SparseGINPeftConfig(d_gnn=64))    # adapter "default"
    model.add_adapter("b", SparseGINPeftConfig(d_gnn=32))          # same base, second adapter (same placement)
    model.set_adapter("b")                                         # b's branches run
    with model.disable_adapter(): ...                              # the base's outputs
    model.delete_adapter("default")
    model.save_pretrained(dir, selected_adapters=["b"])            # dir/b/: adapter_config.json + weights
    model.load_adapter(f"{dir}/b", adapter_name="c")

The files are the ones SparseGINModel writes and reads (hub.py: the same adapter_config.json, naming its peft_type,
and the same weight keys), so an adapter trained with either face loads into the other.

How the tuner fits peft: Sparse-GIN replaces no module (its branches join each decoder layer through hooks, which
model.py's `Wiring` installs once per base), so its one tuner layer, `SparseGINBranches`, wraps no base layer; it
sits on the base model as `sparse_gin` and keeps every named adapter's branches in a ModuleDict, where peft's own
bookkeeping (set_adapter, enable_adapters, delete_adapter, requires_grad, saving and loading by prefix) runs on it
unchanged. One adapter runs at a time: an adapter's cached features under generation take the same cache slots.

peft's LoRA-only operations (merge_adapter, unmerge_adapter, merge_and_unload, and so TRL's weight sync to vLLM,
which merges) raise NotMergeable with the reason; peft's `convert_to_lora` refuses it, as it refuses any layer that
is not additive (`supports_lora_conversion` is False).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from peft import PeftConfig, mapping
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import Tensor, nn

from ginformer.errors import CheckpointError, ConfigError

from .config import SparseGINConfig
from .hub import PEFT_TYPE, describe, read_description, write_description
from .layer import SparseGINLayer
from .model import (
    ADAPTER_PREFIX,
    Wiring,
    base_fingerprint,
    check_base,
    new_branches,
    refuse_merge,
    saved_config,
)

BRANCHES = "sparse_gin"  # the SparseGINBranches module on the base; without the prefix's "_", which peft's
# delete_adapter skips in module names
PREFIX = "sparse_gin_"  # peft's name for what belongs to the method: the ModuleDict of branches carries it
_DICT = "sparse_gin_branches"


@dataclass
class SparseGINPeftConfig(SparseGINConfig, PeftConfig):
    """A SparseGINConfig that is also a peft config (pass it as TRL's `peft_config`). Its Sparse-GIN fields are
    SparseGINConfig's; the last three are facts of the base, filled when the adapter is attached and checked when a
    saved one is loaded: a base of another shape is refused before any weight is read."""

    task_type: str | None = field(default="CAUSAL_LM", metadata={"help": "peft's task: a causal LM"})
    base_model_fingerprint: dict[str, Any] | None = field(
        default=None, metadata={"help": "shape of the base the adapter belongs to (model.py: base_fingerprint)"})
    adapted_layers: list[int] | None = field(
        default=None, metadata={"help": "indices of the decoder layers that carry a branch"})
    base_attn_implementation: str | None = field(
        default=None, metadata={"help": "the base's attention implementation when the adapter was attached"})

    def __post_init__(self) -> None:
        PeftConfig.__post_init__(self)
        SparseGINConfig.__post_init__(self)
        self.peft_type = PEFT_TYPE

    def sparse_gin_config(self) -> SparseGINConfig:
        """The Sparse-GIN fields alone, as SparseGINModel and the branches take them."""
        return SparseGINConfig(**{f.name: getattr(self, f.name) for f in fields(SparseGINConfig)})

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """peft asks the config to write adapter_config.json: it writes hub.py's description, which both faces read.
        `kwargs` (peft's auto_mapping_dict, for models without a task type) have nothing to say about a causal LM."""
        if self.base_model_fingerprint is None:
            raise ConfigError("a SparseGINPeftConfig is saved with its adapter, once attached to a base "
                              "(peft.get_peft_model): alone it does not know the base")
        # The base's name as its config gives it, as SparseGINModel records it ("smollm2" for the bundled base);
        # peft's base_model_name_or_path is where its weights were read from (the GGUF package's path, there).
        write_description(Path(save_directory), describe(
            self.sparse_gin_config().to_dict(), self.base_model_fingerprint["name_or_path"],
            self.base_model_fingerprint, self.base_attn_implementation, self.adapted_layers))

    @classmethod
    def from_json_file(cls, path_json_file: str, **kwargs: Any) -> dict[str, Any]:
        """The config's fields from hub.py's description (peft's from_pretrained builds the config from them)."""
        payload = read_description(Path(path_json_file))
        config = saved_config(payload, path_json_file).to_dict()  # a CheckpointError names a field it does not know
        return {**config, "peft_type": PEFT_TYPE, "base_model_name_or_path": payload.get("base_model_name_or_path"),
                "base_model_fingerprint": payload["base_model"], "adapted_layers": payload.get("adapted_layers"),
                "base_attn_implementation": payload.get("attn_implementation")}


class SparseGINBranches(nn.Module, BaseTunerLayer):
    """Every named adapter's branches, one SparseGINLayer per adapted decoder layer: `sparse_gin_branches[name][i]`
    for the i-th adapted layer. peft's tuner layer, though it wraps no base layer (module docstring)."""

    adapter_layer_names = (_DICT,)

    def __init__(self) -> None:
        super().__init__()
        self.sparse_gin_branches = nn.ModuleDict()
        self.merged_adapters = []  # never anything: a Sparse-GIN adapter cannot be merged

    def branch(self, position: int) -> SparseGINLayer | None:
        """The branch the position-th adapted layer runs: the active adapter's, None while adapters are off."""
        if self.disable_adapters or not self.active_adapters:
            return None
        return self.sparse_gin_branches[self.active_adapters[0]][position]

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) > 1:
            raise ConfigError(f"Sparse-GIN adapters {names}: one runs at a time (each keeps its features in the same "
                              "slots of the KV cache); set_adapter one name")
        super().set_adapter(names, inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> NoReturn:
        refuse_merge("merge")

    def unmerge(self) -> NoReturn:
        refuse_merge("unmerge")


class SparseGINTuner(BaseTuner):
    """peft's tuner for Sparse-GIN (what `PeftModel.base_model` is): wires the base once, on its first adapter, and
    adds, switches and deletes named adapters' branches in its SparseGINBranches."""

    prefix = PREFIX
    tuner_layer_cls = SparseGINBranches
    target_module_mapping: dict[str, list[str]] = {}  # the adapted layers are found by probing the host, not by name
    uses_shared_state = True  # the wiring lives on the tuner: peft's inject_adapter_in_model, which drops it, refuses
    _wiring: Wiring | None = None

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict: dict[str, Tensor] | None = None) -> None:
        """Add the adapter `adapter_name` (its config already in peft_config) to `model`, wiring the base first if
        this is its first adapter. The branches are float32 whatever the base's dtype, so autocast has nothing
        to do; `state_dict` (peft's hint for which modules to target) has nothing to say: every layer is adapted."""
        config = self.peft_config[adapter_name]
        if low_cpu_mem_usage:  # peft's add_adapter and load_adapter pass it; get_peft_model creates under meta
            raise ConfigError("low_cpu_mem_usage=True: Sparse-GIN branches are created with their weights (they are "
                              "small), not on the meta device: leave it False")
        first = self._wiring is None
        if first:
            check_facts_before_wiring(config, model, adapter_name)
            branches = SparseGINBranches()
            self._wiring = Wiring(model, config.placement, branches.branch)
            model.add_module(BRANCHES, branches)
        elif config.placement != self._wiring.placement:
            raise ConfigError(f"Sparse-GIN adapter {adapter_name!r}: placement={config.placement!r}, but the adapters "
                              f"on this base join at {self._wiring.placement!r}; the adapters on one base share it")
        try:
            attach_facts(config, model, self._wiring, adapter_name)
            layers = new_branches(model, config.sparse_gin_config(), self._wiring.hosts)
        except Exception:
            if first:  # peft drops a tuner that fails to build: leave the base as it came
                self._detach()
            raise
        getattr(model, BRANCHES).sparse_gin_branches[adapter_name] = nn.ModuleList(layers)
        # As BaseTuner.inject_adapter ends: the active adapter stays active, and only adapters train.
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)
        self._mark_only_adapters_as_trainable(model)

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> NoReturn:
        # BaseTuner's abstract per-target step, called only by BaseTuner.inject_adapter, which this tuner replaces.
        raise NotImplementedError("Sparse-GIN replaces no module; inject_adapter adds its branches")

    def forward(self, *args: Any, graph_adjacency: Tensor | None = None, **kwargs: Any):
        """The base's forward; `graph_adjacency` (B, T_q, T_k) is added to every layer's A_agg, as on
        SparseGINModel (otherwise it would reach the base's forward, which ignores it)."""
        shared = self._wiring.shared
        shared.graph_adjacency = graph_adjacency
        try:
            return self.model(*args, **kwargs)
        finally:
            shared.graph_adjacency = None

    def merge_adapter(self, *args: Any, **kwargs: Any) -> NoReturn:
        refuse_merge("merge_adapter")

    def unmerge_adapter(self, *args: Any, **kwargs: Any) -> NoReturn:
        refuse_merge("unmerge_adapter")

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: list[str] | None = None) -> nn.Module:
        """`unload()`: the base as it was before wrapping (merge_and_unload is refused)."""
        if merge:
            refuse_merge("merge_and_unload")
        self._detach()
        if hasattr(self.model, "peft_config"):  # as BaseTuner's unload: the base no longer carries adapters
            del self.model.peft_config
        return self.model

    def _detach(self) -> None:
        self._wiring.remove()
        self._wiring = None
        delattr(self.model, BRANCHES)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """`...sparse_gin.sparse_gin_branches.<name>.<i>.<param>` -> `adapters.<i>.<param>`: the weight keys
        SparseGINModel saves, so the two faces share their files; peft builds the loading map from this one too."""
        renamed, found = re.subn(rf"^(?:.*\.)?{BRANCHES}\.{_DICT}\.{re.escape(adapter_name)}\.", ADAPTER_PREFIX, key)
        return renamed if found else super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model: nn.Module, config: PeftConfig, adapter_name: str,
                                           state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """peft's remapping, made strict: peft loads with strict=False, so a saved key this adapter lacks, or one of
        its keys the file lacks, would pass in silence; here either is a CheckpointError."""
        # Adapters saved before the scalars (λ, ε, α, τ) became 1-element tensors hold them with 0 dimensions.
        state_dict = {key: value.reshape(1) if value.dim() == 0 else value for key, value in state_dict.items()}
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        own = f".{BRANCHES}.{_DICT}.{adapter_name}."
        expected = {key: value for key, value in model.state_dict().items() if own in f".{key}"}
        unknown = sorted(key for key in state_dict if not key.startswith(ADAPTER_PREFIX))  # a LoRA's, say
        missing = sorted(set(expected) - set(remapped))
        shapes = sorted(f"{key}: saved {tuple(remapped[key].shape)} vs {tuple(value.shape)}"
                        for key, value in expected.items() if key in remapped and remapped[key].shape != value.shape)
        extra = sorted(key for key in remapped if key not in expected and key.startswith(ADAPTER_PREFIX))
        if unknown or missing or shapes or extra:
            details = "; ".join(f"{what}: {keys[:3]}" for what, keys in (
                ("not Sparse-GIN adapter keys", unknown), ("missing", missing), ("shapes differ", shapes),
                ("for no branch of this adapter", extra)) if keys)
            raise CheckpointError(f"Sparse-GIN adapter {adapter_name!r}: the saved weights do not fit it ({details})")
        return remapped


def check_facts_before_wiring(config: SparseGINPeftConfig, model: nn.Module, adapter_name: str) -> None:
    """A loaded adapter saved for a base of another shape is refused before the base is touched."""
    if config.base_model_fingerprint is not None:
        check_base({"base_model": config.base_model_fingerprint}, model, f"Sparse-GIN adapter {adapter_name!r}")


def attach_facts(config: SparseGINPeftConfig, model: nn.Module, wiring: Wiring, adapter_name: str) -> None:
    """Fill a new adapter's facts of the base, or check a loaded adapter's against this base."""
    layers = [host.index for host in wiring.hosts]
    if config.base_model_fingerprint is None:
        config.base_model_fingerprint = base_fingerprint(model)
        config.adapted_layers = layers
        config.base_attn_implementation = wiring.base_attn
        return
    where = f"Sparse-GIN adapter {adapter_name!r}"
    check_base({"base_model": config.base_model_fingerprint}, model, where)
    if config.adapted_layers is not None and config.adapted_layers != layers:
        raise CheckpointError(f"{where} adapts layers {config.adapted_layers}, but this base offers {layers}")


def _register() -> None:
    """Add Sparse-GIN to peft's registries, as peft's own `register_peft_method` does for its built-in methods. That
    function accepts only the names of peft's PeftType enum; peft takes a plain-string peft_type for a method outside
    it (peft#2635), and looks every method up in these dicts by its peft_type."""
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = SparseGINPeftConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = SparseGINTuner
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = PREFIX


_register()
