"""The one style of every figure ginformer draws, and how a figure is made and saved.

Figures are built on ``matplotlib.figure.Figure`` rather than pyplot, so importing this module changes no global
backend and no figure outlives its function. They are saved without ``bbox_inches="tight"``: a PNG is exactly
``figure inches × DPI`` pixels, and constrained layout keeps labels inside the canvas instead. Every figure
function takes plain data (lists, dicts, arrays, a networkx graph), never a model, and writes
``<path_stem>.png`` and ``<path_stem>.svg``, returning both paths: attention graphs in `graph_figures`, training
runs in `run_figures`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
from cycler import cycler
from matplotlib.figure import Figure

DPI = 150
# Colour-blind-safe qualitative palette (Okabe & Ito), so variants keep their colours from figure to figure.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
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

Paths = list[Path]


def styled(function):
    """Run a plotting function under the shared style."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper


def figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save(fig: Figure, path_stem: str | Path) -> Paths:
    """Write ``path_stem``.png and .svg (creating the folder) and return both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths
