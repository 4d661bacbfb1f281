"""Attention as a graph: from query-key scores to a causal adjacency matrix.

Every function here is pure. Tensors carry any leading batch dimensions, e.g. scores of shape (B, H, T_q, T_k).
Key j sits at position j; query row i at position ``first_query + i``. By default the queries are the *last* T_q
of the T_k keys (first_query = T_k − T_q: no cache, or a cache that grows, as transformers' DynamicCache). A
static cache returns its whole preallocated buffer as keys, filled from the start: there first_query is the
number of tokens cached before the step, and the slots after the queries are empty, which causality excludes.
``A[..., i, j]`` is the weight of the edge from key j to query i: the message that node i receives from node j.

The pipeline, with s = q·kᵀ/√d the scaled scores (paper, Eq. 2 and §2.1.2):

    activation   softmax: A = softmax(α·s)             (α: sharpening, α > 1 sharper, α < 1 smoother)
                 sigmoid: A = σ(β·(s − τ))
                 sharp_softplus: A = log(1 + exp(β·(s − τ))) / β
                 relu: A = ReLU(s − τ)
    refinement   none | threshold: A' = ReLU(A − θ) | top_k: keep the k largest entries of each row
    external     A' = A' + A_ext                       (an adjacency supplied by the caller)
    causality    A'[i, j] = 0 where j > first_query + i  (always, after every other step)
"""

import torch
import torch.nn.functional as F

ACTIVATIONS = ("softmax", "sigmoid", "sharp_softplus", "relu")
REFINEMENTS = ("none", "threshold", "top_k")


def causal_mask(
    t_q: int,
    t_k: int,
    device: torch.device | str | None = None,
    *,
    first_query: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean (T_q, T_k) mask, True where key j may send to query i (j ≤ first_query + i).

    ``first_query`` (an int, or a 0-dim tensor as a static cache counts its tokens) defaults to T_k − T_q.
    """
    if first_query is None:
        first_query = t_k - t_q
    rows = torch.arange(t_q, device=device)[:, None] + first_query
    return torch.arange(t_k, device=device)[None, :] <= rows


def allowed_edges(
    attention_mask: torch.Tensor | None,
    q_len: int,
    k_len: int,
    device: torch.device,
    *,
    first_query: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Edges the attention mask permits, intersected with the causal constraint.  (B or 1, T_q, T_k) bool

    allowed[b, i, j] = mask permits (b, i, j)  and  j <= first_query + i      (first_query: see causal_mask)

    `attention_mask` comes as transformers hands it to an attention function: None (plain causal,
    sdpa's is_causal path), bool (B, 1, T_q, T_k) with True = attend (sdpa), or float additive
    (B, 1, T_q, T_k) with 0 = attend and the dtype's minimum = masked (eager).
    """
    causal = causal_mask(q_len, k_len, device, first_query=first_query)[None]  # (1, T_q, T_k)
    if attention_mask is None:
        return causal
    if attention_mask.dim() != 4 or attention_mask.shape[1] != 1 or attention_mask.shape[-2:] != (q_len, k_len):
        raise ValueError(
            f"attention_mask of shape {tuple(attention_mask.shape)}: expected (B, 1, {q_len}, {k_len}) "
            "(one mask shared by all heads, as transformers' sdpa and eager masks are)"
        )
    if attention_mask.dtype == torch.bool:
        permitted = attention_mask[:, 0]
    else:
        permitted = attention_mask[:, 0] > torch.finfo(attention_mask.dtype).min / 2
    return permitted & causal


def activate(
    scores: torch.Tensor,
    allowed: torch.Tensor,
    activation: str,
    *,
    sharpening: torch.Tensor | float = 1.0,
    sharpness: torch.Tensor | float = 1.0,
    threshold: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Turn scaled scores (..., T_q, T_k) into a non-negative adjacency that is zero wherever ``allowed`` is False.

    ``sharpening`` is α (softmax only); ``sharpness`` β and ``threshold`` τ serve the element-wise activations.
    A softmax row with no allowed key (a padded query) is all zeros rather than NaN.
    """
    if activation == "softmax":
        logits = (sharpening * scores).masked_fill(~allowed, torch.finfo(scores.dtype).min)
        adjacency = torch.softmax(logits, dim=-1)
    elif activation == "sigmoid":
        adjacency = torch.sigmoid(sharpness * (scores - threshold))
    elif activation == "sharp_softplus":
        adjacency = F.softplus(sharpness * (scores - threshold)) / sharpness
    elif activation == "relu":
        adjacency = F.relu(scores - threshold)
    else:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return adjacency * allowed


def refine(adjacency: torch.Tensor, refinement: str, *, threshold: float = 0.0, top_k: int = 1) -> torch.Tensor:
    """Sparsify an adjacency (..., T_q, T_k): ``threshold`` gives ReLU(A − θ), ``top_k`` keeps each row's k largest."""
    if refinement == "none":
        return adjacency
    if refinement == "threshold":
        return F.relu(adjacency - threshold)
    if refinement == "top_k":
        k = min(top_k, adjacency.shape[-1])
        kth_largest = adjacency.topk(k, dim=-1).values[..., -1:]
        return adjacency * (adjacency >= kth_largest)
    raise ValueError(f"refinement must be one of {REFINEMENTS}, got {refinement!r}")


def external_edges(external: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """A caller's adjacency under the causal mask: (B, T_q, T_k), shared by all heads, → (B, 1, T_q, T_k);
    (B, H, T_q, T_k) is kept per head."""
    if external.dim() == 3:
        external = external.unsqueeze(1)
    return external * allowed


def add_external(adjacency: torch.Tensor, external: torch.Tensor | None, allowed: torch.Tensor) -> torch.Tensor:
    """A' + A_ext, with A_ext masked like A' so that causality still holds."""
    if external is None:
        return adjacency
    return adjacency + external_edges(external.to(adjacency.dtype), allowed)
