"""What Sparse-GIN's sharpened graph A' is, one block of query rows at a time (`GraphInputs.rows`): the torch
path (sparse_gin.py) multiplies it with the node features and recomputes it in backward; the Triton kernels
(triton_sparse_gin.py) rebuild the same rows tile by tile; the dense reference (adapter/adjacency.py) shares its
soft-capping and sink-aware softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ginformer.graph import allowed_edges, causal_mask

AGGREGATIONS = ("sum", "mean", "max")

# Scores one block may hold, B·H·rows·T_k: 2**21 floats (8 MiB). Smaller blocks measured no faster on CPU
# (python overhead per block), larger ones slower (the block falls out of cache between the passes over it).
_BLOCK_SCORES = 2**21


def soft_capped(scores: Tensor, cap: float | None) -> Tensor:
    """cap · tanh(scores / cap): the logit soft-capping some hosts apply before the mask (None: scores)."""
    return scores if cap is None else torch.tanh(scores / cap) * cap


def head_probabilities(scores: Tensor, sinks: Tensor | None) -> Tensor:
    """softmax over keys of masked scores (B, H, T_q, T_k), with one extra sink logit per head (H,) in each
    row's normaliser when the host has attention sinks: its rows then sum to less than 1."""
    if sinks is None:
        return scores.softmax(dim=-1)
    sink = sinks.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    return (scores - torch.logsumexp(torch.cat([scores, sink], dim=-1), dim=-1, keepdim=True)).exp()


@dataclass
class GraphInputs:
    """What defines A': the layer's attention inputs and the sharpening settings."""

    query: Tensor  # (B, H, T_q, D), the last T_q of the T_k positions
    key: Tensor  # (B, H_kv, T_k, D)
    mask: Tensor | None  # (B, 1, T_q, T_k): bool (True = attend) or additive float, as transformers passes it
    scaling: float
    alpha: Tensor  # one element: 0-dim, or (1,) as the adapter keeps it for FSDP
    tau: Tensor  # one element, as alpha
    threshold: float  # ε
    aggregation: str = "sum"
    self_loops_only: bool = False
    external: Tensor | None = None  # G (B, T_q, T_k)
    softcap: float | None = None  # the host's logit soft-capping c, if any
    sinks: Tensor | None = None  # (H,) the host's per-head sink logits, if any

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}: allowed values are {', '.join(AGGREGATIONS)}")
        heads, kv_heads = self.query.shape[1], self.key.shape[1]
        if heads % kv_heads:
            raise ValueError(f"{heads} query heads cannot share {kv_heads} key heads evenly")

    @property
    def q_len(self) -> int:
        return self.query.shape[-2]

    @property
    def k_len(self) -> int:
        return self.key.shape[-2]

    def apply(self, function: type[torch.autograd.Function], z: Tensor) -> Tensor:
        """N = A'·Z through an autograd function taking (z, α, τ, G, q, k, mask, settings); q and k detached."""
        settings = dict(
            scaling=self.scaling,
            threshold=self.threshold,
            aggregation=self.aggregation,
            self_loops_only=self.self_loops_only,
            softcap=self.softcap,
            sinks=self.sinks,
        )
        return function.apply(z, self.alpha, self.tau, self.external, self.query.detach(), self.key.detach(),
                              self.mask, settings)

    def blocks(self) -> list[tuple[int, int]]:
        """Query row ranges [start, stop) whose scores hold about _BLOCK_SCORES floats each."""
        batch, heads = self.query.shape[:2]
        rows = max(1, _BLOCK_SCORES // (batch * heads * self.k_len))
        return [(start, min(start + rows, self.q_len)) for start in range(0, self.q_len, rows)]

    def rows(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """(R, A') for query rows [start, stop) over the keys they can see, 0 .. visible-1.  (B, c, visible) each

        A' > 0 exactly on the kept edges: S > ε >= 0 there.
        """
        batch, heads, _, dim = self.query.shape
        kv_heads = self.key.shape[1]
        count, visible = stop - start, stop + self.k_len - self.q_len
        query = self.query[:, :, start:stop].float() * self.scaling
        query = query.reshape(batch, kv_heads, heads // kv_heads * count, dim)  # (B, H_kv, rep·c, D): a group's rows
        scores = query @ self.key[:, :, :visible].float().transpose(-1, -2)  # (B, H_kv, rep·c, visible)
        scores = soft_capped(scores.view(batch, heads, count, visible), self.softcap)
        floor = torch.finfo(scores.dtype).min
        if self.mask is None and count == 1:
            forbidden = None  # one query sees every key up to itself
        elif self.mask is None:
            # Only the last `count` keys can lie in some row's future: mask that square, not the whole block.
            forbidden = ~causal_mask(count, count, scores.device)  # (c, c)
            scores[..., visible - count :].masked_fill_(forbidden, floor)
        else:
            mask = self.mask[:, :, start:stop, :visible]  # (B, 1, c, visible)
            forbidden = ~allowed_edges(mask, count, visible, scores.device)  # (B, c, visible)
            if mask.dtype != torch.bool:
                scores += mask.float()
            scores.masked_fill_(forbidden[:, None], floor)
        probs = head_probabilities(scores, self.sinks)  # (B, H, c, visible); a row with no allowed key is unused
        if self.aggregation == "sum":
            raw = probs.sum(dim=1).clamp_(max=1.0)
        elif self.aggregation == "mean":
            raw = probs.mean(dim=1)
        else:
            raw = probs.amax(dim=1)
        graph = raw
        if self.external is not None:
            raw = raw + self.external[:, start:stop, :visible].to(raw.dtype)
            graph = raw.clamp(max=1.0)
        adjacency = torch.nn.functional.threshold(torch.sigmoid(self.alpha * (graph - self.tau)), self.threshold, 0.0)
        if self.mask is not None:
            adjacency.masked_fill_(forbidden, 0.0)
        elif forbidden is not None:
            adjacency[..., visible - count :].masked_fill_(forbidden, 0.0)
        if self.self_loops_only:
            adjacency[..., : visible - count] = 0.0
            adjacency[..., visible - count :] *= torch.eye(count, device=adjacency.device)
        return raw, adjacency
