"""Figures of attention graphs, in the package's style (viz/style.py):

    plot_adjacency (paper Fig. 2A), plot_head_grid, plot_stages (Fig. 15), plot_causal_graph (Fig. 2B)

Adjacency convention (as in :mod:`ginformer.graph`): ``A[i, j]`` is the weight of the edge from key j to query i,
so rows are the tokens that receive (y axis) and columns the tokens that send (x axis).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import networkx as nx
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure

from ginformer.viz.style import PALETTE, Paths, figure, save, styled

ADJACENCY_CMAP = "viridis"
FUTURE_COLOUR = "#e6e6e6"  # cells a causal model cannot fill (j > i), so that they differ from a learned zero
# At most this many token labels on a heatmap axis; longer texts show every k-th token as "position:token".
MAX_TOKEN_LABELS = 48
# A figure never grows beyond this many inches a side, whatever the text length: cells shrink instead.
MAX_INCHES = 11.0
LABEL_CHARS = 12  # longer token labels are cut with "…"


def token_ticks(
    tokens: Sequence[str], offset: int = 0, max_labels: int = MAX_TOKEN_LABELS
) -> tuple[list[int], list[str]]:
    """Tick positions and labels for a token axis: every token when they fit, else every k-th token labelled
    ``position:token`` (position counted from the start of the text, ``offset`` being the first one shown)."""
    step = max(1, math.ceil(len(tokens) / max_labels))
    ticks = list(range(0, len(tokens), step))
    labels = [_short(tokens[i]) if step == 1 else f"{offset + i}:{_short(tokens[i])}" for i in ticks]
    return ticks, labels


def _short(token: str) -> str:
    return token if len(token) <= LABEL_CHARS else token[: LABEL_CHARS - 1] + "…"


def _label_size(count: int) -> float:
    return 8 if count <= 24 else 6.5 if count <= 40 else 5.5


def _matrix(adjacency) -> np.ndarray:
    matrix = np.asarray(adjacency, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"adjacency must be a square (T, T) matrix, got shape {matrix.shape}")
    return matrix


def _check_tokens(tokens: Sequence[str], size: int) -> None:
    if len(tokens) != size:
        raise ValueError(f"tokens has {len(tokens)} labels for a {size}×{size} adjacency")


def _norm(vmax: float, gamma: float) -> Normalize:
    return Normalize(0.0, vmax) if gamma == 1.0 else PowerNorm(gamma, 0.0, vmax)


def _scale_note(label: str, gamma: float) -> str:
    return label if gamma == 1.0 else f"{label} (colour ∝ weight^{gamma:g})"


def _draw_adjacency(
    ax, matrix, tokens, offset, *, norm, mask_future, x_labels=True, y_labels=True, max_labels=MAX_TOKEN_LABELS
):
    """One heatmap: queries (receivers) down, keys (senders) across."""
    shown = np.ma.masked_where(np.triu(np.ones_like(matrix, dtype=bool), 1), matrix) if mask_future else matrix
    cmap = matplotlib.colormaps[ADJACENCY_CMAP].with_extremes(bad=FUTURE_COLOUR)
    image = ax.imshow(shown, cmap=cmap, norm=norm, aspect="equal")
    ax.grid(False)
    ticks, labels = token_ticks(tokens, offset, max_labels)
    size = _label_size(len(ticks))
    ax.set_xticks(ticks, labels if x_labels else [], rotation=90, fontsize=size)
    ax.set_yticks(ticks, labels if y_labels else [], fontsize=size)
    ax.tick_params(length=2, pad=1)
    return image


def _axis_titles(fig: Figure) -> None:
    fig.supxlabel("key j (sends)", fontsize=9)
    fig.supylabel("query i (receives)", fontsize=9)


def _square_inches(count: int, cell: float = 0.22, base: float = 2.5) -> float:
    return min(MAX_INCHES, max(4.0, base + cell * count))


@styled
def plot_adjacency(
    adjacency,
    tokens: Sequence[str],
    path_stem: str | Path,
    title: str | None = None,
    offset: int = 0,
    mask_future: bool = True,
    gamma: float = 1.0,
    vmax: float | None = None,
    colorbar_label: str = "edge weight",
) -> Paths:
    """Heatmap of one (T, T) adjacency with token labels (paper Fig. 2A).

    ``mask_future`` greys the cells above the diagonal (edges a causal model cannot have); ``gamma`` < 1 stretches
    the colour scale's low end, where most attention weights live next to a few strong sinks (the colour bar
    keeps the true values); ``vmax`` defaults to the matrix maximum; ``offset`` is the first token's position.
    """
    matrix = _matrix(adjacency)
    _check_tokens(tokens, len(matrix))
    side = _square_inches(len(tokens))
    fig = figure(side + 1.0, side)
    ax = fig.add_subplot()
    norm = _norm(vmax if vmax is not None else max(float(matrix.max()), 1e-12), gamma)
    image = _draw_adjacency(ax, matrix, tokens, offset, norm=norm, mask_future=mask_future)
    ax.set_xlabel("key j (sends)")
    ax.set_ylabel("query i (receives)")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label=_scale_note(colorbar_label, gamma))
    return save(fig, path_stem)


@styled
def plot_head_grid(
    heads,
    tokens: Sequence[str],
    path_stem: str | Path,
    title: str | None = None,
    offset: int = 0,
    gamma: float = 1.0,
) -> Paths:
    """Every head's (T, T) adjacency of one layer, ``heads`` shaped (H, T, T), on one shared colour scale;
    token labels on the outer panels only."""
    stack = np.asarray(heads, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"heads must be (H, T, T), got shape {stack.shape}")
    count = stack.shape[0]
    _check_tokens(tokens, stack.shape[-1])
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    panel = min(MAX_INCHES / cols, max(2.2, 1.2 + 0.1 * len(tokens)))
    fig = figure(cols * panel + 0.8, rows * panel + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    norm = _norm(max(float(stack.max()), 1e-12), gamma)
    max_labels = max(8, int(panel * 6))
    for index, ax in enumerate(axes.flat):
        if index >= count:
            ax.set_axis_off()
            continue
        row, col = divmod(index, cols)
        last_in_column = index + cols >= count
        image = _draw_adjacency(
            ax, stack[index], tokens, offset, norm=norm, mask_future=True,
            x_labels=last_in_column, y_labels=col == 0, max_labels=max_labels,
        )
        ax.set_title(f"head {index}", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label=_scale_note("edge weight", gamma))
    _axis_titles(fig)
    if title:
        fig.suptitle(title)
    return save(fig, path_stem)


@styled
def plot_stages(
    stages: Mapping[str, object],
    tokens: Sequence[str],
    path_stem: str | Path,
    title: str | None = None,
    offset: int = 0,
    causal: Sequence[bool] | None = None,
) -> Paths:
    """Processing stages side by side on one [0, 1] colour scale (paper Fig. 15): ``stages`` maps each panel's
    title to its (T, T) matrix, in order. ``causal[k]`` greys panel k's future cells; by default only the last
    panel is masked, so the stages before the causal mask show what they put above the diagonal."""
    matrices = [_matrix(m) for m in stages.values()]
    for matrix in matrices:
        _check_tokens(tokens, len(matrix))
    causal = list(causal) if causal is not None else [False] * (len(matrices) - 1) + [True]
    if len(causal) != len(matrices):
        raise ValueError(f"causal has {len(causal)} entries for {len(matrices)} stages")
    panel = min(MAX_INCHES / len(matrices), max(2.6, 1.2 + 0.1 * len(tokens)))
    fig = figure(len(matrices) * panel + 0.8, panel + 1.5)  # below: rotated token labels; above: two-line titles
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    norm = Normalize(0.0, 1.0)
    max_labels = max(8, int(panel * 6))
    for index, (ax, name, matrix) in enumerate(zip(axes, stages, matrices)):
        image = _draw_adjacency(
            ax, matrix, tokens, offset, norm=norm, mask_future=causal[index], y_labels=index == 0, max_labels=max_labels
        )
        ax.set_title(name, fontsize=8.5)
    fig.colorbar(image, ax=axes, shrink=0.8, label="edge weight")
    _axis_titles(fig)
    if title:
        fig.suptitle(title)
    return save(fig, path_stem)


def _layout(graph: nx.DiGraph, layout: str) -> dict:
    if layout == "arc":
        return {node: (float(graph.nodes[node].get("position", node)), 0.0) for node in graph}
    if layout == "spring":
        return nx.spring_layout(graph, weight="weight", seed=0)
    if layout == "circular":
        return nx.circular_layout(sorted(graph, key=lambda n: graph.nodes[n].get("position", n)))
    raise ValueError(f"layout must be one of ['arc', 'spring', 'circular'], got {layout!r}")


@styled
def plot_causal_graph(
    graph: nx.DiGraph,
    path_stem: str | Path,
    title: str | None = None,
    layout: str = "arc",
) -> Paths:
    """Draw a directed token graph (paper Fig. 2B, right): edge j → i with width and opacity ∝ its weight.

    Nodes carry ``label`` (the token) and ``position``; edges carry ``weight``. Self-loops are not drawn as
    edges: a node's shade shows its self-loop weight instead. ``layout``: "arc" puts the tokens on a line in
    reading order, every edge an arc from an earlier to a later token; "spring" and "circular" are networkx's.
    Prune the graph (e.g. ``AttentionGraphs.to_networkx(top_k=...)``) before drawing a long text.
    """
    nodes = sorted(graph, key=lambda n: graph.nodes[n].get("position", n))
    if not nodes:
        raise ValueError("graph has no nodes to draw")
    positions = _layout(graph, layout)
    edges = [(u, v, d.get("weight", 1.0)) for u, v, d in graph.edges(data=True) if u != v]
    self_weight = [graph.edges[n, n].get("weight", 1.0) if graph.has_edge(n, n) else 0.0 for n in nodes]
    heaviest = max([w for *_, w in edges] + self_weight + [1e-12])

    count = len(nodes)
    if layout == "arc":
        # arc3 bends in display space: an edge spanning w inches rises w/4 inches, so the height follows the width
        # (the colour bar takes ~1.2 in of it; labels and title ~1.2 in).
        width = min(MAX_INCHES * 1.4, max(6.0, 0.32 * count))
        fig = figure(width, 0.26 * (width - 1.2) + 1.2)
    else:
        side = min(MAX_INCHES, max(6.0, 0.25 * count))
        fig = figure(side, side)
    ax = fig.add_subplot()
    ax.set_axis_off()
    cmap = matplotlib.colormaps[ADJACENCY_CMAP]
    edge_colour = PALETTE[0]
    for u, v, weight in sorted(edges, key=lambda e: e[2]):  # heavy edges drawn last, on top
        share = weight / heaviest
        rad = -0.5 if layout == "arc" else 0.15  # arc: every edge goes left → right, so all arcs bulge upwards
        nx.draw_networkx_edges(
            graph, positions, edgelist=[(u, v)], ax=ax, width=0.4 + 3.6 * share, alpha=0.2 + 0.8 * share,
            edge_color=edge_colour, arrows=True, arrowstyle="-|>", arrowsize=6 + 6 * share,
            connectionstyle=f"arc3,rad={rad}", node_size=120 if count <= 40 else 40,
        )
    node_size = 120 if count <= 40 else 40
    nx.draw_networkx_nodes(
        graph, positions, nodelist=nodes, ax=ax, node_size=node_size, node_color=self_weight, cmap=cmap,
        vmin=0.0, vmax=heaviest, edgecolors="#333333", linewidths=0.6,
    )
    step = max(1, math.ceil(count / MAX_TOKEN_LABELS))
    labels = {n: _short(str(graph.nodes[n].get("label", n))) for n in nodes[::step]}
    if layout == "arc":
        size = _label_size(len(labels))
        for node, label in labels.items():
            x, y = positions[node]
            ax.annotate(label, (x, y), xytext=(0, -8), textcoords="offset points", rotation=90,
                        ha="center", va="top", fontsize=size, annotation_clip=False)
        span = max(1.0, count - 1)
        ax.set_xlim(-0.02 * span - 0.5, 1.02 * span + 0.5)
        ax.set_ylim(-0.02, 1.0)  # tokens on the bottom edge; arcs rise into the rest
    else:
        nx.draw_networkx_labels(graph, {n: (x, y - 0.06) for n, (x, y) in positions.items() if n in labels},
                                labels=labels, ax=ax, font_size=_label_size(len(labels)), verticalalignment="top")
    mappable = ScalarMappable(norm=Normalize(0.0, heaviest), cmap=cmap)
    fig.colorbar(mappable, ax=ax, shrink=0.5, label="self-loop weight (node shade)")
    if title:
        ax.set_title(title)
    return save(fig, path_stem)
