"""Attention as graphs, for reading: the adjacency every layer and head builds for one text, from any decoder.

    model                                      a layer's per-head adjacency A_h (queries i receive from keys j ≤ i)
    GinformerForCausalLM, GIN/PNA layer        A' of GraphAttention.adjacency: activation, sharpening, refinement
    standard layer, any transformers decoder   the softmax attention probabilities, from the layer's own q and k
    SparseGINModel (an adapted decoder)        its base's probabilities, plus the A_agg every adapter aggregated

    graphs = attention_graphs(model, tokenizer, "The cat sat on the mat.")
    graphs.heads[5]                      # (H, T, T) layer 5, one adjacency per head
    graphs.summed(5)                     # (T, T)    Σ_h A_h
    graphs.stages(5)                     # Sparse-GIN's processing of it (paper Fig. 15), stage name -> (T, T)
    graphs.to_networkx(5, top_k=3)       # networkx.DiGraph, edge j -> i weighted A[i, j]
    graphs.export("out/layer5", 5)       # out/layer5.graphml and out/layer5.json

    long = attention_graphs(model, tokenizer, long_text, window=(0, 256), overview=256, rollout=True)
    long.overview.heads[5]               # (H, R, R) the whole text, R ≤ 256 cells a side (block maxima)
    long.rollout[5]                      # (256, 256) attention rollout over layers 0..5, for the window

The forward pass runs once, under no_grad and in eval mode, and nothing of the model is changed afterwards.
Standard layers keep their own attention kernel (sdpa, eager, or a Sparse-GIN adapter's wrapper of them): for the
layers read, the capture wraps that kernel, takes the queries, keys, mask and scaling it is called with, and
recomputes the probabilities a block of query rows at a time (`ginformer.adapter.adjacency.attention_probabilities`),
checking that they reproduce the kernel's own output on the last block. So no layer's (H, T, T) is ever whole and
nothing keeps all layers' attention: of each layer only the window's crop, the overview's block maxima and the
rollout's running product are kept, which is what lets a 5,000-token text be read. Graph layers are read with a
pre-hook on their attention: the hook receives exactly the hidden states, rotary embeddings and mask the layer
sees, and asks the layer for its adjacency, so no maths is repeated here.
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
from torch.nn import functional as F
from tqdm import tqdm
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ginformer.adapter import SparseGINConfig, SparseGINLayer, SparseGINModel, sparse_adjacency
from ginformer.adapter.adjacency import attention_probabilities
from ginformer.adapter.host import decoder_layers, eager_attention_of
from ginformer.adapter.model import LayerGraph
from ginformer.attention import GINAttention, GraphAttention, PNAAttention
from ginformer.errors import ConfigError, DataError, ModelRefused
from ginformer.graph import causal_mask
from ginformer.viz.rollout import rollout_step

# The Sparse-GIN processing stages (paper Fig. 15), in order, each with its formula.
STAGES = {
    "sum and clamp": "min(1, Σ_h A_h)",
    "sigmoid sharpening": "sigmoid(α(A − τ))",
    "ε-threshold": "0 where ≤ ε",
    "causal mask": "0 where j > i",
}
# The rollout over a whole text costs layers × T³/6 multiply-adds (2 s a layer at 5,000 tokens on 2 CPU cores):
# past this many tokens only the window's rollout, which costs layers × W³, is computed.
ROLLOUT_LIMIT = 2048


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

    @classmethod
    def from_adapter(cls, adapter: SparseGINLayer) -> SparseSettings:
        """One adapter layer's own α and τ (learned or fixed), with its config's ε, top-k and self-loops."""
        config = adapter.config
        alpha, tau = adapter.alpha.item(), adapter.tau.item()
        return cls(alpha, tau, config.edge_threshold, config.top_k, config.self_loops_only)

    def symbols(self) -> dict[str, float]:
        """α, τ and ε by their symbols, as the explorer and the figure titles show them."""
        return {"α": self.alpha, "τ": self.tau, "ε": self.epsilon}


@dataclass
class Overview:
    """Every kept matrix over the whole text, at a resolution a screen can show: cell [I, J] is the largest weight
    among the token pairs (i, j) with i // block = I and j // block = J (`block_max`), so one strong edge stays
    visible among thousands of tokens. With block 1 it is the full matrix."""

    block: int
    """Tokens per cell along each axis."""
    tokens: list[str]
    """Readable label of every token of the text."""
    heads: dict[int, Tensor] = field(default_factory=dict)
    """layer -> (H, R, R) block maxima of each head's adjacency, R = ceil(T / block)."""
    aggregated: dict[int, Tensor] = field(default_factory=dict)
    """layer -> (R, R) block maxima of the A_agg an adapted model's Sparse-GIN layer aggregated."""
    adjacency: dict[int, Tensor] = field(default_factory=dict)
    """layer -> (R, R) block maxima of the graph A' that layer's GIN passed messages on."""
    rollout: dict[int, Tensor] = field(default_factory=dict)
    """layer -> (R, R) block maxima of the attention rollout; only for texts of at most ROLLOUT_LIMIT tokens."""

    @property
    def size(self) -> int:
        """R, the cells along each axis."""
        return -(-len(self.tokens) // self.block)

    def stages(self, layer: int, settings: SparseSettings) -> dict[str, Tensor]:
        """Sparse-GIN's stages over the whole text, (R, R) each, as `AttentionGraphs.stages`. The first three are
        the stages of the pooled A_agg, which equal the pooled stages exactly: the block maximum commutes with the
        sigmoid and the ε-threshold, both nondecreasing. The last is the pooled A' the adapter used, since masking a
        pooled matrix would keep the future cells of the blocks on the diagonal."""
        if layer not in self.adjacency:
            raise ValueError(f"layer {layer} has no Sparse-GIN graph in the overview: the model is not adapted")
        return sparse_stages(self.aggregated[layer], settings, final=self.adjacency[layer])


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
    length: int = 0
    """Tokens in the whole text (the window may show fewer)."""
    scalars: dict[int, dict[str, float]] = field(default_factory=dict)
    """layer -> its learned graph scalars by symbol: an adapter's λ, α, τ and ε; a GIN or PNA layer's α."""
    rollout: dict[int, Tensor] = field(default_factory=dict)
    """layer -> (T, T) attention rollout over layers 0..layer for the window's tokens (`ginformer.viz.rollout`)."""
    overview: Overview | None = None
    """The whole text at a bounded resolution, when asked for."""

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

        ``settings`` defaults to :meth:`settings`; see :func:`sparse_stages`.
        """
        aggregated = self.aggregated.get(layer)
        if aggregated is None:
            aggregated = self.summed(layer).clamp(max=1.0)
        return sparse_stages(aggregated, settings or self.settings(layer))

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


def sparse_stages(aggregated: Tensor, settings: SparseSettings, final: Tensor | None = None) -> dict[str, Tensor]:
    """The stages of `AttentionGraphs.stages` from one (T, T) A_agg, in order. Each is
    :func:`ginformer.adapter.sparse_adjacency` with the later constraints lifted; ``final`` replaces the computed
    last stage (the A' an adapter used)."""
    everywhere = torch.ones_like(aggregated, dtype=torch.bool)
    sharpen = partial(sparse_adjacency, aggregated, alpha=settings.alpha, tau=settings.tau)
    if final is None:
        final = sharpen(
            causal_mask(len(aggregated), len(aggregated)),
            threshold=settings.epsilon,
            top_k=settings.top_k,
            self_loops_only=settings.self_loops_only,
        )
    return dict(
        zip(
            STAGES,
            (
                aggregated,
                sharpen(everywhere, threshold=0.0),  # every sigmoid output is > 0: nothing is dropped
                sharpen(everywhere, threshold=settings.epsilon),
                final,
            ),
        )
    )


def block_max(matrix: Tensor, block: int) -> Tensor:
    """(..., T_q, T_k) -> (..., ceil(T_q / block), ceil(T_k / block)): each cell the largest entry of its
    block × block tokens (the last blocks take what is left)."""
    if block == 1:
        return matrix
    flat = matrix.reshape(-1, 1, *matrix.shape[-2:])
    pooled = F.max_pool2d(flat, block, block, ceil_mode=True)
    return pooled.reshape(*matrix.shape[:-2], *pooled.shape[-2:])


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
    *,
    overview: int | None = None,
    rollout: bool = False,
    with_adapter: bool = True,
    progress: bool = False,
) -> AttentionGraphs:
    """Run ``text`` through ``model`` once and collect every requested layer's per-head adjacency.

    ``model``: a GinformerForCausalLM, a SparseGINModel or any transformers decoder whose layers sit at
    ``get_decoder().layers`` with a ``self_attn``. ``layers``: layer indices (negative counts from the end),
    default all. ``window``: (start, stop) token positions to keep, stop exclusive, either may be negative and
    stop may be None; the model still reads the whole text, so the window's rows see their full context.
    A text longer than the model's context is refused.

    ``overview``: also keep the whole text's matrices, pooled to at most this many cells a side (`Overview`).
    ``rollout``: also compute the attention rollout at each requested layer, for the window and, for a text of at
    most ROLLOUT_LIMIT tokens with an overview, for the whole text; it reads every layer up to the last requested.
    ``with_adapter=False`` reads a SparseGINModel's base alone, its adapters switched off. ``progress`` shows a bar.

    Memory beyond the model's own forward: the kept matrices (layers × H × (W² + R²) floats), one block of a
    layer's scores (≈ T² floats), and for the whole text's rollout two (T, T) matrices.
    """
    adapted = model if isinstance(model, SparseGINModel) else None
    base = adapted.get_base_model() if adapted is not None else model
    decoder = decoder_layers(base)
    selected = select_layers(layers, len(decoder))
    if not text:
        raise DataError("text is empty: give at least one token's worth of text")
    token_ids = tokenizer(text, return_tensors="pt")["input_ids"]  # (1, T)
    length = token_ids.shape[1]
    if length == 0:
        raise DataError(f"text {text[:40]!r} tokenizes to no tokens")
    context = getattr(base.config.get_text_config(), "max_position_embeddings", None)
    if context is not None and length > context:
        raise DataError(
            f"text is {length} tokens, longer than the model's context of {context} tokens "
            "(max_position_embeddings): shorten it; --window selects what to show, not what the model reads"
        )
    if overview is not None and overview < 1:
        raise ConfigError(f"overview must be at least 1 cell a side, got {overview}")
    start, stop = resolve_window(window, length)
    block = None if overview is None else -(-length // overview)
    read = list(range(selected[-1] + 1)) if rollout else selected
    bar = tqdm(total=len(read), desc="reading attention", unit="layer", disable=not progress)
    reader = _LayerReader(
        length, (start, stop), set(selected), block, rollout, rollout and block is not None and length <= ROLLOUT_LIMIT,
        bar,
    )
    attentions = {k: decoder[k].self_attn for k in read}
    # Query rows per block: ≈ T / H, so a block's scores for all heads are ≈ T² floats, in whole overview cells.
    heads = base.config.get_text_config().num_attention_heads
    cell = block or 1
    rows = cell * max(1, -(-length // (heads * cell)))
    handles, probed = [], []
    for k, attn in attentions.items():
        if isinstance(attn, GraphAttention):
            handles.append(attn.register_forward_pre_hook(partial(_graph_layer_hook, reader, k), with_kwargs=True))
        else:
            setattr(attn, _PROBE, _Probe(k, reader, rows))
            probed.append(attn)
    use_adapter = adapted is not None and with_adapter
    if use_adapter:
        capture = adapted.capture_adjacency(record=reader.sparse)
    elif adapted is not None:
        capture = adapted.disable_adapter()
    else:
        capture = contextlib.nullcontext()
    # The logits are not needed: past the last hidden state only one position's (saves a T × vocabulary matrix).
    skip_logits = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
    try:
        with _eval_mode(model), _probing(base, bool(probed)), torch.no_grad(), capture, bar:
            device = next(base.parameters()).device
            model(input_ids=token_ids.to(device), use_cache=False, **skip_logits)
    finally:
        for handle in handles:
            handle.remove()
        for attn in probed:
            delattr(attn, _PROBE)

    ids = token_ids[0, start:stop].tolist()
    result = AttentionGraphs(
        text=text,
        tokens=token_labels(tokenizer, ids),
        token_ids=ids,
        offset=start,
        heads={k: reader.heads[k] for k in selected},
        kinds={k: describe(attentions[k]) for k in selected},
        aggregated=reader.aggregated,
        length=length,
        rollout=reader.rollout,
    )
    if block is not None:
        result.overview = Overview(
            block, token_labels(tokenizer, token_ids[0].tolist()), reader.overview_heads, reader.overview_aggregated,
            reader.overview_adjacency, reader.overview_rollout,
        )
    for k in selected:
        if use_adapter:
            adapter = adapted.adapters[k]
            result.sparse_settings[k] = SparseSettings.from_adapter(adapter)
            result.scalars[k] = {"λ": adapter.scale.item(), **result.sparse_settings[k].symbols()}
        elif isinstance(attentions[k], GraphAttention):
            result.scalars[k] = {"α": attentions[k].sharpening.item()}
    return result


def select_layers(layers: Sequence[int] | None, count: int) -> list[int]:
    """Layer indices in [0, count), negatives counted from the end, sorted without repeats; None means all."""
    if layers is None:
        return list(range(count))
    resolved = set()
    for layer in layers:
        if not -count <= layer < count:
            raise ConfigError(
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
        raise ConfigError(
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


class _LayerReader:
    """What the capture keeps of each layer it reads, given that layer's per-head adjacency a block of query rows at
    a time (`rows`, then `layer_done`): the window's crop, the overview's block maxima and the rollout's running
    product; and, of an adapted model, each adapter's A_agg and A' (`sparse`)."""

    def __init__(
        self, length: int, window: tuple[int, int], keep: set[int], block: int | None, rollout: bool,
        whole_rollout: bool, bar: tqdm,
    ) -> None:
        self.length, (self.start, self.stop), self.keep, self.block, self.bar = length, window, keep, block, bar
        self.heads: dict[int, Tensor] = {}
        self.aggregated: dict[int, Tensor] = {}
        self.rollout: dict[int, Tensor] = {}
        self.overview_heads: dict[int, Tensor] = {}
        self.overview_aggregated: dict[int, Tensor] = {}
        self.overview_adjacency: dict[int, Tensor] = {}
        self.overview_rollout: dict[int, Tensor] = {}
        self.rolls, self.rolls_whole = rollout, whole_rollout
        self.window_rollout: Tensor | None = None  # R_k for the window's tokens (W, W)
        self.whole_rollout: Tensor | None = None  # R_k for the whole text (T, T)
        self._reset_means()

    def _reset_means(self) -> None:
        """The layer being read's head-averaged adjacency: the window's crop with its whole rows' sums, and the
        whole matrix when the whole text's rollout is computed."""
        size = self.stop - self.start
        self.window_mean = torch.zeros(size, size) if self.rolls else None
        self.window_row_sums = torch.zeros(size) if self.rolls else None
        self.whole_mean = torch.zeros(self.length, self.length) if self.rolls_whole else None

    def _window_rows(self, first: int, count: int) -> tuple[int, int]:
        """The window's rows among query rows first..first+count-1, as (top, bottom) positions in the text."""
        return max(first, self.start), min(first + count, self.stop)

    def _into_window(self, target: Tensor, rows: Tensor, first: int) -> None:
        """Copy the window's part of ``rows`` (..., c, visible), query rows first.., into ``target`` (..., W, W)."""
        top, bottom = self._window_rows(first, rows.shape[-2])
        right = min(rows.shape[-1], self.stop)
        if top < bottom:
            target[..., top - self.start : bottom - self.start, : right - self.start] = (
                rows[..., top - first : bottom - first, self.start : right].cpu()
            )

    def rows(self, layer: int, first: int, probs: Tensor) -> None:
        """probs: (H, c, visible) adjacency of query rows first..first+c-1 for keys 0..visible-1 (later keys: 0)."""
        probs = probs.float()
        heads, count = probs.shape[:2]
        if layer in self.keep:
            if layer not in self.heads:
                size = self.stop - self.start
                self.heads[layer] = torch.zeros(heads, size, size)
            self._into_window(self.heads[layer], probs, first)
            if self.block is not None:
                if layer not in self.overview_heads:
                    cells = -(-self.length // self.block)
                    self.overview_heads[layer] = torch.zeros(heads, cells, cells)
                pooled = block_max(probs, self.block).cpu()
                top = first // self.block  # a block of rows starts on a cell's first row
                self.overview_heads[layer][:, top : top + pooled.shape[1], : pooled.shape[2]] = pooled
        if self.rolls:
            top, bottom = self._window_rows(first, count)
            if top < bottom:  # the head mean of the window's rows only: the rest of a long text is not needed
                rows = probs[:, top - first : bottom - first]  # (H, w, visible)
                self._into_window(self.window_mean, rows.mean(dim=0), top)
                row_sums = rows.sum(dim=-1).mean(dim=0)  # of whole rows, not of the window's part
                self.window_row_sums[top - self.start : bottom - self.start] = row_sums.cpu()
            if self.whole_mean is not None:
                self.whole_mean[first : first + count, : probs.shape[2]] = probs.mean(dim=0).cpu()

    def layer_done(self, layer: int) -> None:
        if self.rolls:
            self.window_rollout = rollout_step(self.window_rollout, self.window_mean, self.window_row_sums)
            if self.whole_mean is not None:
                self.whole_rollout = rollout_step(self.whole_rollout, self.whole_mean)
            if layer in self.keep:
                self.rollout[layer] = self.window_rollout.clone()
                if self.whole_rollout is not None:
                    self.overview_rollout[layer] = block_max(self.whole_rollout, self.block)
            self._reset_means()
        self.bar.update()

    def sparse(self, graph: LayerGraph) -> None:
        if graph.layer not in self.keep:
            return
        aggregated, adjacency = graph.aggregated[0].float(), graph.adjacency[0].float()
        self.aggregated[graph.layer] = _crop(aggregated, self.start, self.stop)
        if self.block is not None:
            self.overview_aggregated[graph.layer] = block_max(aggregated, self.block).cpu()
            self.overview_adjacency[graph.layer] = block_max(adjacency, self.block).cpu()


@dataclass
class _Probe:
    """Hung on a standard attention module while its layer is read (attribute _PROBE)."""

    layer: int
    reader: _LayerReader
    rows: int

    def read(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scaling, output: Tensor) -> None:
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        for first, probs in attention_probabilities(query, key, mask, scale, self.rows):
            self.reader.rows(self.layer, first, probs[0])
        _check_reproduces(self.layer, probs, first, value, output)
        self.reader.layer_done(self.layer)


def _check_reproduces(layer: int, probs: Tensor, first: int, value: Tensor, output: Tensor) -> None:
    """Ask the host: the recomputed probabilities of the last block, times the values, must give the output its
    own kernel computed (B, T, H, D); a kernel that changes the scores (soft-capping, sinks, ...) fails here."""
    groups = probs.shape[1] // value.shape[1]
    values = value.float().repeat_interleave(groups, dim=1)[:, :, : probs.shape[-1]]  # (B, H, visible, D)
    ours = probs @ values  # (B, H, c, D)
    theirs = output[:, first : first + probs.shape[2]].transpose(1, 2).float()
    difference = float((ours - theirs).abs().max())
    tolerance = max(1e-4, 8 * torch.finfo(value.dtype).eps) * float(values.abs().max())
    if difference > tolerance:
        raise ModelRefused(
            f"layer {layer}: the attention probabilities recomputed from its queries and keys do not reproduce its "
            f"attention output (largest difference {difference:.3g}, tolerance {tolerance:.3g}): its attention "
            "changes the scores in a way this capture does not rebuild (soft-capping, attention sinks, ...)"
        )


def _graph_layer_hook(reader: _LayerReader, layer: int, module: GraphAttention, args: tuple, kwargs: dict) -> None:
    bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
    adjacency = module.adjacency(bound["hidden_states"], bound["position_embeddings"], bound.get("attention_mask"))
    reader.rows(layer, 0, adjacency[0])  # (H, T, T)
    reader.layer_done(layer)


_PROBE = "_ginformer_probe"
_PROBING = "ginformer_probe_"  # + the attention implementation it wraps


def _probing_attention(inner: str):
    """An attention function that runs the ``inner`` implementation unchanged and, on a module carrying a probe,
    hands the probe the queries, keys, values, mask and scaling it was called with, and its output."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        run = eager_attention_of(module) if inner == "eager" else ALL_ATTENTION_FUNCTIONS[inner]
        output, weights = run(module, query, key, value, attention_mask, **kwargs)
        probe = getattr(module, _PROBE, None)
        if probe is not None:
            probe.read(query, key, value, attention_mask, kwargs.get("scaling"), output)
        return output, weights

    return attention


@contextlib.contextmanager
def _probing(base: nn.Module, needed: bool) -> Iterator[None]:
    """Switch ``base`` to the probing wrapper of its own attention implementation, and back."""
    original = base.config._attn_implementation
    if not needed:
        yield
        return
    wrapped = _PROBING + original
    if wrapped not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        AttentionInterface.register(wrapped, _probing_attention(original))
        mask = ALL_MASK_ATTENTION_FUNCTIONS.get(original)
        if mask is not None:  # transformers builds no mask for an implementation without one: neither does the wrapper
            AttentionMaskInterface.register(wrapped, mask)
    base.set_attn_implementation(wrapped)
    try:
        yield
    finally:
        base.set_attn_implementation(original)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)
