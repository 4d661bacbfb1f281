"""Figures of training runs and comparisons, in the package's style (viz/style.py):

    plot_curves (paper Fig. 4, 9), plot_bars (Fig. 6, 12), plot_generalisation_gap (Fig. 7),
    plot_metric_vs (Fig. 8), plot_per_layer (Fig. 5, 11B, 12B),
    plot_scalar_heatmap (Fig. 10), plot_scalar_summary (Fig. 11): λ, or any per-layer scalar
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import FixedLocator, FormatStrFormatter, MaxNLocator, NullFormatter

from ginformer.viz.style import PALETTE, Paths, figure, save, styled

LAMBDA_CMAP = "coolwarm"  # warm = large λ, as in the paper's Fig. 10

Point = tuple[float, float]

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
    fig = figure(6.4, 4.0)
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
    fig = figure(6.4, _bar_height(len(names)))
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
    fig = figure(10.0, _bar_height(len(names)))
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
    fig = figure(6.4, 4.0)
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
    fig = figure(6.4, 3.6)
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
    fig = figure(7.0, max(3.0, min(7.0, 1.5 + 0.15 * lam.shape[1])))
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
    fig = figure(10.0, 3.6)
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
