"""Sparse-GIN fine-tuning (paper section 2.3, methods 4.2): a frozen pretrained decoder whose layers each
gain a small GIN that passes messages along the graph the layer's own attention builds.

Per decoder layer k:

    A_agg = min(1, Σ_h A_h)                       the layer's causal attention probabilities, summed over heads
    A'    = sparsify(sigmoid(α (A_agg − τ)))      edge j -> i for j <= i, weight A'[i, j]; 0 where <= ε
    out   = X + λ_k · GIN(X, A')                  λ_k starts at 0: the adapted model equals its base

X, and where the branch joins, depend on `SparseGINConfig.placement`; with a = attn(norm1(h)) what the
attention block adds and m(r) = mlp(norm2(r)) what the MLP block adds to a residual stream r:
    "after_attention" (default, the paper's): X = h + a; the layer returns Y + m(Y), Y = X + λ_k·GIN(X, A')
    "after_mlp":  X = h + a + m(h + a), the layer's usual output; it returns X + λ_k·GIN(X, A')
    "parallel":   X = h + a; the layer returns X + m(X) + λ_k·GIN(X, A'), the branch beside the MLP
The GIN reads X through its own RMSNorm (`input_norm`). Under a KV cache, A' for the new query rows spans
the cached keys and the GIN's features Z of past positions come from the same cache, so cached and
uncached generation agree. `graph_adjacency=` (B, T_q, T_k) on forward adds an outside graph G to A_agg.

`detach_adjacency=True` (default) builds A_agg without autograd. The frozen attention's only trainable
inputs are earlier layers' adapters (through h), so this drops just the path "earlier adapter -> later
layer's q, k -> its A_agg -> its GIN", and spares the saved activations of the head softmaxes
(O(B·H·T_q·T_k) per layer). α and τ still learn: sharpening comes after the detach.

Under transformers' Trainer and TRL's SFTTrainer it trains unchanged: its state dict is the adapter and its
config (the frozen base is left out), so checkpoints hold the adapter only, resume, and load back in one call.

Usage, as with peft:

    model = get_sparse_gin_model(AutoModelForCausalLM.from_pretrained(path), SparseGINConfig())
    model.print_trainable_parameters()
    ...train...
    model.save_pretrained("runs/x/adapter")          # adapter_config.json + adapter_model.safetensors + README.md
    model = SparseGINModel.from_pretrained(base, "runs/x/adapter")          # a directory or a hub id
    model = AutoSparseGINModelForCausalLM.from_pretrained("runs/x/adapter")  # loads the base it names, too
    with model.disable_adapter(): ...                # the base model's outputs
    base = model.unload()

The same adapter is also a peft method (tuner.py): `peft.get_peft_model(base, SparseGINPeftConfig(...))` is a real
`peft.PeftModel`, with named adapters, and it is what TRL's preference trainers (DPO, GRPO, KTO, RLOO) need to use
the frozen base as their reference: pass `peft_config=SparseGINPeftConfig(...)` with the base model. Both faces
write and read the same files. Neither can be merged into the base weights (NotMergeable says why).
"""

from .adjacency import AttentionInputs, allowed_edges, head_aggregated_attention, sparse_adjacency
from .auto import AutoSparseGINModelForCausalLM
from .config import SparseGINConfig
from .layer import SparseGINLayer
from .tuner import SparseGINBranches, SparseGINPeftConfig, SparseGINTuner
from .model import (
    LayerGraph,
    SparseGINModel,
    get_sparse_gin_model,
    is_adapter_key,
    mark_only_adapter_as_trainable,
)

__all__ = [
    "AttentionInputs",
    "AutoSparseGINModelForCausalLM",
    "LayerGraph",
    "SparseGINBranches",
    "SparseGINConfig",
    "SparseGINLayer",
    "SparseGINModel",
    "SparseGINPeftConfig",
    "SparseGINTuner",
    "allowed_edges",
    "get_sparse_gin_model",
    "head_aggregated_attention",
    "is_adapter_key",
    "mark_only_adapter_as_trainable",
    "sparse_adjacency",
]
