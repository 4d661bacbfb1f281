"""Sparse-GIN's neighbour sum N = A'·Z, one block of query rows at a time: no (B, T_q, T_k) adjacency is kept.

The graph, as `ginformer.adapter.adjacency` builds it densely (the reference this path is tested against):

    P_h = softmax(cap(q_h k_g(h)ᵀ · scaling) + mask ‖ sink_h)      per head h; g(h) its key head under GQA
    A   = min(1, Σ_h P_h)  |  mean_h P_h  |  max_h P_h             head aggregation
    R   = A + G                                                    G: an outside graph (none: R = A)
    S   = sigmoid(α (min(1, R) − τ))
    A'  = S where (allowed and S > ε [and j is i's self-loop]), else 0
    N   = A'·Z                                                     Z: (B, T_k, F) node features

A block of `rows` query rows holds (B, H, rows, T_k) scores, so memory is linear in T_k at any length. For
backward, `_BlockwiseNeighbours` keeps one of two things, never A' itself:
- the edges that survive ε, as a list (batch, row, key, S, R). With the paper's α = 10, τ = 0.5, ε = 0.2 an
  entry survives only if A > τ + logit(ε)/α = 0.36, and a row of the head sum holds H in total, so at most
  H / 0.36 = 25 edges per row (9 heads): the list is linear in T and backward is a sparse product, with no
  second pass over the scores;
- past `EDGES_PER_QUERY` edges per query on average (a low ε, a dense outside graph), nothing of A': backward
  recomputes every block from q and k, as flash attention's backward does. A block holds its rows' every
  visible key, so the softmax is recomputed whole; the Triton kernel (kernels/triton_sparse_gin.py), which
  streams key blocks, needs the rows' log-sum-exp instead, and keeps it.
cap(s) = c·tanh(s / c) is the host's logit soft-capping (Gemma 2) where it has one, else s; ‖ sink_h appends a
per-head sink logit (gpt-oss) that takes its share of the softmax and is then dropped, else nothing.
Gradients reach Z, α, τ and G; q and k are treated as constants (`detach_adjacency`).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ginformer.kernels.graph_blocks import GraphInputs

# Past this many kept edges per query on average, backward recomputes blocks instead of keeping the edges
# (an edge costs 32 bytes: three int64 indices and two floats).
EDGES_PER_QUERY = 64

def sharpening_backward(
    grad_adjacency: Tensor, adjacency: Tensor, raw: Tensor, alpha: Tensor, tau: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Through A' = S·[S > ε], S = sigmoid(α (min(1, R) − τ)): dL/dA' -> (dL/dα, dL/dτ, dL/dR), any shape.

    The hard threshold passes no gradient, and A'(1 − A') = S(1 − S) on kept edges, 0 elsewhere.
    """
    grad_logit = grad_adjacency * adjacency * (1 - adjacency)  # dL/d(α (min(1, R) − τ))
    grad_alpha = (grad_logit * (raw.clamp(max=1.0) - tau)).sum().reshape(alpha.shape)  # α, τ may be 0-d or (1,)
    grad_tau = (-alpha * grad_logit.sum()).reshape(tau.shape)
    return grad_alpha, grad_tau, alpha * grad_logit * (raw <= 1.0)


def blockwise_neighbours(
    graph: GraphInputs, z: Tensor, edge_budget: int | None = None, keep_raw: bool = False
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor | None] | None]:
    """N = A'·Z (B, T_q, F) block by block, and A''s kept edges if there are at most `edge_budget` of them:
    (index (n, 3) as batch, row, key; A' (n,); R (n,) if `keep_raw`), else None."""
    out, edges, count = [], [] if edge_budget is not None else None, 0
    for start, stop in graph.blocks():
        raw, adjacency = graph.rows(start, stop)
        out.append(adjacency.to(z.dtype) @ z[:, : raw.shape[-1]])  # (B, c, F)
        if edges is None:
            continue
        index = adjacency.nonzero()  # (n, 3): batch, row within the block, key
        count += len(index)
        if count > edge_budget:
            edges = None
            continue
        picked = tuple(index.unbind(1))
        edges.append((index + index.new_tensor([0, start, 0]), adjacency[picked], raw[picked] if keep_raw else None))
    if edges is not None:
        index, weight, raw = zip(*edges)
        edges = (torch.cat(index), torch.cat(weight), torch.cat(raw) if keep_raw else None)
    return out[0] if len(out) == 1 else torch.cat(out, dim=1), edges


class _BlockwiseNeighbours(torch.autograd.Function):
    """N = A'·Z with gradients for Z, α, τ and G; see the module docstring for what backward keeps."""

    @staticmethod
    def forward(ctx, z, alpha, tau, external, query, key, mask, settings):
        graph = GraphInputs(query, key, mask, alpha=alpha, tau=tau, external=external, **settings)
        budget = EDGES_PER_QUERY * query.shape[0] * graph.q_len
        out, edges = blockwise_neighbours(graph, z, budget, keep_raw=any(ctx.needs_input_grad[1:4]))
        ctx.settings, ctx.recompute = settings, edges is None
        if ctx.recompute:
            ctx.save_for_backward(z, alpha, tau, external, query, key, mask)
        else:
            ctx.save_for_backward(z, alpha, tau, *edges)
            ctx.shape = (query.shape[0], graph.q_len, graph.k_len)
        return out

    @staticmethod
    def backward(ctx, grad):
        need_z, need_alpha, need_tau, need_external = ctx.needs_input_grad[:4]
        if ctx.recompute:
            grads = _recomputed_backward(ctx, grad)
        else:
            grads = _edge_backward(ctx, grad)
        grad_z, grad_alpha, grad_tau, grad_external = grads
        return (
            grad_z if need_z else None,
            grad_alpha if need_alpha else None,
            grad_tau if need_tau else None,
            grad_external if need_external else None,
            *([None] * 4),
        )


def _edge_backward(ctx, grad: Tensor) -> tuple:
    """Gradients from the kept edges alone: every other entry of A' is 0 with a 0 gradient (hard threshold)."""
    z, alpha, tau, index, weight, raw = ctx.saved_tensors
    batch, q_len, k_len = ctx.shape
    batch_index, row, key = index.unbind(1)
    rows, keys = batch_index * q_len + row, batch_index * k_len + key  # flat (B·T_q) and (B·T_k) positions
    grad_flat = grad.reshape(batch * q_len, -1)  # (B·T_q, F)
    adjacency_t = torch.sparse_coo_tensor(
        torch.stack([keys, rows]), weight.to(grad.dtype), (batch * k_len, batch * q_len), check_invariants=False
    )
    grad_z = torch.sparse.mm(adjacency_t, grad_flat).view(batch, k_len, -1)  # A'ᵀ·dN
    if not any(ctx.needs_input_grad[1:4]):
        return grad_z, None, None, None
    z_flat = z.reshape(batch * k_len, -1)
    grad_edges = torch.cat([  # dL/dA'_ij = dN_i · Z_j on each kept edge, 2**16 edges at a time
        (grad_flat[rows[s : s + 2**16]] * z_flat[keys[s : s + 2**16]]).sum(-1) for s in range(0, len(rows), 2**16)
    ] or [grad.new_empty(0)])
    grad_alpha, grad_tau, grad_raw = sharpening_backward(grad_edges.float(), weight, raw, alpha, tau)
    grad_external = None
    if ctx.needs_input_grad[3]:
        grad_external = grad.new_zeros(batch, q_len, k_len)
        grad_external[batch_index, row, key] = grad_raw.to(grad.dtype)
    return grad_z, grad_alpha, grad_tau, grad_external


def _recomputed_backward(ctx, grad: Tensor) -> tuple:
    """Gradients block by block, each block's A' recomputed from q and k."""
    z, alpha, tau, external, query, key, mask = ctx.saved_tensors
    graph = GraphInputs(query, key, mask, alpha=alpha, tau=tau, external=external, **ctx.settings)
    need_params = any(ctx.needs_input_grad[1:4])
    grad_z = torch.zeros_like(z)
    grad_alpha, grad_tau = torch.zeros_like(alpha), torch.zeros_like(tau)
    grad_external = torch.zeros_like(external) if ctx.needs_input_grad[3] else None
    for start, stop in graph.blocks():
        raw, adjacency = graph.rows(start, stop)
        visible = raw.shape[-1]
        rows_grad = grad[:, start:stop]  # (B, c, F)
        grad_z[:, :visible].baddbmm_(adjacency.to(z.dtype).transpose(1, 2), rows_grad)  # += A'ᵀ·dN
        if need_params:
            grad_adjacency = (rows_grad @ z[:, :visible].transpose(1, 2)).float()  # (B, c, visible)
            block_alpha, block_tau, grad_raw = sharpening_backward(grad_adjacency, adjacency, raw, alpha, tau)
            grad_alpha += block_alpha
            grad_tau += block_tau
            if grad_external is not None:
                grad_external[:, start:stop, :visible] = grad_raw
    return grad_z, grad_alpha, grad_tau, grad_external


def torch_neighbours(graph: GraphInputs, z: Tensor) -> Tensor:
    """N = A'·Z by the blockwise torch path: any device, the reference for the Triton kernels."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (z, graph.alpha, graph.tau, graph.external)
    )
    if not needs_grad:  # decoding: no autograd bookkeeping, no edge list
        return blockwise_neighbours(graph, z)[0]
    return graph.apply(_BlockwiseNeighbours, z)


def sparse_gin_neighbours(graph: GraphInputs, z: Tensor) -> Tensor:
    """N = A'·Z (B, T_q, F) for the graph `graph` describes, with Z (B, T_k, F), never holding A' whole.

    Gradients flow to Z, α, τ and the outside graph, not to the query and key (they are read detached).
    On CUDA with Triton installed the kernels of kernels/triton_sparse_gin.py compute it; elsewhere, and for
    shapes those kernels do not take, the blockwise torch path above.
    """
    if graph.query.is_cuda and importlib.util.find_spec("triton") is not None:
        from ginformer.kernels import triton_sparse_gin

        if triton_sparse_gin.supports(graph):
            return triton_sparse_gin.neighbours(graph, z)
    return torch_neighbours(graph, z)
