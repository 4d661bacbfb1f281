"""The GPU study's first part: the fast paths against their oracles on the device itself.

The tests check all of this on CPU (the Triton kernels under Triton's interpreter); a GPU runs other code: the
compiled Triton kernels, cuBLAS and flash SDPA, bf16 in hardware. Each check here reuses a test's oracle and
inputs (tests/: the dense Sparse-GIN adjacency, the tiny GIN/PNA models, the tiny adapted Llama) and moves them
to the device:

    kernels      Sparse-GIN's A'·Z as the model computes it (the Triton kernels on CUDA) and by the blockwise torch
                 path, each against the dense adjacency: values and the gradients into Z, α and τ, fp32 and bf16,
                 at the tests' 37 tokens and at a long length (4,096; SMOKE: 96)
    generation   every GIN/PNA option the generation tests cover, and an adapted Llama: greedy tokens and logits
                 with the default cache and a static cache against no cache, and the device's logits against
                 the same weights' on CPU

    python studies/gpu/correctness.py OUT_DIR [--long 4096]

writes OUT_DIR/correctness.json (one record per check: its error, its tolerance, passed; `passed` is null where
a quantity is recorded, not judged) and prints a line per failure; the exit status is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from test_adapter import adapted, batch, tiny  # noqa: E402
from test_kernels_sparse_gin import CASES, case_graph, dense_neighbours  # noqa: E402
from test_modeling import GENERATION_CASES, generation_model, greedy, prompt_batch  # noqa: E402

from ginformer.kernels.sparse_gin import sparse_gin_neighbours, torch_neighbours  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Relative to the reference's largest magnitude: fp32 as the tests. The bf16 reference computes in fp32 from the
# same rounded inputs, so what is left is bf16's own rounding of Z, N and their gradients (8 bits of mantissa: a few
# units of 4e-3). α's and τ's gradients are sums over every edge whose terms cancel, near zero at random inputs:
# relative to themselves their bf16 error is no measure (300 % at 96 tokens on CPU, where the path is the same
# as under fp32), so in bf16 they are recorded (tolerance None) and judged in fp32 only.
KERNEL_TOLERANCE = {("fp32", "values"): 1e-4, ("fp32", "grad_z"): 1e-4, ("fp32", "grad_sharpening"): 1e-4,
                    ("bf16", "values"): 2e-2, ("bf16", "grad_z"): 2e-2, ("bf16", "grad_sharpening"): None}
LOGIT_TOLERANCE = 1e-4  # cached against uncached, device against CPU: fp32 end to end


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float().cpu(), want.float().cpu()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def kernel_records(long_length: int) -> list[dict]:
    records = []
    # A case that sets its own lengths (cached keys, one query) keeps them.
    lengths = [(case, 37) for case in CASES] + [(case, long_length) for case in ("causal", "padded_bool")]
    for case, length in lengths:
        for dtype_name, dtype in DTYPES.items():
            graph = case_graph(case, q_len=length, k_len=length)
            graph.query, graph.key = (t.to(DEVICE, dtype) for t in (graph.query, graph.key))
            if graph.mask is not None:
                graph.mask = graph.mask.to(DEVICE)
            for name in ("alpha", "tau", "external"):
                value = getattr(graph, name)
                if value is not None:
                    setattr(graph, name, value.detach().to(DEVICE).requires_grad_())
            torch.manual_seed(0)
            z = torch.randn(graph.query.shape[0], graph.k_len, 5, device=DEVICE, dtype=dtype, requires_grad=True)
            reference = copy.copy(graph)
            reference.query, reference.key = graph.query.float(), graph.key.float()
            want = dense_neighbours(reference, z.float())
            weights = torch.randn_like(want)
            inputs = [t for t in (z, graph.alpha, graph.tau, graph.external) if t is not None]
            want_grads = torch.autograd.grad((want * weights).sum(), inputs)
            for path, neighbours in (("model", sparse_gin_neighbours), ("torch_blockwise", torch_neighbours)):
                got = neighbours(graph, z)
                got_grads = torch.autograd.grad((got.float() * weights).sum(), inputs)
                errors = {"values": relative_error(got, want), "grad_z": relative_error(got_grads[0], want_grads[0]),
                          "grad_sharpening": max(relative_error(g, w) for g, w in zip(got_grads[1:], want_grads[1:]))}
                records += [dict(check="kernels", case=case, path=path, quantity=quantity, dtype=dtype_name,
                                 q_len=graph.q_len, k_len=graph.k_len, error=error,
                                 tolerance=KERNEL_TOLERANCE[dtype_name, quantity])
                            for quantity, error in errors.items()]
    return records


def generation_errors(model, ids, mask, **settings) -> dict[str, float]:
    """Greedy generation with the default and a static cache against none, and the device against CPU."""
    with torch.no_grad():
        uncached = greedy(model, ids, mask, use_cache=False, **settings)
        errors = {}
        for cache, options in (("default_cache", {}), ("static_cache", {"cache_implementation": "static"})):
            cached = greedy(model, ids, mask, **options, **settings)
            same_tokens = torch.equal(cached.sequences, uncached.sequences)
            errors[cache] = max(relative_error(a, b) for a, b in zip(cached.logits, uncached.logits)) \
                if same_tokens else float("inf")
        on_cpu = copy.deepcopy(model).cpu()
        sequence = uncached.sequences
        errors["device_vs_cpu"] = relative_error(
            model(sequence, attention_mask=torch.ones_like(sequence)).logits,
            on_cpu(sequence.cpu(), attention_mask=torch.ones_like(sequence.cpu())).logits,
        )
    return errors


def generation_records() -> list[dict]:
    records = []
    for kind, option in GENERATION_CASES:
        model = generation_model(kind, option).to(DEVICE)
        prompt, mask = prompt_batch(model.config)
        errors = generation_errors(model, prompt.to(DEVICE), mask.to(DEVICE))
        records += [dict(check="generation", case=f"{kind}/{option}", path=path, quantity="logits", dtype="fp32",
                         error=error, tolerance=LOGIT_TOLERANCE) for path, error in errors.items()]
    model = adapted(tiny("llama")).to(DEVICE)
    ids, mask = batch(length=6)
    errors = generation_errors(model, ids.to(DEVICE), mask.to(DEVICE), min_new_tokens=10)
    records += [dict(check="generation", case="sparse_gin/llama", path=path, quantity="logits", dtype="fp32",
                     error=error, tolerance=LOGIT_TOLERANCE) for path, error in errors.items()]
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--long", type=int, default=4096, help="the long length of the kernel checks")
    args = parser.parse_args()
    records = kernel_records(args.long) + generation_records()
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    for record in records:
        record["device"] = device
        record["passed"] = None if record["tolerance"] is None else record["error"] <= record["tolerance"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "correctness.json").write_text(json.dumps(records, indent=1))
    failed = [r for r in records if r["passed"] is False]
    judged = [r for r in records if r["passed"] is not None]
    for record in failed:
        print(f"FAILED {record['check']} {record['case']} {record['path']} {record['quantity']} {record['dtype']}: "
              f"error {record['error']:.3g} > {record['tolerance']:.0e}")
    print(f"correctness on {device}: {len(judged) - len(failed)} of {len(judged)} checks passed "
          f"({len(records) - len(judged)} recorded only)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
