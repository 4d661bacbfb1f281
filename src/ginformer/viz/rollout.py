"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"), as pure functions.

How much of token j reaches token i after layers 0..k, with the residual connection counted as attention to
oneself:

    Ã_k = (mean_h A_k,h + I) / (rowsum(mean_h A_k,h) + 1)      average the heads, add the identity, renormalise rows
    R_k = Ã_k · R_{k−1},   R_{−1} = I                            multiply across layers

Every Ã_k of a causal model is lower triangular, so (Ã·R)[i, j] only sums over tokens m with j ≤ m ≤ i. Two
consequences used here: a product of lower-triangular matrices needs a sixth of a full product's work
(`lower_triangular_matmul`), and the rollout restricted to a window of tokens [s, e) is the product of the
windows' crops of Ã_k, exactly: no path between two tokens of the window leaves it. Only the row sums must come
from whole rows (`rollout_step`'s ``row_sums``), since a crop cuts the edges from tokens before the window.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def rollout_step(previous: Tensor | None, attention: Tensor, row_sums: Tensor | None = None) -> Tensor:
    """R_k = Ã_k · R_{k−1} for one layer.  (T, T)

    ``attention`` is the layer's head-averaged adjacency (T, T), lower triangular; ``previous`` is R_{k−1}
    (None: the identity, for the first layer); ``row_sums`` (T,) are rowsum(mean_h A_k,h) over whole rows when
    ``attention`` is a window's crop (default: the rows of ``attention`` itself).
    """
    size = attention.shape[-1]
    sums = attention.sum(dim=-1) if row_sums is None else row_sums
    mixed = (attention + torch.eye(size, dtype=attention.dtype, device=attention.device)) / (sums + 1.0)[:, None]
    return mixed if previous is None else lower_triangular_matmul(mixed, previous)


def attention_rollout(attentions: Sequence[Tensor]) -> list[Tensor]:
    """R_k for every layer k, from each layer's (H, T, T) per-head or (T, T) head-averaged adjacency, in order."""
    rollouts: list[Tensor] = []
    for attention in attentions:
        averaged = attention.float().mean(dim=0) if attention.dim() == 3 else attention.float()
        rollouts.append(rollout_step(rollouts[-1] if rollouts else None, averaged))
    return rollouts


def lower_triangular_matmul(a: Tensor, b: Tensor, block: int = 512) -> Tensor:
    """a · b for lower-triangular (T, T) a and b, a block of rows and columns at a time.  (T, T)

    Block (I, J) of the product sums a[I, K]·b[K, J] over the K between J and I only: for T = 5,000 about a
    sixth of the work of ``a @ b``, which cannot know that both are triangular.
    """
    size = a.shape[-1]
    if size <= block:
        return a @ b
    result = torch.zeros_like(b)
    for row in range(0, size, block):
        row_end = min(row + block, size)
        for col in range(0, row_end, block):
            col_end = min(col + block, size)
            result[row:row_end, col:col_end] = a[row:row_end, col:row_end] @ b[col:row_end, col:col_end]
    return result
