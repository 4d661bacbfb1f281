"""The family table of docs/finetuning.md: every family of tests/test_adapter_families.py (tiny random configs),
wrapped at each placement; prints one markdown row per family with what the wrap-time probe found or refused.

    .venv/bin/python studies/families/table.py > /tmp/families.md
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_adapter_families import AFTER_MLP_ONLY, FAMILIES, REFUSED, tiny  # noqa: E402  (the matrix the tests run)

from ginformer.adapter import SparseGINConfig, get_sparse_gin_model  # noqa: E402
from ginformer.adapter.host import HostMismatch, decoder_layers  # noqa: E402

PLACEMENTS = ("after_attention", "after_mlp", "parallel")


def outcome(name: str, attn: str, placement: str) -> tuple[str, str]:
    try:
        model = get_sparse_gin_model(tiny(name, attn), SparseGINConfig(placement=placement))
    except HostMismatch as err:
        return "refused", str(err).split(": ", 1)[-1]
    host, layers = model.host_layers[0], model.adapted_layers
    total = len(decoder_layers(model.get_base_model()))
    where = "all layers" if len(layers) == total else f"layers {layers} of {total}"
    return "works", f"{host.residual} residual, written by {type(host.writer).__name__}, c = {host.stream_scale:g}; {where}"


def main() -> None:
    torch.set_num_threads(1)
    print("| family | attention | after_attention | after_mlp | parallel |")
    print("|---|---|---|---|---|")
    refused = {name: ({}, (attn,)) for name, (_, attn, _) in REFUSED.items()}
    for name, (_, attns) in {**FAMILIES, **AFTER_MLP_ONLY, **refused}.items():
        attn = attns[0]
        cells = []
        for placement in PLACEMENTS:
            status, detail = outcome(name, attn, placement)
            first_refusal = status == "refused" and not any(cell.startswith("refused") for cell in cells)
            cells.append(f"{status}: {detail}" if placement == "after_attention" or first_refusal else status)
        print(f"| {name} | {', '.join(attns)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
