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
With `html`, it writes instead explorer.html: every chosen layer (default all) of the model, beside its base for an
adapted model or beside a second model (`compare`), in one self-contained page (`ginformer.viz.explorer`).
Files of the same name are overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ginformer.adapter.hub import ADAPTER_TYPE
from ginformer.errors import CheckpointError, ConfigError
from ginformer.files import atomic_write_text, check_output_dir

DEFAULT_ROOT = Path("runs/graphs")
LAYOUTS = ("arc", "spring", "circular")
# Figures and graph files of more tokens take minutes and gigabytes (a 5,000-token layer has 12.5 M edges, each a
# networkx edge and a GraphML element); longer texts go to the explorer page, which pools them for the screen.
MAX_FIGURE_TOKENS = 1024


def parse_window(text: str) -> tuple[int, int | None]:
    """"START:STOP" -> (start, stop); an empty START is 0 and an empty STOP the end of the text."""
    match = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", text)
    if not match:
        raise ConfigError(f"window {text!r} must look like START:STOP, e.g. 0:32, -40: or :64")
    start, stop = match.groups()
    return int(start or 0), int(stop) if stop else None


def slug(model: str, text: str, adapter: Path | None = None) -> str:
    """A folder name from the model's name and the text's first words, e.g. smollm2-the-cat-sat-on."""
    name = _folder_name(model)
    words = re.findall(r"[a-z0-9]+", text.lower())
    parts = [re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")] + (["adapted"] if adapter else []) + words
    result = ""
    for part in parts:
        if len(result) + len(part) + 1 > 48:
            break
        result = f"{result}-{part}" if result else part
    return result or "graph"


def _folder_name(path: str) -> str:
    """The last part of a path, or the run's name for a run directory's model/ or adapter/."""
    parts = Path(path.rstrip("/")).parts or (path,)
    return parts[-2] if parts[-1] in ("model", "adapter") and len(parts) > 1 else parts[-1]


def resolve_model(model: str, adapter: Path | None = None) -> tuple[str, Path | None]:
    """(model to load, Sparse-GIN adapter to attach). A run directory holds its final model in model/, or, fine-tuned,
    its adapter in adapter/ with the base's name in adapter_config.json; anything else is passed on as given."""
    final, adapted = Path(model) / "model", Path(model) / "adapter" / "adapter_config.json"
    if (final / "config.json").is_file():
        return str(final), adapter
    if adapted.is_file():
        if adapter is not None:
            raise ConfigError(f"{model} is a fine-tuned run with its own adapter/: --adapter would attach a second one")
        try:
            payload = json.loads(adapted.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{adapted} is not valid JSON ({err}): the run's adapter is damaged") from None
        base = payload.get("base_model_name_or_path") if isinstance(payload, dict) else None
        if isinstance(payload, dict) and payload.get("adapter_type") != ADAPTER_TYPE:
            raise CheckpointError(f"{adapted.parent} holds a peft adapter, not a Sparse-GIN one: its attention graphs "
                                  f"are its base's (--model {base})")
        if not base:
            raise CheckpointError(f"{adapted} does not name the base model it adapts (base_model_name_or_path)")
        return base, adapted.parent
    return model, adapter


@dataclass(frozen=True)
class GraphRequest:
    """What to draw; `ginformer graph`'s options, with its defaults."""

    text: str  # the text whose attention graphs to draw
    model: str = "smollm2"  # a run directory (its model/, or its base with its Sparse-GIN adapter/), a model directory,
    # a hub id, or "smollm2"
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
    html: bool = False  # write the explorer page (every layer by default) instead of the figures
    compare: str | None = None  # html: a second model (as `model`) shown beside the first, on the same text
    heads: list[int] | None = None  # html: the heads the page keeps (None: all)
    precision: str = "uint8"  # html: how the page stores weights, one of explorer.PRECISIONS
    overview: int = 256  # html: cells a side of the whole-text heatmaps


@dataclass(frozen=True)
class Drawn:
    out: Path
    layers: list[int]
    tokens: int
    window: tuple[int, int] | None
    files: dict[str, str]  # file name -> what it shows


@dataclass(frozen=True)
class Loaded:
    model: object  # the model in eval mode, with its adapter when one is attached
    tokenizer: object
    path: str  # what was loaded, for names: a directory, a hub id or "smollm2"
    adapter: Path | None


def load_model(model: str, adapter: Path | None = None) -> Loaded:
    """A model as `ginformer graph` names it (`GraphRequest.model`), with the Sparse-GIN adapter it names or is
    given."""
    from ginformer.adapter import SparseGINModel
    from ginformer.pretrained import load_base_model

    path, adapter = resolve_model(model, adapter)
    loaded, tokenizer = load_base_model(path)
    if adapter is not None:
        loaded = SparseGINModel.from_pretrained(loaded, adapter)
    return Loaded(loaded, tokenizer, path, adapter)


def draw_attention_graphs(request: GraphRequest) -> Drawn:
    """Capture the request's layers for its text and write the figures and graph files, or with ``html`` the
    explorer page (module docstring)."""
    from ginformer.adapter import SparseGINModel
    from ginformer.adapter.model import decoder_layers
    from ginformer.viz import graph_figures
    from ginformer.viz.attention_graphs import (
        STAGES, adjacency_graph, attention_graphs, resolve_window, select_layers, write_graph,
    )

    if request.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {request.top_k}")
    if request.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {request.layout!r}")
    if request.html:
        return _write_explorer(request)
    for name, value in (("--compare", request.compare), ("--heads", request.heads)):
        if value is not None:
            raise ConfigError(f"{name} is for the explorer page: add --html")
    loaded = load_model(request.model, request.adapter)
    model, tokenizer, model_path = loaded.model, loaded.tokenizer, loaded.path
    out = request.out or DEFAULT_ROOT / slug(model_path, request.text, loaded.adapter)
    check_output_dir(out, "--out")  # before the work, not after it
    base = model.get_base_model() if isinstance(model, SparseGINModel) else model
    count = len(decoder_layers(base))
    layers = select_layers(request.layers or [count // 2], count)
    length = len(tokenizer(request.text)["input_ids"])
    start, stop = resolve_window(request.window, length)
    if stop - start > MAX_FIGURE_TOKENS:
        raise ConfigError(
            f"{stop - start} tokens are too many for figures and for graph files with every edge "
            f"(~{(stop - start) ** 2 // 2:,} edges per layer): choose at most {MAX_FIGURE_TOKENS} with --window "
            "START:STOP, or write the explorer page with --html, which shows the whole text"
        )

    graphs = attention_graphs(model, tokenizer, request.text, layers=layers, window=request.window)
    heads = graphs.heads[layers[0]].shape[0]
    if request.head is not None and not 0 <= request.head < heads:
        raise ConfigError(f"--head {request.head} out of range: the model has {heads} heads per layer (0–{heads - 1})")
    overrides = {"alpha": request.alpha, "tau": request.tau, "epsilon": request.epsilon}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    source = "sum over heads" if request.head is None else f"head {request.head}"
    tokens, offset = graphs.tokens, graphs.offset
    files: dict[str, str] = {}

    def note(paths: list[Path], description: str) -> None:
        files.update((path.name, description) for path in paths)

    for layer in tqdm(layers, desc="drawing", unit="layer", disable=len(layers) == 1):
        kind = graphs.kinds[layer] + (" + Sparse-GIN adapter" if loaded.adapter else "")
        stem = out / f"layer{layer:02d}"
        note(
            graph_figures.plot_head_grid(
                graphs.heads[layer], tokens, f"{stem}_heads", f"layer {layer}: {kind}", offset, request.gamma
            ),
            f"layer {layer}: every head's adjacency (Fig. 2A)",
        )
        if request.head is not None:
            note(
                graph_figures.plot_adjacency(
                    graphs.head(layer, request.head), tokens, f"{stem}_head{request.head}",
                    f"layer {layer}, head {request.head}: {kind}", offset, gamma=request.gamma,
                ),
                f"layer {layer}: head {request.head}'s adjacency",
            )
        note(
            graph_figures.plot_adjacency(
                graphs.summed(layer), tokens, f"{stem}_summed", f"layer {layer}: sum over {heads} heads", offset,
                gamma=request.gamma, colorbar_label="summed edge weight",
            ),
            f"layer {layer}: head-summed adjacency",
        )
        settings = dataclasses.replace(graphs.settings(layer), **overrides)
        stages = graphs.stages(layer, settings)
        note(
            graph_figures.plot_stages(
                {f"{name}\n{STAGES[name]}": matrix for name, matrix in stages.items()}, tokens, f"{stem}_stages",
                f"layer {layer}: Sparse-GIN stages "
                f"(α={settings.alpha:g}, τ={settings.tau:g}, ε={settings.epsilon:g})",
                offset,
            ),
            f"layer {layer}: Sparse-GIN stages, sum and clamp → sigmoid → ε-threshold → causal mask (Fig. 15)",
        )
        note(
            graph_figures.plot_causal_graph(
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
        "adapter": None if loaded.adapter is None else str(loaded.adapter),
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


def _write_explorer(request: GraphRequest) -> Drawn:
    """The explorer page of the request: its model (beside its base when adapted) or its model and `compare`."""
    from ginformer.viz.explorer import explore

    for name, value in (("--head", request.head), ("--alpha", request.alpha), ("--tau", request.tau),
                        ("--epsilon", request.epsilon)):
        if value is not None:
            raise ConfigError(f"{name} sets the figures, not the explorer page, which shows every head and each "
                              "adapter's own α, τ, ε: leave it out with --html (--heads keeps some heads only)")
    loaded = load_model(request.model, request.adapter)
    compare = None
    if request.compare is not None:
        other = load_model(request.compare)
        compare = (_name(other), other.model, other.tokenizer)
    page = explore(
        loaded.model, loaded.tokenizer, request.text, compare=compare, name=_name(loaded),
        base_name=_folder_name(loaded.path), layers=request.layers,
        window=request.window, overview=request.overview, heads=request.heads, precision=request.precision,
        gamma=request.gamma, top_k=request.top_k,
    )
    out = request.out or DEFAULT_ROOT / slug(loaded.path, request.text, loaded.adapter)
    path = page.save(out / "explorer.html")
    description = (
        f"{_size(page.size)}, self-contained: {page.summary}; matrices {_size(page.stored)} before compression, "
        f"{_size(page.embedded)} in the page (bounded by --layer, --heads, --precision, --window, --overview)"
    )
    return Drawn(out, page.layers, page.length, page.window, {path.name: description})


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


def _name(loaded: Loaded) -> str:
    """How the page names a model: its folder or hub name, and its adapter's."""
    name = _folder_name(loaded.path)
    return name if loaded.adapter is None else f"{name} + {_folder_name(str(loaded.adapter))}"
