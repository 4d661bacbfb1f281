"""Peak memory of one Sparse-GIN training step on the bundled SmolLM2-135M-Instruct at T = 1024: the frozen base in
bfloat16 with gradient checkpointing against the float32 run, and the adapter's gradients checked against it.

    fp32          float32 base, activations kept for backward: the reference
    fp32+ckpt     float32 base, gradient checkpointing: the same gradients, less memory
    bf16          bfloat16 base (the adapter stays float32)
    bf16+ckpt     bfloat16 base and gradient checkpointing: what a 3B base needs

A step is forward with labels and backward (no optimizer: the gradients are what is compared), batch 1, T tokens
of bundled GSM8K text, the adapter with the paper's defaults but dropout 0 and every λ = 0.1 (so that every
adapter parameter gets a gradient), the same seed in every variant. Each variant runs in a fresh process; its
peak is measured on the second step, above what was held before it (bench/common.py: allocator bytes from
torch.profiler, and the kernel's RSS high-water mark as a cross-check). Gradients, over all adapter parameters:
‖g − g_ref‖ / ‖g_ref‖ and the cosine of g and g_ref, against the fp32 run and against the same dtype without
checkpointing (which isolates what checkpointing changes: nothing).

    python bench/scale_knobs.py                 # T = 1024, 30 layers: a few minutes on 2 CPU cores
    python bench/scale_knobs.py --length 256    # a quick run
"""

import argparse
import os
import tempfile
import time

import torch
from common import MIB, machine, measure_isolated, peak_memory, print_table, save_results

from ginformer.adapter import SparseGINConfig, get_sparse_gin_model
from ginformer.pretrained import load_base_model, smollm2_gguf_path

VARIANTS = {
    "fp32": (torch.float32, False),
    "fp32+ckpt": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "bf16+ckpt": (torch.bfloat16, True),
}


def gsm8k_tokens(tokenizer, length: int) -> torch.Tensor:
    """The first `length` tokens of the bundled GSM8K rows, run together: real text rather than random ids."""
    from importlib import resources

    text = (resources.files("ginformer.bundled") / "gsm8k" / "train.jsonl").read_text()[: 20 * length]
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :length]
    if ids.shape[1] < length:
        raise ValueError(f"the bundled text gave {ids.shape[1]} tokens, fewer than --length {length}")
    return ids


def one_variant(variant: str, length: int, threads: int, grads_file: str) -> dict:
    torch.set_num_threads(threads)
    dtype, checkpointing = VARIANTS[variant]
    base, tokenizer = load_base_model("smollm2", dtype=dtype)
    torch.manual_seed(0)
    model = get_sparse_gin_model(base, SparseGINConfig(dropout=0.0))
    with torch.no_grad():
        for adapter in model.adapters:
            adapter.scale.fill_(0.1)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    ids = gsm8k_tokens(tokenizer, length)
    losses = []

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())

    step()  # warm-up: the step measured next starts as every later step does
    started = time.perf_counter()
    memory = peak_memory(step, torch.device("cpu"))
    seconds = time.perf_counter() - started  # under the profiler: an upper bound, for orientation only
    torch.save({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, grads_file)
    return {"loss": losses[-1], "step_s_profiled": seconds, **memory,
            "base_dtype": str(dtype).removeprefix("torch."), "checkpointing": checkpointing}


def gradient_agreement(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(‖g − g_ref‖ / ‖g_ref‖, cos(g, g_ref)), all adapter parameters flattened into one vector each."""
    if grads.keys() != reference.keys():
        raise ValueError(f"gradients of different parameters: {sorted(grads.keys() ^ reference.keys())[:5]}")
    # float64: over millions of entries a float32 cosine is off in its third decimal
    g = torch.cat([grads[n].double().flatten() for n in sorted(reference)])
    r = torch.cat([reference[n].double().flatten() for n in sorted(reference)])
    return ((g - r).norm() / r.norm()).item(), torch.nn.functional.cosine_similarity(g, r, dim=0).item()


def main() -> None:
    # CPU only, and the dtypes and seed are the variants' own: none of bench/common.py's --device/--dtype/--seed.
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=1024, help="tokens per step (batch 1)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each variant's process")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for a JSON copy of the results")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    smollm2_gguf_path()  # fail here, not in a subprocess, when the bundled model is missing
    threads = args.threads
    results, grads = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for variant in VARIANTS:
            path = os.path.join(scratch, f"{variant}.pt")
            results[variant] = measure_isolated(one_variant, variant=variant, length=args.length, threads=threads,
                                                grads_file=path)
            grads[variant] = torch.load(path)
    reference = results["fp32"]
    rows = []
    for variant, result in results.items():
        error, cosine = gradient_agreement(grads[variant], grads["fp32"])
        without_checkpointing = variant.removesuffix("+ckpt")
        same_dtype_error, _ = gradient_agreement(grads[variant], grads[without_checkpointing])
        result.update(grad_rel_error_vs_fp32=error, grad_cosine_vs_fp32=cosine,
                      grad_rel_error_vs_no_checkpointing=same_dtype_error)
        peak, rss = result["peak_bytes"], result["rss_delta_bytes"] or 0
        rows.append([variant, result["loss"], peak / MIB, peak / reference["peak_bytes"], rss / MIB, error, cosine,
                     same_dtype_error, result["step_s_profiled"]])
    print_table(f"Sparse-GIN step on SmolLM2-135M-Instruct, T = {args.length}, batch 1, {threads} thread(s) "
                f"[{machine()}]",
                ["variant", "loss", "peak MiB", "× fp32", "RSS Δ MiB", "err vs fp32", "cos vs fp32",
                 "err vs no ckpt", "step s*"],
                rows)
    print("* under torch.profiler (memory profiling): for orientation, not a timing")
    save_results(args, "scale_knobs", {"length": args.length, "threads": threads, "variants": results})


if __name__ == "__main__":
    main()
