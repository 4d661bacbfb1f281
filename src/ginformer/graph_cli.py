"""`ginformer graph`: draw the graphs one text induces in a model's attention and export them for other tools.

    ginformer graph --model smollm2 --text "The cat sat on the mat because it was tired." --layer 15

For each chosen layer L it writes, into --out (default runs/graphs/<model>-<first words>/):
    layerL_heads       every head's adjacency with token labels (paper Fig. 2A)
    layerL_headH       one head's adjacency, when --head is given
    layerL_summed      Σ_h A_h, the head-summed adjacency
    layerL_stages      Sparse-GIN's stages: sum and clamp → sigmoid → ε-threshold → causal mask (paper Fig. 15)
    layerL_graph       the causal graph (paper Fig. 2B, right): the --top-k strongest incoming edges per token
    layerL_graph.graphml/.json    the same graph with every edge, for networkx, Gephi, Cytoscape
    layerL_sparse.graphml/.json   the Sparse-GIN graph A' of the last stage
figures as .png and .svg, plus manifest.json (text, tokens, settings, every file and what it shows).
Files of the same name are overwritten. The CLI module (cli.py) registers `add_arguments` and `run`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from tqdm import tqdm

from ginformer.adapter.config import SparseGINConfig

DEFAULT_ROOT = Path("runs/graphs")
LAYOUTS = ("arc", "spring", "circular")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="smollm2", help="a run directory (its model/ is read), a model directory, a hub id, or "
        "'smollm2' for the bundled SmolLM2-135M-Instruct (default)",
    )
    parser.add_argument("--adapter", type=Path, help="a saved Sparse-GIN adapter directory to attach to --model")
    parser.add_argument("--text", required=True, help="the text whose attention graphs to draw")
    parser.add_argument(
        "--layer", type=int, action="append", dest="layers", metavar="L",
        help="layer to draw (negative counts from the end); repeatable; default: the middle layer",
    )
    parser.add_argument("--head", type=int, metavar="H", help="also draw head H alone, and use it for the graph")
    parser.add_argument(
        "--window", type=parse_window, metavar="START:STOP",
        help="show only tokens START..STOP-1 (either may be empty or negative, as a Python slice); "
        "the model still reads the whole text",
    )
    parser.add_argument("--top-k", type=int, default=3, help="edges drawn per token in the causal graph (default 3)")
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="arc", help="causal graph layout (default arc: reading order)"
    )
    parser.add_argument(
        "--gamma", type=float, default=0.5,
        help="colour-scale exponent of the attention heatmaps: < 1 shows the weak edges next to strong attention sinks "
        "(default 0.5; 1 is linear)",
    )
    defaults = SparseGINConfig()
    for name, meaning, default in (
        ("alpha", "sigmoid slope α", defaults.alpha),
        ("tau", "sigmoid centre τ", defaults.tau),
        ("epsilon", "edge threshold ε", defaults.edge_threshold),
    ):
        parser.add_argument(
            f"--{name}", type=float, help=f"Sparse-GIN {meaning} for the stages (default: the adapter's, else {default:g})"
        )
    parser.add_argument("--out", type=Path, help="output directory (default runs/graphs/<model>-<first words of text>)")


def parse_window(text: str) -> tuple[int, int | None]:
    """"START:STOP" -> (start, stop); an empty START is 0 and an empty STOP the end of the text."""
    match = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"window {text!r} must look like START:STOP, e.g. 0:32, -40: or :64")
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


def run(args: argparse.Namespace) -> None:
    import dataclasses

    from ginformer.viz import plots
    from ginformer.adapter import SparseGINModel
    from ginformer.adapter.model import decoder_layers
    from ginformer.viz.attention_graphs import STAGES, adjacency_graph, attention_graphs, select_layers, write_graph
    from ginformer.pretrained import load_base_model

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    model_path = resolve_model_path(args.model)
    model, tokenizer = load_base_model(model_path, attn_implementation="eager")
    if args.adapter is not None:
        model = SparseGINModel.from_pretrained(model, args.adapter)
    base = model.base_model if isinstance(model, SparseGINModel) else model
    count = len(decoder_layers(base))
    layers = select_layers(args.layers or [count // 2], count)

    graphs = attention_graphs(model, tokenizer, args.text, layers=layers, window=args.window)
    heads = graphs.heads[layers[0]].shape[0]
    if args.head is not None and not 0 <= args.head < heads:
        raise ValueError(f"--head {args.head} out of range: the model has {heads} heads per layer (0–{heads - 1})")
    out = args.out or DEFAULT_ROOT / slug(model_path, args.text, args.adapter)
    overrides = {"alpha": args.alpha, "tau": args.tau, "epsilon": args.epsilon}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    source = "sum over heads" if args.head is None else f"head {args.head}"
    tokens, offset = graphs.tokens, graphs.offset
    files: dict[str, str] = {}

    def note(paths: list[Path], description: str) -> None:
        files.update((path.name, description) for path in paths)

    for layer in tqdm(layers, desc="drawing", unit="layer", disable=len(layers) == 1):
        kind = graphs.kinds[layer] + (" + Sparse-GIN adapter" if args.adapter else "")
        stem = out / f"layer{layer:02d}"
        note(
            plots.plot_head_grid(
                graphs.heads[layer], tokens, f"{stem}_heads", f"layer {layer}: {kind}", offset, args.gamma
            ),
            f"layer {layer}: every head's adjacency (Fig. 2A)",
        )
        if args.head is not None:
            note(
                plots.plot_adjacency(
                    graphs.head(layer, args.head), tokens, f"{stem}_head{args.head}",
                    f"layer {layer}, head {args.head}: {kind}", offset, gamma=args.gamma,
                ),
                f"layer {layer}: head {args.head}'s adjacency",
            )
        note(
            plots.plot_adjacency(
                graphs.summed(layer), tokens, f"{stem}_summed", f"layer {layer}: sum over {heads} heads", offset,
                gamma=args.gamma, colorbar_label="summed edge weight",
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
                graphs.to_networkx(layer, args.head, top_k=args.top_k), f"{stem}_graph",
                f"layer {layer}, {source}: the {args.top_k} strongest incoming edges per token", layout=args.layout,
            ),
            f"layer {layer}: causal graph ({source}), the {args.top_k} strongest edges per token (Fig. 2B)",
        )
        note(graphs.export(f"{stem}_graph", layer, args.head), f"layer {layer}: causal graph ({source}), every edge")
        sparse = adjacency_graph(stages["causal mask"], tokens, offset, token_ids=graphs.token_ids)
        described = {name: value for name, value in dataclasses.asdict(settings).items() if value is not None}
        sparse.graph.update(layer=layer, source="Sparse-GIN A'", **described)  # GraphML has no None
        note(write_graph(sparse, f"{stem}_sparse"), f"layer {layer}: the Sparse-GIN graph A' (the last stage)")

    files["manifest.json"] = "text, tokens, settings and this listing"
    manifest = {
        "model": model_path,
        "adapter": None if args.adapter is None else str(args.adapter),
        "text": args.text,
        "tokens": tokens,
        "token_ids": graphs.token_ids,
        "window": [offset, offset + len(tokens)],
        "layers": {str(layer): graphs.kinds[layer] for layer in layers},
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    shown = "" if args.window is None else f", window {offset}:{offset + len(tokens)}"
    print(f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}, {len(tokens)} tokens{shown} -> {out}/")
    width = max(map(len, files))
    for name, description in files.items():
        print(f"  {name:<{width}}  {description}")
