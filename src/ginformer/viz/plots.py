"""Every figure ginformer draws, in one style. Each function takes plain data (lists, dicts, arrays, a networkx
graph), never a model, and writes ``<path_stem>.png`` and ``<path_stem>.svg``, returning both paths.

    attention graphs   plot_adjacency (Fig. 2A), plot_head_grid, plot_stages (Fig. 15), plot_causal_graph (Fig. 2B)
    training runs      plot_curves (Fig. 4, 9), plot_bars (Fig. 6, 12), plot_generalisation_gap (Fig. 7),
                       plot_metric_vs (Fig. 8), plot_per_layer (Fig. 5, 11B, 12B),
                       plot_scalar_heatmap (Fig. 10), plot_scalar_summary (Fig. 11): λ, or any per-layer scalar

Figures are built on ``matplotlib.figure.Figure`` rather than pyplot, so importing this module changes no global
backend and no figure outlives its function. They are saved without ``bbox_inches="tight"``: a PNG is exactly
``figure inches × DPI`` pixels, and constrained layout keeps labels inside the canvas instead.

Adjacency convention (as in :mod:`ginformer.graph`): ``A[i, j]`` is the weight of the edge from key j to query i,
so rows are the tokens that receive (y axis) and columns the tokens that send (x axis).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import networkx as nx
import numpy as np
from cycler import cycler
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FormatStrFormatter, MaxNLocator, NullFormatter

DPI = 150
# Colour-blind-safe qualitative palette (Okabe & Ito), so variants keep their colours from figure to figure.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
ADJACENCY_CMAP = "viridis"
LAMBDA_CMAP = "coolwarm"  # warm = large λ, as in the paper's Fig. 10
FUTURE_COLOUR = "#e6e6e6"  # cells a causal model cannot fill (j > i), so that they differ from a learned zero
STYLE = {
    "font.family": "DejaVu Sans",  # bundled with matplotlib and covers most scripts tokens come in
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.prop_cycle": cycler(color=PALETTE),
    "lines.linewidth": 1.6,
    "image.interpolation": "nearest",  # one token pair is one crisp cell, never a blur
    "svg.fonttype": "none",  # text stays text in SVG: searchable and small
}
# At most this many token labels on a heatmap axis; longer texts show every k-th token as "position:token".
MAX_TOKEN_LABELS = 48
# A figure never grows beyond this many inches a side, whatever the text length: cells shrink instead.
MAX_INCHES = 11.0
LABEL_CHARS = 12  # longer token labels are cut with "…"

Paths = list[Path]
Point = tuple[float, float]


def styled(function):
    """Run a plotting function under the shared style."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save(fig: Figure, path_stem: str | Path) -> Paths:
    """Write ``path_stem``.png and .svg (creating the folder) and return both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Attention graphs


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
    fig = _figure(side + 1.0, side)
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
    fig = _figure(cols * panel + 0.8, rows * panel + 0.4)
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
    fig = _figure(len(matrices) * panel + 0.8, panel + 1.5)  # below: rotated token labels; above: two-line titles
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
        fig = _figure(width, 0.26 * (width - 1.2) + 1.2)
    else:
        side = min(MAX_INCHES, max(6.0, 0.25 * count))
        fig = _figure(side, side)
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


# ---------------------------------------------------------------------------------------------------------------
# Training runs

Run = Sequence[Point]


def _runs(name: str, value) -> list[list[Point]]:
    """A variant's curve data as a list of runs: one run of (step, value) pairs, or a list of such runs (seeds)."""
    runs = list(value)
    if not runs:
        raise ValueError(f"series[{name!r}] is empty")
    if all(isinstance(p, (tuple, list)) and len(p) == 2 and all(np.isscalar(x) for x in p) for p in runs):
        runs = [runs]
    out = []
    for run in runs:
        points = [tuple(p) for p in run]
        if not points or any(len(p) != 2 for p in points):
            raise ValueError(f"series[{name!r}]: a run must be a non-empty list of (step, value) pairs")
        out.append(sorted((float(s), float(v)) for s, v in points))
    return out


def _mean_curve(runs: list[list[Point]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over runs at the steps every run logged."""
    shared = sorted(set.intersection(*(set(s for s, _ in run) for run in runs)))
    values = [[dict(run)[s] for s in shared] for run in runs]
    return np.asarray(shared), np.asarray(values).mean(axis=0)


@styled
def plot_curves(
    series: Mapping[str, Run | Sequence[Run]],
    ylabel: str,
    path_stem: str | Path,
    title: str | None = None,
    xlabel: str = "step",
    log_y: bool = False,
) -> Paths:
    """Training or validation curves per variant (paper Fig. 4, 9).

    ``series`` maps a variant's name to one run, a list of (step, value) pairs, or to several runs (seeds). Each
    seed is drawn thin; the mean over seeds, at the steps all of them logged, is drawn thick in the same colour.
    """
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    for index, (name, value) in enumerate(series.items()):
        runs = _runs(name, value)
        colour = PALETTE[index % len(PALETTE)]
        if len(runs) == 1:
            steps, values = zip(*runs[0])
            ax.plot(steps, values, color=colour, label=name, marker="o" if len(steps) <= 20 else None, markersize=3)
            continue
        for run in runs:
            steps, values = zip(*run)
            ax.plot(steps, values, color=colour, alpha=0.3, linewidth=0.8)
        steps, mean = _mean_curve(runs)
        ax.plot(steps, mean, color=colour, label=f"{name} (mean of {len(runs)} seeds)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.legend()
    if title:
        ax.set_title(title)
    return save(fig, path_stem)


def _values(name: str, value) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values[{name!r}] must be a number or a non-empty list of numbers (one per seed)")
    return values


def _spread(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def _horizontal_bars(ax, names: list[str], samples: list[np.ndarray], fmt: str) -> None:
    """Mean bars with ± one standard deviation over seeds and each seed as a dot; the first variant on top."""
    rows = np.arange(len(names))[::-1]
    means = [s.mean() for s in samples]
    errors = [_spread(s) for s in samples]
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    ax.barh(rows, means, xerr=errors, color=colours, alpha=0.75, capsize=3, height=0.6)
    for row, sample in zip(rows, samples):
        if sample.size > 1:
            ax.scatter(sample, np.full(sample.size, row), s=8, color="#222222", zorder=3)
    for row, mean, error in zip(rows, means, errors):
        ax.annotate(
            format(mean, fmt), (mean + error, row), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7
        )
    ax.set_yticks(rows, names)
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.15)


def _bar_height(count: int) -> float:
    return max(2.5, 0.9 + 0.35 * count)


@styled
def plot_bars(
    values: Mapping[str, float | Sequence[float]],
    xlabel: str,
    path_stem: str | Path,
    title: str | None = None,
    fmt: str = ".3f",
) -> Paths:
    """One horizontal bar per variant (paper Fig. 6, 12A): a number, or one number per seed, whose mean is the bar
    and whose sample standard deviation is the error bar; each seed is a dot. Values are printed with ``fmt``."""
    if not values:
        raise ValueError("values is empty: nothing to plot")
    names = list(values)
    samples = [_values(name, values[name]) for name in names]
    fig = _figure(6.4, _bar_height(len(names)))
    ax = fig.add_subplot()
    _horizontal_bars(ax, names, samples, fmt)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    return save(fig, path_stem)


@styled
def plot_generalisation_gap(
    train_loss: Mapping[str, float | Sequence[float]],
    val_loss: Mapping[str, float | Sequence[float]],
    path_stem: str | Path,
    title: str | None = None,
) -> Paths:
    """Generalisation per variant (paper Fig. 7): A, the gap val − train; B, the ratio train / val. Both mappings
    name the same variants, each with a number or one number per seed (paired by position)."""
    if set(train_loss) != set(val_loss):
        raise ValueError(
            "train_loss and val_loss must name the same variants; "
            f"only in train_loss: {sorted(set(train_loss) - set(val_loss))}, "
            f"only in val_loss: {sorted(set(val_loss) - set(train_loss))}"
        )
    if not train_loss:
        raise ValueError("train_loss is empty: nothing to plot")
    names = list(train_loss)
    gaps, ratios = [], []
    for name in names:
        train, val = _values(name, train_loss[name]), _values(name, val_loss[name])
        if train.size != val.size:
            raise ValueError(f"variant {name!r}: {train.size} train losses but {val.size} validation losses")
        gaps.append(val - train)
        ratios.append(train / val)
    fig = _figure(10.0, _bar_height(len(names)))
    gap_ax, ratio_ax = fig.subplots(1, 2, sharey=True)
    _horizontal_bars(gap_ax, names, gaps, ".3f")
    gap_ax.set_xlabel("validation − training loss")
    gap_ax.set_title("A  generalisation gap", loc="left")
    _horizontal_bars(ratio_ax, names, ratios, ".3f")
    ratio_ax.set_xlabel("training / validation loss")
    ratio_ax.set_title("B  loss ratio", loc="left")
    if title:
        fig.suptitle(title)
    return save(fig, path_stem)


def power_law_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(a, b) of the least-squares fit y = a·x^b in log-log space; needs two or more distinct positive x and y > 0."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("a power-law fit needs x > 0 and y > 0")
    if np.unique(x).size < 2:
        raise ValueError("a power-law fit needs at least two distinct x values")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(np.exp(intercept)), float(slope)


@styled
def plot_metric_vs(
    points: Mapping[str, Sequence[Point]],
    xlabel: str,
    ylabel: str,
    path_stem: str | Path,
    title: str | None = None,
    power_fit: bool = True,
    log_x: bool = True,
) -> Paths:
    """A metric against a hyperparameter (paper Fig. 8: min. validation perplexity vs the MLP multiplier γ).

    ``points`` maps a configuration's name to its (x, y) points. ``power_fit`` adds one dashed trend line
    y = a·x^b fitted to all points together.
    """
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    every = []
    for index, (name, pairs) in enumerate(points.items()):
        pairs = [tuple(map(float, p)) for p in pairs]
        if not pairs:
            raise ValueError(f"points[{name!r}] is empty")
        xs, ys = zip(*pairs)
        ax.scatter(xs, ys, label=name, color=PALETTE[index % len(PALETTE)], s=25, zorder=3)
        every += pairs
    if not every:
        raise ValueError("points is empty: nothing to plot")
    if power_fit:
        xs, ys = zip(*every)
        a, b = power_law_fit(xs, ys)
        grid = np.geomspace(min(xs), max(xs), 100) if log_x else np.linspace(min(xs), max(xs), 100)
        ax.plot(grid, a * grid**b, linestyle="--", color="#555555", linewidth=1.2, label=f"fit: {a:.3g}·x^{b:.3g}")
    if log_x:
        ax.set_xscale("log")
        # label the measured x values themselves (γ = 0.5, 1, 4), not powers of ten
        ax.xaxis.set_major_locator(FixedLocator(sorted({x for x, _ in every})))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    if title:
        ax.set_title(title)
    return save(fig, path_stem)


@styled
def plot_per_layer(
    values: Sequence[float | None] | Mapping[str, Sequence[float | None]],
    ylabel: str,
    path_stem: str | Path,
    title: str | None = None,
    reference: float | None = None,
) -> Paths:
    """One value per layer (paper Fig. 5: the sharpening α; Fig. 11B, 12B: the final λ), one line per variant when
    ``values`` is a mapping. ``None`` marks a layer without the value (a standard-attention layer) and is skipped.
    ``reference`` draws a horizontal line, e.g. 1.0 for α (plain softmax)."""
    series = values if isinstance(values, Mapping) else {"": values}
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    for index, (name, layer_values) in enumerate(series.items()):
        if all(v is None for v in layer_values):
            raise ValueError(f"values{'[' + repr(name) + ']' if name else ''} holds no value for any layer")
        ys = [math.nan if v is None else float(v) for v in layer_values]  # NaN breaks the line at a missing layer
        ax.plot(range(len(ys)), ys, marker="o", markersize=4, color=PALETTE[index % len(PALETTE)], label=name or None)
    if reference is not None:
        ax.axhline(reference, color="#555555", linestyle=":", linewidth=1.0)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(series) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    return save(fig, path_stem)


def _scalar_matrix(history: Sequence[tuple[float, Sequence[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps (S,), values (S, L)) from (step, value per layer) records, sorted by step."""
    if not history:
        raise ValueError("history is empty: need (step, [value per layer]) records")
    records = sorted((float(step), list(map(float, lam))) for step, lam in history)
    widths = {len(lam) for _, lam in records}
    if len(widths) != 1 or 0 in widths:
        raise ValueError(
            f"every history record must list a value for the same, non-zero number of layers; got {sorted(widths)}"
        )
    return np.asarray([s for s, _ in records]), np.asarray([lam for _, lam in records])


@styled
def plot_scalar_heatmap(
    history: Sequence[tuple[float, Sequence[float]]],
    path_stem: str | Path,
    title: str | None = None,
    xlabel: str = "step",
    symbol: str = "λ",
) -> Paths:
    """A learned scalar of every layer k over training (paper Fig. 10: λ_k): ``history`` holds (step, [value per
    layer]) records; ``symbol`` names the scalar on the colour bar."""
    steps, lam = _scalar_matrix(history)
    fig = _figure(7.0, max(3.0, min(7.0, 1.5 + 0.15 * lam.shape[1])))
    ax = fig.add_subplot()
    half = (steps[-1] - steps[0]) / max(1, 2 * (len(steps) - 1)) if len(steps) > 1 else 0.5
    image = ax.imshow(
        lam.T, aspect="auto", origin="lower", cmap=LAMBDA_CMAP, interpolation="nearest",
        extent=(steps[0] - half, steps[-1] + half, -0.5, lam.shape[1] - 0.5),
    )
    ax.grid(False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer k")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(image, ax=ax, label=symbol)
    if title:
        ax.set_title(title)
    return save(fig, path_stem)


@styled
def plot_scalar_summary(
    history: Sequence[tuple[float, Sequence[float]]],
    path_stem: str | Path,
    title: str | None = None,
    xlabel: str = "step",
    symbol: str = "λ",
) -> Paths:
    """A learned per-layer scalar at a glance (paper Fig. 11, for λ): A, its mean over layers at each step; B,
    each layer's value at the last step."""
    steps, lam = _scalar_matrix(history)
    fig = _figure(10.0, 3.6)
    mean_ax, final_ax = fig.subplots(1, 2)
    mean_ax.plot(steps, lam.mean(axis=1), color=PALETTE[0])
    mean_ax.set_xlabel(xlabel)
    mean_ax.set_ylabel(f"mean {symbol} over layers")
    mean_ax.set_title(f"A  mean {symbol}", loc="left")
    final_ax.plot(np.arange(lam.shape[1]), lam[-1], marker="o", markersize=4, color=PALETTE[1])
    final_ax.set_xlabel("layer k")
    final_ax.set_ylabel(f"{symbol}_k")
    final_ax.set_title(f"B  {symbol} per layer at {xlabel} {steps[-1]:g}", loc="left")
    final_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return save(fig, path_stem)
