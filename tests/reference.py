"""Naive reference implementations: the paper's equations written out with explicit T×T matrices and Python
loops over heads and nodes. Slow and plain on purpose: they are the oracles for the fast paths."""

import math

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


def naive_headwise_mlp(z: torch.Tensor, mlp, head: int) -> torch.Tensor:
    hidden = z @ mlp.w_in[head] + mlp.b_in[head]
    if mlp.norm_weight is not None:
        hidden = hidden / torch.sqrt(hidden.pow(2).mean(-1, keepdim=True) + mlp.norm_eps) * mlp.norm_weight[head]
    return F.silu(hidden) @ mlp.w_out[head] + mlp.b_out[head]


def naive_adjacency(scores: torch.Tensor, config, module) -> torch.Tensor:
    """(T, T) scores of one head and one sequence → the refined causal adjacency."""
    t = scores.shape[-1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    activation = config.adjacency_activation
    alpha, beta, tau = module.sharpening, module.sharpness, module.threshold
    if activation == "softmax":
        adjacency = torch.softmax((alpha * scores).masked_fill(~causal, float("-inf")), dim=-1)
    elif activation == "sigmoid":
        adjacency = torch.sigmoid(beta * (scores - tau))
    elif activation == "sharp_softplus":
        adjacency = torch.log(1 + torch.exp(beta * (scores - tau))) / beta
    else:
        adjacency = torch.clamp(scores - tau, min=0)
    adjacency = adjacency * causal
    if config.refinement == "threshold":
        adjacency = torch.clamp(adjacency - config.refinement_threshold, min=0)
    elif config.refinement == "top_k":
        rows = []
        for row in adjacency:
            kth = sorted(row.tolist(), reverse=True)[min(config.adjacency_top_k, t) - 1]
            rows.append(torch.where(row >= kth, row, torch.zeros_like(row)))
        adjacency = torch.stack(rows)
    return adjacency * causal


def naive_pna(x: torch.Tensor, adjacency: torch.Tensor, config) -> torch.Tensor:
    """Node by node, neighbour by neighbour. x (T, D), adjacency (T, T) → (T, S·G·D)."""
    eps = 1e-5
    rows = []
    for i in range(adjacency.shape[0]):
        neighbours = [j for j in range(adjacency.shape[1]) if adjacency[i, j] != 0]
        weights = adjacency[i]
        total = sum((weights[j] * x[j] for j in neighbours), torch.zeros_like(x[0]))
        degree = weights.sum().clamp_min(eps)
        mean = total / degree
        squares = sum((weights[j] * x[j] ** 2 for j in neighbours), torch.zeros_like(x[0])) / degree
        variance = torch.clamp(squares - mean**2, min=0)
        messages = [weights[j] * x[j] for j in neighbours]
        values = {
            "sum": total,
            "mean": mean,
            "var": variance,
            "std": torch.sqrt(variance + eps),
            "max": torch.stack(messages).max(0).values if messages else torch.zeros_like(x[0]),
            "min": torch.stack(messages).min(0).values if messages else torch.zeros_like(x[0]),
        }
        log_count = math.log(len(neighbours) + 1)
        delta = config.pna_degree_delta
        scale = {"identity": 1.0, "amplification": log_count / delta, "attenuation": delta / max(log_count, eps)}
        rows.append(torch.cat([values[a] * scale[s] for s in config.pna_scalers for a in config.pna_aggregators]))
    return torch.stack(rows)


def naive_graph_attention(module, hidden, position_embeddings, external=None) -> torch.Tensor:
    """GIN- or PNA-Attention for a full causal sequence, one batch element and one head at a time."""
    config = module.config
    bsz, t, _ = hidden.shape
    heads, d = config.num_attention_heads, module.head_dim
    q = module.q_proj(hidden).view(bsz, t, heads, d).transpose(1, 2)
    k = module.k_proj(hidden).view(bsz, t, -1, d).transpose(1, 2)
    if module.v_proj is None:
        x = hidden.view(bsz, t, heads, d).transpose(1, 2)
    else:
        x = module.v_proj(hidden).view(bsz, t, -1, d).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    causal = torch.tril(torch.ones(t, t))
    outputs = []
    for b in range(bsz):
        head_outputs = []
        for h in range(heads):
            kh = k[b, h * k.shape[1] // heads]
            xh = x[b, h * x.shape[1] // heads]
            adjacency = naive_adjacency(q[b, h] @ kh.T / math.sqrt(d), config, module)
            if external is not None:
                adjacency = adjacency + (external[b] if external.dim() == 3 else external[b, h]) * causal
            if config.layer_kinds()[module.layer_idx] == "gin":
                s = 1 + module.gin_eps if config.gin_self_term == "one_plus_eps" else module.gin_eps
                head_outputs.append(naive_headwise_mlp(s * xh + adjacency @ xh, module.mlp, h))
            else:
                aggregated = naive_headwise_mlp(naive_pna(xh, adjacency, config), module.mlp, h)
                scores = (q[b, h] @ kh.T / math.sqrt(d)).masked_fill(causal == 0, float("-inf"))
                standard = torch.softmax(scores, dim=-1) @ xh
                blend = torch.sigmoid(module.blend_logit)
                head_outputs.append((1 - blend) * standard + blend * aggregated)
        outputs.append(torch.cat(head_outputs, dim=-1))
    return module.o_proj(torch.stack(outputs))


def naive_rollout(attentions: list[torch.Tensor]) -> list[torch.Tensor]:
    """Abnar & Zuidema's attention rollout, entry by entry: per layer, average the (H, T, T) heads, add the identity,
    renormalise every row to 1, and multiply onto the layers below."""
    t = attentions[0].shape[-1]
    rollout = [[float(i == j) for j in range(t)] for i in range(t)]
    result = []
    for attention in attentions:
        averaged = attention.mean(dim=0).tolist()
        mixed = []
        for i in range(t):
            row = [averaged[i][j] + (1.0 if i == j else 0.0) for j in range(t)]
            total = sum(row)
            mixed.append([value / total for value in row])
        rollout = [[sum(mixed[i][m] * rollout[m][j] for m in range(t)) for j in range(t)] for i in range(t)]
        result.append(torch.tensor(rollout))
    return result
