"""Peak memory of a training step against sequence length: the softmax GIN-Attention fast path keeps no T×T.

Rows per length T (batch 1):
    gin layer          one GINAttention layer, fast path (softmax, no refinement)
    gin-sigmoid layer  one GINAttention layer with a sigmoid adjacency: materialises (B, H, T, T), for contrast
    gin model          a whole GinformerForCausalLM with GIN-Attention (embeddings, FFN, LM head included)
    standard model     the same model with transformers' LlamaAttention (sdpa)
Each (row, T) runs in a fresh process and reports the peak bytes held above the step's start (see common.py).
The last column divides by the same row at the shortest length: linear growth gives T / T_min (8× for
4096 / 512), quadratic growth T² / T_min² (64×).

    python bench/memory_vs_length.py                    # T = 512, 1024, 2048, 4096
"""

import argparse

import torch
from common import (
    MIB,
    add_common_args,
    build_model,
    layer_inputs,
    layer_training_step,
    machine,
    measure_isolated,
    model_config,
    peak_memory,
    print_table,
    save_results,
    setup,
    training_step,
)

from ginformer.attention import GINAttention

ROWS = {
    "gin layer": dict(unit="layer", kind="gin"),
    "gin-sigmoid layer": dict(unit="layer", kind="gin", adjacency_activation="sigmoid"),
    "gin model": dict(unit="model", kind="gin"),
    "standard model": dict(unit="model", kind="standard"),
}


def step_memory(
    row: str, length: int, hidden: int, heads: int, layers: int, device: str, dtype: str, threads: int, seed: int
) -> dict:
    """Peak memory of one training step of ``row`` at length T, after a warm-up step; meant for a fresh process."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device, dtype = torch.device(device), getattr(torch, dtype)
    options = dict(ROWS[row])
    unit, kind = options.pop("unit"), options.pop("kind")
    config = model_config(kind, hidden=hidden, heads=heads, layers=layers, **options)
    if unit == "layer":
        layer = GINAttention(config, layer_idx=0).to(device, dtype)
        step = layer_training_step(layer, *layer_inputs(config, 1, length, device, dtype))
    else:
        step = training_step(build_model(config, device, dtype), torch.randint(0, 256, (1, length), device=device))
    step()
    return peak_memory(step, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = add_common_args(parser).parse_args()
    device, _ = setup(args)
    shape = f"batch 1, hidden {args.hidden}, {args.heads} heads, {args.layers} layers"
    print(f"machine: {machine()}; dtype {args.dtype}; {shape}")
    table, results = [], []
    for row in args.rows:
        first = None
        for length in args.lengths:
            memory = measure_isolated(
                step_memory, row=row, length=length, hidden=args.hidden, heads=args.heads, layers=args.layers,
                device=str(device), dtype=args.dtype, threads=torch.get_num_threads(), seed=args.seed,
            )
            first = first or memory["peak_bytes"]
            rss = "n/a" if memory["rss_delta_bytes"] is None else memory["rss_delta_bytes"] / MIB
            growth = memory["peak_bytes"] / first
            table.append([row, length, memory["peak_bytes"] / MIB, rss, memory["peak_bytes"] / length / 1024, growth])
            results.append({"row": row, "length": length, **memory, "growth": growth})
    print_table(
        "peak memory of one training step above its start (batch 1)",
        ["row", "T", "peak MiB", "RSS MiB", "KiB/token", f"× T={args.lengths[0]}"],
        table,
    )
    save_results(args, "memory_vs_length", {"rows": results})


if __name__ == "__main__":
    main()
