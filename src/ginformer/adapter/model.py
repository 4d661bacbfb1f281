"""SparseGINModel: a frozen pretrained decoder plus one SparseGINLayer per decoder layer, peft-style.

How it plugs in, without copying any model code:
- the base model's attention implementation becomes "sparse_gin_sdpa" / "sparse_gin_eager", registered
  in transformers' AttentionInterface: it runs the original sdpa or eager attention unchanged and hands
  its query and key heads, mask and scaling to the layer's branch (`AttentionInputs`), which builds A' from
  them block by block (kernels/sparse_gin.py) or, for inspection, whole (adjacency.py);
- forward hooks on each decoder layer and its `self_attn` read the layer input h and the attention output
  and add λ·GIN(X, A') where the placement asks;
- under a KV cache the GIN features Z of past positions live in the same DynamicCache, as extra cache
  layers (index num_layers + k), so beam reordering and cropping treat them like the keys.
Per-model state hangs off that model's own modules (a `_SparseGINTap` on every attention module): two
adapted models never share anything but the two stateless attention functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .adjacency import AttentionInputs
from .config import SparseGINConfig
from .hub import (
    ADAPTER_TYPE,
    CONFIG_NAME,
    MODEL_CARD_NAME,
    WEIGHTS_NAME,
    decode_payload,
    encode_payload,
    model_card,
    read_adapter,
    resolve_adapter_dir,
)
from .layer import SparseGINLayer

logger = logging.getLogger(__name__)

ADAPTER_PREFIX = "adapters."
_BASE_PREFIX = "pretrained_model."
_TAP = "_sparse_gin_tap"
_WRAPPED = {"sdpa": "sparse_gin_sdpa", "eager": "sparse_gin_eager"}


def eager_attention_of(module: nn.Module):
    # transformers keeps each architecture's eager attention beside its attention class, not in a registry.
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ValueError(f"{type(module).__name__} has no eager_attention_forward in its module: use sdpa")
    return eager


def _attention_function(inner: str):
    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        run = ALL_ATTENTION_FUNCTIONS["sdpa"] if inner == "sdpa" else eager_attention_of(module)
        output, weights = run(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        tap = getattr(module, _TAP, None)
        if tap is not None and tap.shared.enabled:
            scale = query.shape[-1] ** -0.5 if scaling is None else scaling
            tap.attention = AttentionInputs(query, key, attention_mask, scale)
        return output, weights

    return attention


for _inner, _name in _WRAPPED.items():
    AttentionInterface.register(_name, _attention_function(_inner))
    AttentionMaskInterface.register(_name, sdpa_mask if _inner == "sdpa" else eager_mask)


@dataclass
class LayerGraph:
    """What `capture_adjacency` records per adapted layer and forward call."""

    layer: int
    aggregated: Tensor  # (B, T_q, T_k) A_agg, the head-aggregated attention
    adjacency: Tensor  # (B, T_q, T_k) A', the sparse graph the GIN used


@dataclass
class _Shared:
    num_layers: int
    enabled: bool = True
    graph_adjacency: Tensor | None = None
    record: Callable[[LayerGraph], None] | None = None  # where capture_adjacency sends each layer's graph


@dataclass
class _SparseGINTap:
    """One decoder layer's link to its adapter, plus what one forward call passes between hooks."""

    index: int
    adapter: SparseGINLayer
    shared: _Shared
    hidden: Tensor | None = None
    cache: Any = None
    attention: AttentionInputs | None = None
    delta: Tensor | None = None

    def branch(self, x: Tensor) -> Tensor:
        if self.attention is None:
            raise RuntimeError(f"layer {self.index}: its attention did not run through the Sparse-GIN attention")
        extend = None
        if self.cache is not None:
            extend = partial(_extend_features, self.cache, self.index, self.shared.num_layers)
        record = self.shared.record
        delta, graph = self.adapter(x, self.attention, extend, self.shared.graph_adjacency, record is not None)
        if record is not None:
            record(LayerGraph(self.index, *(tensor.detach() for tensor in graph)))
        self.attention = None
        return delta


def _extend_features(cache: Any, layer: int, num_layers: int, z: Tensor) -> Tensor:
    """Append this call's Z (B, T_q, F) to the cache and return Z for every key position (B, T_k, F)."""
    if not isinstance(cache, DynamicCache):
        raise ValueError(f"Sparse-GIN needs a DynamicCache (generate's default), got {type(cache).__name__}")
    if cache.layer_class_to_replicate is not None:
        while len(cache.layers) < num_layers:
            cache.layers.append(cache.layer_class_to_replicate())
    while len(cache.layers) < 2 * num_layers:
        mirrored = cache.layers[len(cache.layers) - num_layers]
        if type(mirrored) is DynamicLayer:
            cache.layers.append(DynamicLayer())
        elif type(mirrored) is DynamicSlidingWindowLayer:
            cache.layers.append(DynamicSlidingWindowLayer(sliding_window=mirrored.sliding_window))
        else:
            kind = type(mirrored).__name__
            raise ValueError(f"Sparse-GIN caches beside full or sliding DynamicCache layers, not {kind}")
    # Z rides as the "keys" of its own cache layer (B, 1, T, F), with zero-width "values".
    features, _ = cache.layers[num_layers + layer].update(z[:, None], z.new_empty(*z.shape[:2], 0)[:, None])
    return features[:, 0]


def _before_layer(tap: _SparseGINTap, module: nn.Module, args: tuple, kwargs: dict) -> None:
    if tap.shared.enabled:
        tap.hidden = args[0] if args else kwargs["hidden_states"]
        tap.cache = kwargs.get("past_key_values")


def _after_attention(tap: _SparseGINTap, module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple | None:
    if not tap.shared.enabled:
        return None
    attn_out = output[0]
    delta = tap.branch(tap.hidden + attn_out)  # X = h + attn_out
    if tap.adapter.config.placement == "after_attention":
        # tap.hidden stays: under gradient checkpointing the backward pass reruns the layer's forward, and this hook
        # with it, but not the layer's pre-hook (transformers checkpoints `forward`, outside the module hooks).
        tap.cache = None
        return (attn_out + delta, *output[1:])
    tap.delta = delta
    return None


def _after_layer(tap: _SparseGINTap, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    if not tap.shared.enabled:
        return None
    hidden = output[0] if isinstance(output, tuple) else output
    if tap.adapter.config.placement == "parallel":
        hidden = hidden + tap.delta
    else:
        hidden = hidden + tap.branch(hidden)  # after_mlp: X = the layer's output
    tap.cache = tap.delta = None  # tap.hidden stays for a checkpointed layer's recomputation (_after_attention)
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM, each with a `self_attn`."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(hasattr(layer, "self_attn") for layer in layers):
        name = type(model).__name__
        raise ValueError(f"{name}: expected decoder layers, each with a self_attn, at get_decoder().layers")
    return layers


def base_fingerprint(model: PreTrainedModel) -> dict[str, Any]:
    """What must match between the base an adapter was trained on and the one it is loaded into."""
    text = model.config.get_text_config()
    return {
        "name_or_path": model.config._name_or_path,
        "architecture": type(model).__name__,
        "hidden_size": text.hidden_size,
        "num_hidden_layers": len(decoder_layers(model)),
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": getattr(text, "num_key_value_heads", text.num_attention_heads),
    }


def is_adapter_key(key: str, value: Any = None) -> bool:
    """litgpt-style filter on SparseGINModel state-dict keys: True for what is trained and saved. `value` is
    unused; it keeps litgpt's `adapter_filter(key, value)` signature, so the function can be passed where that is."""
    return key.startswith(ADAPTER_PREFIX)


def check_base(payload: dict[str, Any], model: PreTrainedModel, where: str) -> None:
    """Refuse an adapter saved for a base of another shape; only warn when the base merely has another name."""
    saved, current = payload["base_model"], base_fingerprint(model)
    mismatched = [key for key in saved if key != "name_or_path" and saved[key] != current.get(key)]
    if mismatched:
        details = ", ".join(f"{key}: adapter {saved[key]!r} vs base {current.get(key)!r}" for key in mismatched)
        raise ValueError(f"{where} was trained on a different base model ({details})")
    if saved["name_or_path"] != current["name_or_path"]:
        logger.warning("adapter saved for base %r, loaded into %r", saved["name_or_path"], current["name_or_path"])


def _drop_frozen_base(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict) -> None:
    # A SparseGINModel's state is its adapter: the frozen base belongs to whoever loaded it, and copying it into every
    # checkpoint is what fails on tied embeddings ("Some tensors share memory").
    for key in [key for key in state_dict if key.startswith(prefix + _BASE_PREFIX)]:
        del state_dict[key]


def _frozen_base_is_not_missing(module: nn.Module, incompatible_keys: Any) -> None:
    # The counterpart of _drop_frozen_base: a state dict without the base is complete.
    missing = incompatible_keys.missing_keys
    missing[:] = [key for key in missing if f".{_BASE_PREFIX}" not in f".{key}"]


def mark_only_adapter_as_trainable(model: SparseGINModel) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = is_adapter_key(name)


def _initial_scale(config: SparseGINConfig, layer: int, num_layers: int) -> float:
    if config.scale_init == "zero":
        return 0.0
    return config.scale_max * layer / max(num_layers - 1, 1)


class SparseGINModel(nn.Module):
    """A frozen base causal LM with a Sparse-GIN branch in every decoder layer."""

    def __init__(self, model: PreTrainedModel, config: SparseGINConfig) -> None:
        super().__init__()
        layers = decoder_layers(model)
        if any(getattr(layer.self_attn, _TAP, None) for layer in layers):
            raise ValueError("this model already carries a Sparse-GIN adapter: unload() it first")
        attn = model.config._attn_implementation
        if attn not in _WRAPPED:
            raise ValueError(f"attn_implementation={attn!r}: Sparse-GIN wraps sdpa or eager; load the base with either")
        if not model._can_set_attn_implementation():
            raise ValueError(f"{type(model).__name__} does not route attention through the AttentionInterface")
        if config.placement != "after_mlp" and hasattr(layers[0], "post_feedforward_layernorm"):
            raise ValueError(
                f"placement={config.placement!r} needs h + attn_out on the residual stream; {type(layers[0]).__name__} "
                "normalises the attention output first: use placement='after_mlp'"
            )
        self.pretrained_model = model
        self.sparse_gin_config = config
        self._base_attn = attn
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        model.requires_grad_(False)

        hidden_size = model.config.get_text_config().hidden_size
        device = next(model.parameters()).device
        self.adapters = nn.ModuleList(
            SparseGINLayer(hidden_size, config, _initial_scale(config, k, len(layers))).to(device)
            for k in range(len(layers))
        )
        self._shared = _Shared(num_layers=len(layers))
        self._handles = []
        for k, layer in enumerate(layers):
            tap = _SparseGINTap(k, self.adapters[k], self._shared)
            setattr(layer.self_attn, _TAP, tap)
            self._handles.append(layer.register_forward_pre_hook(partial(_before_layer, tap), with_kwargs=True))
            if config.placement != "after_mlp":
                self._handles.append(
                    layer.self_attn.register_forward_hook(partial(_after_attention, tap), with_kwargs=True)
                )
            if config.placement != "after_attention":
                self._handles.append(layer.register_forward_hook(partial(_after_layer, tap), with_kwargs=True))
        model.set_attn_implementation(_WRAPPED[attn])
        # Trainer saves and resumes any module through its state dict: make that the adapter and its config.
        self.register_state_dict_post_hook(_drop_frozen_base)
        self.register_load_state_dict_post_hook(_frozen_base_is_not_missing)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "pretrained_model":
                raise
            # Everything else is the wrapped model's, as transformers names it: `base_model` is its backbone (what
            # TRL's fused LM head runs), `config`, `generation_config`, `get_output_embeddings`, ...
            return getattr(self.pretrained_model, name)

    def get_base_model(self) -> PreTrainedModel:
        """The wrapped causal LM (peft's name for it), its decoder layers carrying the adapter's hooks."""
        return self.pretrained_model

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        graph_adjacency: Tensor | None = None,
        **kwargs,
    ):
        """The base model's forward; `graph_adjacency` (B, T_q, T_k) is added to every layer's A_agg.

        Batch fields are named so that transformers' Trainer, which keeps only the dataset columns a
        forward signature names, passes them on.
        """
        self._shared.graph_adjacency = graph_adjacency
        try:
            return self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        finally:
            self._shared.graph_adjacency = None

    def generate(self, *args, **kwargs):
        return self.pretrained_model.generate(*args, **kwargs)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside, the model computes exactly what its base computes."""
        self._shared.enabled = False
        try:
            yield
        finally:
            self._shared.enabled = True

    @contextlib.contextmanager
    def capture_adjacency(self, record: Callable[[LayerGraph], None] | None = None) -> Iterator[list[LayerGraph]]:
        """Collect every layer's A_agg and A' (detached) for the forward calls made inside. With `record`, each
        layer's graph goes to it as soon as the layer has run and the list stays empty: a long text's T×T graphs
        need not all be held at once."""
        captured: list[LayerGraph] = []
        self._shared.record = record or captured.append
        try:
            yield captured
        finally:
            self._shared.record = None

    def adapter_scales(self) -> list[float]:
        """λ_k per decoder layer, for logging."""
        return [adapter.scale.item() for adapter in self.adapters]

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        share = 100 * trainable / total
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}")

    def adapter_state_dict(self) -> dict[str, Tensor]:
        return {key: value for key, value in self.state_dict().items() if is_adapter_key(key)}

    def adapter_payload(self) -> dict[str, Any]:
        """What adapter_config.json holds: the config, and the base it was trained on (peft's key names it)."""
        return {
            "adapter_type": ADAPTER_TYPE,
            "base_model_name_or_path": self.pretrained_model.config._name_or_path,
            "config": self.sparse_gin_config.to_dict(),
            "base_model": base_fingerprint(self.pretrained_model),
        }

    def get_extra_state(self) -> Tensor:
        """The adapter's description rides in the state dict, so Trainer's checkpoints describe themselves."""
        return encode_payload(self.adapter_payload())

    def set_extra_state(self, state: Tensor) -> None:
        """Loading a state dict checks that it belongs to an adapter of this config on a base of this shape."""
        where = "the loaded state dict"
        payload = decode_payload(state, where)
        check_base(payload, self.pretrained_model, where)
        saved = SparseGINConfig.from_dict(payload["config"]).to_dict()
        changed = [f"{key}: saved {saved[key]!r} vs this model {value!r}"
                   for key, value in self.sparse_gin_config.to_dict().items() if saved[key] != value]
        if changed:
            raise ValueError(f"{where} belongs to a Sparse-GIN adapter of another config ({', '.join(changed)})")

    def save_pretrained(
        self, directory: str | Path, state_dict: dict[str, Tensor] | None = None, data: str | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Write adapter_config.json (config + base), adapter_model.safetensors (adapter only) and a README.md model
        card naming `data` and `metrics` when given. `state_dict` is this model's unless given (a gathered one,
        under FSDP)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = self.adapter_payload()
        (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
        state_dict = self.state_dict() if state_dict is None else state_dict
        tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items() if is_adapter_key(key)}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        trainable = self.get_nb_trainable_parameters()[0]
        (directory / MODEL_CARD_NAME).write_text(model_card(payload, trainable, data, metrics))

    @classmethod
    def from_pretrained(
        cls, model: PreTrainedModel, path_or_hub_id: str | Path, is_trainable: bool = False,
        revision: str | None = None, cache_dir: str | Path | None = None, local_files_only: bool = False,
    ) -> SparseGINModel:
        """Attach a saved adapter (a directory in either layout of adapter/hub.py, or a hub repository) to `model`;
        a base of another shape is refused before any weight is loaded."""
        directory = resolve_adapter_dir(path_or_hub_id, revision, cache_dir, local_files_only)
        payload, tensors = read_adapter(directory)
        check_base(payload, model, f"adapter in {directory}")
        wrapped = cls(model, SparseGINConfig.from_dict(payload["config"]))
        wrapped.load_adapter_state_dict(tensors)
        wrapped.adapters.requires_grad_(is_trainable)
        return wrapped

    def load_adapter_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load adapter weights (keys as `adapter_state_dict` writes them); every adapter key must be there."""
        foreign = sorted(key for key in state_dict if not is_adapter_key(key))
        if foreign:
            raise ValueError(f"not Sparse-GIN adapter keys: {foreign[:5]}")
        # Adapters saved before the scalars (λ, ε, α, τ) became 1-element tensors hold them with 0 dimensions.
        self.adapters.load_state_dict({
            key[len(ADAPTER_PREFIX) :]: value.reshape(1) if value.dim() == 0 else value
            for key, value in state_dict.items()
        })

    def unload(self) -> PreTrainedModel:
        """Remove every trace of the adapter and return the base model, as it was before wrapping."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for layer in decoder_layers(self.pretrained_model):
            if hasattr(layer.self_attn, _TAP):
                delattr(layer.self_attn, _TAP)
        self.pretrained_model.set_attn_implementation(self._base_attn)
        for name, param in self.pretrained_model.named_parameters():
            param.requires_grad = self._requires_grad.get(name, param.requires_grad)
        return self.pretrained_model


def get_sparse_gin_model(model: PreTrainedModel, config: SparseGINConfig | None = None) -> SparseGINModel:
    """Freeze `model` (in place) and give each decoder layer a Sparse-GIN branch; only the branches train."""
    return SparseGINModel(model, config or SparseGINConfig())
