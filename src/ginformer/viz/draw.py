"""Draw the graphs one text induces in a model's attention and export them for other tools (`ginformer graph`).

For each chosen layer L, `draw_attention_graphs` writes into its output folder:
    layerL_heads       every head's adjacency with token labels (paper Fig. 2A)
    layerL_headH       one head's adjacency, when a head is given
    layerL_summed      Σ_h A_h, the head-summed adjacency
    layerL_stages      Sparse-GIN's stages: sum and clamp → sigmoid → ε-threshold → causal mask (paper Fig. 15)
    layerL_graph       the causal graph (paper Fig. 2B, right): the top_k strongest incoming edges per token
    layerL_graph.graphml/.json    the same graph with every edge, for networkx, Gephi, Cytoscape
    layerL_sparse.graphml/.json   the Sparse-GIN graph A' of the last stage
figures as .png and .svg, plus manifest.json (text, tokens, settings, every file and what it shows).
Files of the same name are overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ginformer.files import atomic_write_text, check_output_dir

DEFAULT_ROOT = Path("runs/graphs")
LAYOUTS = ("arc", "spring", "circular")


def parse_window(text: str) -> tuple[int, int | None]:
    """"START:STOP" -> (start, stop); an empty START is 0 and an empty STOP the end of the text."""
    match = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", text)
    if not match:
        raise ValueError(f"window {text!r} must look like START:STOP, e.g. 0:32, -40: or :64")
    start, stop = match.groups()
    return int(start or 0), int(stop) if stop else None


def slug(model: str, text: str, adapter: Path | None = None) -> str:
    """A folder name from the model's name and the text's first words, e.g. smollm2-the-cat-sat-on."""
    name = Path(model.rstrip("/")).name or model
    if name == "model":  # a run directory's model/: the run's name says more
        name = Path(model.rstrip("/")).parent.name
    words = re.findall(r"[a-z0-9]+", text.lower())
    parts = [re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")] + (["adapted"] if adapter else []) + words
    result = ""
    for part in parts:
        if len(result) + len(part) + 1 > 48:
            break
        result = f"{result}-{part}" if result else part
    return result or "graph"


def resolve_model_path(model: str) -> str:
    """A run directory holds its final model in model/; anything else is passed on as given."""
    final = Path(model) / "model"
    return str(final) if (final / "config.json").is_file() else model


@dataclass(frozen=True)
class GraphRequest:
    """What to draw; `ginformer graph`'s options, with its defaults."""

    text: str  # the text whose attention graphs to draw
    model: str = "smollm2"  # a run directory (its model/ is read), a model directory, a hub id, or "smollm2"
    adapter: Path | None = None  # a saved Sparse-GIN adapter directory to attach to the model
    layers: list[int] | None = None  # layers to draw (negative counts from the end); None: the middle layer
    head: int | None = None  # also draw this head alone, and use it for the causal graph
    window: tuple[int, int | None] | None = None  # show only tokens start..stop-1; the model reads the whole text
    top_k: int = 3  # edges drawn per token in the causal graph
    layout: str = "arc"  # causal graph layout, one of LAYOUTS ("arc": reading order)
    gamma: float = 0.5  # colour-scale exponent of the heatmaps: < 1 shows weak edges next to attention sinks
    alpha: float | None = None  # Sparse-GIN sigmoid slope α for the stages (None: the adapter's, else the default)
    tau: float | None = None  # Sparse-GIN sigmoid centre τ
    epsilon: float | None = None  # Sparse-GIN edge threshold ε
    out: Path | None = None  # output directory (None: runs/graphs/<model>-<first words of text>)


@dataclass(frozen=True)
class Drawn:
    out: Path
    layers: list[int]
    tokens: int
    window: tuple[int, int] | None
    files: dict[str, str]  # file name -> what it shows


def draw_attention_graphs(request: GraphRequest) -> Drawn:
    """Capture the request's layers for its text and write the figures and graph files (module docstring)."""
    from ginformer.adapter import SparseGINModel
    from ginformer.adapter.model import decoder_layers
    from ginformer.pretrained import load_base_model
    from ginformer.viz import plots
    from ginformer.viz.attention_graphs import STAGES, adjacency_graph, attention_graphs, select_layers, write_graph

    if request.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {request.top_k}")
    if request.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {request.layout!r}")
    model_path = resolve_model_path(request.model)
    out = request.out or DEFAULT_ROOT / slug(model_path, request.text, request.adapter)
    check_output_dir(out, "--out")  # before the model loads, not after the work is done
    model, tokenizer = load_base_model(model_path, attn_implementation="eager")
    if request.adapter is not None:
        model = SparseGINModel.from_pretrained(model, request.adapter)
    base = model.get_base_model() if isinstance(model, SparseGINModel) else model
    count = len(decoder_layers(base))
    layers = select_layers(request.layers or [count // 2], count)

    graphs = attention_graphs(model, tokenizer, request.text, layers=layers, window=request.window)
    heads = graphs.heads[layers[0]].shape[0]
    if request.head is not None and not 0 <= request.head < heads:
        raise ValueError(f"--head {request.head} out of range: the model has {heads} heads per layer (0–{heads - 1})")
    overrides = {"alpha": request.alpha, "tau": request.tau, "epsilon": request.epsilon}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    source = "sum over heads" if request.head is None else f"head {request.head}"
    tokens, offset = graphs.tokens, graphs.offset
    files: dict[str, str] = {}

    def note(paths: list[Path], description: str) -> None:
        files.update((path.name, description) for path in paths)

    for layer in tqdm(layers, desc="drawing", unit="layer", disable=len(layers) == 1):
        kind = graphs.kinds[layer] + (" + Sparse-GIN adapter" if request.adapter else "")
        stem = out / f"layer{layer:02d}"
        note(
            plots.plot_head_grid(
                graphs.heads[layer], tokens, f"{stem}_heads", f"layer {layer}: {kind}", offset, request.gamma
            ),
            f"layer {layer}: every head's adjacency (Fig. 2A)",
        )
        if request.head is not None:
            note(
                plots.plot_adjacency(
                    graphs.head(layer, request.head), tokens, f"{stem}_head{request.head}",
                    f"layer {layer}, head {request.head}: {kind}", offset, gamma=request.gamma,
                ),
                f"layer {layer}: head {request.head}'s adjacency",
            )
        note(
            plots.plot_adjacency(
                graphs.summed(layer), tokens, f"{stem}_summed", f"layer {layer}: sum over {heads} heads", offset,
                gamma=request.gamma, colorbar_label="summed edge weight",
            ),
            f"layer {layer}: head-summed adjacency",
        )
        settings = dataclasses.replace(graphs.settings(layer), **overrides)
        stages = graphs.stages(layer, settings)
        note(
            plots.plot_stages(
                {f"{name}\n{STAGES[name]}": matrix for name, matrix in stages.items()}, tokens, f"{stem}_stages",
                f"layer {layer}: Sparse-GIN stages "
                f"(α={settings.alpha:g}, τ={settings.tau:g}, ε={settings.epsilon:g})",
                offset,
            ),
            f"layer {layer}: Sparse-GIN stages, sum and clamp → sigmoid → ε-threshold → causal mask (Fig. 15)",
        )
        note(
            plots.plot_causal_graph(
                graphs.to_networkx(layer, request.head, top_k=request.top_k), f"{stem}_graph",
                f"layer {layer}, {source}: the {request.top_k} strongest incoming edges per token",
                layout=request.layout,
            ),
            f"layer {layer}: causal graph ({source}), the {request.top_k} strongest edges per token (Fig. 2B)",
        )
        note(graphs.export(f"{stem}_graph", layer, request.head), f"layer {layer}: causal graph ({source}), every edge")
        sparse = adjacency_graph(stages["causal mask"], tokens, offset, token_ids=graphs.token_ids)
        described = {name: value for name, value in dataclasses.asdict(settings).items() if value is not None}
        sparse.graph.update(layer=layer, source="Sparse-GIN A'", **described)  # GraphML has no None
        note(write_graph(sparse, f"{stem}_sparse"), f"layer {layer}: the Sparse-GIN graph A' (the last stage)")

    files["manifest.json"] = "text, tokens, settings and this listing"
    manifest = {
        "model": model_path,
        "adapter": None if request.adapter is None else str(request.adapter),
        "text": request.text,
        "tokens": tokens,
        "token_ids": graphs.token_ids,
        "window": [offset, offset + len(tokens)],
        "layers": {str(layer): graphs.kinds[layer] for layer in layers},
        "files": files,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    window = None if request.window is None else (offset, offset + len(tokens))
    return Drawn(out, layers, len(tokens), window, files)
