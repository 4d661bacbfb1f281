"""The host decoder as Sparse-GIN sees it: its attention calls, its decoder layers, and a probe that checks what
the adapter assumes about them on the model in front of it, before anything trains.

The adapter rebuilds two things of every decoder layer it adapts, and trusts neither until the host confirms it
(shared/STYLE.md: "trust the host model only after asking it"):

- the graph: each head's attention probabilities, rebuilt from what the layer hands its attention function
  (query and key heads, mask, scaling, logit soft-capping, sink logits), must equal the weights the host's own
  eager attention returns;
- the node features: X, the residual stream after the attention block, must be h + c·w, where h is the layer's
  input, w the output of the module that writes the attention's result into the stream (the attention module, or
  a norm applied to its output, as in Gemma 2, OLMo 2 or GLM-4) and c a constant (Granite's residual multiplier).
  The layer must go on from X in one of two ways: its MLP block reads X and adds to it ("sequential"), or it adds
  to X what its MLP computed from h ("parallel" residual, as GPT-NeoX and Phi).

A layer whose attention no module routes through transformers' attention interface is not adapted (the linear-
attention layers of hybrids); anything else that differs is refused, naming the family, the layer and the term.
An attention keyword argument that the rebuild does not read, and that is not known to leave the probabilities
alone, is refused by name even where the probe cannot see its effect: a new trick is refused, never silently
wrong.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ginformer.errors import ModelRefused

from .adjacency import AttentionInputs, attention_probabilities

TAP = "_sparse_gin_tap"  # the attribute on an attention module that links it to its adapter
WRAPPED = {"sdpa": "sparse_gin_sdpa", "eager": "sparse_gin_eager"}

# Keyword arguments an attention function may get that leave its probabilities as the rebuild computes them:
# the mask already carries any window, dropout comes after the weights, the rest only routes the call.
NEUTRAL_KWARGS = frozenset({
    "dropout", "sliding_window", "position_ids", "cache_position", "is_causal", "output_attentions", "use_cache",
    "layer_idx", "position_embeddings", "past_key_values", "head_mask", "output_router_logits",
})
# What the rebuild reads: logit soft-capping (Gemma 2) and per-head sink logits (gpt-oss).
READ_KWARGS = {"softcap": "softcap", "s_aux": "sinks"}

Residual = Literal["sequential", "parallel"]


class HostMismatch(ModelRefused):
    """The host computes something the adapter would not rebuild: adapting it would be silently wrong."""


@dataclass
class AttentionCall:
    """One call of an attention function through a Sparse-GIN implementation, as the probe records it."""

    module: nn.Module
    inputs: AttentionInputs
    weights: Tensor | None  # (B, H, T_q, T_k) the host's eager probabilities, None under sdpa
    unread: dict[str, Any]  # keyword arguments the rebuild neither reads nor knows to be neutral


_recorded: ContextVar[list[AttentionCall] | None] = ContextVar("sparse_gin_probe", default=None)


def eager_attention_of(module: nn.Module):
    # transformers keeps each architecture's eager attention beside its attention class, not in a registry.
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise HostMismatch(f"{type(module).__name__} has no eager_attention_forward in its module: use sdpa")
    return eager


def attention_inputs(query: Tensor, key: Tensor, mask: Tensor | None, scaling: float | None,
                     kwargs: dict[str, Any]) -> AttentionInputs:
    """What an attention function was called with, as far as its probabilities depend on it."""
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    read = {name: kwargs.get(kwarg) for kwarg, name in READ_KWARGS.items()}
    if read.get("sinks") is not None:
        read["sinks"] = read["sinks"].detach()
    return AttentionInputs(query, key, mask, scale, **read)


def _attention_function(inner: str):
    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        run = ALL_ATTENTION_FUNCTIONS["sdpa"] if inner == "sdpa" else eager_attention_of(module)
        output, weights = run(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        tap, recorded = getattr(module, TAP, None), _recorded.get()
        if tap is not None and tap.adapter is not None:
            tap.attention = attention_inputs(query, key, attention_mask, scaling, kwargs)
        if recorded is not None:  # the probe: no adapter is installed yet
            unread = {name: value for name, value in kwargs.items()
                      if value is not None and name not in NEUTRAL_KWARGS and name not in READ_KWARGS}
            inputs = attention_inputs(query, key, attention_mask, scaling, kwargs)
            recorded.append(AttentionCall(module, inputs, weights, unread))
        return output, weights

    return attention


for _inner, _name in WRAPPED.items():
    AttentionInterface.register(_name, _attention_function(_inner))
    AttentionMaskInterface.register(_name, sdpa_mask if _inner == "sdpa" else eager_mask)


def family(model: PreTrainedModel) -> str:
    """The model's family as transformers names it ("llama", "gpt2", ...), for messages."""
    return getattr(model.config, "model_type", None) or type(model).__name__


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM: the first list of `num_hidden_layers` modules in its
    decoder (`get_decoder()` where that is a part of the model, else the model itself), wherever it is named."""
    text = model.config.get_text_config()
    count = getattr(text, "num_hidden_layers", None)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for root in (decoder, model):
        for module in root.modules():
            if isinstance(module, nn.ModuleList) and len(module) == count:
                return module
    raise HostMismatch(f"{family(model)}: no list of its {count} decoder layers found in {type(model).__name__}")


def named_attention(layer: nn.Module) -> nn.Module | None:
    """The child of a decoder layer that computes its attention, by class name; None for a layer without one (the
    linear-attention layers of a hybrid). Only used where the probe is skipped: the probe finds the module that
    calls the attention interface instead."""
    found = [child for child in layer.children() if type(child).__name__.endswith("Attention")]
    return found[0] if len(found) == 1 else None


@dataclass
class HostLayer:
    """One decoder layer the adapter adapts, and how its attention block joins the residual stream."""

    index: int  # among the decoder layers
    layer: nn.Module
    attention: nn.Module  # the module that calls the attention interface
    writer: nn.Module  # whose output w joins the stream: the attention module or a norm after it
    stream_scale: float = 1.0  # c in X = h + c·w
    residual: Residual = "sequential"


def _first_tensor(args: tuple, kwargs: dict) -> Tensor | None:
    candidates = [*args[:1], kwargs.get("hidden_states"), *args[1:], *kwargs.values()]
    return next((value for value in candidates if isinstance(value, Tensor)), None)


def _output_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return output[0]
    return getattr(output, "last_hidden_state", None)


@dataclass
class _Calls:
    """A module's inputs and outputs, one pair per call, cloned: hosts update some outputs in place."""

    inputs: list[Tensor | None]
    outputs: list[Tensor | None]


@contextlib.contextmanager
def _recording_children(layers: nn.ModuleList) -> Iterator[dict[nn.Module, _Calls]]:
    calls: dict[nn.Module, _Calls] = {}
    handles = []

    def record_input(module, args, kwargs):  # before the call: a module may update its input in place
        first = _first_tensor(args, kwargs)
        calls.setdefault(module, _Calls([], [])).inputs.append(None if first is None else first.detach().clone())

    def record_output(module, args, kwargs, output):
        out = _output_tensor(output)
        calls[module].outputs.append(None if out is None else out.detach().clone())

    for layer in layers:
        for module in (layer, *layer.children()):
            handles.append(module.register_forward_pre_hook(record_input, with_kwargs=True))
            handles.append(module.register_forward_hook(record_output, with_kwargs=True))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _tolerance(dtype: torch.dtype) -> float:
    # Relative error allowed between two computations of one quantity: float32 reorders sums, 16-bit rounds.
    return 1e-4 if dtype == torch.float32 else 3e-2


def _graph_tolerance(dtype: torch.dtype) -> float:
    # Largest difference allowed between two computations of one attention probability.
    return 1e-4 if dtype == torch.float32 else 2e-2


def _relative_error(estimate: Tensor, target: Tensor) -> float:
    return ((estimate - target).norm() / target.norm().clamp_min(1e-12)).item()


def _fit(target: Tensor, *terms: Tensor) -> tuple[list[float], float]:
    """Least-squares scalars s with target ≈ Σ s_i·term_i, and the fit's relative error."""
    basis = torch.stack([term.double().flatten() for term in terms], dim=1)  # (N, k)
    goal = target.double().flatten()
    scalars = torch.linalg.lstsq(basis, goal[:, None]).solution[:, 0]
    return scalars.tolist(), _relative_error(basis @ scalars, goal)


def _graph_error(call: AttentionCall) -> float:
    """Largest difference between the rebuilt per-head probabilities and the host's eager ones, on the query rows
    that attend to anything (the host's fully masked rows are padding, whose outputs nothing reads)."""
    inputs, weights = call.inputs, call.weights.float()  # (B, H, T_q, T_k)
    worst = 0.0
    blocks = attention_probabilities(*inputs[:4], softcap=inputs.softcap, sinks=inputs.sinks)
    for start, probs in blocks:  # the adapter's own code: (B, H, c, visible), 0 past each block's last query
        rows = weights[:, :, start : start + probs.shape[2]]
        rebuilt = torch.nn.functional.pad(probs, (0, rows.shape[-1] - probs.shape[-1]))
        attends = probs.sum(dim=-1, keepdim=True) > 0  # a fully masked row is 0 here, uniform in eager
        worst = max(worst, ((rebuilt - rows).abs() * attends).max().item())
    return worst


def _short(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"<tensor of shape {tuple(value.shape)}>"
    return repr(value)[:60]


def _probe_inputs(model: PreTrainedModel) -> tuple[Tensor, Tensor]:
    """A few random tokens, the second row left-padded: the padding mask path is part of what is checked."""
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (2, 12), generator=generator).to(device)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


def _stream(layer: nn.Module, attention_block: nn.Module, calls: dict[nn.Module, _Calls], tol: float,
            where: str) -> tuple[nn.Module, float, Residual]:
    """(writer, c, residual) for one layer, from what its children read and wrote on the probe."""
    h, y = calls[layer].inputs[0], calls[layer].outputs[0]
    a = calls[attention_block].outputs[0]
    children = [child for child in layer.children() if child in calls and child is not attention_block]
    # A norm applied to the attention's output writes into the stream in its place; dropout (identity here) not.
    writer, w = attention_block, a
    for child in children:
        record = calls[child]
        first_in, first_out = record.inputs[0], record.outputs[0]
        if (len(record.inputs) == 1 and first_in is not None and first_in.shape == a.shape
                and _relative_error(first_in, a) < tol and _relative_error(first_out, first_in) > tol):
            writer, w = child, first_out
            break
    others = [child for child in children if child is not writer]
    # An MoE block may return its tokens flattened, (B·T, d), for the layer to reshape.
    outputs = [out.reshape(y.shape) for child in others for out in calls[child].outputs
               if out is not None and out.numel() == y.numel()]
    # Sequential: some child reads r = h + c·w (the pre-MLP norm, or the MLP), and the layer returns r + d·o.
    for child in others:
        for r in calls[child].inputs:
            if r is None or r.shape != h.shape:
                continue
            (c,), error = _fit(r - h, w)
            if error > tol or abs(c) < 1e-3:
                continue
            c = 1.0 if abs(c - 1.0) < tol else c  # the usual h + w, exactly
            if any(_fit(y - r, out)[1] <= tol for out in outputs):
                return writer, c, "sequential"
    # Parallel: the layer returns h + c·w + d·o with o computed from h.
    for out in outputs:
        (c, _), error = _fit(y - h, w, out)
        if error <= tol and abs(c) >= 1e-3:
            return writer, 1.0 if abs(c - 1.0) < tol else c, "parallel"
    raise HostMismatch(
        f"{where}: the residual stream after attention is not h + c·(attention output) followed by the MLP block "
        f"(the attention output passes through something Sparse-GIN cannot rebuild, e.g. a norm before the residual "
        "add that it could not find): use placement='after_mlp', which reads the layer's output"
    )


def probe(model: PreTrainedModel, placement: str) -> list[HostLayer]:
    """Run the host once on a probe input under eager attention and return the layers to adapt, with how each joins
    its residual stream; raise HostMismatch, naming the family, layer and term, where the rebuild would differ."""
    layers = decoder_layers(model)
    name = family(model)
    attn, training = model.config._attn_implementation, model.training
    if attn not in WRAPPED:
        raise HostMismatch(f"{name}: attn_implementation={attn!r}; Sparse-GIN wraps sdpa or eager, load the base "
                           "with either")
    owner = {module: k for k, layer in enumerate(layers) for module in layer.modules()}
    ids, mask = _probe_inputs(model)
    token = _recorded.set([])
    try:
        model.set_attn_implementation(WRAPPED["eager"])
        model.eval()
        backbone = model.base_model  # the decoder without its LM head, which the probe does not need
        with _recording_children(layers) as calls, torch.no_grad():
            backbone(input_ids=ids, attention_mask=mask, use_cache=False)
        recorded = _recorded.get()
    finally:
        _recorded.reset(token)
        model.set_attn_implementation(attn)
        model.train(training)
    if not recorded:
        raise HostMismatch(f"{name}: {type(model).__name__} does not route its attention through transformers' "
                           "attention interface, so Sparse-GIN cannot see its graph")
    per_layer: dict[int, list[AttentionCall]] = {}
    for call in recorded:
        if call.module not in owner:
            raise HostMismatch(f"{name}: an attention ({type(call.module).__name__}) outside the decoder layers")
        per_layer.setdefault(owner[call.module], []).append(call)

    dtype = next(model.parameters()).dtype
    tol = _tolerance(dtype)
    host_layers = []
    for k, layer in enumerate(layers):
        if k not in per_layer:
            continue  # no attention through the interface: a linear-attention layer, left as it is
        where = f"{name} layer {k}"
        if len(per_layer[k]) != 1:
            raise HostMismatch(f"{where}: {len(per_layer[k])} attention calls in one layer; Sparse-GIN adapts one")
        call = per_layer[k][0]
        if call.unread:
            terms = ", ".join(f"{key}={_short(value)}" for key, value in call.unread.items())
            raise HostMismatch(f"{where}: its attention gets {terms}, a term the Sparse-GIN graph does not rebuild")
        error = _graph_error(call)
        if error > _graph_tolerance(dtype):
            raise HostMismatch(
                f"{where}: the rebuilt attention graph differs from the model's own eager attention weights by "
                f"{error:.2g}: its attention computes a term Sparse-GIN does not rebuild"
            )
        block = next(child for child in layer.children() if call.module in set(child.modules()))
        host = HostLayer(k, layer, call.module, block)
        if placement != "after_mlp":
            host.writer, host.stream_scale, host.residual = _stream(layer, block, calls, tol, where)
        host_layers.append(host)
    return host_layers


def unprobed(model: PreTrainedModel) -> list[HostLayer]:
    """The layers to adapt when the probe is skipped, assuming what it would check: each layer's attention child
    writes h + w into a sequential residual stream. Unsafe on families that differ (see probe)."""
    layers = decoder_layers(model)
    found = [(k, layer, named_attention(layer)) for k, layer in enumerate(layers)]
    host_layers = [HostLayer(k, layer, attention, attention) for k, layer, attention in found if attention]
    if not host_layers:
        raise HostMismatch(f"{family(model)}: no decoder layer has a child module named *Attention")
    return host_layers
