"""LoRA baseline through the real peft library, with its rank matched to a trainable-parameter budget.

The paper compares Sparse-GIN with LoRA "at the same number of trainable parameters" (about 28 M on
Llama-3.2-3B: LoRA r=50, alpha=50 on q/k/v/o). To compare fairly on another base model, pick the LoRA rank
whose trainable count is closest to the Sparse-GIN adapter's count.

LoRA adds, beside each targeted frozen Linear W (out x in)::

    x ──► W ────────────────┐
    │                       + ──► y        trainable: A (r x in) + B (out x r) = r·(in + out)
    └──► A ──► B ──► ·α/r ──┘

so the trainable count is linear in r, ``count(r) = r·Σ(in + out) + extras`` (DoRA's magnitude vector and
``lora_bias`` each add ``out`` per module), and the best rank is found in closed form from the module shapes.
"""

from __future__ import annotations

from typing import Literal

import peft
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from ginformer.errors import ConfigError

LoraTarget = Literal["attention", "all_linear"]

ATTENTION_PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

# LoraConfig options the analytic count models. Others (bias, modules_to_save, rank_pattern,
# layers_to_transform, exclude_modules, ...) change which parameters train, so they are refused rather than
# silently miscounted.
_SUPPORTED_LORA_KWARGS = frozenset(
    {"lora_alpha", "lora_dropout", "use_rslora", "init_lora_weights", "use_dora", "lora_bias", "task_type"}
)


def lora_target_modules(model: nn.Module, target: LoraTarget = "attention") -> dict[str, tuple[int, int]]:
    """Module name -> (in_features, out_features) of every layer LoRA will wrap, as peft selects them.

    ``"attention"``: the Linear layers named q_proj, k_proj, v_proj, o_proj (Llama, Qwen2, Mistral, ...).
    ``"all_linear"``: peft's ``"all-linear"``: every Linear (or GPT-2 Conv1D) except the output head.
    """
    if target == "attention":
        found = {
            name: _shape(module)
            for name, module in model.named_modules()
            if name.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS and isinstance(module, nn.Linear)
        }
        if not found:
            raise ConfigError(
                f"{type(model).__name__} has no Linear layers named {list(ATTENTION_PROJECTIONS)}; "
                "use target='all_linear'"
            )
        return found
    if target == "all_linear":
        head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
        found = {
            name: _shape(module)
            for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, Conv1D)) and module is not head
        }
        if not found:
            raise ConfigError(f"{type(model).__name__} has no Linear layers besides its output head")
        return found
    raise ValueError(f"target must be 'attention' or 'all_linear', got {target!r}")


def _shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features); a GPT-2 Conv1D stores its weight transposed, as (in, out)."""
    if isinstance(module, Conv1D):
        n_in, n_out = module.weight.shape
        return n_in, n_out
    return module.in_features, module.out_features


def lora_trainable_count(
    shapes: dict[str, tuple[int, int]], r: int, *, use_dora: bool = False, lora_bias: bool = False
) -> int:
    """Trainable parameters LoRA of rank ``r`` adds on modules of the given (in, out) shapes."""
    per_rank = sum(n_in + n_out for n_in, n_out in shapes.values())
    extra = sum(n_out for _, n_out in shapes.values()) * (int(use_dora) + int(lora_bias))
    return r * per_rank + extra


def lora_config_for_budget(
    model: nn.Module,
    budget: int,
    target: LoraTarget = "attention",
    tolerance: float = 0.05,
    **lora_kwargs,
) -> tuple[peft.LoraConfig, int]:
    """(LoraConfig, trainable count) for the rank whose trainable-parameter count is closest to ``budget``.

    ``lora_kwargs`` go to ``peft.LoraConfig``; ``lora_alpha`` defaults to the chosen rank (scale alpha/r = 1, as
    the paper's r=50, alpha=50) and ``task_type`` to ``"CAUSAL_LM"``. Raises ConfigError when even the closest
    rank misses the budget by more than ``tolerance`` (relative), naming the counts that are achievable.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive int, got {budget!r}")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
    unsupported = sorted(set(lora_kwargs) - _SUPPORTED_LORA_KWARGS)
    if unsupported:
        raise ConfigError(
            f"LoraConfig options {unsupported} are not supported by budget matching (they change which "
            f"parameters train); supported: {sorted(_SUPPORTED_LORA_KWARGS)}"
        )
    shapes = lora_target_modules(model, target)
    extras = {k: bool(lora_kwargs.get(k, False)) for k in ("use_dora", "lora_bias")}
    base = lora_trainable_count(shapes, 0, **extras)
    per_rank = lora_trainable_count(shapes, 1, **extras) - base
    r = max(1, round((budget - base) / per_rank))
    count = lora_trainable_count(shapes, r, **extras)
    if abs(count - budget) > tolerance * budget:
        nearby = ", ".join(
            f"r={k}: {lora_trainable_count(shapes, k, **extras):,}" for k in sorted({max(1, r - 1), r, r + 1})
        )
        raise ConfigError(
            f"no LoRA rank on {len(shapes)} {target} modules gives {budget:,} trainable parameters within "
            f"{tolerance:.0%}; closest achievable: {nearby} (each rank adds {per_rank:,})"
        )
    config = peft.LoraConfig(
        r=r,
        target_modules=sorted({n.rsplit(".", 1)[-1] for n in shapes}) if target == "attention" else "all-linear",
        **{"lora_alpha": r, "task_type": "CAUSAL_LM", **lora_kwargs},
    )
    return config, count


def get_lora_model(model: PreTrainedModel, config: peft.LoraConfig) -> peft.PeftModel:
    """Wrap ``model`` with LoRA: the base weights are frozen, only the LoRA matrices train. Modifies ``model``
    in place (peft injects its layers into it) and returns the peft wrapper, which saves adapter weights only."""
    return peft.get_peft_model(model, config)
