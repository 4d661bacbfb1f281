"""SparseGINConfig: every knob of the Sparse-GIN adapter, with the reason it exists.

Defaults follow the paper's fine-tuning runs (section 4.2, Figure 9) where it states a value, and
otherwise the choice that keeps the adapted model equal to its base at step 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from ginformer.errors import ConfigError

Aggregation = Literal["sum", "mean", "max"]
SelfTerm = Literal["one_plus_eps", "eps"]
Norm = Literal["layer", "rms"]
Activation = Literal["prelu", "relu", "gelu", "silu"]
Placement = Literal["after_attention", "after_mlp", "parallel"]
ScaleInit = Literal["zero", "ramp"]


def _choice(name: str, value: Any, kind: Any) -> None:
    allowed = get_args(kind)
    if value not in allowed:
        raise ConfigError(f"SparseGINConfig.{name}={value!r}: allowed values are {', '.join(allowed)}")


@dataclass
class SparseGINConfig:
    # --- the graph: A' = sparsify(sigmoid(alpha * (A_agg - tau))) -----------------------------------
    aggregation: Aggregation = "sum"
    """How per-head attention probabilities become one adjacency: "sum" clamped at 1 (paper eq. 3), "mean", "max"."""
    alpha: float = 10.0
    """Sigmoid slope: large alpha turns A_agg into a near-binary graph around tau (upstream used 10)."""
    tau: float = 0.5
    """Sigmoid centre: aggregated weights above tau become strong edges."""
    train_alpha: bool = False
    """Learn alpha per layer (the paper's GIN-Attention learns its sharpening; here it is fixed unless asked)."""
    train_tau: bool = False
    """Learn tau per layer."""
    edge_threshold: float = 0.2
    """The paper's ε: edges whose sharpened weight is <= this are dropped (paper: 0.2); the graph's sparsity."""
    top_k: int | None = None
    """Keep at most this many strongest incoming edges per token (None: no limit). A row's top k needs the whole
    row: with top_k, A' is built and kept whole, O(B·T²) memory per layer, as with detach_adjacency=False."""
    self_loops_only: bool = False
    """Keep only the diagonal of A' (no token-to-token messages): reproduces the original code, for comparison."""
    detach_adjacency: bool = True
    """Build A_agg without autograd: no gradient back through the frozen attention (into earlier adapters) and
    no saved head softmaxes (O(B·H·T²) per layer); alpha and tau still learn, sharpening comes after. With it, A'
    is built block by block and never kept (memory linear in T); False builds A' whole."""
    # --- the GIN: GIN(X, A') = W_out . Dropout(Act(Norm((1+eps) Z + A' Z + b))), Z = W_in . norm(X) ---
    d_gnn: int = 155
    """Width of the messages and of the GIN MLP's hidden layer (paper: 155); sets the parameter budget."""
    self_term: SelfTerm = "one_plus_eps"
    """Self contribution: "one_plus_eps" is GIN's (1+eps)·Z; "eps" is the original code's eps·Z."""
    gin_eps: float = 0.0
    """Initial value of GIN's learnable eps."""
    input_norm: bool = True
    """RMS-normalise X before W_in: residual streams of pretrained LLMs carry a few huge channels."""
    norm: Norm = "layer"
    """Normalisation inside the GIN MLP: "layer" (paper) or "rms"."""
    activation: Activation = "prelu"
    """GIN MLP activation (upstream: PReLU)."""
    dropout: float = 0.1
    """Dropout on the GIN MLP's hidden layer (upstream: 0.1)."""
    # --- where the branch joins the frozen decoder layer, and how strongly -----------------------------
    placement: Placement = "after_attention"
    """Where X + lambda·GIN(X, A') is inserted (see adapter/__init__.py for X in each case)."""
    scale_init: ScaleInit = "zero"
    """Initial lambda_k: "zero" makes the adapted model equal its base at step 0; "ramp" is 0 -> scale_max (paper)."""
    scale_max: float = 0.5
    """lambda of the last layer under the "ramp" init (paper: 0.5)."""
    train_scale: bool = True
    """Learn lambda_k (paper Fig. 12: a learnable lambda beats a fixed one)."""

    def __post_init__(self) -> None:
        _choice("aggregation", self.aggregation, Aggregation)
        _choice("self_term", self.self_term, SelfTerm)
        _choice("norm", self.norm, Norm)
        _choice("activation", self.activation, Activation)
        _choice("placement", self.placement, Placement)
        _choice("scale_init", self.scale_init, ScaleInit)
        if not isinstance(self.d_gnn, int) or self.d_gnn < 1:
            raise ConfigError(f"SparseGINConfig.d_gnn={self.d_gnn!r}: allowed values are integers >= 1")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ConfigError(f"SparseGINConfig.top_k={self.top_k!r}: allowed values are None or integers >= 1")
        if not 0.0 <= self.edge_threshold < 1.0:
            raise ConfigError(f"SparseGINConfig.edge_threshold={self.edge_threshold!r}: allowed values are in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"SparseGINConfig.dropout={self.dropout!r}: allowed values are in [0, 1)")
        if self.alpha <= 0:
            raise ConfigError(f"SparseGINConfig.alpha={self.alpha!r}: allowed values are > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SparseGINConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"SparseGINConfig: unknown fields {unknown}; allowed fields are {sorted(known)}")
        return cls(**values)
