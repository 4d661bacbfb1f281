"""Sparse-GIN's Triton kernels against the blockwise torch path: on CUDA where there is one, else on CPU in
Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton)."""

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
