"""The blockwise Sparse-GIN neighbour sum against the dense adjacency it replaces: values, gradients, memory."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ginformer.adapter import (
    SparseGINConfig,
    get_sparse_gin_model,
    head_aggregated_attention,
    sparse_adjacency,
)
from ginformer.kernels import graph_blocks, sparse_gin
from ginformer.kernels.sparse_gin import GraphInputs, sparse_gin_neighbours
from test_adapter import TINY


def dense_neighbours(graph: GraphInputs, z):
    """The path the blockwise one replaces: A_agg (no gradient into q and k) and A' whole, (B, T_q, T_k), then A'·Z."""
    with torch.no_grad():
        aggregated, allowed = head_aggregated_attention(
            graph.query, graph.key, graph.mask, graph.scaling, graph.aggregation
        )
    adjacency = sparse_adjacency(
        aggregated, allowed, graph.alpha, graph.tau, graph.threshold, None, graph.self_loops_only, graph.external
    )
    return adjacency @ z


def graph_inputs(mask_kind="none", heads=4, kv_heads=2, q_len=9, k_len=9, seed=0, **settings):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(2, heads, q_len, 8, generator=generator) * 2
    key = torch.randn(2, kv_heads, k_len, 8, generator=generator) * 2
    allows = torch.ones(2, 1, q_len, k_len, dtype=torch.bool)
    allows[1, :, :, :2] = False  # sequence 1 is left-padded by two tokens
    mask = {
        "none": None,
        "bool": allows,
        "float": torch.zeros(2, 1, q_len, k_len).masked_fill(~allows, torch.finfo(torch.float32).min),
    }[mask_kind]
    alpha = torch.tensor(10.0, requires_grad=True)
    tau = torch.tensor(0.3, requires_grad=True)  # below the paper's 0.5: more edges, with random scores
    settings = {"threshold": 0.2, **settings}
    if settings.pop("with_external", False):
        settings["external"] = (torch.rand(2, q_len, k_len, generator=generator) * 0.6).requires_grad_()
    return GraphInputs(query, key, mask, 8**-0.5, alpha, tau, **settings)


def assert_same_values_and_gradients(graph: GraphInputs, fast=sparse_gin_neighbours, slow=dense_neighbours, **close):
    """fast(graph, Z) equals slow(graph, Z), and so do the gradients into Z, α, τ and G; `close`: value tolerances."""
    z = torch.randn(2, graph.k_len, 5, device=graph.query.device, requires_grad=True)
    got, want = fast(graph, z), slow(graph, z)
    assert (want != 0).any()
    torch.testing.assert_close(got, want, **(close or dict(rtol=1e-5, atol=1e-6)))
    weights = torch.randn_like(want)
    inputs = [t for t in (z, graph.alpha, graph.tau, graph.external) if t is not None]
    for got_grad, want_grad in zip(
        torch.autograd.grad((got * weights).sum(), inputs), torch.autograd.grad((want * weights).sum(), inputs)
    ):
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-5)


CASES = {
    "causal": dict(),
    "padded_bool": dict(mask_kind="bool"),
    "padded_float": dict(mask_kind="float"),
    "gqa_one_key_head": dict(heads=6, kv_heads=1),
    "no_gqa": dict(heads=3, kv_heads=3),
    "cached_keys": dict(q_len=4, k_len=11, mask_kind="bool"),
    "one_query": dict(q_len=1, k_len=7),
    "self_loops_only": dict(self_loops_only=True),
    "external": dict(with_external=True, mask_kind="bool"),
    "mean": dict(aggregation="mean", tau=0.1),
    "max": dict(aggregation="max", mask_kind="float"),
    "no_threshold": dict(threshold=0.0),
}


def case_graph(case: str, **lengths) -> GraphInputs:
    """The graph of one of CASES; `lengths` (q_len, k_len) apply where the case sets none."""
    settings = {**lengths, **CASES[case]}
    tau = settings.pop("tau", None)
    graph = graph_inputs(**settings)
    if tau is not None:
        graph.tau = torch.tensor(tau, requires_grad=True)
    return graph


@pytest.mark.parametrize("backward", ["edges", "recompute"])
@pytest.mark.parametrize("block_scores", [10**6, 20])  # one block; blocks of a few rows (20 // (B·H·T_k) ≥ 1)
@pytest.mark.parametrize("case", CASES)
def test_blockwise_equals_dense_in_values_and_gradients(monkeypatch, case, block_scores, backward):
    monkeypatch.setattr(graph_blocks, "_BLOCK_SCORES", block_scores)
    if backward == "recompute":  # no edge list fits: backward recomputes the blocks
        monkeypatch.setattr(sparse_gin, "EDGES_PER_QUERY", 0)
    assert_same_values_and_gradients(case_graph(case))


def test_edge_budget_is_counted_over_blocks(monkeypatch):
    """A graph that outgrows the budget halfway switches to recomputation and still gives the dense gradients."""
    monkeypatch.setattr(graph_blocks, "_BLOCK_SCORES", 2 * 4 * 9)  # one query row per block
    graph = graph_inputs(threshold=0.0)  # every causal edge kept: 45 per sequence
    z = torch.randn(2, 9, 5, requires_grad=True)
    _, edges = sparse_gin.blockwise_neighbours(graph, z, edge_budget=90)
    assert edges is not None and len(edges[0]) == 90
    _, edges = sparse_gin.blockwise_neighbours(graph, z, edge_budget=89)
    assert edges is None
    monkeypatch.setattr(sparse_gin, "EDGES_PER_QUERY", 3)  # 54 for B·T_q = 18 queries: runs out at row 5
    assert_same_values_and_gradients(graph)


@pytest.mark.parametrize("backward", ["edges", "recompute"])
@pytest.mark.parametrize("mask_kind", ["none", "bool"])
def test_nothing_quadratic_is_saved_for_backward(monkeypatch, backward, mask_kind):
    """Only tensors linear in T stay for backward; the attention mask, which the model holds anyway, is the one
    (T_q, T_k) tensor the recomputing backward may keep, and it keeps that very tensor, not a copy."""
    if backward == "recompute":
        monkeypatch.setattr(sparse_gin, "EDGES_PER_QUERY", 0)
    length = 48
    graph = graph_inputs(mask_kind, q_len=length, k_len=length)
    z = torch.randn(2, length, 5, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = sparse_gin_neighbours(graph, z)
    assert saved, "the hook saw nothing: the check would be vacuous"
    quadratic = [t for t in saved if t.numel() >= 2 * length * length]  # B·T_q·T_k entries or more
    assert all(t is graph.mask for t in quadratic), [tuple(t.shape) for t in quadratic]
    out.sum().backward()
    assert z.grad is not None


def test_no_grad_path_needs_no_autograd_function():
    """Under no_grad (decoding) the same blocks run without the autograd wrapper and give the same values."""
    graph = graph_inputs("bool")
    z = torch.randn(2, 9, 5)
    with torch.no_grad():
        plain = sparse_gin_neighbours(graph, z)
    assert plain.grad_fn is None
    torch.testing.assert_close(plain, dense_neighbours(graph, z).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", [dict(), dict(train_alpha=True, train_tau=True), dict(self_loops_only=True)])
def test_adapted_model_trains_the_same_through_either_path(monkeypatch, config):
    """A whole adapted Llama (GQA, a left-padded batch): loss and every adapter gradient, blockwise vs dense."""
    def run():
        torch.manual_seed(0)
        settings = SparseGINConfig(dropout=0.0, tau=0.2, **config)
        model = get_sparse_gin_model(LlamaForCausalLM(LlamaConfig(**TINY)), settings)
        with torch.no_grad():
            for adapter in model.adapters:
                adapter.scale.fill_(0.5)
        ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(ids)
        mask[1, :3] = 0
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        return loss, {name: p.grad for name, p in model.adapters.named_parameters()}

    blockwise = run()
    monkeypatch.setattr("ginformer.adapter.layer.sparse_gin_neighbours", dense_neighbours)
    dense = run()
    torch.testing.assert_close(blockwise[0], dense[0], rtol=1e-6, atol=1e-6)
    assert blockwise[1].keys() == dense[1].keys()
    for name in dense[1]:
        got, want = blockwise[1][name], dense[1][name]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda message: f"{name}: {message}")
