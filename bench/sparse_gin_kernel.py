"""One layer's Sparse-GIN neighbour sum N = A'·Z, forward and backward into Z, per implementation and length.

Variants (SmolLM2-135M's heads: 9 query / 3 key-value heads of 64, d_gnn 155; the paper's α, τ, ε):
    sdpa       the layer's own attention, F.scaled_dot_product_attention forward and backward: the floor
               that the graph's extra T² work is measured against
    dense      the path before the blockwise one: A_agg and A' whole, (B, T, T), saved for backward
    blockwise  kernels/sparse_gin.py's torch path (the CPU default): query blocks, kept edges for backward
    recompute  the same with no edge list, every block recomputed in backward (dense graphs take this path)
    triton     kernels/triton_sparse_gin.py (CUDA with triton only): log-sum-exp, forward and key-block backward
Random q and k give a diffuse attention with few edges; --sharp scales q so that each query attends to a few keys,
as a trained model's heads do, which keeps more edges. Time: all variants round-robin in one process, median of
--repeats after a warm-up. Peak memory: what one call holds above what was held before it (bench/common.py).

    python bench/sparse_gin_kernel.py                          # CPU: T = 1024, 2048, 4096
    python bench/sparse_gin_kernel.py --lengths 1024 4096 16384 --dtype bfloat16   # on a GPU
"""

import argparse
import os

import torch
import torch.nn.functional as F
from common import MIB, add_common_args, machine, peak_memory, print_table, save_results, setup, time_side_by_side

from ginformer.adapter import head_aggregated_attention, sparse_adjacency
from ginformer.kernels import sparse_gin
from ginformer.kernels.sparse_gin import GraphInputs

VARIANTS = ("sdpa", "dense", "blockwise", "recompute", "triton")


def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def dense(graph: GraphInputs, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        aggregated, allowed = head_aggregated_attention(graph.query, graph.key, graph.mask, graph.scaling)
    return sparse_adjacency(aggregated, allowed, graph.alpha, graph.tau, graph.threshold) @ z


def recompute(graph: GraphInputs, z: torch.Tensor) -> torch.Tensor:
    budget, sparse_gin.EDGES_PER_QUERY = sparse_gin.EDGES_PER_QUERY, 0
    try:
        return sparse_gin.torch_neighbours(graph, z)
    finally:
        sparse_gin.EDGES_PER_QUERY = budget


def step(variant: str, graph: GraphInputs, z: torch.Tensor, value: torch.Tensor):
    """A closure running one forward and the backward of sum(output)."""
    if variant == "sdpa":

        def run() -> None:
            out = F.scaled_dot_product_attention(graph.query, graph.key, value, is_causal=True, enable_gqa=True)
            out.sum().backward()

        return run
    if variant == "triton":
        from ginformer.kernels import triton_sparse_gin

        function = triton_sparse_gin.neighbours
    else:
        function = {"dense": dense, "blockwise": sparse_gin.torch_neighbours, "recompute": recompute}[variant]

    def run() -> None:
        function(graph, z).sum().backward()

    return run


def inputs(length: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    query = torch.randn(1, 9, length, 64, device=device, dtype=dtype) * args.sharp
    key = torch.randn(1, 3, length, 64, device=device, dtype=dtype)
    value = torch.randn(1, 3, length, 64, device=device, dtype=dtype)
    for tensor in (query, key, value):
        tensor.requires_grad_()
    alpha, tau = torch.tensor(10.0, device=device), torch.tensor(0.5, device=device)
    graph = GraphInputs(query, key, None, 64**-0.5, alpha, tau, threshold=0.2)
    z = torch.randn(1, length, 155, device=device, requires_grad=True)
    return graph, z, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=None, choices=VARIANTS, help="default: all that can run")
    parser.add_argument("--sharp", type=float, default=4.0, help="query scale: larger, fewer keys per query")
    parser.add_argument("--max-dense-length", type=int, default=4096, help="dense holds (T, T) floats: skip beyond")
    args = add_common_args(parser).parse_args()
    device, dtype = setup(args)
    variants = args.variants or [v for v in VARIANTS if v != "triton" or (device.type == "cuda" and has_triton())]
    print(f"machine: {machine()}; dtype {args.dtype}; 9 query / 3 key-value heads of 64, d_gnn 155; sharp {args.sharp}")
    rows, results = [], []
    for length in args.lengths:
        graph, z, value = inputs(length, args, device, dtype)
        names = [v for v in variants if v != "dense" or length <= args.max_dense_length]
        steps = {name: step(name, graph, z, value) for name in names}
        seconds = time_side_by_side(steps, device, repeats=args.repeats)
        memory = {name: peak_memory(steps[name], device)["peak_bytes"] for name in names}
        with torch.no_grad():
            _, edges = sparse_gin.blockwise_neighbours(graph, z, edge_budget=length * length)
        edges_per_query = len(edges[0]) / length
        for name in names:
            ratio = seconds[name] / seconds["sdpa"] if "sdpa" in seconds else float("nan")
            rows.append([length, name, seconds[name] * 1000, ratio, memory[name] / MIB, edges_per_query])
            results.append(dict(length=length, variant=name, seconds=seconds[name], peak_bytes=memory[name]))
    print_table(
        f"Sparse-GIN neighbour sum, forward + backward, median of {args.repeats} (round-robin); peak MiB above the "
        "call's start",
        ["T", "variant", "ms", "× sdpa", "peak MiB", "edges/query"],
        rows,
    )
    print(f"load average after the run: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    save_results(args, "sparse_gin_kernel", {"rows": results})


if __name__ == "__main__":
    main()
