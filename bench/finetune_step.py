"""Time and peak memory of one fine-tuning step on a SmolLM2-shaped model: Sparse-GIN against a LoRA with as many
trainable parameters, with a frozen forward as the floor.

The base is a LlamaForCausalLM with SmolLM2-135M's shape (30 layers, hidden 576, 9 query / 3 key-value heads of
64, FFN 1536, vocabulary 49,152, tied embeddings, RoPE θ = 1e5) and random weights: timing does not depend on the
weights, and nothing is downloaded. Every variant starts from the same seed, so from the same base weights.
    frozen      the base under torch.no_grad(), forward with labels (the LM head and the loss included): the floor
    lora        peft LoRA on q/k/v/o, its rank chosen by ginformer.adapter.lora.lora_config_for_budget so that its
                trainable count is closest to Sparse-GIN's
    sparse-gin  ginformer.adapter.get_sparse_gin_model(base, SparseGINConfig()): the paper's defaults, d_gnn 155
A step of lora and sparse-gin is forward with labels, backward, and one AdamW step on the trainable parameters.
Before timing, all three are checked to give the same loss (LoRA's B and Sparse-GIN's λ start at zero).

Each length T uses batch = max(1, tokens // T) (T = 256, 512, 1024 at the default 1024 tokens: batch 4, 2, 1).
Time: the three in one process, round-robin, median of --repeats steps after a warm-up step. Memory: each
(T, variant) in a fresh process, peak above the step's start after a warm-up step (bench/common.py).

    python bench/finetune_step.py                          # T = 256, 512, 1024 on the 30-layer model
    python bench/finetune_step.py --layers 4 --repeats 2   # a quick run
"""

import argparse
import os

import torch
from common import (
    MIB,
    add_common_args,
    machine,
    measure_isolated,
    peak_memory,
    print_table,
    save_results,
    setup,
    smollm2_config,
    time_side_by_side,
)
from transformers import LlamaForCausalLM

from ginformer.adapter import SparseGINConfig, get_sparse_gin_model
from ginformer.adapter.lora import get_lora_model, lora_config_for_budget

VARIANTS = ("frozen", "lora", "sparse-gin")


def build_variant(variant: str, layers: int, budget: int, device: torch.device, dtype: torch.dtype, seed: int):
    """The model of one variant, on the base weights that `seed` gives; `budget` is the LoRA's target count."""
    torch.manual_seed(seed)
    base = LlamaForCausalLM(smollm2_config(layers)).to(device=device, dtype=dtype)
    if variant == "frozen":
        return base.requires_grad_(False).eval()
    if variant == "lora":
        config, _ = lora_config_for_budget(base, budget=budget, target="attention")
        return get_lora_model(base, config).train()
    if variant == "sparse-gin":
        return get_sparse_gin_model(base, SparseGINConfig()).train()
    raise ValueError(f"variant={variant!r}: allowed values are {', '.join(VARIANTS)}")


def sparse_gin_trainable(layers: int) -> int:
    """Sparse-GIN's trainable-parameter count on the SmolLM2-shaped base: the budget the LoRA is matched to."""
    base = LlamaForCausalLM(smollm2_config(layers))
    trainable, _ = get_sparse_gin_model(base, SparseGINConfig()).get_nb_trainable_parameters()
    return trainable


def step_closure(model: torch.nn.Module, variant: str, input_ids: torch.Tensor):
    """One step: a no-grad forward for the frozen base; forward, backward, AdamW for the adapters."""
    if variant == "frozen":

        def forward() -> None:
            with torch.no_grad():
                model(input_ids=input_ids, labels=input_ids)

        return forward

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def check_same_start(models: dict[str, torch.nn.Module], input_ids: torch.Tensor) -> None:
    """Every variant must compute the base's loss before training: the same weights, adapters at zero."""
    losses = {}
    with torch.no_grad():
        for name, model in models.items():
            training = model.training
            model.eval()
            losses[name] = model(input_ids=input_ids, labels=input_ids).loss.item()
            model.train(training)
    reference = losses["frozen"] if "frozen" in losses else next(iter(losses.values()))
    if any(abs(loss - reference) > 1e-3 * abs(reference) for loss in losses.values()):
        raise RuntimeError(f"the variants start from different losses {losses}: they are not the same base")


def step_memory(
    variant: str, length: int, batch: int, layers: int, budget: int, device: str, dtype: str, threads: int, seed: int
) -> dict:
    """Peak memory of one variant's step after a warm-up step; meant for a fresh process."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    model = build_variant(variant, layers, budget, device, getattr(torch, dtype), seed)
    input_ids = torch.randint(0, model.config.vocab_size, (batch, length), device=device)
    step = step_closure(model, variant, input_ids)
    step()
    return peak_memory(step, device)


def parse_args(description: str = __doc__, **defaults) -> argparse.Namespace:
    """The flags; `defaults` replaces the defaults of some (long_context.py's other lengths and layers)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per batch: batch = max(1, tokens // T)")
    parser.add_argument("--layers", type=int, default=30, help="decoder layers (SmolLM2-135M: 30)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--name", default="finetune_step", help="the JSON copy's name: <--out>/<name>.json")
    parser.set_defaults(**defaults)
    return add_common_args(parser).parse_args()


def main(args: argparse.Namespace | None = None) -> None:
    args = args or parse_args()
    device, dtype = setup(args)
    budget = sparse_gin_trainable(args.layers)
    lora_config, lora_count = lora_config_for_budget(
        LlamaForCausalLM(smollm2_config(args.layers)), budget=budget, target="attention"
    )
    print(
        f"machine: {machine()}; dtype {args.dtype}; SmolLM2-shaped, {args.layers} layers; trainable: "
        f"sparse-gin {budget:,}, lora r={lora_config.r} {lora_count:,}"
    )
    rows, results = [], []
    for length in args.lengths:
        batch = max(1, args.tokens // length)
        input_ids = torch.randint(0, 49152, (batch, length), device=device)
        models = {name: build_variant(name, args.layers, budget, device, dtype, args.seed) for name in args.variants}
        if length == min(args.lengths):
            check_same_start(models, input_ids)
        steps = {name: step_closure(model, name, input_ids) for name, model in models.items()}
        seconds = time_side_by_side(steps, device, repeats=args.repeats)
        del models, steps  # free this process's copies before the fresh processes measure memory
        memory = {
            name: measure_isolated(
                step_memory,
                variant=name,
                length=length,
                batch=batch,
                layers=args.layers,
                budget=budget,
                device=args.device,
                dtype=args.dtype,
                threads=torch.get_num_threads(),
                seed=args.seed,
            )
            for name in args.variants
        }
        lora_seconds = seconds.get("lora", float("nan"))
        lora_bytes = memory.get("lora", {}).get("peak_bytes", float("nan"))
        for name in args.variants:
            peak, rss = memory[name]["peak_bytes"], memory[name]["rss_delta_bytes"]
            rows.append([
                length, batch, name, seconds[name] * 1000, batch * length / seconds[name], seconds[name] / lora_seconds,
                peak / MIB, "n/a" if rss is None else rss / MIB, peak / lora_bytes,
            ])
        results.append({"length": length, "batch": batch, "seconds": seconds, "memory": memory})
    print_table(
        f"fine-tuning step, SmolLM2-shaped, {args.layers} layers (time: median of {args.repeats}, round-robin; "
        "memory: peak MiB above the step's start, fresh process; RSS: the kernel's cross-check, MiB)",
        ["T", "batch", "variant", "ms/step", "tokens/s", "time × lora", "peak MiB", "RSS MiB", "mem × lora"],
        rows,
    )
    print(f"load average after the run: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    save_results(args, args.name, {"budget": budget, "lora_r": lora_config.r, "rows": results})


if __name__ == "__main__":
    main()
