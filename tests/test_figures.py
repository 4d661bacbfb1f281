"""ginformer.viz.graph_figures and run_figures: every figure writes a PNG that decodes at the promised size and an SVG that carries its text;
bad data is refused with the name of what is wrong."""

import math
import xml.etree.ElementTree as ElementTree

import matplotlib.image
import networkx as nx
import numpy as np
import pytest

from ginformer.viz import graph_figures, run_figures, style

TOKENS = ["The", "cat", "sat", "on", "the", "mat", "."]


def causal_softmax(size: int, seed: int = 0) -> np.ndarray:
    scores = np.random.default_rng(seed).normal(size=(size, size))
    scores[np.triu_indices(size, 1)] = -np.inf
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def check_written(paths, title: str | None = None, size: tuple[float, float] | None = None) -> np.ndarray:
    """Both files exist; the PNG decodes (and is ``size`` inches at style.DPI); the SVG parses and shows ``title``."""
    png, svg = paths
    assert png.suffix == ".png" and svg.suffix == ".svg" and png.stem == svg.stem
    image = matplotlib.image.imread(png)  # (rows, cols, RGBA)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.01  # not a blank canvas
    if size is not None:
        width, height = size
        assert image.shape[:2] == (round(height * style.DPI), round(width * style.DPI))
    ElementTree.parse(svg)
    if title is not None:
        assert title in svg.read_text()  # svg.fonttype "none": text stays text
    return image


def test_curves_png_has_the_figure_size_and_seeds_are_accepted(tmp_path):
    single = [(0, 3.0), (10, 2.5), (20, 2.2)]
    seeds = [[(0, 3.1), (10, 2.4), (20, 2.0)], [(0, 2.9), (10, 2.6), (20, 2.1)]]
    paths = run_figures.plot_curves({"reference": single, "GIN": seeds}, "loss", tmp_path / "curves", title="training loss")
    check_written(paths, "training loss", size=(6.4, 4.0))
    assert "GIN (mean of 2 seeds)" in paths[1].read_text()


def test_curves_refuse_malformed_series(tmp_path):
    with pytest.raises(ValueError, match="series\\['GIN'\\] is empty"):
        run_figures.plot_curves({"GIN": []}, "loss", tmp_path / "x")
    with pytest.raises(ValueError, match="series\\['GIN'\\]"):
        run_figures.plot_curves({"GIN": [[(0, 1.0, 2.0)]]}, "loss", tmp_path / "x")


def test_adjacency_heatmap_labels_every_token_of_a_short_text(tmp_path):
    paths = graph_figures.plot_adjacency(causal_softmax(len(TOKENS)), TOKENS, tmp_path / "adjacency", title="layer 3, head 1")
    check_written(paths, "layer 3, head 1")
    svg = paths[1].read_text()
    for token in ("cat", "sat", "mat"):
        assert f">{token}<" in svg


def test_long_texts_get_thinned_labels_and_a_bounded_figure(tmp_path):
    tokens = [f"tok{i}" for i in range(300)]
    ticks, labels = graph_figures.token_ticks(tokens, offset=100)
    assert len(labels) <= graph_figures.MAX_TOKEN_LABELS
    step = ticks[1] - ticks[0]
    assert step == math.ceil(300 / graph_figures.MAX_TOKEN_LABELS)
    assert labels[1] == f"{100 + step}:tok{step}"  # thinned labels say where they are
    assert graph_figures.token_ticks(TOKENS) == (list(range(len(TOKENS))), TOKENS)

    image = check_written(graph_figures.plot_adjacency(causal_softmax(300), tokens, tmp_path / "long"))
    assert max(image.shape[:2]) <= (graph_figures.MAX_INCHES + 1.0) * style.DPI


def test_head_grid_stages_and_graph_are_written(tmp_path):
    heads = np.stack([causal_softmax(len(TOKENS), seed) for seed in range(5)])
    check_written(graph_figures.plot_head_grid(heads, TOKENS, tmp_path / "heads", title="layer 2"), "layer 2")

    stages = {"sum and clamp": heads.sum(0).clip(max=1), "causal mask": np.tril(heads[0])}
    check_written(graph_figures.plot_stages(stages, TOKENS, tmp_path / "stages", title="stages"), "sum and clamp")

    graph = nx.DiGraph()
    for i, token in enumerate(TOKENS):
        graph.add_node(i, label=token, position=i)
        graph.add_edge(0, i, weight=0.5)
    for layout in ("arc", "spring", "circular"):
        check_written(graph_figures.plot_causal_graph(graph, tmp_path / f"graph_{layout}", "edges", layout=layout), "edges")


def test_attention_plots_refuse_mismatched_data(tmp_path):
    with pytest.raises(ValueError, match="tokens has 3 labels for a 7×7 adjacency"):
        graph_figures.plot_adjacency(causal_softmax(7), TOKENS[:3], tmp_path / "x")
    with pytest.raises(ValueError, match="square"):
        graph_figures.plot_adjacency(np.zeros((3, 4)), TOKENS[:3], tmp_path / "x")
    with pytest.raises(ValueError, match="heads must be \\(H, T, T\\)"):
        graph_figures.plot_head_grid(causal_softmax(7), TOKENS, tmp_path / "x")
    with pytest.raises(ValueError, match="layout must be one of"):
        graph_figures.plot_causal_graph(nx.DiGraph([(0, 1)]), tmp_path / "x", layout="radial")


def test_training_summaries_are_written(tmp_path):
    check_written(run_figures.plot_bars({"GIN": [2.85, 2.87, 2.86], "LoRA": 3.1}, "perplexity", tmp_path / "bars"), "LoRA")
    check_written(
        run_figures.plot_generalisation_gap({"reference": 1.0, "GIN": [1.1, 1.2]}, {"reference": 1.6, "GIN": [1.3, 1.35]},
                                      tmp_path / "gap"),
        "generalisation gap",
    )
    check_written(
        run_figures.plot_metric_vs({"sharpening": [(0.5, 3.0), (1, 3.2)], "plain": [(0.5, 3.1), (4, 3.9)]},
                             "γ", "min. validation perplexity", tmp_path / "gamma"),
        "fit:",
    )
    check_written(run_figures.plot_per_layer([1.2, None, 0.8, 1.5], "α", tmp_path / "alpha", reference=1.0), "α")
    history = [(step, [0.01 * step * (k + 1) for k in range(6)]) for step in range(0, 50, 10)]
    check_written(run_figures.plot_scalar_heatmap(history, tmp_path / "lambda"), "λ")
    check_written(run_figures.plot_scalar_summary(history, tmp_path / "lambda_summary"), "mean λ")
    check_written(run_figures.plot_scalar_summary(history, tmp_path / "alpha_summary", symbol="α"), "mean α")


def test_training_summaries_refuse_bad_data(tmp_path):
    with pytest.raises(ValueError, match="only in val_loss: \\['LoRA'\\]"):
        run_figures.plot_generalisation_gap({"GIN": 1.0}, {"GIN": 1.2, "LoRA": 1.5}, tmp_path / "x")
    with pytest.raises(ValueError, match="variant 'GIN': 2 train losses but 1 validation"):
        run_figures.plot_generalisation_gap({"GIN": [1.0, 1.1]}, {"GIN": 1.2}, tmp_path / "x")
    with pytest.raises(ValueError, match="same, non-zero number of layers"):
        run_figures.plot_scalar_heatmap([(0, [0.1, 0.2]), (1, [0.1])], tmp_path / "x")
    with pytest.raises(ValueError, match="values\\['GIN'\\]"):
        run_figures.plot_bars({"GIN": []}, "perplexity", tmp_path / "x")
    with pytest.raises(ValueError, match="holds no value for any layer"):
        run_figures.plot_per_layer([None, None], "α", tmp_path / "x")


def test_power_law_fit_recovers_known_parameters():
    x = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    a, b = run_figures.power_law_fit(x, 3.0 * x**0.25)
    assert (a, b) == pytest.approx((3.0, 0.25))
    with pytest.raises(ValueError, match="x > 0 and y > 0"):
        run_figures.power_law_fit([0.0, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="two distinct x"):
        run_figures.power_law_fit([1.0, 1.0], [1.0, 2.0])
