"""Sparse-GIN's Triton kernels against the blockwise torch path: on CUDA where there is one, else on CPU in
Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ginformer.kernels.sparse_gin import torch_neighbours
from test_kernels_sparse_gin import CASES, assert_same_values_and_gradients, case_graph, graph_inputs

triton = pytest.importorskip("triton", reason="triton is not installed, so its kernels cannot be checked")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernels():
    if DEVICE == "cpu" and not triton.knobs.runtime.interpret:
        pytest.skip("no GPU, and triton was imported without TRITON_INTERPRET=1: the kernels cannot run here")
    from ginformer.kernels import triton_sparse_gin

    return triton_sparse_gin


def on_device(graph):
    for name in ("query", "key", "mask", "alpha", "tau", "external"):
        value = getattr(graph, name)
        if value is not None:
            setattr(graph, name, value.detach().to(DEVICE).requires_grad_(value.requires_grad))
    return graph


@pytest.mark.parametrize("case", CASES)
def test_triton_kernels_equal_the_torch_path(kernels, case):
    """Values and gradients (Z, α, τ, G), over partial tiles: 37 queries and keys in tiles of 32. exp(s − lse)
    rounds otherwise than softmax, and the sigmoid's slope α·S(1−S) reaches 2.5: values to 1e-4."""
    graph = on_device(case_graph(case, q_len=37, k_len=37))
    assert_same_values_and_gradients(graph, kernels.neighbours, torch_neighbours, rtol=1e-4, atol=1e-5)


def test_triton_path_saves_only_the_log_sum_exp_beside_its_inputs(kernels):
    """Backward keeps q, k, Z, the mask it was given and (B, H, T_q) log-sum-exps: no (T_q, T_k) tensor."""
    graph = on_device(graph_inputs("bool", q_len=40, k_len=40))
    z = torch.randn(2, 40, 5, device=DEVICE, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        kernels.neighbours(graph, z).sum().backward()
    quadratic = [t for t in saved if t.numel() >= 2 * 40 * 40]
    assert saved and all(t is graph.mask for t in quadratic), [tuple(t.shape) for t in quadratic]
    assert any(tuple(t.shape) == (2, 4, 40) for t in saved)  # the log-sum-exp, (B, H, T_q)



@pytest.mark.slow  # Triton compiles every kernel for a GPU target
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kernels_build_for_a_gpu(dtype):
    """The interpreter forgives what a GPU build does not (types, constexpr use): build every kernel for an sm_90
    target with Triton's compiler and ptxas, which need no GPU. In a fresh process: interpreted kernels, as this
    process has, cannot be compiled."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_build.py")
    result = subprocess.run([sys.executable, str(script), dtype], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["_lse_kernel", "_forward_kernel", "_backward_kernel"]
