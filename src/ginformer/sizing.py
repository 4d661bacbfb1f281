"""Parameter counts, and sizing a config to a target count so that variants are compared at equal size.

The paper compares every attention kind at ~25 M parameters (6 layers × 8 heads) by adjusting the hidden size;
its best GIN model has hidden size 528 against the reference's 512.
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
