"""SparseGINLayer: the trainable branch one frozen decoder layer gains.

    X ─► RMSNorm ─► W_in ─► Z ─┬─► (1+ε)·Z ───────┐
                               └─► A'·Z (all keys) ┴─► + b ─► Norm ─► Act ─► Dropout ─► W_out ─► ·λ ─► delta
    A_agg (the layer's own attention, head-aggregated) ─► sharpen, sparsify ─► A'

This is the paper's GIN, MLP((1+ε)·X̂ + A'·X̂) with MLP(z) = Linear2(Act(Norm(Linear1(z)))), X̂ = RMSNorm(X),
Linear1 = W_in (d -> d_gnn) and Linear2 = W_out (d_gnn -> d). Aggregation is linear, so it runs after
W_in, at width d_gnn instead of d: the same function for d_gnn/d of the cost. W_in has no bias for that
to hold exactly; b is added after aggregation instead. The paper's extra residual Linear(X) is left out:
the decoder's own residual stream already carries X, and a d x d map would dominate the budget.

A'·Z is computed from the attention's q and k a block of query rows at a time (kernels/sparse_gin.py; Triton
kernels on CUDA), so no (B, T_q, T_k) graph is built or kept for backward. A' is built whole (adjacency.py)
only where a whole row is needed at once: to show it (capture_adjacency), to keep each row's top_k edges, and
for detach_adjacency=False, whose gradient into q and k goes through every head's softmax.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ginformer.kernels.sparse_gin import GraphInputs, sparse_gin_neighbours

from .adjacency import AttentionInputs, head_aggregated_attention, sparse_adjacency
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
        attention: AttentionInputs,
        extend_z: Callable[[Tensor], Tensor] | None = None,
        external: Tensor | None = None,
        keep_graph: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """x: (B, T_q, d) hidden states X; `attention`: the query and key heads whose probabilities make A_agg.

        `extend_z` prepends the cached Z of the T_k - T_q earlier positions (KV-cache generation) and
        `external` is an outside graph G (B, T_q, T_k). Returns delta (B, T_q, d) in x's dtype, and with
        `keep_graph` the dense (A_agg, A') (B, T_q, T_k) it used, for inspection.
        """
        cfg = self.config
        z = self.in_proj(self.input_norm(x.to(self.in_proj.weight.dtype)))  # (B, T_q, d_gnn)
        z_all = z if extend_z is None else extend_z(z)  # (B, T_k, d_gnn)
        k_len = attention.key.shape[-2]
        if z_all.shape[1] != k_len:
            raise RuntimeError(
                f"Sparse-GIN has features for {z_all.shape[1]} positions but the attention saw {k_len} keys: the KV "
                "cache and the adapter's feature cache are out of step (was the cache filled by a model without "
                "this adapter?)"
            )
        if external is not None and external.shape != (*x.shape[:2], k_len):
            raise ValueError(
                f"graph_adjacency of shape {tuple(external.shape)}: expected (batch, queries, keys) = "
                f"{(*x.shape[:2], k_len)} for this layer"
            )
        graph = None
        if keep_graph or cfg.top_k is not None or not cfg.detach_adjacency:
            # A' whole: to show it, to pick each row's top k, or to pass gradients on into q and k.
            with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.detach_adjacency):
                aggregated, allowed = head_aggregated_attention(
                    attention.query, attention.key, attention.mask, attention.scaling, cfg.aggregation,
                    softcap=attention.softcap, sinks=attention.sinks,
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
            neighbours = adjacency.to(z_all.dtype) @ z_all  # (B, T_q, d_gnn)
            graph = (aggregated, adjacency) if keep_graph else None
        else:
            graph_inputs = GraphInputs(
                attention.query,
                attention.key,
                attention.mask,
                attention.scaling,
                softcap=attention.softcap,
                sinks=attention.sinks,
                alpha=self.alpha,
                tau=self.tau,
                threshold=cfg.edge_threshold,
                aggregation=cfg.aggregation,
                self_loops_only=cfg.self_loops_only,
                external=external,
            )
            neighbours = sparse_gin_neighbours(graph_inputs, z_all)  # A'·Z_all, block by block
        # M = s·Z + A'·Z_all with s = 1 + ε (GIN) or ε (the original code)
        messages = self.self_weight * z + neighbours + self.bias
        hidden = self.dropout(self.act(self.norm(messages)))  # (B, T_q, d_gnn)
        # λ scales whichever is smaller, W_out (d, d_gnn) or its output (B, T_q, d): the same delta and gradients.
        # In training W_out is smaller and autograd saves no (B, T_q, d) tensor for λ's gradient; while decoding
        # one token the output is smaller, and no fresh copy of W_out is written per layer and token.
        if hidden.shape[:-1].numel() > cfg.d_gnn:
            delta = F.linear(hidden, self.scale * self.out_proj.weight, self.scale * self.out_proj.bias)
        else:
            delta = self.scale * self.out_proj(hidden)
        return delta.to(x.dtype), graph
