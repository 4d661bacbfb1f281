"""The attention explorer: one self-contained HTML page (no server, no network) to flip through the layers and heads
of one or two captured models, move a threshold and a top-k, hover a token to see what it reads from and what
reads it, and see Sparse-GIN's stages and the attention rollout.

    page = explorer_page([Capture("smollm2", graphs)])       # graphs: AttentionGraphs, see attention_graphs
    page.save("attention.html"); page.size                    # bytes of the file
    page                                                      # in a notebook: shown inline
    explore(model, tokenizer, text)                           # capture and page in one call (an adapted model: its
                                                              # base beside it)

The page is explorer.html with explorer.css and explorer.js inlined (package data beside this file). Its data
sit in the page as one JSON description plus one base64 blob per layer and kind of matrix, each zlib-compressed
and decoded by the browser only when that layer is shown (DecompressionStream, in every browser since 2023).
Matrices are stored per capture and layer as

    heads     the window's (H, W, W) adjacency per head, and the overview's (H, R, R) block maxima of the whole text
    stages    an adapted model's Sparse-GIN stages (4, W, W) and (4, R, R)
    rollout   the attention rollout (1, W, W), and (1, R, R) when it was computed for the whole text

at 8 bits on a square-root scale (``uint8``: a weight w of a matrix whose largest is m is stored as
round(255·√(w/m)), off by at most m/255 at the top and far less for the weak edges) or as ``float16``. So the
data take at most captures × layers × (heads + 5) × (W² + R²) bytes (twice that in float16) before compression, and
the options that bound them are the layers and heads captured, the precision, the window W and the overview R.
"""

from __future__ import annotations

import base64
import html
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ginformer.adapter import SparseGINModel
from ginformer.errors import ConfigError
from ginformer.viz.attention_graphs import ROLLOUT_LIMIT, STAGES, AttentionGraphs, attention_graphs

PRECISIONS = {"uint8": 1, "float16": 2}  # precision -> bytes per stored weight
DEFAULT_WINDOW = 256  # tokens kept at full resolution when no window is given
DEFAULT_OVERVIEW = 256  # cells a side of the whole text's heatmaps


@dataclass(frozen=True)
class Capture:
    """One model's captured graphs and the name the page gives them."""

    name: str
    graphs: AttentionGraphs


@dataclass
class Page:
    """An explorer page: its HTML, what it shows and what its data take."""

    html: str
    captures: list[str]
    """The names of the captures, side by side."""
    layers: list[int]
    """Every layer some capture keeps."""
    heads: int
    """Heads kept per layer (the most of any capture)."""
    length: int
    """Tokens in the text."""
    window: tuple[int, int]
    """The tokens kept at full resolution, stop exclusive."""
    block: int | None
    """Tokens per cell of the whole-text heatmaps (None: no overview)."""
    stored: int
    """Bytes of the matrices before compression (the bound the options set)."""
    embedded: int
    """Bytes of the matrices in the page: compressed, then base64."""

    @property
    def size(self) -> int:
        """Bytes of the HTML file."""
        return len(self.html.encode())

    @property
    def summary(self) -> str:
        """What the page holds, in a line."""
        start, stop = self.window
        pooled = self.block is not None and self.block > 1
        overview = f", the whole text in cells of {self.block}×{self.block} tokens" if pooled else ""
        return (
            f"{len(self.captures)} capture{'s' if len(self.captures) > 1 else ''} ({', '.join(self.captures)}) × "
            f"{len(self.layers)} layers × {self.heads} heads, {self.length} tokens, tokens {start}–{stop - 1} at full "
            f"resolution{overview}"
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html, encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        """Jupyter shows the page in a frame of its own, so its script and style stay apart from the notebook's."""
        return f'<iframe srcdoc="{html.escape(self.html)}" style="width: 100%; height: 1000px; border: 0"></iframe>'


def default_window(length: int) -> tuple[int, int]:
    """The tokens kept at full resolution when none are asked for: the first DEFAULT_WINDOW."""
    return 0, min(length, DEFAULT_WINDOW)


def explore(
    model,
    tokenizer,
    text: str,
    *,
    compare: tuple[str, object, object] | None = None,
    name: str = "model",
    base_name: str | None = None,
    layers: Sequence[int] | None = None,
    window: tuple[int, int | None] | None = None,
    overview: int = DEFAULT_OVERVIEW,
    heads: Sequence[int] | None = None,
    precision: str = "uint8",
    gamma: float = 0.5,
    top_k: int = 3,
    progress: bool = True,
) -> Page:
    """Capture ``text`` in ``model`` and make its explorer page, from Python or a notebook.

    A SparseGINModel is shown beside its base (the same model with its adapters switched off, named ``base_name``,
    default "<name> (base)"); ``compare`` = (name, model, tokenizer) adds another model beside it instead.
    ``window`` defaults to the first DEFAULT_WINDOW tokens; the other options are those of `attention_graphs` and
    `explorer_page`.
    """
    if window is None:
        window = default_window(len(tokenizer(text)["input_ids"]))
    capture = dict(layers=layers, window=window, overview=overview, rollout=True, progress=progress)
    captures = []
    if compare is None and isinstance(model, SparseGINModel):
        base = attention_graphs(model, tokenizer, text, with_adapter=False, **capture)
        captures.append(Capture(base_name or f"{name} (base)", base))
    captures.append(Capture(name, attention_graphs(model, tokenizer, text, **capture)))
    if compare is not None:
        other_name, other_model, other_tokenizer = compare
        captures.append(Capture(other_name, attention_graphs(other_model, other_tokenizer, text, **capture)))
    return explorer_page(captures, heads=heads, precision=precision, gamma=gamma, top_k=top_k)


def explorer_page(
    captures: Sequence[Capture],
    *,
    heads: Sequence[int] | None = None,
    precision: str = "uint8",
    gamma: float = 0.5,
    top_k: int = 3,
    title: str | None = None,
) -> Page:
    """The explorer page of one or more captures of the same text, shown side by side.

    ``heads``: the head indices to store (default all); ``precision``: one of PRECISIONS; ``gamma`` and ``top_k``:
    where the page's colour exponent and top-k slider start.
    """
    if not captures:
        raise ValueError("no capture to show: give at least one")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if gamma <= 0:
        raise ConfigError(f"gamma must be > 0, got {gamma}")
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    first = captures[0].graphs
    for capture in captures[1:]:
        _check_same_text(first, captures[0].name, capture.graphs, capture.name)
    store = _BlobStore(precision)
    described = [_describe(capture, heads, store) for capture in captures]
    overview = first.overview
    data = {
        "title": title or " | ".join(capture.name for capture in captures),
        "length": first.length,
        "offset": first.offset,
        "tokens": first.tokens,
        "overview": None if overview is None else {"block": overview.block, "tokens": overview.tokens},
        "precision": precision,
        "gamma": gamma,
        "top_k": top_k,
        "stages": list(STAGES),
        "rollout_limit": ROLLOUT_LIMIT,
        "captures": described,
        "blobs": store.descriptions,
        "stored": store.stored,
    }
    page = _template("explorer.html")
    replacements = {
        "{{title}}": html.escape(data["title"]),
        "/*{{style}}*/": _template("explorer.css"),
        "/*{{script}}*/": _template("explorer.js"),
        "{{data}}": _script_json(data),
        "{{blobs}}": "\n".join(
            f'<script type="application/octet-stream" id="blob-{index}">{payload}</script>'
            for index, payload in enumerate(store.payloads)
        ),
    }
    for marker, text in replacements.items():
        page = page.replace(marker, text)
    return Page(
        html=page,
        captures=[capture.name for capture in captures],
        layers=sorted({layer for capture in captures for layer in capture.graphs.layers}),
        heads=max(len(entry["heads"]) for entry in described),
        length=first.length,
        window=(first.offset, first.offset + len(first.tokens)),
        block=None if overview is None else overview.block,
        stored=store.stored,
        embedded=sum(len(payload) for payload in store.payloads),
    )


def _template(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _script_json(data: dict) -> str:
    """JSON that can sit inside a <script> element: no "</" to close it early (a token may be "</s>")."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")


def _check_same_text(first: AttentionGraphs, first_name: str, other: AttentionGraphs, other_name: str) -> None:
    """Side by side means token by token: the same tokens, window and overview cells."""
    if first.text != other.text:
        raise ValueError(f"{first_name} and {other_name} were captured on different texts: side by side needs one text")
    if first.offset != other.offset or len(first.tokens) != len(other.tokens):
        raise ValueError(f"{first_name} and {other_name} keep different windows: capture both with the same window")
    if first.token_ids != other.token_ids or first.length != other.length:
        raise ConfigError(
            f"{first_name} and {other_name} tokenize the text differently ({first.length} and {other.length} tokens): "
            "side by side needs the same tokenizer"
        )
    blocks = [None if graphs.overview is None else graphs.overview.block for graphs in (first, other)]
    if blocks[0] != blocks[1]:
        raise ValueError(f"{first_name} and {other_name} have overviews of different resolutions: capture both alike")


def _describe(capture: Capture, heads: Sequence[int] | None, store: _BlobStore) -> dict:
    """A capture as the page reads it: names, kinds, scalars, and blob numbers per layer and kind of matrix."""
    graphs = capture.graphs
    count = graphs.heads[graphs.layers[0]].shape[0]
    chosen = list(range(count)) if heads is None else list(heads)
    for head in chosen:
        if not 0 <= head < count:
            raise ConfigError(f"head {head} out of range: {capture.name} has {count} heads per layer (0–{count - 1})")
    if not chosen:
        raise ValueError("heads is empty: name at least one head, or pass None for all")
    overview = graphs.overview
    # With one token per cell and the window the whole text, the overview is the window: stored once.
    separate = overview is not None and not (overview.block == 1 and len(graphs.tokens) == graphs.length)
    layers = {}
    for layer in graphs.layers:
        entry = {"heads": {"window": store.add(graphs.heads[layer][chosen])}}
        if separate:
            entry["heads"]["overview"] = store.add(overview.heads[layer][chosen])
        if layer in graphs.sparse_settings:
            entry["stages"] = {"window": store.add(torch.stack(list(graphs.stages(layer).values())))}
            if separate:
                pooled = overview.stages(layer, graphs.settings(layer))
                entry["stages"]["overview"] = store.add(torch.stack(list(pooled.values())))
        if layer in graphs.rollout:
            entry["rollout"] = {"window": store.add(graphs.rollout[layer][None])}
            if separate and layer in overview.rollout:
                entry["rollout"]["overview"] = store.add(overview.rollout[layer][None])
        layers[str(layer)] = entry
    return {
        "name": capture.name,
        "layers": graphs.layers,
        "heads": chosen,
        "kinds": {str(layer): kind for layer, kind in graphs.kinds.items()},
        "scalars": {str(layer): values for layer, values in graphs.scalars.items()},
        "settings": {
            str(layer): {"top_k": settings.top_k, "self_loops_only": settings.self_loops_only}
            for layer, settings in graphs.sparse_settings.items()
        },
        "data": layers,
    }


@dataclass
class _BlobStore:
    """The page's matrices, each encoded once: a description for the JSON and a payload for its own element."""

    precision: str
    descriptions: list[dict] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)
    stored: int = 0

    def add(self, matrices: Tensor) -> int:
        """Encode (n, r, r) matrices; returns their blob number."""
        raw, description = encode_matrices(matrices, self.precision)
        self.stored += len(raw)
        self.descriptions.append(description)
        self.payloads.append(base64.b64encode(zlib.compress(raw, 6)).decode("ascii"))
        return len(self.payloads) - 1


def encode_matrices(matrices: Tensor, precision: str) -> tuple[bytes, dict]:
    """(n, r, r) weights -> (raw little-endian bytes, their description for the page). See the module docstring;
    `decode_matrices` is the inverse, as the page's decoder computes it."""
    # numpy, one thread: torch's thread pool makes these small element-wise steps 40x slower on a busy machine
    values = matrices.detach().float().cpu().numpy()
    if values.ndim != 3 or values.shape[1] != values.shape[2]:
        raise ValueError(f"expected (n, r, r) matrices, got shape {tuple(values.shape)}")
    description = {"shape": list(values.shape), "encoding": precision}
    if precision == "float16":
        return values.astype("<f2").tobytes(), description
    if (values < 0).any():
        raise ConfigError("uint8 stores weights ≥ 0 only, and these matrices have negative entries: use float16")
    scales = values.reshape(len(values), -1).max(axis=1)  # (n,) the largest weight of each matrix
    levels = np.sqrt(values / np.maximum(scales, np.finfo(np.float32).tiny)[:, None, None]) * 255
    description["scales"] = scales.tolist()
    return np.rint(levels).astype(np.uint8).tobytes(), description


def decode_matrices(raw: bytes, description: dict) -> Tensor:
    """The weights `encode_matrices` stored: w = m·(q/255)² for uint8, the float16 values otherwise."""
    shape = description["shape"]
    if description["encoding"] == "float16":
        return torch.frombuffer(bytearray(raw), dtype=torch.float16).float().reshape(shape)
    levels = torch.frombuffer(bytearray(raw), dtype=torch.uint8).float().reshape(shape)
    return (levels / 255).square() * torch.tensor(description["scales"])[:, None, None]
