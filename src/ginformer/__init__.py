"""ginformer: graph-aware attention (GIN, PNA) for transformers, after
"Graph-Aware Isomorphic Attention for Adaptive Dynamics in Transformers" (Buehler, 2025).

Importing the package registers the ``ginformer`` model type with transformers' Auto classes.
"""

from ginformer.modeling import GinformerConfig, GinformerForCausalLM, GinformerModel
from ginformer.sizing import count_parameters, size_config

__all__ = ["GinformerConfig", "GinformerForCausalLM", "GinformerModel", "count_parameters", "size_config"]
