"""GinformerConfig and GinformerForCausalLM: a Llama decoder whose attention layers may be GIN- or PNA-Attention.

Everything but the attention is Llama's (embeddings, RoPE, RMSNorm, SwiGLU feed-forward, KV cache, generation),
so a ``standard`` model is exactly a ``LlamaForCausalLM`` and save/load/generate work as for any transformers
model. ``import ginformer`` registers the model type with ``AutoConfig`` and ``AutoModelForCausalLM``.
"""

import torch.nn as nn
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, initialization
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
)

from ginformer.attention import GINAttention, GraphAttention, PNAAttention, logit
from ginformer.errors import ConfigError
from ginformer.graph import ACTIVATIONS, REFINEMENTS
from ginformer.gnn import PNA_AGGREGATORS, PNA_SCALERS, HeadwiseMLP

ATTENTION_CLASSES = {"standard": LlamaAttention, "gin": GINAttention, "pna": PNAAttention}
SELF_TERMS = ("one_plus_eps", "eps")
NODE_FEATURES = ("v_proj", "hidden_slice")


def _check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {list(allowed)}, got {value!r}")


def _check_positive(field: str, value) -> None:
    if not value > 0:
        raise ConfigError(f"{field} must be > 0, got {value!r}")


@strict
class GinformerConfig(LlamaConfig):
    """LlamaConfig plus the graph-attention options. Defaults are the paper's best protein model (§2.2):
    GIN-Attention, softmax with a learnable per-layer sharpening α, MLP multiplier γ = 0.5, no o_proj."""

    model_type = "ginformer"

    # Aggregation per layer: "standard" (Llama's A·V), "gin" or "pna"; a list gives one kind per layer.
    attention_kind: str | list[str] = "gin"
    # How scores s = q·kᵀ/√d become edge weights: softmax(α·s), sigmoid(β(s−τ)), softplus(β(s−τ))/β or ReLU(s−τ).
    adjacency_activation: str = "softmax"
    # α, the softmax logit multiplier; 1.0 starts from plain attention, the layer learns to sharpen or smooth.
    sharpening_init: float | int = 1.0
    learn_sharpening: bool = True
    # β, the steepness of sigmoid and sharp softplus; large β approaches a hard step / ReLU.
    sharpness_init: float | int = 1.0
    learn_sharpness: bool = False
    # τ, the score offset of sigmoid, sharp softplus and ReLU: scores below τ give (nearly) no edge.
    threshold_init: float | int = 0.0
    learn_threshold: bool = True
    # Sparsification after the activation: "none", "threshold" (ReLU(A − θ)) or "top_k" (k strongest per row).
    refinement: str = "none"
    refinement_threshold: float | int = 0.05
    adjacency_top_k: int = 8
    # GIN self term s: "one_plus_eps" (s = 1 + ε, as GIN and PyG) or "eps" (s = ε, as the paper's code).
    gin_self_term: str = "one_plus_eps"
    gin_eps_init: float | int = 0.0
    learn_gin_eps: bool = True
    # γ: the per-head MLP's hidden width is γ·head_dim; the paper's best is 0.5 (it regularises).
    gin_mlp_multiplier: float | int = 0.5
    # Dropout inside the GIN and PNA MLPs, after the activation.
    gin_mlp_dropout: float | int = 0.0
    # Node features X_h: "v_proj" (a value projection) or "hidden_slice" (the head's slice of the hidden state,
    # as the paper's code; saves the v_proj parameters).
    node_features: str = "v_proj"
    # Whether concatenated head outputs pass through W_O; the paper's best model has none.
    use_o_proj: bool = False
    # PNA: aggregators and degree scalers (Corso et al., 2020); the paper uses sum, mean, max and variance.
    pna_aggregators: list[str] | tuple[str, ...] = ("sum", "mean", "max", "var")
    pna_scalers: list[str] | tuple[str, ...] = ("identity",)
    # δ of the PNA scalers: the mean log(n + 1) over training graphs; ≈ 4.6 for causal graphs of 256 tokens.
    pna_degree_delta: float | int = 4.6
    # λ ∈ (0, 1), the initial weight of the PNA output against standard attention.
    pna_blend_init: float | int = 0.5
    learn_pna_blend: bool = True
    # The PNA MLP's hidden width is this multiple of head_dim.
    pna_mlp_multiplier: float | int = 1.0
    # Run PNA-Attention's aggregation through torch.compile (inductor) on steps of 64 queries per sequence or more
    # (training, long prompts): it fuses the max/min search and the adjacency's element-wise passes. False keeps it
    # eager, e.g. where inductor cannot build kernels; shorter steps and one-token decoding are always eager.
    pna_compile: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Validate here (not in a @strict validator) so that problems surface as a ConfigError naming the field.
        if self.hidden_size % self.num_attention_heads != 0:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        kinds = self.layer_kinds()
        for kind in kinds:
            _check_choice("attention_kind", kind, ATTENTION_CLASSES)
        _check_choice("adjacency_activation", self.adjacency_activation, ACTIVATIONS)
        _check_choice("refinement", self.refinement, REFINEMENTS)
        _check_choice("gin_self_term", self.gin_self_term, SELF_TERMS)
        _check_choice("node_features", self.node_features, NODE_FEATURES)
        for name in self.pna_aggregators:
            _check_choice("pna_aggregators", name, PNA_AGGREGATORS)
        for name in self.pna_scalers:
            _check_choice("pna_scalers", name, PNA_SCALERS)
        if not self.pna_aggregators or not self.pna_scalers:
            raise ConfigError("pna_aggregators and pna_scalers must each name at least one entry")
        if self.refinement_threshold < 0:  # ReLU(A − θ) with θ < 0 would give every masked key (the future) an edge
            raise ConfigError(f"refinement_threshold must be >= 0, got {self.refinement_threshold}")
        if self.adjacency_top_k < 1:
            raise ConfigError(f"adjacency_top_k must be >= 1, got {self.adjacency_top_k}")
        for field in ("gin_mlp_multiplier", "pna_mlp_multiplier", "sharpness_init", "pna_degree_delta"):
            _check_positive(field, getattr(self, field))
        if not 0 < self.pna_blend_init < 1:
            raise ConfigError(f"pna_blend_init must lie in (0, 1), got {self.pna_blend_init}")
        if not 0 <= self.gin_mlp_dropout < 1:
            raise ConfigError(f"gin_mlp_dropout must lie in [0, 1), got {self.gin_mlp_dropout}")
        if any(kind != "standard" for kind in kinds):
            heads_width = self.num_attention_heads * self.head_dim
            needs_width = (not self.use_o_proj and "use_o_proj=False") or (
                self.node_features == "hidden_slice" and "node_features='hidden_slice'"
            )
            if needs_width and heads_width != self.hidden_size:
                raise ConfigError(
                    f"{needs_width} needs num_attention_heads * head_dim ({heads_width}) == hidden_size ({self.hidden_size})"
                )

    def layer_kinds(self) -> list[str]:
        """The attention kind of every layer."""
        if isinstance(self.attention_kind, str):
            return [self.attention_kind] * self.num_hidden_layers
        if len(self.attention_kind) != self.num_hidden_layers:
            raise ConfigError(
                f"attention_kind lists {len(self.attention_kind)} kinds for {self.num_hidden_layers} layers"
            )
        return list(self.attention_kind)


class GinformerPreTrainedModel(LlamaPreTrainedModel):
    config_class = GinformerConfig

    def _init_weights(self, module):
        """transformers' default initialisation, extended to the parameters that graph attention adds."""
        super()._init_weights(module)
        if isinstance(module, HeadwiseMLP):
            module.reset_parameters(std=self.config.initializer_range)
        elif isinstance(module, GraphAttention):
            config = module.config
            initialization.constant_(module.sharpening, config.sharpening_init)
            initialization.constant_(module.sharpness, config.sharpness_init)
            initialization.constant_(module.threshold, config.threshold_init)
            if isinstance(module, GINAttention):
                initialization.constant_(module.gin_eps, config.gin_eps_init)
            if isinstance(module, PNAAttention):
                initialization.constant_(module.blend_logit, logit(config.pna_blend_init))


class GinformerModel(GinformerPreTrainedModel, LlamaModel):
    def __init__(self, config: GinformerConfig):
        super().__init__(config)
        for layer_idx, (layer, kind) in enumerate(zip(self.layers, config.layer_kinds())):
            if kind != "standard":
                layer.self_attn = ATTENTION_CLASSES[kind](config, layer_idx)
        self.post_init()


class GinformerForCausalLM(GinformerPreTrainedModel, LlamaForCausalLM):
    """A Llama causal LM with graph-aware attention. Pass ``graph_adjacency`` (B, T, T) or (B, H, T, T) to
    ``forward`` to add an external adjacency to every graph layer's attention adjacency."""

    def __init__(self, config: GinformerConfig):
        LlamaPreTrainedModel.__init__(self, config)  # LlamaForCausalLM.__init__ would build a LlamaModel first
        self.model = GinformerModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def graph_parameters(self) -> dict[str, list[float | None]]:
        """Learned graph scalars per layer (None where a layer lacks one): sharpening α, GIN ε, PNA blend λ."""
        values = {"sharpening": [], "gin_eps": [], "pna_blend": []}
        for layer in self.model.layers:
            attention = layer.self_attn
            is_graph = isinstance(attention, GraphAttention)
            values["sharpening"].append(attention.sharpening.item() if is_graph else None)
            values["gin_eps"].append(attention.gin_eps.item() if isinstance(attention, GINAttention) else None)
            values["pna_blend"].append(attention.blend.item() if isinstance(attention, PNAAttention) else None)
        return values


AutoConfig.register("ginformer", GinformerConfig)
AutoModelForCausalLM.register(GinformerConfig, GinformerForCausalLM)
