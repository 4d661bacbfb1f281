"""The Sparse-GIN graph of one decoder layer, as pure functions of tensors.

Notation: a layer's queries are the LAST T_q of its T_k key positions (T_q < T_k with a KV cache), so
query row i sits at absolute position i + (T_k - T_q). Entry [b, i, j] of every adjacency here is the
weight of the edge j -> i: the message that token j sends to token i, allowed only for j <= i (causal).

    A_h     = softmax(cap(q_h k_hᵀ · scaling) + mask ‖ sink_h)   per head h           (B, T_q, T_k)
    A_agg   = min(1, Σ_h A_h)  |  mean_h A_h  |  max_h A_h       head aggregation     (B, T_q, T_k)
    A'      = sigmoid(α (min(1, A_agg + G) − τ)), 0 where ≤ ε    sharpen + sparsify   (B, T_q, T_k)

cap is the host's logit soft-capping and sink_h its per-head sink logit, where it has them (see
kernels/sparse_gin.py). G is an optional external graph (zero when absent). No function here ever holds
B x H x T_q x T_k.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from ginformer.graph import allowed_edges
from ginformer.kernels.graph_blocks import head_probabilities, soft_capped


class AttentionInputs(NamedTuple):
    """What a layer's attention function was called with, as far as its graph depends on it."""

    query: Tensor  # (B, H, T_q, D), after RoPE
    key: Tensor  # (B, H_kv, T_k, D), cached keys included
    mask: Tensor | None  # None (causal) or (B, 1, T_q, T_k): bool (True = attend) or additive float
    scaling: float
    softcap: float | None = None  # logit soft-capping, for hosts that cap their scores (Gemma 2)
    sinks: Tensor | None = None  # (H,) per-head sink logits, for hosts with attention sinks (gpt-oss)


def self_edges(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """edges[i, j] = j == i + (T_k - T_q): the self-loop of each query.  (T_q, T_k) bool"""
    rows = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
    return torch.arange(k_len, device=device)[None, :] == rows


def attention_probabilities(
    query: Tensor,
    key: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    rows: int | None = None,
    *,
    softcap: float | None = None,
    sinks: Tensor | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """A layer's per-head attention probabilities, a block of query rows at a time.

    A_h = softmax_j(cap(q_h,i · k_g(h),j · scaling) + mask_ij ‖ sink_h), 0 on forbidden edges (fully masked rows included),
    with g(h) = h // (H / H_kv) the key head that query head h shares under grouped-query attention (what
    `repeat_kv` does, without copying).

    Yields (start, probs) per block of ``rows`` query rows (default ceil(T_q / H), so that the scores of one block
    for all heads have B·H·ceil(T_q/H)·T_k ≈ B·T_q·T_k entries: memory stays O(B·T_q·T_k)). probs is
    (B, H, c, visible): a block's queries cannot see keys after its last query (every mask here is causal), so its
    scores stop at that key, visible = start + c + (T_k − T_q): half the T_q·T_k work when T_q = T_k.

    query: (B, H, T_q, D); key: (B, H_kv, T_k, D), float32 inside whatever their dtype.
    """
    batch, heads, q_len, head_dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key heads evenly")
    floor = torch.finfo(torch.float32).min
    rows = rows or -(-q_len // heads)
    if attention_mask is None:
        # Plain causal: of a block's keys only its last square holds future keys, above that square's diagonal.
        future = torch.ones(rows, rows, dtype=torch.bool, device=query.device).triu(1)
    else:
        allowed = allowed_edges(attention_mask, q_len, k_len, query.device)
        if attention_mask.dtype == torch.bool:
            bias = torch.zeros(allowed.shape, dtype=torch.float32, device=query.device).masked_fill(~allowed, floor)
        else:
            bias = attention_mask[:, 0].float().masked_fill(~allowed, floor)  # (B, T_q, T_k)

    q = (query.float() * scaling).reshape(batch, kv_heads, heads // kv_heads, q_len, head_dim)  # (B, H_kv, rep, T_q, D)
    k_t = key.float()[:, :, None].transpose(-1, -2)  # (B, H_kv, 1, D, T_k)
    for start in range(0, q_len, rows):
        stop = min(start + rows, q_len)
        count, visible = stop - start, stop + k_len - q_len  # keys 0 .. visible-1: up to the block's last query
        scores = soft_capped(q[:, :, :, start:stop] @ k_t[..., :visible], softcap)  # (B, H_kv, rep, c, visible)
        if attention_mask is None:
            scores[..., visible - count :].masked_fill_(future[:count, :count], floor)
            yield start, head_probabilities(scores.flatten(1, 2), sinks)  # (B, H, c, visible)
        else:
            scores += bias[:, None, None, start:stop, :visible]
            probs = head_probabilities(scores.flatten(1, 2), sinks)
            yield start, probs * allowed[:, None, start:stop, :visible]  # fully masked rows: 0, not uniform


def head_aggregated_attention(
    query: Tensor,
    key: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    aggregation: str = "sum",
    softcap: float | None = None,
    sinks: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Aggregate a layer's per-head attention probabilities (`attention_probabilities`) into one adjacency, a block
    of query rows at a time.

    A_agg = min(1, Σ_h A_h) ("sum"),  (1/H) Σ_h A_h ("mean"),  max_h A_h ("max"),  0 on forbidden edges.

    query: (B, H, T_q, D); key: (B, H_kv, T_k, D) -> (A_agg (B, T_q, T_k) float32, allowed (B|1, T_q, T_k) bool)
    """
    if aggregation not in ("sum", "mean", "max"):
        raise ValueError(f"aggregation={aggregation!r}: allowed values are sum, mean, max")
    k_len = key.shape[2]
    chunks = []
    for _, probs in attention_probabilities(query, key, attention_mask, scaling, softcap=softcap, sinks=sinks):
        if aggregation == "sum":
            chunk = probs.sum(dim=1).clamp(max=1.0)
        elif aggregation == "mean":
            chunk = probs.mean(dim=1)
        else:
            chunk = probs.amax(dim=1)
        chunks.append(torch.nn.functional.pad(chunk, (0, k_len - probs.shape[-1])))  # (B, c, T_k)
    allowed = allowed_edges(attention_mask, query.shape[2], k_len, query.device)
    return torch.cat(chunks, dim=1), allowed


def sparse_adjacency(
    aggregated: Tensor,
    allowed: Tensor,
    alpha: Tensor | float,
    tau: Tensor | float,
    threshold: float,
    top_k: int | None = None,
    self_loops_only: bool = False,
    external: Tensor | None = None,
) -> Tensor:
    """Sharpen and sparsify an aggregated adjacency.  (B, T_q, T_k)

    S  = sigmoid(α (min(1, A_agg + G) − τ))
    A' = S where (allowed and S > ε [and S among the top_k of its row] [and j is i's self-loop]), else 0

    G = `external` (B, T_q, T_k), an outside graph added to the attention's one; `self_loops_only` keeps
    only the diagonal, which is all the original implementation ever passed messages along.
    """
    q_len, k_len = aggregated.shape[-2:]
    graph = aggregated if external is None else (aggregated + external).clamp(max=1.0)
    sharpened = torch.sigmoid(alpha * (graph - tau))
    keep = allowed & (sharpened > threshold)
    if self_loops_only:
        keep = keep & self_edges(q_len, k_len, aggregated.device)
    if top_k is not None and top_k < k_len:
        strongest = sharpened.masked_fill(~keep, -1.0).topk(top_k, dim=-1).indices  # (B, T_q, top_k)
        keep = keep & torch.zeros_like(keep).scatter(-1, strongest, True)
    return sharpened * keep
