"""Attention as graphs, for reading: the adjacency every layer and head builds for one text, from any decoder.

    model                                      a layer's per-head adjacency A_h (queries i receive from keys j ≤ i)
    GinformerForCausalLM, GIN/PNA layer        A' of GraphAttention.adjacency: activation, sharpening, refinement
    standard layer, any transformers decoder   the softmax attention probabilities (eager attention)
    SparseGINModel (an adapted decoder)        its base's probabilities, plus the A_agg every adapter aggregated

    graphs = attention_graphs(model, tokenizer, "The cat sat on the mat.")
    graphs.heads[5]                      # (H, T, T) layer 5, one adjacency per head
    graphs.summed(5)                     # (T, T)    Σ_h A_h
    graphs.stages(5)                     # Sparse-GIN's processing of it (paper Fig. 15), stage name -> (T, T)
    graphs.to_networkx(5, top_k=3)       # networkx.DiGraph, edge j -> i weighted A[i, j]
    graphs.export("out/layer5", 5)       # out/layer5.graphml and out/layer5.json

The forward pass runs once, under no_grad and in eval mode, with eager attention switched on for the layers that
need it and the model's own settings restored afterwards. Graph layers are read with a pre-hook on their
attention: the hook receives exactly the hidden states, rotary embeddings and mask the layer sees, and asks the
layer for its adjacency, so no maths is repeated here.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import networkx as nx
import torch
from torch import Tensor, nn

from ginformer.adapter import SparseGINConfig, SparseGINModel, sparse_adjacency
from ginformer.adapter.model import decoder_layers
from ginformer.attention import GINAttention, GraphAttention, PNAAttention
from ginformer.graph import causal_mask

# The Sparse-GIN processing stages (paper Fig. 15), in order, each with its formula.
STAGES = {
    "sum and clamp": "min(1, Σ_h A_h)",
    "sigmoid sharpening": "sigmoid(α(A − τ))",
    "ε-threshold": "0 where ≤ ε",
    "causal mask": "0 where j > i",
}


@dataclass(frozen=True)
class SparseSettings:
    """How Sparse-GIN turns one layer's A_agg into its graph: A' = sigmoid(α(A_agg − τ)), 0 where ≤ ε, causal."""

    alpha: float
    """Sigmoid slope α: a large α makes the graph near-binary around τ."""
    tau: float
    """Sigmoid centre τ."""
    epsilon: float
    """Edges whose sharpened weight is ≤ ε are dropped."""
    top_k: int | None = None
    """At most this many strongest incoming edges per token."""
    self_loops_only: bool = False
    """Keep only the diagonal (the original code's behaviour)."""

    @classmethod
    def from_config(cls, config: SparseGINConfig) -> SparseSettings:
        return cls(config.alpha, config.tau, config.edge_threshold, config.top_k, config.self_loops_only)


@dataclass
class AttentionGraphs:
    """The graphs one text induces in a model: per layer, one (T, T) adjacency per head (float32, CPU).

    ``A[i, j]`` is the weight of the edge from token j to token i (j ≤ i). With a window, every matrix is the
    square crop [start:stop, start:stop] of the full one and ``offset`` is ``start``: edges from tokens before the
    window are cut, so a softmax row inside a window may sum to less than 1.
    """

    text: str
    tokens: list[str]
    """Readable label of each token in the window."""
    token_ids: list[int]
    offset: int
    """Position of the window's first token in the text."""
    heads: dict[int, Tensor]
    """layer -> (H, T, T) adjacency per head."""
    kinds: dict[int, str]
    """layer -> what its adjacency is, for titles: "softmax attention" or e.g. "GIN-Attention A' (softmax, α=1.20)"."""
    aggregated: dict[int, Tensor] = field(default_factory=dict)
    """layer -> (T, T) A_agg as an adapted model's Sparse-GIN layer aggregated it; empty for other models."""
    sparse_settings: dict[int, SparseSettings] = field(default_factory=dict)
    """layer -> the adapter's α, τ, ε, ...; empty for other models."""

    @property
    def layers(self) -> list[int]:
        return sorted(self.heads)

    @property
    def positions(self) -> list[int]:
        return list(range(self.offset, self.offset + len(self.tokens)))

    def _layer(self, layer: int) -> Tensor:
        if layer not in self.heads:
            raise ValueError(f"layer {layer} was not captured; captured layers: {self.layers}")
        return self.heads[layer]

    def head(self, layer: int, head: int) -> Tensor:
        """(T, T) adjacency of one head."""
        heads = self._layer(layer)
        if not 0 <= head < len(heads):
            raise ValueError(f"head {head} out of range: layer {layer} has {len(heads)} heads (0–{len(heads) - 1})")
        return heads[head]

    def summed(self, layer: int) -> Tensor:
        """(T, T) Σ_h A_h, not clamped: a row of softmax heads sums to H."""
        return self._layer(layer).sum(dim=0)

    def settings(self, layer: int) -> SparseSettings:
        """The Sparse-GIN settings of this layer: its adapter's, or ``SparseGINConfig()``'s defaults."""
        return self.sparse_settings.get(layer) or SparseSettings.from_config(SparseGINConfig())

    def stages(self, layer: int, settings: SparseSettings | None = None) -> dict[str, Tensor]:
        """Sparse-GIN's processing of this layer's attention (paper Fig. 15), stage name -> (T, T), in order:

            sum and clamp        A_agg = min(1, Σ_h A_h)   (an adapted model: the A_agg its adapter computed)
            sigmoid sharpening   S = sigmoid(α(A_agg − τ))            (no causal mask yet: S > 0 above the diagonal)
            ε-threshold          S where S > ε, else 0
            causal mask          A' = the above where j ≤ i (and top-k / self-loops only, if set): what the GIN uses

        Each stage is :func:`ginformer.adapter.sparse_adjacency` with the later constraints lifted. ``settings``
        defaults to :meth:`settings`.
        """
        aggregated = self.aggregated.get(layer)
        if aggregated is None:
            aggregated = self.summed(layer).clamp(max=1.0)
        settings = settings or self.settings(layer)
        everywhere = torch.ones_like(aggregated, dtype=torch.bool)
        causal = causal_mask(len(aggregated), len(aggregated))
        sharpen = partial(sparse_adjacency, aggregated, alpha=settings.alpha, tau=settings.tau)
        return dict(
            zip(
                STAGES,
                (
                    aggregated,
                    sharpen(everywhere, threshold=0.0),  # every sigmoid output is > 0: nothing is dropped
                    sharpen(everywhere, threshold=settings.epsilon),
                    sharpen(
                        causal,
                        threshold=settings.epsilon,
                        top_k=settings.top_k,
                        self_loops_only=settings.self_loops_only,
                    ),
                ),
            )
        )

    def to_networkx(self, layer: int, head: int | None = None, top_k: int | None = None) -> nx.DiGraph:
        """The directed token graph of one head, or of the head sum when ``head`` is None; see
        :func:`adjacency_graph`."""
        matrix = self.summed(layer) if head is None else self.head(layer, head)
        graph = adjacency_graph(matrix, self.tokens, self.offset, top_k=top_k, token_ids=self.token_ids)
        source = "sum over heads" if head is None else f"head {head}"
        graph.graph.update(layer=layer, source=source, kind=self.kinds[layer])
        return graph

    def export(
        self, path_stem: str | Path, layer: int, head: int | None = None, top_k: int | None = None
    ) -> list[Path]:
        """Write the graph of :meth:`to_networkx` as ``path_stem``.graphml and .json (networkx node-link)."""
        return write_graph(self.to_networkx(layer, head, top_k), path_stem)


def adjacency_graph(
    adjacency: Tensor,
    tokens: Sequence[str],
    offset: int = 0,
    top_k: int | None = None,
    token_ids: Sequence[int] | None = None,
) -> nx.DiGraph:
    """A (T, T) adjacency as a networkx DiGraph: node ``offset + i`` per token (attributes ``label``,
    ``position`` and, when given, ``token_id``) and an edge j -> i of ``weight`` A[i, j] for every A[i, j] > 0.

    ``top_k`` keeps, per token, its k strongest incoming edges from earlier tokens, plus its self-loop.
    """
    matrix = adjacency.detach().float().cpu()
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(tokens):
        raise ValueError(
            f"adjacency of shape {tuple(matrix.shape)} does not match {len(tokens)} tokens: expected (T, T)"
        )
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or >= 1, got {top_k}")
    size = len(tokens)
    keep = matrix > 0
    if top_k is not None:
        earlier = torch.tril(torch.ones(size, size, dtype=torch.bool), diagonal=-1)
        ranked = matrix.masked_fill(~earlier, -1.0)
        strongest = ranked.topk(min(top_k, size), dim=-1).indices  # (T, k)
        chosen = torch.zeros_like(keep).scatter(-1, strongest, True) & earlier
        keep &= chosen | torch.eye(size, dtype=torch.bool)
    graph = nx.DiGraph()
    for i, token in enumerate(tokens):
        attributes = {"label": token, "position": offset + i}
        if token_ids is not None:
            attributes["token_id"] = int(token_ids[i])
        graph.add_node(offset + i, **attributes)
    for i, j in keep.nonzero().tolist():
        graph.add_edge(offset + j, offset + i, weight=float(matrix[i, j]))
    return graph


def write_graph(graph: nx.DiGraph, path_stem: str | Path) -> list[Path]:
    """``path_stem``.graphml (Gephi, Cytoscape, igraph) and ``path_stem``.json (``networkx.node_link_graph``)."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    graphml, as_json = stem.with_name(stem.name + ".graphml"), stem.with_name(stem.name + ".json")
    nx.write_graphml(graph, graphml)
    as_json.write_text(json.dumps(nx.node_link_data(graph, edges="edges"), indent=1, ensure_ascii=False) + "\n")
    return [graphml, as_json]


def token_labels(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """One readable label per token: the token decoded alone, outer spaces dropped, control characters escaped."""
    labels = []
    for token_id in token_ids:
        text = tokenizer.decode([int(token_id)])
        text = text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").strip()
        labels.append(text or "␣")
    return labels


def attention_graphs(
    model: nn.Module,
    tokenizer,
    text: str,
    layers: Sequence[int] | None = None,
    window: tuple[int, int | None] | None = None,
) -> AttentionGraphs:
    """Run ``text`` through ``model`` once and collect every requested layer's per-head adjacency.

    ``model``: a GinformerForCausalLM, a SparseGINModel or any transformers decoder whose layers sit at
    ``get_decoder().layers`` with a ``self_attn``. ``layers``: layer indices (negative counts from the end),
    default all. ``window``: (start, stop) token positions to keep, stop exclusive, either may be negative and
    stop may be None; the model still reads the whole text, so the window's rows see their full context.
    A text longer than the model's context is refused.
    """
    adapted = model if isinstance(model, SparseGINModel) else None
    base = adapted.get_base_model() if adapted is not None else model
    decoder = decoder_layers(base)
    selected = select_layers(layers, len(decoder))
    if not text:
        raise ValueError("text is empty: give at least one token's worth of text")
    token_ids = tokenizer(text, return_tensors="pt")["input_ids"]  # (1, T)
    length = token_ids.shape[1]
    if length == 0:
        raise ValueError(f"text {text[:40]!r} tokenizes to no tokens")
    context = getattr(base.config.get_text_config(), "max_position_embeddings", None)
    if context is not None and length > context:
        raise ValueError(
            f"text is {length} tokens, longer than the model's context of {context} tokens "
            "(max_position_embeddings): shorten it; --window selects what to show, not what the model reads"
        )
    start, stop = resolve_window(window, length)

    keep = partial(_crop, start=start, stop=stop)
    captured: dict[int, Tensor] = {}
    attentions = {k: decoder[k].self_attn for k in selected}
    needs_eager = any(not isinstance(attn, GraphAttention) for attn in attentions.values())
    handles = []
    for k, attn in attentions.items():
        if isinstance(attn, GraphAttention):
            hook = partial(_graph_layer_hook, captured, k, keep)
            handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
        else:
            handles.append(attn.register_forward_hook(partial(_attention_layer_hook, captured, k, keep)))
    used = []
    try:
        with _eval_mode(model), _eager(base, adapted is not None, needs_eager), torch.no_grad():
            device = next(base.parameters()).device
            capture = adapted.capture_adjacency() if adapted is not None else contextlib.nullcontext([])
            with capture as used:
                model(input_ids=token_ids.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()

    ids = token_ids[0, start:stop].tolist()
    result = AttentionGraphs(
        text=text,
        tokens=token_labels(tokenizer, ids),
        token_ids=ids,
        offset=start,
        heads={k: captured[k] for k in selected},
        kinds={k: describe(attentions[k]) for k in selected},
    )
    if adapted is not None:
        config = adapted.sparse_gin_config
        for layer_graph in used:
            if layer_graph.layer in attentions:
                result.aggregated[layer_graph.layer] = keep(layer_graph.aggregated[0])
        for k in selected:
            adapter = adapted.adapters[k]
            result.sparse_settings[k] = SparseSettings(
                float(adapter.alpha), float(adapter.tau), config.edge_threshold, config.top_k, config.self_loops_only
            )
    return result


def select_layers(layers: Sequence[int] | None, count: int) -> list[int]:
    """Layer indices in [0, count), negatives counted from the end, sorted without repeats; None means all."""
    if layers is None:
        return list(range(count))
    resolved = set()
    for layer in layers:
        if not -count <= layer < count:
            raise ValueError(
                f"layer {layer} out of range: the model has {count} layers (0–{count - 1}, or -{count}–-1)"
            )
        resolved.add(layer % count)
    if not resolved:
        raise ValueError("layers is empty: name at least one layer, or pass None for all")
    return sorted(resolved)


def resolve_window(window: tuple[int, int | None] | None, length: int) -> tuple[int, int]:
    """(start, stop) with 0 ≤ start < stop ≤ length from a window that may count from the end."""
    if window is None:
        return 0, length
    start, stop = window
    stop = length if stop is None else stop
    start, stop = (start + length if start < 0 else start), (stop + length if stop < 0 else stop)
    if not 0 <= start < stop <= length:
        raise ValueError(
            f"window {tuple(window)} selects no tokens of a {length}-token text: need start < stop within 0–{length}"
        )
    return start, stop


def describe(attention: nn.Module) -> str:
    """What a layer's adjacency is, for a figure title."""
    if not isinstance(attention, GraphAttention):
        return "softmax attention"
    name = {GINAttention: "GIN-Attention", PNAAttention: "PNA-Attention"}.get(type(attention), type(attention).__name__)
    config = attention.config
    details = config.adjacency_activation
    if config.adjacency_activation == "softmax":
        details += f", α={attention.sharpening.item():.2f}"
    if config.refinement != "none":
        details += f", {config.refinement}"
    return f"{name} A' ({details})"


def _crop(matrix: Tensor, start: int, stop: int) -> Tensor:
    """(..., T, T) -> (..., W, W) window, as a float32 CPU copy: nothing keeps the full matrix alive."""
    return matrix[..., start:stop, start:stop].to(device="cpu", dtype=torch.float32, copy=True)


def _graph_layer_hook(captured, layer: int, keep, module: GraphAttention, args: tuple, kwargs: dict) -> None:
    bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
    adjacency = module.adjacency(bound["hidden_states"], bound["position_embeddings"], bound.get("attention_mask"))
    captured[layer] = keep(adjacency[0])  # (H, T, T)


def _attention_layer_hook(captured, layer: int, keep, module: nn.Module, args: tuple, output) -> None:
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if weights is None:
        raise RuntimeError(
            f"layer {layer}'s attention ({type(module).__name__}) returned no attention probabilities; "
            "the model must support eager attention (set_attn_implementation('eager'))"
        )
    captured[layer] = keep(weights[0])  # (H, T, T)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


@contextlib.contextmanager
def _eager(base: nn.Module, adapted: bool, needed: bool) -> Iterator[None]:
    """Eager attention returns its probabilities; sdpa and flash kernels never form them. An adapted model keeps its
    Sparse-GIN wrapper around the eager kernel, so the adapters still see their attention."""
    original = base.config._attn_implementation
    wanted = "sparse_gin_eager" if adapted else "eager"
    if not needed or original == wanted:
        yield
        return
    base.set_attn_implementation(wanted)
    try:
        yield
    finally:
        base.set_attn_implementation(original)
