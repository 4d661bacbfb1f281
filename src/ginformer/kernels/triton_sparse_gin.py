"""Triton kernels for Sparse-GIN's neighbour sum N = A'·Z on CUDA.

The maths, and the torch path these kernels are tested against (on CPU through TRITON_INTERPRET=1), are in
kernels/sparse_gin.py. As in flash attention, nothing of size T_q × T_k is ever written:

    _lse_kernel       grid (query blocks, B·H): each row's log-sum-exp over the keys it sees, streamed over key
                      blocks with a running maximum: the one thing kept from the softmax, (B, H, T_q) floats;
    _forward_kernel   grid (query blocks, B): per key block, every head's P_h = exp(s_h − lse_h), their
                      aggregation, sharpening and threshold into an A' tile, then N += A'·Z_block;
    _backward_kernel  grid (key blocks, B): the same A' tiles recomputed for every query block that sees the
                      keys; dZ_block = Σ A'ᵀ·dN over them, and, when α, τ or G learn, dL/dA' = dN·Z_blockᵀ
                      through the sigmoid: per-program partial sums for α and τ, dG written tile by tile.
q and k are read in their own dtype (bf16/fp16 products are exact in the fp32 accumulator). The precision of every
product follows q's dtype: with an fp32 base, IEEE fp32, not TF32, so that the kernels agree with the torch path to
float32 tolerance; with a bf16/fp16 base, whose attention is already that coarse, the fp32 products A'·Z, A'ᵀ·dN
and dN·Zᵀ run in TF32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ginformer.kernels.graph_blocks import AGGREGATIONS, GraphInputs

BLOCK = 32  # query and key rows per tile: tl.dot needs 16 at least; A'·Z holds BLOCK × next_pow2(F) floats
_FLOOR = tl.constexpr(-1.0e30)  # the score of a forbidden edge: exp(_FLOOR − m) = 0 for any row that sees a key


@triton.jit
def _allowed_and_bias(
    mask_ptr, b, rows, cols, q_len, k_len, mask_floor, stride_mb, stride_mq, stride_mk, MASK_KIND: tl.constexpr
):
    """(allowed, bias) of a tile: in range, causal, and permitted by the mask (0 none, 1 bool, 2 additive)."""
    allowed = (rows[:, None] < q_len) & (cols[None, :] < k_len) & (cols[None, :] <= rows[:, None] + (k_len - q_len))
    bias = tl.zeros(allowed.shape, tl.float32)
    offsets = mask_ptr + b * stride_mb + rows[:, None] * stride_mq + cols[None, :] * stride_mk
    if MASK_KIND == 1:
        allowed = allowed & (tl.load(offsets, mask=allowed, other=0) != 0)
    if MASK_KIND == 2:
        bias = tl.load(offsets, mask=allowed, other=0.0).to(tl.float32)
        allowed = allowed & (bias > mask_floor)
    return allowed, bias


@triton.jit
def _head_scores(q_ptr, k_ptr, b, h, rows, cols, q_len, k_len, scaling, stride_qb, stride_qh, stride_qt,
                 stride_kb, stride_kh, stride_kt, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                 D_PAD: tl.constexpr, PRECISION: tl.constexpr):
    """q_h k_g(h)ᵀ · scaling on a tile.  (BLOCK_M, BLOCK_N)"""
    dims = tl.arange(0, D_PAD)
    q = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qt + dims[None, :],
        mask=(rows[:, None] < q_len) & (dims[None, :] < HEAD_DIM),
        other=0.0,
    )
    k = tl.load(
        k_ptr + b * stride_kb + (h // GROUP) * stride_kh + cols[:, None] * stride_kt + dims[None, :],
        mask=(cols[:, None] < k_len) & (dims[None, :] < HEAD_DIM),
        other=0.0,
    )
    return tl.dot(q, tl.trans(k), input_precision=PRECISION) * scaling


@triton.jit
def _lse_kernel(
    q_ptr, k_ptr, mask_ptr, lse_ptr, q_len, k_len, scaling, mask_floor,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_mb, stride_mq, stride_mk,
    HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    MASK_KIND: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    b, h = tl.program_id(1) // HEADS, tl.program_id(1) % HEADS
    rows = start_m + tl.arange(0, BLOCK_M)
    running_max = tl.full((BLOCK_M,), _FLOOR, tl.float32)
    total = tl.zeros((BLOCK_M,), tl.float32)
    end = tl.minimum(start_m + BLOCK_M + k_len - q_len, k_len)  # later keys lie in every row's future
    for start_n in range(0, end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        allowed, bias = _allowed_and_bias(
            mask_ptr, b, rows, cols, q_len, k_len, mask_floor, stride_mb, stride_mq, stride_mk, MASK_KIND
        )
        scores = _head_scores(q_ptr, k_ptr, b, h, rows, cols, q_len, k_len, scaling, stride_qb, stride_qh,
                              stride_qt, stride_kb, stride_kh, stride_kt, GROUP, HEAD_DIM, D_PAD, PRECISION)
        scores = tl.where(allowed, scores + bias, _FLOOR)
        new_max = tl.maximum(running_max, tl.max(scores, 1))
        total = total * tl.exp(running_max - new_max) + tl.sum(tl.exp(scores - new_max[:, None]), 1)
        running_max = new_max
    tl.store(lse_ptr + (b * HEADS + h) * q_len + rows, running_max + tl.log(total), mask=rows < q_len)


@triton.jit
def _adjacency_tile(
    q_ptr, k_ptr, lse_ptr, mask_ptr, ext_ptr, alpha, tau, b, rows, cols, q_len, k_len, scaling, threshold,
    mask_floor, stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_mb, stride_mq, stride_mk,
    stride_eb, stride_eq, stride_ek,
    HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    MASK_KIND: tl.constexpr, AGGREGATION: tl.constexpr, HAS_EXTERNAL: tl.constexpr,
    SELF_LOOPS_ONLY: tl.constexpr, PRECISION: tl.constexpr,
):
    """(R, A') on a tile, as GraphInputs.rows computes them for whole rows."""
    allowed, bias = _allowed_and_bias(
        mask_ptr, b, rows, cols, q_len, k_len, mask_floor, stride_mb, stride_mq, stride_mk, MASK_KIND
    )
    aggregated = tl.zeros(allowed.shape, tl.float32)
    for h in range(HEADS):
        scores = _head_scores(q_ptr, k_ptr, b, h, rows, cols, q_len, k_len, scaling, stride_qb, stride_qh,
                              stride_qt, stride_kb, stride_kh, stride_kt, GROUP, HEAD_DIM, D_PAD, PRECISION)
        lse = tl.load(lse_ptr + (b * HEADS + h) * q_len + rows, mask=rows < q_len, other=0.0)
        probs = tl.exp(tl.where(allowed, scores + bias - lse[:, None], _FLOOR))  # exactly 0 off the allowed edges
        if AGGREGATION == 2:
            aggregated = tl.maximum(aggregated, probs)
        else:
            aggregated += probs
    if AGGREGATION == 0:
        aggregated = tl.minimum(aggregated, 1.0)
    if AGGREGATION == 1:
        aggregated = aggregated / HEADS
    raw = aggregated
    if HAS_EXTERNAL:
        external = tl.load(
            ext_ptr + b * stride_eb + rows[:, None] * stride_eq + cols[None, :] * stride_ek, mask=allowed, other=0.0
        )
        raw = aggregated + external.to(tl.float32)
    sharpened = tl.sigmoid(alpha * (tl.minimum(raw, 1.0) - tau))
    keep = allowed & (sharpened > threshold)
    if SELF_LOOPS_ONLY:
        keep = keep & (cols[None, :] == rows[:, None] + (k_len - q_len))
    return raw, tl.where(keep, sharpened, 0.0)


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, lse_ptr, mask_ptr, ext_ptr, alpha_ptr, tau_ptr, z_ptr, out_ptr, q_len, k_len, features,
    scaling, threshold, mask_floor, stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_mb, stride_mq, stride_mk, stride_eb, stride_eq, stride_ek, stride_zb, stride_zt, stride_ob, stride_ot,
    HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, F_PAD: tl.constexpr,
    MASK_KIND: tl.constexpr, AGGREGATION: tl.constexpr, HAS_EXTERNAL: tl.constexpr,
    SELF_LOOPS_ONLY: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    b = tl.program_id(1)
    rows = start_m + tl.arange(0, BLOCK_M)
    feats = tl.arange(0, F_PAD)
    alpha, tau = tl.load(alpha_ptr), tl.load(tau_ptr)
    out = tl.zeros((BLOCK_M, F_PAD), tl.float32)
    end = tl.minimum(start_m + BLOCK_M + k_len - q_len, k_len)
    for start_n in range(0, end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        _, adjacency = _adjacency_tile(
            q_ptr, k_ptr, lse_ptr, mask_ptr, ext_ptr, alpha, tau, b, rows, cols, q_len, k_len, scaling, threshold,
            mask_floor, stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_mb, stride_mq,
            stride_mk, stride_eb, stride_eq, stride_ek, HEADS, GROUP, HEAD_DIM, D_PAD, MASK_KIND, AGGREGATION,
            HAS_EXTERNAL, SELF_LOOPS_ONLY, PRECISION,
        )
        z = tl.load(
            z_ptr + b * stride_zb + cols[:, None] * stride_zt + feats[None, :],
            mask=(cols[:, None] < k_len) & (feats[None, :] < features),
            other=0.0,
        )
        out += tl.dot(adjacency, z, input_precision=PRECISION)
    tl.store(
        out_ptr + b * stride_ob + rows[:, None] * stride_ot + feats[None, :],
        out,
        mask=(rows[:, None] < q_len) & (feats[None, :] < features),
    )


@triton.jit
def _backward_kernel(
    q_ptr, k_ptr, lse_ptr, mask_ptr, ext_ptr, alpha_ptr, tau_ptr, z_ptr, grad_ptr, grad_z_ptr, grad_ext_ptr,
    partial_ptr, q_len, k_len, features, scaling, threshold, mask_floor, stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt, stride_mb, stride_mq, stride_mk, stride_eb, stride_eq, stride_ek,
    stride_zb, stride_zt, stride_gb, stride_gt,
    HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, F_PAD: tl.constexpr,
    MASK_KIND: tl.constexpr, AGGREGATION: tl.constexpr, HAS_EXTERNAL: tl.constexpr,
    SELF_LOOPS_ONLY: tl.constexpr, NEED_PARAMS: tl.constexpr, NEED_EXTERNAL: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    b = tl.program_id(1)
    cols = start_n + tl.arange(0, BLOCK_N)
    feats = tl.arange(0, F_PAD)
    alpha, tau = tl.load(alpha_ptr), tl.load(tau_ptr)
    feature_ok = feats[None, :] < features
    z = tl.load(
        z_ptr + b * stride_zb + cols[:, None] * stride_zt + feats[None, :],
        mask=(cols[:, None] < k_len) & feature_ok,
        other=0.0,
    )
    grad_z = tl.zeros((BLOCK_N, F_PAD), tl.float32)
    grad_alpha = 0.0
    grad_logit_sum = 0.0
    first = tl.maximum(start_n - (k_len - q_len), 0) // BLOCK_M * BLOCK_M  # earlier rows cannot see these keys
    for start_m in range(first, q_len, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        raw, adjacency = _adjacency_tile(
            q_ptr, k_ptr, lse_ptr, mask_ptr, ext_ptr, alpha, tau, b, rows, cols, q_len, k_len, scaling, threshold,
            mask_floor, stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_mb, stride_mq,
            stride_mk, stride_eb, stride_eq, stride_ek, HEADS, GROUP, HEAD_DIM, D_PAD, MASK_KIND, AGGREGATION,
            HAS_EXTERNAL, SELF_LOOPS_ONLY, PRECISION,
        )
        grad = tl.load(
            grad_ptr + b * stride_gb + rows[:, None] * stride_gt + feats[None, :],
            mask=(rows[:, None] < q_len) & feature_ok,
            other=0.0,
        )
        grad_z += tl.dot(tl.trans(adjacency), grad, input_precision=PRECISION)  # A'ᵀ·dN
        if NEED_PARAMS:
            grad_adjacency = tl.dot(grad, tl.trans(z), input_precision=PRECISION)  # dN·Zᵀ
            grad_logit = grad_adjacency * adjacency * (1.0 - adjacency)  # 0 off the kept edges
            grad_alpha += tl.sum(grad_logit * (tl.minimum(raw, 1.0) - tau))
            grad_logit_sum += tl.sum(grad_logit)
            if NEED_EXTERNAL:
                tl.store(
                    grad_ext_ptr + b * stride_eb + rows[:, None] * stride_eq + cols[None, :] * stride_ek,
                    alpha * grad_logit * (raw <= 1.0),
                    mask=(rows[:, None] < q_len) & (cols[None, :] < k_len),
                )
    tl.store(
        grad_z_ptr + b * stride_zb + cols[:, None] * stride_zt + feats[None, :],
        grad_z,
        mask=(cols[:, None] < k_len) & feature_ok,
    )
    if NEED_PARAMS:
        program = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        tl.store(partial_ptr + 2 * program, grad_alpha)
        tl.store(partial_ptr + 2 * program + 1, grad_logit_sum)


def supports(graph: GraphInputs) -> bool:
    """The graphs the kernels take (a head of at most 256 dims, no soft-capping, no sinks); anything else runs the
    torch path."""
    return graph.query.shape[-1] <= 256 and graph.softcap is None and graph.sinks is None


def _launch_args(graph: GraphInputs) -> tuple[list, list, list, dict]:
    """Pointers, sizes and strides every kernel shares, and their compile-time constants."""
    query, key, mask, external = (t if t is None or t.stride(-1) == 1 else t.contiguous() for t in
                                  (graph.query, graph.key, graph.mask, graph.external))
    head_dim = query.shape[-1]
    mask_kind = 0 if mask is None else (1 if mask.dtype == torch.bool else 2)
    mask_strides = (0, 0, 0) if mask is None else (mask.stride(0), mask.stride(2), mask.stride(3))
    pointers = [query, key, query if mask is None else mask, query if external is None else external]  # query:
    # a placeholder pointer for an absent mask or outside graph, which the kernels then never read
    sizes = [graph.q_len, graph.k_len, graph.scaling, graph.threshold]
    sizes.append(torch.finfo(mask.dtype).min / 2 if mask_kind == 2 else 0.0)  # below it: a masked edge
    strides = [*query.stride()[:3], *key.stride()[:3], *mask_strides]
    strides += [0, 0, 0] if external is None else list(external.stride())
    constants = dict(
        HEADS=query.shape[1],
        GROUP=query.shape[1] // key.shape[1],
        HEAD_DIM=head_dim,
        D_PAD=max(16, triton.next_power_of_2(head_dim)),
        MASK_KIND=mask_kind,
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
    )
    return pointers, sizes, strides, constants


def _tile_constants(graph: GraphInputs, features: int) -> dict:
    return dict(
        AGGREGATION=AGGREGATIONS.index(graph.aggregation),
        HAS_EXTERNAL=graph.external is not None,
        SELF_LOOPS_ONLY=graph.self_loops_only,
        F_PAD=max(16, triton.next_power_of_2(features)),
        BLOCK_M=BLOCK,
        BLOCK_N=BLOCK,
    )


class _TritonNeighbours(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, alpha, tau, external, query, key, mask, settings):
        graph = GraphInputs(query, key, mask, alpha=alpha, tau=tau, external=external, **settings)
        pointers, sizes, strides, constants = _launch_args(graph)
        (q_len, k_len, scaling, threshold, mask_floor), batch, heads = sizes, query.shape[0], query.shape[1]
        z = z.contiguous()
        lse = torch.empty(batch, heads, q_len, device=z.device, dtype=torch.float32)  # (B, H, T_q)
        _lse_kernel[(triton.cdiv(q_len, BLOCK), batch * heads)](
            *pointers[:3], lse, q_len, k_len, scaling, mask_floor, *strides[:9], BLOCK_M=BLOCK, BLOCK_N=BLOCK,
            **constants,
        )
        out = torch.empty(batch, q_len, z.shape[-1], device=z.device, dtype=z.dtype)  # (B, T_q, F)
        _forward_kernel[(triton.cdiv(q_len, BLOCK), batch)](
            *pointers[:2], lse, *pointers[2:], alpha, tau, z, out, q_len, k_len, z.shape[-1], scaling, threshold,
            mask_floor, *strides, *z.stride()[:2], *out.stride()[:2], **constants,
            **_tile_constants(graph, z.shape[-1]),
        )
        ctx.settings = settings
        ctx.save_for_backward(z, alpha, tau, external, query, key, mask, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        z, alpha, tau, external, query, key, mask, lse = ctx.saved_tensors
        need_z, need_alpha, need_tau, need_external = ctx.needs_input_grad[:4]
        graph = GraphInputs(query, key, mask, alpha=alpha, tau=tau, external=external, **ctx.settings)
        pointers, (q_len, k_len, scaling, threshold, mask_floor), strides, constants = _launch_args(graph)
        grad = grad.contiguous()
        grid = (triton.cdiv(k_len, BLOCK), query.shape[0])
        grad_z = torch.empty_like(z)
        grad_external = torch.zeros_like(external) if need_external else None
        partials = torch.zeros(grid[0] * grid[1], 2, device=z.device, dtype=torch.float32)  # per program: α, Σ
        _backward_kernel[grid](
            *pointers[:2], lse, *pointers[2:], alpha, tau, z, grad, grad_z,
            grad_z if grad_external is None else grad_external, partials, q_len, k_len, z.shape[-1], scaling,
            threshold, mask_floor, *strides, *z.stride()[:2], *grad.stride()[:2],
            NEED_PARAMS=need_alpha or need_tau or need_external, NEED_EXTERNAL=need_external, **constants,
            **_tile_constants(graph, z.shape[-1]),
        )
        grad_alpha = partials[:, 0].sum().to(alpha.dtype).reshape(alpha.shape) if need_alpha else None
        grad_tau = (-alpha * partials[:, 1].sum()).to(tau.dtype).reshape(tau.shape) if need_tau else None
        return grad_z if need_z else None, grad_alpha, grad_tau, grad_external, None, None, None, None


def neighbours(graph: GraphInputs, z: Tensor) -> Tensor:
    """N = A'·Z through the Triton kernels; gradients for Z, α, τ and G, as kernels/sparse_gin.py's path."""
    return graph.apply(_TritonNeighbours, z)
