"""SparseGINModel: a frozen pretrained decoder plus one SparseGINLayer per adapted decoder layer, peft-style.

How it plugs in, without copying any model code:
- the base model's attention implementation becomes "sparse_gin_sdpa" / "sparse_gin_eager", registered
  in transformers' AttentionInterface (host.py): it runs the original sdpa or eager attention unchanged and
  hands what the graph depends on (query and key heads, mask, scaling, soft-capping, sinks) to the layer's
  branch (`AttentionInputs`), which builds A' from them block by block (kernels/sparse_gin.py) or, for
  inspection, whole (adjacency.py);
- before any of that, a probe (host.py) checks on the model itself that this rebuilt graph is the host's own
  and finds where each layer's attention output joins its residual stream, or refuses;
- forward hooks on each decoder layer and on that writer module read the layer input h and the attention
  output and add λ·GIN(X, A') where the placement asks;
- under a KV cache the GIN features Z of past positions live in the same cache (dynamic or static), as extra
  cache layers (index num_layers + k), so beam reordering and cropping treat them like the keys.
Per-model state hangs off that model's own modules (a `_SparseGINTap` on every adapted attention module): two
adapted models never share anything but the two stateless attention functions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.cache_utils import (
    Cache,
    DynamicIndexedLayer,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    StaticIndexedLayer,
    StaticLayer,
    StaticSlidingWindowLayer,
)

from ginformer.errors import CheckpointError, ConfigError, ModelRefused, NotMergeable
from ginformer.graph import causal_mask

from .adjacency import AttentionInputs
from .config import SparseGINConfig
from .host import TAP, WRAPPED, HostLayer, HostMismatch, decoder_layers, family, probe, unprobed
from .hub import (
    MODEL_CARD_NAME,
    WEIGHTS_NAME,
    decode_payload,
    describe,
    encode_payload,
    model_card,
    read_adapter,
    resolve_adapter_dir,
    write_description,
)
from .layer import SparseGINLayer

logger = logging.getLogger(__name__)

ADAPTER_PREFIX = "adapters."
_BASE_PREFIX = "pretrained_model."


@dataclass
class LayerGraph:
    """What `capture_adjacency` records per adapted layer and forward call."""

    layer: int
    aggregated: Tensor  # (B, T_q, T_k) A_agg, the head-aggregated attention
    adjacency: Tensor  # (B, T_q, T_k) A', the sparse graph the GIN used


@dataclass
class _Shared:
    num_layers: int
    graph_adjacency: Tensor | None = None
    record: Callable[[LayerGraph], None] | None = None  # where capture_adjacency sends each layer's graph


# Which branch an adapted layer runs, by its position among the adapted layers: None while the adapter is off.
Branches = Callable[[int], SparseGINLayer | None]


@dataclass
class _SparseGINTap:
    """One decoder layer's link to its adapter, plus what one forward call passes between hooks."""

    host: HostLayer
    position: int  # among the adapted layers
    branches: Branches
    shared: _Shared
    hidden: Tensor | None = None
    cache: Any = None
    attention: AttentionInputs | None = None
    delta: Tensor | None = None

    @property
    def adapter(self) -> SparseGINLayer | None:
        """The branch this layer runs now; asked on every call, so switching or disabling adapters takes effect at
        the next forward."""
        return self.branches(self.position)

    def branch(self, adapter: SparseGINLayer, x: Tensor) -> Tensor:
        index = self.host.index
        if self.attention is None:
            raise RuntimeError(f"layer {index}: its attention did not run through the Sparse-GIN attention")
        extend, attention = None, self.attention
        if self.cache is not None:
            extend = partial(_extend_features, self.cache, index, self.shared.num_layers)
            attention = _positioned(attention, self.cache, getattr(self.host.attention, "layer_idx", index))
        record = self.shared.record
        delta, graph = adapter(x, attention, extend, self.shared.graph_adjacency, record is not None)
        if record is not None:
            record(LayerGraph(index, *(tensor.detach() for tensor in graph)))
        self.attention = None
        return delta


def _positioned(attention: AttentionInputs, cache: Cache, layer_idx: int) -> AttentionInputs:
    """The attention inputs with a mask that places the queries where a static cache put them.

    Without a mask the graph takes the queries to be the last T_q keys, true of a growing cache. A static cache
    returns its whole buffer, filled from slot 0, and transformers passes no mask for an unpadded prefill into it:
    there query i sits at slot first + i, and the later slots are empty."""
    if attention.mask is not None or not isinstance(cache.layers[layer_idx], StaticLayer):
        return attention
    q_len, k_len = attention.query.shape[-2], attention.key.shape[-2]
    first = cache.layers[layer_idx].get_seq_length() - q_len  # the cache's count after this step's update
    mask = causal_mask(q_len, k_len, attention.query.device, first_query=first)
    return attention._replace(mask=mask[None, None])  # (1, 1, T_q, T_k)


def _feature_layer(mirrored: Any) -> Any:
    """A cache layer for one adapter's features that fills, slides and crops as the key layer `mirrored` does."""
    if isinstance(mirrored, (DynamicIndexedLayer, StaticIndexedLayer)):
        raise ValueError(f"Sparse-GIN keeps no features beside {type(mirrored).__name__} cache layers")
    # Most derived first: a sliding layer is a kind of full one, and hybrids' layers mix linear state into these.
    if isinstance(mirrored, StaticSlidingWindowLayer):
        return StaticSlidingWindowLayer(max_cache_len=mirrored.max_cache_len, sliding_window=mirrored.max_cache_len)
    if isinstance(mirrored, StaticLayer):
        return StaticLayer(max_cache_len=mirrored.max_cache_len)
    if isinstance(mirrored, DynamicSlidingWindowLayer):
        return DynamicSlidingWindowLayer(sliding_window=mirrored.sliding_window)
    # A full dynamic layer, or a layer without keys (a hybrid's linear attention, which no adapter reads).
    return DynamicLayer()


def _extend_features(cache: Any, layer: int, num_layers: int, z: Tensor) -> Tensor:
    """Write this call's Z (B, T_q, F) into the cache and return Z for every key position (B, T_k, F)."""
    if not isinstance(cache, Cache):
        raise ValueError(f"Sparse-GIN needs a transformers Cache (dynamic or static), got {type(cache).__name__}")
    if cache.layer_class_to_replicate is not None:
        while len(cache.layers) < num_layers:
            cache.layers.append(cache.layer_class_to_replicate())
    while len(cache.layers) < 2 * num_layers:
        cache.layers.append(_feature_layer(cache.layers[len(cache.layers) - num_layers]))
    # Z rides as the "keys" of its own cache layer (B, 1, T, F), with zero-width "values"; a static layer writes
    # them at its own fill position, as it does the keys.
    features, _ = cache.layers[num_layers + layer].update(z[:, None], z.new_empty(*z.shape[:2], 0)[:, None])
    return features[:, 0]


def _before_layer(tap: _SparseGINTap, module: nn.Module, args: tuple, kwargs: dict) -> None:
    if tap.adapter is not None:
        tap.hidden = args[0] if args else kwargs["hidden_states"]
        # Most families pass the cache by keyword, GPT-2 by position.
        tap.cache = next((value for value in (*args, *kwargs.values()) if isinstance(value, Cache)), None)


def _after_writer(tap: _SparseGINTap, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """After the module that writes the attention's output w into the stream (the attention or a norm after it)."""
    adapter = tap.adapter
    if adapter is None:
        return None
    written = output[0] if isinstance(output, tuple) else output
    scale = tap.host.stream_scale
    delta = tap.branch(adapter, tap.hidden + scale * written)  # X = h + c·w, the residual stream after attention
    if adapter.config.placement == "parallel":
        tap.delta = delta
        return None
    # after_attention: the stream becomes h + c·(w + delta / c) = X + delta. tap.hidden stays: under gradient
    # checkpointing the backward pass reruns the layer's forward, and this hook with it, but not the layer's
    # pre-hook (transformers checkpoints `forward`, outside the module hooks).
    tap.cache = None
    written = written + (delta if scale == 1.0 else delta / scale)  # no extra op per layer and token for c = 1
    return (written, *output[1:]) if isinstance(output, tuple) else written


def _after_layer(tap: _SparseGINTap, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    adapter = tap.adapter
    if adapter is None:
        return None
    hidden = output[0] if isinstance(output, tuple) else output
    if adapter.config.placement == "parallel":
        hidden = hidden + tap.delta
    else:
        hidden = hidden + tap.branch(adapter, hidden)  # after_mlp: X = the layer's output
    tap.cache = tap.delta = None  # tap.hidden stays for a checkpointed layer's recomputation (_after_writer)
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


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


def saved_config(payload: dict[str, Any], where: str) -> SparseGINConfig:
    """The SparseGINConfig a saved adapter describes; a CheckpointError naming `where` when it describes none."""
    values = payload["config"]
    if not isinstance(values, dict):
        raise CheckpointError(f"{where}: its config is {type(values).__name__}, not a mapping of SparseGINConfig fields")
    try:
        return SparseGINConfig.from_dict(values)
    except ValueError as err:  # SparseGINConfig's own checks: an unknown field, a value out of range
        raise CheckpointError(f"{where}: its config is not one this version of ginformer reads ({err})") from None


def check_base(payload: dict[str, Any], model: PreTrainedModel, where: str) -> None:
    """Refuse an adapter saved for a base of another shape; only warn when the base merely has another name."""
    saved, current = payload["base_model"], base_fingerprint(model)
    mismatched = [key for key in saved if key != "name_or_path" and saved[key] != current.get(key)]
    if mismatched:
        details = ", ".join(f"{key}: adapter {saved[key]!r} vs base {current.get(key)!r}" for key in mismatched)
        raise CheckpointError(f"{where} was trained on a different base model ({details})")
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


def new_branches(model: PreTrainedModel, config: SparseGINConfig, hosts: list[HostLayer]) -> list[SparseGINLayer]:
    """One adapter's branches for `model`: a SparseGINLayer per adapted layer, on the model's device."""
    hidden_size = model.config.get_text_config().hidden_size
    num_layers = len(decoder_layers(model))
    layers = [SparseGINLayer(hidden_size, config, _initial_scale(config, host.index, num_layers)) for host in hosts]
    if any(param.is_meta for layer in layers for param in layer.parameters()):
        raise ConfigError("Sparse-GIN branches are created with their weights (they are small), not on the meta "
                          "device: leave low_cpu_mem_usage False and create the adapter outside init_empty_weights")
    device = next(model.parameters()).device
    return [layer.to(device) for layer in layers]


class Wiring:
    """What adapting a base changes in it, all undone by `remove`: a tap on each adapted attention module, hooks on
    its decoder layers (and on the module that writes each attention's output into the stream), its attention
    implementation, and its parameters' requires_grad (frozen). SparseGINModel (one adapter) and peft's
    SparseGINTuner (named adapters, tuner.py) each own one; `branches` says which branch a layer runs."""

    def __init__(self, model: PreTrainedModel, placement: str, branches: Branches, probe_host: bool = True) -> None:
        layers = decoder_layers(model)
        if any(hasattr(module, TAP) for module in model.modules()):
            raise ValueError("this model already carries a Sparse-GIN adapter: unload() it first")
        attn = model.config._attn_implementation
        if attn not in WRAPPED:
            raise ModelRefused(f"attn_implementation={attn!r}: Sparse-GIN wraps sdpa or eager; load the base with "
                               "either")
        if not model._can_set_attn_implementation():
            raise HostMismatch(f"{family(model)}: {type(model).__name__} does not route attention through "
                               "transformers' attention interface, so Sparse-GIN cannot see its graph")
        self.hosts = probe(model, placement) if probe_host else unprobed(model)
        self.model = model
        self.placement = placement
        self.base_attn = attn
        self.shared = _Shared(num_layers=len(layers))
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        model.requires_grad_(False)
        self._handles = []
        for position, host in enumerate(self.hosts):
            tap = _SparseGINTap(host, position, branches, self.shared)
            setattr(host.attention, TAP, tap)
            self._handles.append(host.layer.register_forward_pre_hook(partial(_before_layer, tap), with_kwargs=True))
            if placement != "after_mlp":
                self._handles.append(host.writer.register_forward_hook(partial(_after_writer, tap), with_kwargs=True))
            if placement != "after_attention":
                self._handles.append(host.layer.register_forward_hook(partial(_after_layer, tap), with_kwargs=True))
        model.set_attn_implementation(WRAPPED[attn])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for host in self.hosts:
            if hasattr(host.attention, TAP):
                delattr(host.attention, TAP)
        self.model.set_attn_implementation(self.base_attn)
        for name, param in self.model.named_parameters():
            param.requires_grad = self._requires_grad.get(name, param.requires_grad)


def refuse_merge(operation: str) -> NoReturn:
    """What every LoRA-only operation on a Sparse-GIN adapter raises: why it cannot be done, and what to do."""
    raise NotMergeable(
        f"{operation}: a Sparse-GIN adapter cannot be merged into the base model's weights. Its branch "
        "λ·GIN(X, A') is nonlinear in the attention graph A' (a sharpened, thresholded sum of each layer's attention "
        "probabilities) and in the residual stream X, so no change to the base's weight matrices computes it, as "
        "LoRA's W + BA does. Keep the adapter attached instead (generate with the adapted model itself: "
        "use_vllm=False in TRL) and save it with save_pretrained; it loads back onto its base with "
        "AutoSparseGINModelForCausalLM.from_pretrained(dir) or peft's PeftModel.from_pretrained(base, dir)"
    )


class SparseGINModel(nn.Module):
    """A frozen base causal LM with a Sparse-GIN branch in every decoder layer."""

    def __init__(self, model: PreTrainedModel, config: SparseGINConfig, probe_host: bool = True) -> None:
        """`probe_host=False` skips the check that the adapter's graph and residual stream are the host's own
        (host.py) and assumes them: unsafe on any family it was not checked on."""
        super().__init__()
        self._wiring = Wiring(model, config.placement, self._branch, probe_host)
        self._enabled = True
        self.pretrained_model = model
        self.sparse_gin_config = config
        self.host_layers = self._wiring.hosts
        self.adapters = nn.ModuleList(new_branches(model, config, self.host_layers))
        # Trainer saves and resumes any module through its state dict: make that the adapter and its config.
        self.register_state_dict_post_hook(_drop_frozen_base)
        self.register_load_state_dict_post_hook(_frozen_base_is_not_missing)

    @property
    def adapted_layers(self) -> list[int]:
        """Indices of the decoder layers that carry a branch (all of them, but for a hybrid's linear layers)."""
        return [host.index for host in self.host_layers]

    def describe_host(self) -> str:
        """One line on what was adapted and how: layers, placement, residual kind and stream multiplier."""
        layers, total = self.adapted_layers, len(decoder_layers(self.pretrained_model))
        which = "all" if len(layers) == total else ", ".join(map(str, layers))
        kinds = sorted({host.residual for host in self.host_layers})
        writers = sorted({type(host.writer).__name__ for host in self.host_layers})
        scales = sorted({round(host.stream_scale, 6) for host in self.host_layers})
        return (f"{family(self.pretrained_model)}: {len(layers)} of {total} layers adapted ({which}); placement "
                f"{self.sparse_gin_config.placement}; {'/'.join(kinds)} residual; attention output written by "
                f"{'/'.join(writers)} with multiplier {'/'.join(map(str, scales))}")

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "pretrained_model":
                raise
            # Everything else is the wrapped model's, as transformers names it: `base_model` is its backbone (what
            # TRL's fused LM head runs), `config`, `generation_config`, `get_output_embeddings`, ...
            return getattr(self.pretrained_model, name)

    def _branch(self, position: int) -> SparseGINLayer | None:
        return self.adapters[position] if self._enabled else None

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
        shared = self._wiring.shared
        shared.graph_adjacency = graph_adjacency
        try:
            return self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        finally:
            shared.graph_adjacency = None

    def generate(self, *args, **kwargs):
        return self.pretrained_model.generate(*args, **kwargs)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside, the model computes exactly what its base computes."""
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = True

    @contextlib.contextmanager
    def capture_adjacency(self, record: Callable[[LayerGraph], None] | None = None) -> Iterator[list[LayerGraph]]:
        """Collect every layer's A_agg and A' (detached) for the forward calls made inside. With `record`, each
        layer's graph goes to it as soon as the layer has run and the list stays empty: a long text's T×T graphs
        need not all be held at once."""
        captured: list[LayerGraph] = []
        shared = self._wiring.shared
        shared.record = record or captured.append
        try:
            yield captured
        finally:
            shared.record = None

    def adapter_scales(self) -> list[float]:
        """λ_k per adapted decoder layer, for logging."""
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
        return describe(self.sparse_gin_config.to_dict(), self.pretrained_model.config._name_or_path,
                        base_fingerprint(self.pretrained_model), self._wiring.base_attn, self.adapted_layers)

    def get_extra_state(self) -> Tensor:
        """The adapter's description rides in the state dict, so Trainer's checkpoints describe themselves."""
        return encode_payload(self.adapter_payload())

    def set_extra_state(self, state: Tensor) -> None:
        """Loading a state dict checks that it belongs to an adapter of this config on a base of this shape."""
        where = "the loaded state dict"
        payload = decode_payload(state, where)
        check_base(payload, self.pretrained_model, where)
        saved = saved_config(payload, where).to_dict()
        changed = [f"{key}: saved {saved[key]!r} vs this model {value!r}"
                   for key, value in self.sparse_gin_config.to_dict().items() if saved[key] != value]
        if changed:
            raise CheckpointError(f"{where} belongs to a Sparse-GIN adapter of another config ({', '.join(changed)})")

    def save_pretrained(
        self, directory: str | Path, state_dict: dict[str, Tensor] | None = None, data: str | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Write adapter_config.json (config + base), adapter_model.safetensors (adapter only) and a README.md model
        card naming `data` and `metrics` when given. `state_dict` is this model's unless given (a gathered one,
        under FSDP)."""
        directory = Path(directory)
        payload = self.adapter_payload()
        write_description(directory, payload)
        state_dict = self.state_dict() if state_dict is None else state_dict
        tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items() if is_adapter_key(key)}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        trainable = self.get_nb_trainable_parameters()[0]
        (directory / MODEL_CARD_NAME).write_text(model_card(payload, trainable, data, metrics))

    @classmethod
    def from_pretrained(
        cls, model: PreTrainedModel, path_or_hub_id: str | Path, is_trainable: bool = False,
        revision: str | None = None, cache_dir: str | Path | None = None, local_files_only: bool = False,
        probe_host: bool = True,
    ) -> SparseGINModel:
        """Attach a saved adapter (a directory in either layout of adapter/hub.py, or a hub repository) to `model`;
        a base of another shape is refused before any weight is loaded."""
        directory = resolve_adapter_dir(path_or_hub_id, revision, cache_dir, local_files_only)
        payload, tensors = read_adapter(directory)
        check_base(payload, model, f"adapter in {directory}")
        wrapped = cls(model, saved_config(payload, f"adapter in {directory}"), probe_host)
        saved_layers = payload.get("adapted_layers")
        if saved_layers is not None and saved_layers != wrapped.adapted_layers:
            wrapped.unload()
            raise CheckpointError(f"adapter in {directory} adapts layers {saved_layers}, but this base offers "
                                  f"{wrapped.adapted_layers}")
        wrapped.load_adapter_state_dict(tensors)
        wrapped.adapters.requires_grad_(is_trainable)
        return wrapped

    def load_adapter_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load adapter weights (keys as `adapter_state_dict` writes them); every adapter key must be there."""
        foreign = sorted(key for key in state_dict if not is_adapter_key(key))
        if foreign:
            raise CheckpointError(f"not Sparse-GIN adapter keys: {foreign[:5]}")
        # Adapters saved before the scalars (λ, ε, α, τ) became 1-element tensors hold them with 0 dimensions.
        try:
            self.adapters.load_state_dict({
                key[len(ADAPTER_PREFIX) :]: value.reshape(1) if value.dim() == 0 else value
                for key, value in state_dict.items()
            })
        except RuntimeError as err:  # torch's "Error(s) in loading state_dict": keys missing, or tensors of other shapes
            reasons = " ".join(line.strip() for line in str(err).splitlines()[1:3]) or str(err)
            raise CheckpointError(f"the adapter's weights do not fit this adapter: {reasons}") from None

    def unload(self) -> PreTrainedModel:
        """Remove every trace of the adapter and return the base model, as it was before wrapping."""
        self._wiring.remove()
        return self.pretrained_model

    # peft's LoRA-only operations, refused with the reason rather than left to fail as unknown attributes.
    def merge_and_unload(self, *args, **kwargs) -> NoReturn:
        refuse_merge("merge_and_unload")

    def merge_adapter(self, *args, **kwargs) -> NoReturn:
        refuse_merge("merge_adapter")

    def unmerge_adapter(self, *args, **kwargs) -> NoReturn:
        refuse_merge("unmerge_adapter")


def get_sparse_gin_model(
    model: PreTrainedModel, config: SparseGINConfig | None = None, probe_host: bool = True
) -> SparseGINModel:
    """Freeze `model` (in place) and give each decoder layer a Sparse-GIN branch; only the branches train.

    First a probe checks, on a few random tokens under eager attention, that the graph the adapter rebuilds
    equals the model's own attention weights and where each layer's residual stream is; a model that differs is
    refused with HostMismatch, naming the family, layer and term. `probe_host=False` skips it: unsafe."""
    return SparseGINModel(model, config or SparseGINConfig(), probe_host)
