"""What a model costs: parameter counts, sizing a config to a target count so that variants are compared at equal
size, and the floating-point operations a training token takes, so that they can be compared at equal compute.

The paper compares every attention kind at ~25 M parameters (6 layers × 8 heads) by adjusting the hidden size;
its best GIN model has hidden size 528 against the reference's 512. At equal size a GIN layer still does more
work than a standard one (its per-head MLP), and a PNA layer more again (several aggregations and a second pass
of standard attention), which `forward_flops_per_token` counts.
"""

import torch
import torch.nn as nn

from ginformer.errors import ConfigError
from ginformer.modeling import GinformerConfig, GinformerForCausalLM


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    unique = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in unique.values())


def config_parameters(config: GinformerConfig) -> int:
    """Parameter count of a model built from ``config``, without allocating its weights."""
    with torch.device("meta"):
        return count_parameters(GinformerForCausalLM(config))


def with_hidden_size(config: GinformerConfig, hidden_size: int, scale_intermediate: bool) -> GinformerConfig:
    """A copy of ``config`` with a new hidden size (head_dim follows; the FFN width too if ``scale_intermediate``)."""
    values = config.to_dict()
    values["hidden_size"] = hidden_size
    values["head_dim"] = hidden_size // config.num_attention_heads
    if scale_intermediate:
        values["intermediate_size"] = max(1, round(config.intermediate_size * hidden_size / config.hidden_size))
    return GinformerConfig(**values)


def size_config(
    config: GinformerConfig, target_params: int, *, scale_intermediate: bool = True, tolerance: float = 0.05
) -> GinformerConfig:
    """The config whose parameter count is closest to ``target_params``, varying only the hidden size.

    Hidden sizes step by 2 × num_attention_heads so that head_dim stays even (RoPE rotates pairs). With
    ``scale_intermediate=False`` the feed-forward width is kept, as in the paper's best GIN model.
    Raises ValueError when no hidden size comes within ``tolerance`` (relative) of the target.
    """
    if target_params <= 0:
        raise ConfigError(f"target_params must be > 0, got {target_params}")
    step = 2 * config.num_attention_heads

    def count(multiple: int) -> int:
        return config_parameters(with_hidden_size(config, multiple * step, scale_intermediate))

    low, high = 1, 2
    while count(high) < target_params:
        low, high = high, high * 2
        if high * step > 1 << 16:
            raise ConfigError(f"target_params={target_params} needs a hidden size above {1 << 16}")
    while high - low > 1:  # the count grows with the hidden size: bisect for the crossing
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) < target_params else (low, middle)
    best = min((low, high), key=lambda multiple: abs(count(multiple) - target_params))
    sized = with_hidden_size(config, best * step, scale_intermediate)
    achieved = config_parameters(sized)
    if abs(achieved - target_params) > tolerance * target_params:
        raise ConfigError(
            f"no hidden size gets within {tolerance:.0%} of target_params={target_params}: the closest, "
            f"hidden_size={sized.hidden_size}, gives {achieved}"
        )
    return sized


def forward_flops_per_token(config: GinformerConfig, seq_len: int, context: float | None = None) -> dict[str, float]:
    """Floating-point operations of one forward pass per token, by term, at sequence length `seq_len`.

    A multiply-add counts 2. `context` is the mean number of keys a query sees: (seq_len + 1) / 2 under the causal
    mask (the default; what a kernel that skips masked keys does), seq_len for a dense T × T computation. PNA's
    max and min count a multiply and a comparison per key and feature. Norms, softmax and activations are left out,
    as in the usual 6N estimate; training is about 3 × the forward (`training_flops_per_token`).
    """
    context = (seq_len + 1) / 2 if context is None else context
    d, heads, head_dim = config.hidden_size, config.num_attention_heads, config.head_dim
    query_width, kv_width = heads * head_dim, config.num_key_value_heads * head_dim
    terms = dict.fromkeys(("projections", "feed_forward", "attention", "graph_mlp", "extrema", "lm_head"), 0.0)
    for kind in config.layer_kinds():
        graph = kind != "standard"
        values = not (graph and config.node_features == "hidden_slice")
        output = not graph or config.use_o_proj
        terms["projections"] += 2 * d * (query_width + kv_width * (1 + values)) + 2 * query_width * d * output
        terms["feed_forward"] += 3 * 2 * d * config.intermediate_size
        per_key = 2 * query_width * context  # one (T_q, D) × (D, T_k) or (T_q, T_k) × (T_k, D) product per token
        if kind == "standard":
            terms["attention"] += 2 * per_key  # scores, then A·V
        elif kind == "gin":
            hidden = max(1, round(config.gin_mlp_multiplier * head_dim))
            terms["attention"] += 2 * per_key  # scores, then A'·X
            terms["graph_mlp"] += 2 * heads * (head_dim * hidden + hidden * head_dim)
        else:  # pna: its adjacency, Σ A x and Σ A x² (mean and var come from them), then standard attention again
            aggregators = list(config.pna_aggregators)
            extrema = sum(name in ("max", "min") for name in aggregators)
            hidden = max(1, round(config.pna_mlp_multiplier * head_dim))
            features = len(aggregators) * len(config.pna_scalers) * head_dim
            terms["attention"] += 3 * per_key + 2 * per_key
            terms["extrema"] += extrema * per_key
            terms["graph_mlp"] += 2 * heads * (features * hidden + hidden * head_dim)
    terms["lm_head"] = 2 * d * config.vocab_size
    return terms


def training_flops_per_token(config: GinformerConfig, seq_len: int) -> float:
    """Forward and backward (twice the forward's work: gradients of activations and of weights) per token."""
    return 3 * sum(forward_flops_per_token(config, seq_len).values())
