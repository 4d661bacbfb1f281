"""Greedy generation speed with a KV cache, per attention kind, and for a Sparse-GIN-adapted model.

Variants (same sizes; random weights, since only speed is measured):
    standard     GinformerForCausalLM with attention_kind="standard", i.e. a plain Llama
    gin          GIN-Attention (fast path)
    pna          PNA-Attention
    sparse-gin   the standard model, frozen, with ginformer.adapter's Sparse-GIN branch in every layer
Every variant generates exactly --new-tokens tokens (no end-of-sequence token) after a random prompt. Before
timing, each variant's cached greedy output is checked against an uncached run (fast but wrong is not fast).
With --compiled-static, a second table times each of COMPILED_STATIC_VARIANTS twice, side by side: eager with the
default (dynamic) cache, and with a static cache whose decoding steps generate compiles (transformers' own
compile_config path, which a GPU takes by itself); its check is static-compiled tokens == eager tokens.
With --smollm2 the base is a LlamaForCausalLM of SmolLM2-135M's shape (30 layers unless --layers, hidden 576,
9 query / 3 key-value heads, FFN 1536, vocabulary 49,152; random weights), and only standard and sparse-gin run.

    python bench/generation.py                    # batch 1, prompt 64, 128 new tokens
    python bench/generation.py --smollm2 --new-tokens 64
    python bench/generation.py --compiled-static --variants standard gin pna
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
    smollm2_config,
    time_side_by_side,
)
from transformers import CompileConfig, LlamaForCausalLM

from ginformer.adapter import SparseGINConfig, get_sparse_gin_model

VARIANTS = ("standard", "gin", "pna", "sparse-gin")
# The variants --compiled-static times.
COMPILED_STATIC_VARIANTS = ("standard", "gin", "pna", "sparse-gin")


def build_variant(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    torch.manual_seed(args.seed)  # sparse-gin and standard share their base weights
    kind = "standard" if name == "sparse-gin" else name
    if args.smollm2:
        model = LlamaForCausalLM(smollm2_config(args.layers)).to(device=device, dtype=dtype)
    else:
        model = build_model(model_config(kind, hidden=args.hidden, heads=args.heads, layers=args.layers), device, dtype)
    if name == "sparse-gin":
        model = get_sparse_gin_model(model, SparseGINConfig())
    model.eval()
    model.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    model.generation_config.pad_token_id = 0
    return model


def greedy(model, prompt: torch.Tensor, new_tokens: int, use_cache: bool = True, **options) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, use_cache=use_cache, **options)


def static_compiled(device: torch.device) -> dict:
    """generate's options for a static cache with compiled decoding steps: transformers' default CompileConfig,
    which generate applies by itself on CUDA; _compile_all_devices asks for it on CPU (the prefill stays eager)."""
    # Each adapted layer's hooks are frames of their own to dynamo (one tap object per layer): let all of them
    # compile instead of falling back to eager after the default limit of 8.
    torch._dynamo.config.recompile_limit = 256
    compile_config = CompileConfig()
    compile_config._compile_all_devices = device.type != "cuda"
    return dict(cache_implementation="static", compile_config=compile_config)


def compiled_static_table(models: dict, prompt: torch.Tensor, args: argparse.Namespace, device: torch.device) -> list:
    """Eager default-cache against compiled static-cache generation, per model, timed round-robin in one run."""
    static = static_compiled(device)
    steps = {}
    for name, model in models.items():
        steps[f"{name} eager"] = lambda model=model: greedy(model, prompt, args.new_tokens)
        steps[f"{name} static"] = lambda model=model: greedy(model, prompt, args.new_tokens, **static)
    # The first static call compiles (tens of seconds per model on CPU): time_side_by_side's warm-up absorbs it.
    seconds = time_side_by_side(steps, device, repeats=args.repeats)
    rows, results = [], []
    base_eager, base_compiled = seconds.get("standard eager"), seconds.get("standard static")
    for name, model in models.items():
        eager, compiled = seconds[f"{name} eager"], seconds[f"{name} static"]
        same = torch.equal(greedy(model, prompt, args.new_tokens, **static), greedy(model, prompt, args.new_tokens))
        versus = [eager / base_eager, compiled / base_compiled] if base_eager else [float("nan")] * 2
        rows.append([name, eager * 1000, compiled * 1000, compiled / eager, *versus, "yes" if same else "NO"])
        results.append(dict(variant=name, eager_seconds=eager, static_compiled_seconds=compiled, tokens_match=same))
    print_table(
        f"greedy generation, eager with the default cache against compiled with a static cache, median of "
        f"{args.repeats} (round-robin)",
        ["variant", "eager ms", "static compiled ms", "static compiled × eager", "eager × standard",
         "static compiled × standard", "same tokens"],
        rows,
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=64, help="prompt length in tokens")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, help="default 256; SmolLM2's own with --smollm2")
    parser.add_argument("--heads", type=int, help="default 4; SmolLM2's own with --smollm2")
    parser.add_argument("--layers", type=int, default=None, help="default: 4, or 30 with --smollm2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=None, choices=VARIANTS)
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M's shape; variants standard, sparse-gin")
    parser.add_argument("--name", default="generation", help="the JSON copy's name: <--out>/<name>.json")
    parser.add_argument(
        "--compiled-static",
        action="store_true",
        help=f"also time compiled static-cache against eager default-cache generation ({', '.join(COMPILED_STATIC_VARIANTS)})",
    )
    args = add_common_args(parser).parse_args()
    args.layers = args.layers or (30 if args.smollm2 else 4)
    args.variants = args.variants or (["standard", "sparse-gin"] if args.smollm2 else list(VARIANTS))
    if args.smollm2 and not set(args.variants) <= {"standard", "sparse-gin"}:
        parser.error("--smollm2 runs the variants standard and sparse-gin only")
    if args.smollm2 and (args.hidden or args.heads):
        parser.error("--smollm2 fixes the shape: --hidden and --heads do not apply")
    args.hidden, args.heads = args.hidden or 256, args.heads or 4
    device, dtype = setup(args)
    shape = "SmolLM2-135M-shaped" if args.smollm2 else f"hidden {args.hidden}, {args.heads} heads"
    print(
        f"machine: {machine()}; dtype {args.dtype}; {shape}, {args.layers} layers; "
        f"batch {args.batch}, prompt {args.prompt}, {args.new_tokens} new tokens"
    )
    vocab = smollm2_config(1).vocab_size if args.smollm2 else 256
    prompt = torch.randint(0, vocab, (args.batch, args.prompt), device=device)
    models = {name: build_variant(name, args, device, dtype) for name in args.variants}
    check_tokens = min(16, args.new_tokens)
    cache_matches = {
        name: torch.equal(greedy(model, prompt, check_tokens), greedy(model, prompt, check_tokens, use_cache=False))
        for name, model in models.items()
    }
    seconds = time_side_by_side(
        {name: (lambda model=model: greedy(model, prompt, args.new_tokens)) for name, model in models.items()},
        device,
        repeats=args.repeats,
    )
    reference = seconds.get("standard")
    rows, results = [], []
    for name in args.variants:
        tokens_per_s = args.batch * args.new_tokens / seconds[name]
        slowdown = seconds[name] / reference if reference else float("nan")
        rows.append([name, seconds[name] * 1000, tokens_per_s, slowdown, "yes" if cache_matches[name] else "NO"])
        results.append(
            dict(variant=name, seconds=seconds[name], tokens_per_s=tokens_per_s, cache_matches=cache_matches[name])
        )
    print_table(
        f"greedy generation with KV cache, median of {args.repeats} (round-robin)",
        ["variant", "ms", "tokens/s", "time × standard", f"cached == uncached ({check_tokens} tokens)"],
        rows,
    )
    compiled_static = []
    if args.compiled_static:
        chosen = {name: model for name, model in models.items() if name in COMPILED_STATIC_VARIANTS}
        compiled_static = compiled_static_table(chosen, prompt, args, device)
    save_results(args, args.name, {"rows": results, "compiled_static_rows": compiled_static})


if __name__ == "__main__":
    main()
