import math

import pytest
import torch
import torch.nn as nn
from torch_geometric.nn import DenseGINConv, GINConv
from torch_geometric.utils import scatter

from ginformer.gnn import PNA_AGGREGATORS, HeadwiseMLP, gin_aggregate, pna_aggregate
from reference import naive_headwise_mlp


class OneHeadMLP(nn.Module):
    """Head ``head`` of a HeadwiseMLP as an ordinary module, for torch_geometric's convolutions."""

    def __init__(self, mlp: HeadwiseMLP, head: int):
        super().__init__()
        self.mlp, self.head = mlp, head

    def forward(self, z):
        return naive_headwise_mlp(z, self.mlp, self.head)


def random_graph(nodes=6, features=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(nodes, features, generator=generator)
    adjacency = torch.rand(nodes, nodes, generator=generator) * (torch.rand(nodes, nodes, generator=generator) > 0.4)
    return x, adjacency


@pytest.mark.parametrize("eps", [0.0, 0.37])
def test_gin_update_equals_torch_geometric(eps):
    x, adjacency = random_graph()
    mlp = HeadwiseMLP(num_heads=2, d_in=5, d_hidden=3, d_out=5)
    # torch_geometric resets its nn's parameters on construction: build the convolutions before reading weights.
    dense = DenseGINConv(OneHeadMLP(mlp, head=1), eps=eps)
    sparse = GINConv(OneHeadMLP(mlp, head=1), eps=eps)
    ours = mlp(gin_aggregate(x, x, adjacency, 1 + eps)[None, None].expand(1, 2, -1, -1))[0, 1]
    torch.testing.assert_close(ours, dense(x[None], adjacency[None])[0], atol=1e-6, rtol=1e-6)

    # GINConv on the sparse edge list: an edge j → i carries x_j into i (binary edges only).
    binary = (adjacency > 0).float()
    edge_index = binary.T.nonzero().T  # row 0: source j, row 1: target i
    expected = mlp(gin_aggregate(x, x, binary, 1 + eps)[None, None].expand(1, 2, -1, -1))[0, 1]
    torch.testing.assert_close(sparse(x, edge_index), expected, atol=1e-6, rtol=1e-6)

def test_headwise_mlp_equals_a_loop_over_heads():
    mlp = HeadwiseMLP(num_heads=3, d_in=4, d_hidden=6, d_out=2)
    with torch.no_grad():
        mlp.norm_weight.uniform_(0.5, 1.5)
        mlp.b_in.normal_()
    z = torch.randn(2, 3, 5, 4)
    expected = torch.stack([naive_headwise_mlp(z[:, h], mlp, h) for h in range(3)], dim=1)
    torch.testing.assert_close(mlp(z), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("aggregator", PNA_AGGREGATORS)
def test_pna_aggregators_equal_torch_geometric_scatter(aggregator):
    x, adjacency = random_graph(nodes=7, features=4, seed=1)
    adjacency[3] = 0  # a node with no neighbours aggregates to zero
    target, source = adjacency.nonzero().T
    weights = adjacency[target, source][:, None]
    messages = weights * x[source]
    degree = scatter(weights, target, dim=0, dim_size=7, reduce="sum").clamp_min(1e-5)
    if aggregator in ("sum", "max", "min"):
        expected = scatter(messages, target, dim=0, dim_size=7, reduce=aggregator)
    else:
        mean = scatter(messages, target, dim=0, dim_size=7, reduce="sum") / degree
        squares = scatter(weights * x[source] ** 2, target, dim=0, dim_size=7, reduce="sum") / degree
        variance = (squares - mean**2).clamp_min(0)
        expected = {"mean": mean, "var": variance, "std": torch.sqrt(variance + 1e-5)}[aggregator]
    ours = pna_aggregate(x, adjacency, [aggregator], ["identity"], degree_delta=1.0)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


def test_pna_on_a_hand_checked_graph():
    """Node 2 receives from 0 (weight 0.5) and 2 (weight 1.0): values worked out by hand."""
    x = torch.tensor([[2.0], [10.0], [4.0]])
    adjacency = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 1.0]])
    out = pna_aggregate(x, adjacency, ["sum", "mean", "max", "min", "var"], ["identity", "amplification"], 2.0)
    total, mean = 0.5 * 2 + 1.0 * 4, (0.5 * 2 + 1.0 * 4) / 1.5
    variance = (0.5 * 4 + 1.0 * 16) / 1.5 - mean**2
    row = [total, mean, 4.0, 1.0, variance]
    expected = row + [v * math.log(3) / 2.0 for v in row]
    torch.testing.assert_close(out[2], torch.tensor(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], torch.zeros(10))  # no neighbours: every aggregate and scaling is 0


def test_pna_max_is_chunked_without_changing_the_result(monkeypatch):
    x, adjacency = random_graph(nodes=9, features=3, seed=2)
    whole = pna_aggregate(x, adjacency, ["max", "min"], ["identity"], 1.0)
    monkeypatch.setattr("ginformer.gnn._MAX_MIN_BLOCK_ELEMENTS", 20)  # forces blocks of one query row
    monkeypatch.setattr("ginformer.gnn._MAX_MIN_KEYS", 4)  # and a running max over three key blocks
    torch.testing.assert_close(pna_aggregate(x, adjacency, ["max", "min"], ["identity"], 1.0), whole)


@pytest.mark.parametrize("aggregator", ["max", "min"])
def test_pna_extremum_over_causal_blocks_equals_a_masked_reduction(monkeypatch, aggregator):
    """Batched heads, a causal graph with a row that has no neighbour, query blocks that each scan only the keys
    they can see, in key blocks with a running max (min): values and gradients equal the textbook masked max/min
    (float64, no ties)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 9, 4, generator=generator, dtype=torch.float64).requires_grad_()
    keep = torch.rand(2, 3, 9, 9, generator=generator) > 0.3
    adjacency = (torch.rand(2, 3, 9, 9, generator=generator, dtype=torch.float64) * keep).tril()
    adjacency[0, 1, 4] = 0.0
    adjacency.requires_grad_()
    monkeypatch.setattr("ginformer.gnn._MAX_MIN_BLOCK_ELEMENTS", 100)  # 2 query rows per block at this size
    monkeypatch.setattr("ginformer.gnn._MAX_MIN_KEYS", 2)

    ours = pna_aggregate(x, adjacency, [aggregator], ["identity"], 1.0, causal=True)
    messages = (adjacency[..., None] * x[..., None, :, :]).masked_fill(
        adjacency[..., None] == 0, -math.inf if aggregator == "max" else math.inf
    )  # (B, H, T_q, T_k, D)
    reduced = messages.amax(-2) if aggregator == "max" else messages.amin(-2)
    naive = torch.where((adjacency != 0).any(-1, keepdim=True), reduced, 0.0)
    torch.testing.assert_close(ours, naive)
    assert ours[0, 1, 4].abs().sum() == 0
    weights = torch.randn(ours.shape, generator=generator, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad((ours * weights).sum(), (x, adjacency)),
                         torch.autograd.grad((naive * weights).sum(), (x, adjacency))):
        torch.testing.assert_close(got, want)


@pytest.mark.slow  # torch.compile's first build
def test_compiled_pna_max_min_equal_eager():
    """Compiled code reads a query block's keys in one fused reduction: the values and gradients of eager blocks."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 9, 4, generator=generator).requires_grad_()
    adjacency = (torch.rand(2, 3, 9, 9, generator=generator) * (torch.rand(2, 3, 9, 9, generator=generator) > 0.3))
    adjacency = adjacency.tril().requires_grad_()

    def aggregate(x, adjacency):
        return pna_aggregate(x, adjacency, ["max", "min"], ["identity"], 1.0, causal=True)

    eager, compiled = aggregate(x, adjacency), torch.compile(aggregate, fullgraph=True)(x, adjacency)
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(torch.autograd.grad(compiled.sum(), (x, adjacency)),
                         torch.autograd.grad(eager.sum(), (x, adjacency))):
        torch.testing.assert_close(got, want)
