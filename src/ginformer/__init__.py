"""ginformer: graph-aware attention (GIN, PNA) for transformers, after
"Graph-Aware Isomorphic Attention for Adaptive Dynamics in Transformers" (Buehler, 2025)."""
