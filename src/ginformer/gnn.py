"""Message passing on dense, batched, weighted adjacency matrices: GIN and PNA aggregation, per-head MLPs.

Conventions as in :mod:`ginformer.graph`: ``adjacency[..., i, j]`` weighs the message from node j to node i,
node features are (..., T_k, D) and the receiving rows are the last T_q nodes. No function loops over heads:
heads are a batch dimension.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

PNA_AGGREGATORS = ("sum", "mean", "max", "min", "var", "std")
PNA_SCALERS = ("identity", "amplification", "attenuation")

# How many (query, key, feature) messages max/min aggregation may hold at once (2**24 floats = 64 MiB).
_MAX_MIN_CHUNK_ELEMENTS = 2**24


def gin_aggregate(
    x_self: torch.Tensor, x_nodes: torch.Tensor, adjacency: torch.Tensor, self_weight: torch.Tensor | float
) -> torch.Tensor:
    """GIN's pre-MLP sum (Xu et al., 2019): s·x_i + Σ_j A_ij·x_j.

    x_self (..., T_q, D), x_nodes (..., T_k, D), adjacency (..., T_q, T_k) → (..., T_q, D).
    GIN proper uses s = 1 + ε; the paper's GIN-Attention uses s = ε (the residual stream already carries x_i).
    """
    return self_weight * x_self + adjacency @ x_nodes


def _keys_reached(has_edge: torch.Tensor) -> int:
    """1 + the last key any of these rows has an edge to (at least 1): no later key can win a max or min."""
    used = has_edge.reshape(-1, has_edge.shape[-1]).any(0)  # (T_k,)
    return int(used.nonzero().max()) + 1 if used.any() else 1


def _extremum(x_nodes: torch.Tensor, adjacency: torch.Tensor, largest: bool) -> torch.Tensor:
    """max (or min) over neighbours j (A_ij > 0) of the weighted messages A_ij·x_j; 0 for a node with none.

    The winning key of each (query, feature) is found without autograd, chunked over query rows so that at most
    (..., chunk, T_k, D) messages exist at once; only the winners are then recomputed with gradients. Keeping every
    message chunk for amax's backward cost ~10x the memory and ~4x the time. A chunk only scans keys up to the
    last one any of its rows has an edge to: under a causal mask, half the keys on average.
    """
    *batch, t_q, t_k = adjacency.shape
    d = x_nodes.shape[-1]
    x_nodes = x_nodes.expand(*batch, t_k, d)
    fill = float("-inf") if largest else float("inf")
    chunk = max(1, _MAX_MIN_CHUNK_ELEMENTS // max(1, math.prod(batch) * t_k * d))
    has_edge = adjacency != 0  # (..., T_q, T_k)
    with torch.no_grad():
        winners = []
        for start in range(0, t_q, chunk):
            # The cut is data-dependent: under torch.compile it would break the graph and recompile for every
            # chunk, so compiled code scans all keys (inductor fuses that scan well).
            keys = t_k if torch.compiler.is_compiling() else _keys_reached(has_edge[..., start : start + chunk, :])
            weights = adjacency[..., start : start + chunk, :keys, None]  # (..., c, keys, 1)
            messages = weights * x_nodes[..., None, :keys, :]  # (..., c, keys, D)
            messages.masked_fill_(weights == 0, fill)
            winners.append(messages.argmax(-2) if largest else messages.argmin(-2))  # (..., c, D)
        best = torch.cat(winners, dim=-2)  # (..., T_q, D): index of the winning key
    reduced = adjacency.gather(-1, best) * x_nodes.gather(-2, best)  # (..., T_q, D), differentiable
    return torch.where(has_edge.any(dim=-1, keepdim=True), reduced, 0.0)


def pna_aggregate(
    x_nodes: torch.Tensor,
    adjacency: torch.Tensor,
    aggregators: tuple[str, ...] | list[str],
    scalers: tuple[str, ...] | list[str],
    degree_delta: float,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Principal Neighbourhood Aggregation (Corso et al., 2020) over a weighted neighbourhood.

    With weighted degree w_i = Σ_j A_ij and neighbour count n_i = |{j : A_ij > 0}|:
        sum  = Σ_j A_ij x_j            mean = sum / w_i          var = Σ_j A_ij x_j² / w_i − mean²
        std  = sqrt(var + eps)         max/min = max/min_j A_ij x_j over the neighbours
    each aggregate is then multiplied by every scaler: identity 1, amplification log(n_i + 1)/δ,
    attenuation δ/log(n_i + 1), where δ is the mean log(n + 1) of the training graphs.

    x_nodes (..., T_k, D), adjacency (..., T_q, T_k) → (..., T_q, len(scalers)·len(aggregators)·D),
    ordered scaler-major, then aggregator, then feature.
    """
    summed = adjacency @ x_nodes  # (..., T_q, D)
    weighted_degree = adjacency.sum(-1, keepdim=True).clamp_min(eps)  # (..., T_q, 1)
    mean = summed / weighted_degree
    variance = F.relu((adjacency @ x_nodes.square()) / weighted_degree - mean.square())
    computed = {
        "sum": lambda: summed,
        "mean": lambda: mean,
        "var": lambda: variance,
        "std": lambda: torch.sqrt(variance + eps),
        "max": lambda: _extremum(x_nodes, adjacency, largest=True),
        "min": lambda: _extremum(x_nodes, adjacency, largest=False),
    }
    aggregated = torch.cat([computed[name]() for name in aggregators], dim=-1)  # (..., T_q, G·D)

    log_count = torch.log1p((adjacency > 0).sum(-1, keepdim=True).to(adjacency.dtype))  # (..., T_q, 1)
    scale = {
        "identity": lambda: torch.ones_like(log_count),
        "amplification": lambda: log_count / degree_delta,
        "attenuation": lambda: degree_delta / log_count.clamp_min(eps),
    }
    return torch.cat([aggregated * scale[name]() for name in scalers], dim=-1)


class HeadwiseMLP(nn.Module):
    """H independent two-layer MLPs applied in one batched operation (no loop over heads):

        MLP_h(z) = Linear2_h(Dropout(SiLU(RMSNorm_h(Linear1_h(z)))))      (paper, §2.1.2)

    ``use_norm=False`` drops the RMSNorm, giving the PNA MLP Linear2(SiLU(Linear1(z))) of §2.1.3.
    Input (B, H, T, d_in) → output (B, H, T, d_out).
    """

    def __init__(
        self,
        num_heads: int,
        d_in: int,
        d_hidden: int,
        d_out: int,
        *,
        use_norm: bool = True,
        norm_eps: float = 1e-6,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.w_in = nn.Parameter(torch.empty(num_heads, d_in, d_hidden))
        self.b_in = nn.Parameter(torch.empty(num_heads, d_hidden))
        self.norm_weight = nn.Parameter(torch.empty(num_heads, d_hidden)) if use_norm else None
        self.w_out = nn.Parameter(torch.empty(num_heads, d_hidden, d_out))
        self.b_out = nn.Parameter(torch.empty(num_heads, d_out))
        self.norm_eps = norm_eps
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.w_in, std=std)
        nn.init.normal_(self.w_out, std=std)
        nn.init.zeros_(self.b_in)
        nn.init.zeros_(self.b_out)
        if self.norm_weight is not None:
            nn.init.ones_(self.norm_weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        hidden = torch.einsum("bhti,hio->bhto", z, self.w_in) + self.b_in[:, None, :]  # (B, H, T, d_hidden)
        if self.norm_weight is not None:
            variance = hidden.float().square().mean(-1, keepdim=True)
            hidden = (hidden.float() * torch.rsqrt(variance + self.norm_eps)).to(z.dtype)
            hidden = hidden * self.norm_weight[:, None, :]
        hidden = self.dropout(F.silu(hidden))
        return torch.einsum("bhti,hio->bhto", hidden, self.w_out) + self.b_out[:, None, :]  # (B, H, T, d_out)
