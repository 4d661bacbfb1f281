"""GIN-Attention and PNA-Attention: drop-in replacements for a Llama attention layer.

Standard attention aggregates values linearly, Y_h = A_h·V_h. Here the same adjacency feeds a graph network:

    GIN:  X'_h = MLP_h(s·X_h + A'_h·X_h)                    s = 1 + ε (GIN) or ε (the paper's code)
    PNA:  X'_h = MLP_h([aggregators × scalers](A'_h, X_h)),  Y_h = (1 − λ)·A_h V_h + λ·X'_h
    Y = concat_h(X'_h)·W_O  (W_O optional)

                 ┌──── q, k ──► A' = causal(refine(activation(q·kᵀ/√d)) + A_ext)
    hidden ──────┤                                   │
                 └──── X (v_proj, or the head's slice of hidden) ──► GIN / PNA ──► [o_proj] ──► out

Both classes subclass ``LlamaAttention`` and keep its projections, RoPE and KV cache; they replace only the
aggregation. The KV cache stores the node features X in the value slot, so cached generation sees exactly the
features an uncached forward would. A cache may return more key slots than tokens seen (a static cache returns its
whole buffer): the edges follow the cache's own count of tokens, so no query sees a later slot, filled or empty.
"""

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.cache_utils import Cache
from transformers.models.llama.modeling_llama import LlamaAttention, apply_rotary_pos_emb, repeat_kv

from ginformer import graph
from ginformer.gnn import HeadwiseMLP, gin_aggregate, pna_aggregate


# PNA's aggregation goes through torch.compile (config.pna_compile) from this many queries per sequence on: below,
# its T² work is small and compiling (tens of seconds per graph on CPU) costs more than it saves.
COMPILE_MIN_QUERIES = 64


def allowed_edges(
    attention_mask: torch.Tensor | None, t_q: int, t_k: int, first_query: int | torch.Tensor, device: torch.device
) -> torch.Tensor:
    """(B or 1, 1, T_q, T_k): :func:`ginformer.graph.allowed_edges` with a head axis to broadcast over."""
    return graph.allowed_edges(attention_mask, t_q, t_k, device, first_query=first_query)[:, None]


def layer_cache(cache: Cache | None, past_key_values: Cache | None, kwargs: dict) -> Cache | None:
    """The KV cache that transformers hands an attention layer: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before (a deprecated alias until 5.40). A Cache under any other name means the API moved
    again: raise, rather than run uncached and generate other tokens without a word."""
    stray = [name for name, value in kwargs.items() if isinstance(value, Cache)]
    if stray:
        raise TypeError(f"graph attention got a KV cache as {stray}, a name it does not know (cache, past_key_values)")
    return cache if cache is not None else past_key_values


def logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


def _scalar(value: float, trainable: bool) -> nn.Parameter:
    return nn.Parameter(torch.tensor(float(value)), requires_grad=trainable)


class GraphAttention(LlamaAttention):
    """Shared machinery: projections, adjacency parameters, node features, cache, output projection."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.num_heads = config.num_attention_heads
        self.sharpening = _scalar(config.sharpening_init, config.learn_sharpening)  # α
        self.sharpness = _scalar(config.sharpness_init, config.learn_sharpness)  # β
        self.threshold = _scalar(config.threshold_init, config.learn_threshold)  # τ
        if config.node_features == "hidden_slice":
            self.v_proj = None
        if not config.use_o_proj:
            self.o_proj = nn.Identity()

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        graph_adjacency: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        bsz, t_q, _ = hidden_states.shape
        query, key, step_nodes = self.project(hidden_states, position_embeddings)
        cache = layer_cache(cache, past_key_values, kwargs)
        nodes, first_query = step_nodes, 0
        if cache is not None:
            if step_nodes.shape[1] != key.shape[1] and cache.is_compileable:
                raise ValueError(
                    f"node_features='hidden_slice' keeps {step_nodes.shape[1]} node heads beside {key.shape[1]} "
                    "key-value heads, and a static cache sizes its value buffer by the keys: generate with the "
                    "default cache, or use num_key_value_heads == num_attention_heads"
                )
            key, nodes = cache.update(key, step_nodes, self.layer_idx)  # (B, ·, T_k, D)
            # The cache now holds first_query + T_q tokens, this step's in the slots after the earlier ones: the
            # last T_q slots of a growing cache, the first free ones of a static cache's buffer (an int, or a
            # 0-dim tensor for a static cache, so that a compiled step need not read it).
            first_query = cache.get_seq_length(self.layer_idx) - t_q

        output, adjacency = self.aggregate(
            query, key, nodes, step_nodes, attention_mask, first_query, graph_adjacency
        )  # (B, H, T_q, D)
        output = output.transpose(1, 2).reshape(bsz, t_q, -1)  # (B, T_q, H·D)
        return self.o_proj(output), adjacency

    def project(self, hidden_states, position_embeddings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, H, T, D) and keys (B, H_kv, T, D) with RoPE, and node features (B, H_kv or H, T, D)."""
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.v_proj is None:
            nodes = hidden_states.view(hidden_shape).transpose(1, 2)  # each head's slice of the hidden state
        else:
            nodes = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        return query, key, nodes

    def adjacency(self, hidden_states, position_embeddings, attention_mask=None, graph_adjacency=None) -> torch.Tensor:
        """The layer's adjacency A' (B, H, T, T) for a whole sequence, for inspection; forward never needs it whole
        on the fast path."""
        query, key, _ = self.project(hidden_states, position_embeddings)
        return self.dense_adjacency(query, key, attention_mask, 0, graph_adjacency)

    def per_head(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B, H_kv or H, T, D) → (B, H, T, D): key/value heads shared by a query group are repeated."""
        return repeat_kv(tensor, self.num_heads // tensor.shape[1])

    def dense_adjacency(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        first_query: int | torch.Tensor,
        graph_adjacency: torch.Tensor | None,
    ) -> torch.Tensor:
        """The full pipeline of :mod:`ginformer.graph`, materialised as (B, H, T_q, T_k)."""
        config = self.config
        allowed = allowed_edges(attention_mask, query.shape[-2], key.shape[-2], first_query, query.device)
        scores = (query @ self.per_head(key).transpose(-1, -2)) * self.scaling  # (B, H, T_q, T_k)
        adjacency = graph.activate(
            scores,
            allowed,
            config.adjacency_activation,
            sharpening=self.sharpening,
            sharpness=self.sharpness,
            threshold=self.threshold,
        )
        adjacency = graph.refine(
            adjacency, config.refinement, threshold=config.refinement_threshold, top_k=config.adjacency_top_k
        )
        return graph.add_external(adjacency, graph_adjacency, allowed)

    def softmax_messages(self, query, key, nodes, attention_mask, first_query, sharpening) -> torch.Tensor:
        """softmax(α·q·kᵀ/√d)·X through SDPA with α folded into q: no (T_q, T_k) matrix is kept.

        Without a mask, and with the queries the last T_q keys, SDPA's own causal flag (T_q = T_k) or no mask at
        all (T_q = 1) says what the graph's edges say. Anywhere else the edges go as a (T_q, T_k) mask: e.g. a
        static cache's prefill, where transformers hands no mask although the buffer's empty slots come last.
        """
        t_q, t_k = query.shape[-2], key.shape[-2]
        plain = attention_mask is None and isinstance(first_query, int) and first_query == t_k - t_q
        if plain and t_q in (1, t_k):
            mask, is_causal = None, t_q > 1
        else:
            mask, is_causal = allowed_edges(attention_mask, t_q, t_k, first_query, query.device), False
        return F.scaled_dot_product_attention(
            query * sharpening,
            self.per_head(key),
            self.per_head(nodes),
            attn_mask=mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=is_causal,
            scale=self.scaling,
        )

    def drop_edges(self, adjacency: torch.Tensor) -> torch.Tensor:
        """Attention dropout on a dense adjacency during training, as Llama drops attention weights."""
        return F.dropout(adjacency, self.attention_dropout, self.training) if self.attention_dropout else adjacency

    def aggregate(self, query, key, nodes, step_nodes, attention_mask, first_query, graph_adjacency):
        """The layer's output (B, H, T_q, D) and its dense adjacency, or None where none was built.

        ``nodes`` are the node features of every key slot (B, H_kv or H, T_k, D), ``step_nodes`` those of this
        step's queries (B, H_kv or H, T_q, D), and query row i sits at key slot ``first_query + i``.
        """
        raise NotImplementedError


class GINAttention(GraphAttention):
    """X'_h = MLP_h(s·X_h + A'_h·X_h), every head's MLP in one batched operation."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.gin_eps = _scalar(config.gin_eps_init, config.learn_gin_eps)
        self.mlp = HeadwiseMLP(
            self.num_heads,
            self.head_dim,
            max(1, round(config.gin_mlp_multiplier * self.head_dim)),
            self.head_dim,
            norm_eps=config.rms_norm_eps,
            dropout=config.gin_mlp_dropout,
        )

    @property
    def self_weight(self) -> torch.Tensor:
        return 1 + self.gin_eps if self.config.gin_self_term == "one_plus_eps" else self.gin_eps

    @property
    def uses_fast_path(self) -> bool:
        return self.config.adjacency_activation == "softmax" and self.config.refinement == "none"

    def aggregate(self, query, key, nodes, step_nodes, attention_mask, first_query, graph_adjacency):
        x_self = self.per_head(step_nodes)  # (B, H, T_q, D)
        if not self.uses_fast_path:
            adjacency = self.dense_adjacency(query, key, attention_mask, first_query, graph_adjacency)  # (B, H, T_q, T_k)
            messages = gin_aggregate(x_self, self.per_head(nodes), self.drop_edges(adjacency), self.self_weight)
            return self.mlp(messages), adjacency
        sharpening = self.sharpening.to(query.dtype)
        neighbours = self.softmax_messages(query, key, nodes, attention_mask, first_query, sharpening)  # (B, H, T_q, D)
        if graph_adjacency is not None:
            allowed = allowed_edges(attention_mask, query.shape[-2], key.shape[-2], first_query, query.device)
            external = graph.external_edges(graph_adjacency.to(query.dtype), allowed)  # (B, 1 or H, T_q, T_k)
            neighbours = neighbours + external @ self.per_head(nodes)
        # The same sum as gnn.gin_aggregate, with A'·X computed by SDPA.
        return self.mlp(self.self_weight * x_self + neighbours), None


class PNAAttention(GraphAttention):
    """X'_h = MLP_h(PNA(A'_h, X_h)), blended with standard attention: Y_h = (1 − λ)·softmax(q·kᵀ/√d)·X_h + λ·X'_h.

    λ = sigmoid(ℓ) with a learnable logit ℓ keeps the blend inside [0, 1] without clipping its gradient.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        features = len(config.pna_aggregators) * len(config.pna_scalers) * self.head_dim
        self.mlp = HeadwiseMLP(
            self.num_heads,
            features,
            max(1, round(config.pna_mlp_multiplier * self.head_dim)),
            self.head_dim,
            use_norm=False,
            dropout=config.gin_mlp_dropout,
        )
        self.blend_logit = _scalar(logit(config.pna_blend_init), config.learn_pna_blend)

    @property
    def blend(self) -> torch.Tensor:
        return torch.sigmoid(self.blend_logit)

    def aggregate(self, query, key, nodes, step_nodes, attention_mask, first_query, graph_adjacency):
        long_enough = query.shape[-2] >= COMPILE_MIN_QUERIES
        if self.config.pna_compile and long_enough and not torch.compiler.is_compiling():
            return _compiled_pna_aggregate()(self, query, key, nodes, attention_mask, first_query, graph_adjacency)
        return self.eager_aggregate(query, key, nodes, attention_mask, first_query, graph_adjacency)

    def eager_aggregate(self, query, key, nodes, attention_mask, first_query, graph_adjacency):
        config = self.config
        adjacency = self.dense_adjacency(query, key, attention_mask, first_query, graph_adjacency)  # (B, H, T_q, T_k)
        features = pna_aggregate(
            self.per_head(nodes),
            self.drop_edges(adjacency),
            config.pna_aggregators,
            config.pna_scalers,
            config.pna_degree_delta,
            causal=True,
        )  # (B, H, T_q, S·G·D)
        standard = self.softmax_messages(query, key, nodes, attention_mask, first_query, 1.0)  # (B, H, T_q, D)
        blend = self.blend.to(query.dtype)
        return (1 - blend) * standard + blend * self.mlp(features), adjacency


@functools.cache
def _compiled_pna_aggregate():
    """PNAAttention.eager_aggregate through torch.compile, built on first use and shared by every PNA layer."""
    return torch.compile(PNAAttention.eager_aggregate)
