"""Our GIN-Attention against a naive re-implementation of the original research code's path, kept as a baseline.

The baseline does what the original code does, written plainly (our own code, not a copy):
    eager attention that materialises the (B, H, T, T) adjacency A = softmax(α·q·kᵀ/√d + causal mask),
    a Python loop over heads, each head with its own nn.Module MLP (nn.Linear → nn.RMSNorm → SiLU → nn.Linear),
    and the self term ε·x_h (not GIN's (1 + ε)·x_h).
Ours (ginformer.attention.GINAttention) runs the same maths with gin_self_term="eps": A'·X through SDPA with α
folded into q, and all heads' MLPs as one batched einsum. Before measuring, the baseline is loaded with our
layer's weights and both outputs are checked to agree, so the two sides compute the same function.
A third column, transformers' LlamaAttention with sdpa (plain attention, o_proj included), shows the floor
that any SDPA-based layer of this width sits on: projections, RoPE and the attention kernel.

Unit: one attention layer's training step (forward, backward of mean(out²), AdamW step) on hidden states that
require grad, as inside a model. Time: both layers in this process, round-robin, median of --repeats steps after
a warm-up step. Memory: each (T, implementation) in a fresh process, peak above the step's start (common.py).

    python bench/original_baseline.py            # T = 256, 512, 1024, 2048 at batch 4, hidden 512, 8 heads
"""

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from common import (
    MIB,
    add_common_args,
    layer_inputs,
    layer_training_step,
    machine,
    measure_isolated,
    model_config,
    peak_memory,
    print_table,
    save_results,
    setup,
    time_side_by_side,
)
from transformers.models.llama.modeling_llama import LlamaAttention, apply_rotary_pos_emb

from ginformer.attention import GINAttention


class OriginalHeadMLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, eps: float):
        super().__init__()
        self.fc_in = nn.Linear(d_in, d_hidden)
        self.norm = nn.RMSNorm(d_hidden, eps=eps)
        self.fc_out = nn.Linear(d_hidden, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.silu(self.norm(self.fc_in(x))))


class OriginalGINAttention(nn.Module):
    """The naive path: dense (B, H, T, T) adjacency, one MLP module per head, ε·x self term, no o_proj."""

    def __init__(self, config):
        super().__init__()
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        width = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, width, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, width, bias=config.attention_bias)
        self.sharpening = nn.Parameter(torch.tensor(1.0))
        self.gin_eps = nn.Parameter(torch.tensor(0.0))
        hidden = max(1, round(config.gin_mlp_multiplier * self.head_dim))
        self.head_mlps = nn.ModuleList(
            OriginalHeadMLP(self.head_dim, hidden, config.rms_norm_eps) for _ in range(self.num_heads)
        )

    def forward(self, hidden_states: torch.Tensor, position_embeddings) -> torch.Tensor:
        bsz, t, _ = hidden_states.shape
        shape = (bsz, t, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)  # (B, H, T, D)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, T, T)
        causal = torch.full((t, t), float("-inf"), device=scores.device, dtype=scores.dtype).triu(1)
        adjacency = torch.softmax(self.sharpening * scores + causal, dim=-1)  # (B, H, T, T)
        heads = [
            mlp(self.gin_eps * value[:, h] + adjacency[:, h] @ value[:, h])  # (B, T, D)
            for h, mlp in enumerate(self.head_mlps)
        ]
        return torch.stack(heads, dim=2).reshape(bsz, t, -1)  # (B, T, H·D)


def copy_weights(ours: GINAttention, baseline: OriginalGINAttention) -> None:
    """Give the baseline our layer's parameters (HeadwiseMLP stores W as (H, d_in, d_out), nn.Linear as (out, in))."""
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(baseline, name).load_state_dict(getattr(ours, name).state_dict())
        baseline.sharpening.copy_(ours.sharpening)
        baseline.gin_eps.copy_(ours.gin_eps)
        for h, mlp in enumerate(baseline.head_mlps):
            mlp.fc_in.weight.copy_(ours.mlp.w_in[h].T)
            mlp.fc_in.bias.copy_(ours.mlp.b_in[h])
            mlp.norm.weight.copy_(ours.mlp.norm_weight[h])
            mlp.fc_out.weight.copy_(ours.mlp.w_out[h].T)
            mlp.fc_out.bias.copy_(ours.mlp.b_out[h])


def training_steps(
    length: int, batch: int, hidden: int, heads: int, device: torch.device, dtype: torch.dtype, seed: int
) -> dict:
    """Training-step closures of the baseline and of our layer (same weights and inputs, outputs checked to agree),
    and of transformers' LlamaAttention with sdpa on the same inputs."""
    torch.manual_seed(seed)
    config = model_config("gin", hidden=hidden, heads=heads, layers=1, gin_self_term="eps")
    ours = GINAttention(config, layer_idx=0)
    ours.mlp.reset_parameters(std=0.2)  # large enough that a mis-wired MLP fails the parity check below
    baseline = OriginalGINAttention(config)
    copy_weights(ours, baseline)
    ours, baseline = ours.to(device, dtype), baseline.to(device, dtype)
    hidden_states, position_embeddings = layer_inputs(config, batch, length, device, dtype)
    with torch.no_grad():
        expected = ours(hidden_states, position_embeddings)[0]
        tolerance = 1e-4 if dtype == torch.float32 else 5e-2  # bfloat16 keeps ~3 significant digits
        torch.testing.assert_close(
            baseline(hidden_states, position_embeddings), expected, rtol=tolerance, atol=tolerance
        )
    config._attn_implementation = "sdpa"
    llama = LlamaAttention(config, layer_idx=0).to(device, dtype)
    return {
        "original": layer_training_step(baseline, hidden_states, position_embeddings),
        "ours": layer_training_step(ours, hidden_states, position_embeddings),
        "llama-sdpa": layer_training_step(llama, hidden_states, position_embeddings),
    }


def step_memory(implementation: str, device: str, dtype: str, threads: int, **shape) -> dict:
    """Peak memory of one implementation's step after a warm-up step; meant for a fresh process."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    step = training_steps(device=device, dtype=getattr(torch, dtype), **shape)[implementation]
    step()
    return peak_memory(step, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = add_common_args(parser).parse_args()
    device, dtype = setup(args)
    print(f"machine: {machine()}; dtype {args.dtype}; batch {args.batch}, hidden {args.hidden}, {args.heads} heads")
    rows, results = [], []
    for length in args.lengths:
        shape = dict(length=length, batch=args.batch, hidden=args.hidden, heads=args.heads, seed=args.seed)
        steps = training_steps(device=device, dtype=dtype, **shape)
        seconds = time_side_by_side(steps, device, repeats=args.repeats)
        del steps  # free this process's copies before the fresh processes measure memory
        memory = {
            name: measure_isolated(
                step_memory,
                implementation=name,
                device=args.device,
                dtype=args.dtype,
                threads=torch.get_num_threads(),
                **shape,
            )
            for name in seconds
        }
        peak = {name: m["peak_bytes"] / MIB for name, m in memory.items()}
        rss = {name: m["rss_delta_bytes"] for name, m in memory.items()}
        rss = {name: "n/a" if value is None else value / MIB for name, value in rss.items()}
        rows.append([
            length,
            seconds["original"] * 1000, seconds["ours"] * 1000, seconds["llama-sdpa"] * 1000,
            seconds["original"] / seconds["ours"],
            peak["original"], peak["ours"], peak["llama-sdpa"], peak["original"] / peak["ours"],
            rss["original"], rss["ours"],
        ])
        results.append({"length": length, "seconds": seconds, "memory": memory})
    print_table(
        f"one attention layer's training step, batch {args.batch} (time: median of {args.repeats}; "
        "memory: peak MiB above the step's start; RSS: the kernel's cross-check, MiB)",
        ["T", "orig ms", "ours ms", "llama ms", "speed-up"]
        + ["orig MiB", "ours MiB", "llama MiB", "mem ratio", "orig RSS", "ours RSS"],
        rows,
    )
    save_results(args, "original_baseline", {"rows": results})


if __name__ == "__main__":
    main()
