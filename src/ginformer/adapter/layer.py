"""SparseGINLayer: the trainable branch one frozen decoder layer gains.

    X ─► RMSNorm ─► W_in ─► Z ─┬─► (1+ε)·Z ───────┐
                               └─► A'·Z (all keys) ┴─► + b ─► Norm ─► Act ─► Dropout ─► W_out ─► ·λ ─► delta
    A_agg (the layer's own attention, head-aggregated) ─► sharpen, sparsify ─► A'

This is the paper's GIN, MLP((1+ε)·X̂ + A'·X̂) with MLP(z) = Linear2(Act(Norm(Linear1(z)))), X̂ = RMSNorm(X),
Linear1 = W_in (d -> d_gnn) and Linear2 = W_out (d_gnn -> d). Aggregation is linear, so it runs after
W_in, at width d_gnn instead of d: the same function for d_gnn/d of the cost. W_in has no bias for that
to hold exactly; b is added after aggregation instead. The paper's extra residual Linear(X) is left out:
the decoder's own residual stream already carries X, and a d x d map would dominate the budget.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ginformer.gnn import gin_aggregate

from .adjacency import sparse_adjacency
from .config import SparseGINConfig


def _activation(name: str) -> nn.Module:
    if name == "prelu":
        return nn.PReLU()
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[name]()


def _scalar(value: float) -> Tensor:
    # One element, not zero dimensions: FSDP2 (fully_shard) refuses 0-d parameters.
    return torch.tensor([float(value)])


def _learnable_or_fixed(module: nn.Module, name: str, value: float, learnable: bool) -> None:
    # A fixed value is a buffer: saved with the adapter, never handed to an optimizer.
    tensor = _scalar(value)
    if learnable:
        module.register_parameter(name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


class SparseGINLayer(nn.Module):
    """delta = λ · GIN(X, A'), for one decoder layer; parameters are float32 whatever the base's dtype."""

    def __init__(self, hidden_size: int, config: SparseGINConfig, scale: float) -> None:
        super().__init__()
        self.config = config
        width = config.d_gnn
        self.input_norm = nn.RMSNorm(hidden_size) if config.input_norm else nn.Identity()
        self.in_proj = nn.Linear(hidden_size, width, bias=False)
        self.bias = nn.Parameter(torch.zeros(width))
        self.norm = nn.LayerNorm(width) if config.norm == "layer" else nn.RMSNorm(width)
        self.act = _activation(config.activation)
        self.dropout = nn.Dropout(config.dropout)
        self.out_proj = nn.Linear(width, hidden_size)
        self.gin_eps = nn.Parameter(_scalar(config.gin_eps))
        _learnable_or_fixed(self, "scale", scale, config.train_scale)
        _learnable_or_fixed(self, "alpha", config.alpha, config.train_alpha)
        _learnable_or_fixed(self, "tau", config.tau, config.train_tau)

    @property
    def self_weight(self) -> Tensor:
        """The GIN self term s: 1 + ε ("one_plus_eps") or ε ("eps", as the original code)."""
        return 1.0 + self.gin_eps if self.config.self_term == "one_plus_eps" else self.gin_eps

    def forward(
        self,
        x: Tensor,
        aggregated: Tensor,
        allowed: Tensor,
        extend_z: Callable[[Tensor], Tensor] | None = None,
        external: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x: (B, T_q, d) hidden states X; aggregated: (B, T_q, T_k) A_agg; allowed: (B|1, T_q, T_k) bool.

        `extend_z` prepends the cached Z of the T_k - T_q earlier positions (KV-cache generation) and
        `external` is an outside graph G (B, T_q, T_k). Returns (delta (B, T_q, d) in x's dtype, A').
        """
        cfg = self.config
        if external is not None and external.shape != aggregated.shape:
            raise ValueError(
                f"graph_adjacency of shape {tuple(external.shape)}: expected (batch, queries, keys) = "
                f"{tuple(aggregated.shape)} for this layer"
            )
        z = self.in_proj(self.input_norm(x.to(self.in_proj.weight.dtype)))  # (B, T_q, d_gnn)
        z_all = z if extend_z is None else extend_z(z)  # (B, T_k, d_gnn)
        if z_all.shape[1] != aggregated.shape[-1]:
            raise RuntimeError(
                f"Sparse-GIN has features for {z_all.shape[1]} positions but the attention saw {aggregated.shape[-1]} "
                "keys: the KV cache and the adapter's feature cache are out of step (was the cache filled by a "
                "model without this adapter?)"
            )
        adjacency = sparse_adjacency(
            aggregated,
            allowed,
            self.alpha,
            self.tau,
            cfg.edge_threshold,
            top_k=cfg.top_k,
            self_loops_only=cfg.self_loops_only,
            external=None if external is None else external.to(aggregated.dtype),
        )
        # M = s·Z + A'·Z_all with s = 1 + ε (GIN) or ε (the original code)
        messages = gin_aggregate(z, z_all, adjacency.to(z_all.dtype), self.self_weight) + self.bias
        hidden = self.dropout(self.act(self.norm(messages)))  # (B, T_q, d_gnn)
        # λ scales W_out rather than its output: the same delta and gradients, without saving a (B, T_q, d) tensor
        delta = F.linear(hidden, self.scale * self.out_proj.weight, self.scale * self.out_proj.bias)
        return delta.to(x.dtype), adjacency
