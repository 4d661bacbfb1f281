"""Time one training step (forward, backward, AdamW) of a small GinformerForCausalLM per attention kind.

Variants share every config field but the attention options:
    standard     transformers' LlamaAttention (sdpa)
    gin          GIN-Attention fast path: softmax adjacency, A'·X through SDPA, one batched MLP for all heads
    gin-sigmoid  GIN-Attention with a sigmoid adjacency: materialises (B, H, T, T)
    pna          PNA-Attention as users get it: materialises (B, H, T, T); its aggregation (max over neighbours
                 block by block included) goes through torch.compile (config.pna_compile, the default)
    pna-eager    the same with pna_compile=False
Each length T uses batch = max(1, tokens // T), so every row of the table processes the same number of tokens.
The dense variants are skipped above --max-dense-length (their time and memory grow as T²).

    python bench/attention_step.py                        # CPU defaults: T = 256, 1024, 4096
    python bench/attention_step.py --lengths 256 --repeats 3
    python bench/attention_step.py --compile              # every model through torch.compile (inductor)
"""

import argparse

import torch
from common import (
    add_common_args,
    build_model,
    machine,
    model_config,
    print_table,
    save_results,
    setup,
    time_side_by_side,
    training_step,
)

VARIANTS = {
    "standard": dict(kind="standard"),
    "gin": dict(kind="gin"),
    "gin-sigmoid": dict(kind="gin", adjacency_activation="sigmoid"),
    "pna": dict(kind="pna"),
    "pna-eager": dict(kind="pna", pna_compile=False),
}
DENSE = {"gin-sigmoid", "pna", "pna-eager"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per batch: batch = max(1, tokens // T)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-dense-length", type=int, default=None, help="default: 1024 on CPU, no limit on CUDA")
    parser.add_argument("--compile", action="store_true", help="wrap every model in torch.compile (the warm-up compiles)")
    return add_common_args(parser).parse_args()


def main() -> None:
    args = parse_args()
    device, dtype = setup(args)
    max_dense = args.max_dense_length or (1024 if device.type == "cpu" else max(args.lengths))
    print(f"machine: {machine()}; dtype {args.dtype}; hidden {args.hidden}, {args.heads} heads, {args.layers} layers")
    rows, results = [], []
    for length in args.lengths:
        batch = max(1, args.tokens // length)
        input_ids = torch.randint(0, 256, (batch, length), device=device)
        steps, skipped = {}, {}
        for name in args.variants:
            if name in DENSE and length > max_dense:
                skipped[name] = "skipped: dense T×T above --max-dense-length"
                continue
            options = dict(VARIANTS[name])
            kind = options.pop("kind")
            config = model_config(kind, hidden=args.hidden, heads=args.heads, layers=args.layers, **options)
            try:
                model = build_model(config, device, dtype)
                steps[name] = training_step(torch.compile(model) if args.compile else model, input_ids)
                steps[name]()  # warm-up; also where a variant too big for the device fails
            except torch.OutOfMemoryError:
                steps.pop(name, None)
                skipped[name] = "out of memory"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        seconds = time_side_by_side(steps, device, repeats=args.repeats, warmup=0)
        reference = seconds.get("standard")
        for name in args.variants:
            if name not in seconds:
                rows.append([length, batch, name, skipped[name], "", ""])
                continue
            ratio = seconds[name] / reference if reference else float("nan")
            tokens_per_s = batch * length / seconds[name]
            rows.append([length, batch, name, seconds[name] * 1000, tokens_per_s, ratio])
            results.append(dict(length=length, batch=batch, variant=name, seconds=seconds[name], ratio=ratio))
        del steps
    print_table(
        f"training step{' (torch.compile)' if args.compile else ''}, median of {args.repeats} (round-robin)",
        ["T", "batch", "variant", "ms/step", "tokens/s", "× standard"],
        rows,
    )
    save_results(args, "attention_step", {"rows": results})


if __name__ == "__main__":
    main()
