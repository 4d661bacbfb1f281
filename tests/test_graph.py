import pytest
import torch

from ginformer import graph


def test_causal_mask_offsets_queries_to_the_end():
    mask = graph.causal_mask(2, 5)
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(graph.causal_mask(4, 4), torch.tril(torch.ones(4, 4, dtype=torch.bool)))


@pytest.mark.parametrize("first_query", [1, torch.tensor(1)], ids=["int", "tensor"])
def test_causal_mask_places_queries_at_first_query(first_query):
    """A static cache's prefill: 2 queries at slots 1 and 2 of a 5-slot buffer; the empty slots 3, 4 are no edge."""
    mask = graph.causal_mask(2, 5, first_query=first_query)
    assert mask.tolist() == [[True, True, False, False, False], [True, True, True, False, False]]
    padding = torch.tensor([False, True, True, True, True]).expand(1, 1, 2, 5)  # (B, 1, T_q, T_k): slot 0 is padding
    allowed = graph.allowed_edges(padding, 2, 5, torch.device("cpu"), first_query=first_query)
    assert allowed.tolist() == [[[False, True, False, False, False], [False, True, True, False, False]]]


@pytest.mark.parametrize("activation", graph.ACTIVATIONS)
def test_activations_are_non_negative_and_causal(activation):
    scores = torch.randn(2, 3, 6, 6)
    allowed = graph.causal_mask(6, 6)
    adjacency = graph.activate(scores, allowed, activation, sharpening=2.0, sharpness=3.0, threshold=0.1)
    assert (adjacency >= 0).all()
    assert (adjacency[..., ~allowed] == 0).all()
    if activation == "softmax":
        torch.testing.assert_close(adjacency.sum(-1), torch.ones(2, 3, 6))


def test_sharpening_concentrates_softmax():
    scores = torch.randn(4, 8, 8)
    allowed = graph.causal_mask(8, 8)
    entropy = lambda a: -(a * torch.log(a.clamp_min(1e-12))).sum(-1).mean()  # noqa: E731
    smooth = graph.activate(scores, allowed, "softmax", sharpening=0.5)
    sharp = graph.activate(scores, allowed, "softmax", sharpening=4.0)
    assert entropy(sharp) < entropy(smooth)


def test_softmax_row_with_no_allowed_key_is_zero_not_nan():
    allowed = torch.tensor([[False, False], [True, True]])
    adjacency = graph.activate(torch.randn(2, 2), allowed, "softmax")
    assert torch.equal(adjacency[0], torch.zeros(2))


def test_top_k_keeps_k_entries_per_row():
    adjacency = torch.rand(3, 10, 10) * graph.causal_mask(10, 10)
    refined = graph.refine(adjacency, "top_k", top_k=3)
    counts = (refined > 0).sum(-1)
    assert torch.equal(counts, torch.clamp(torch.arange(1, 11), max=3).expand(3, -1))
    kept = refined > 0
    assert torch.equal(refined[kept], adjacency[kept])


def test_threshold_refinement_is_shifted_relu():
    adjacency = torch.tensor([[0.05, 0.3], [0.6, 0.0]])
    assert torch.allclose(graph.refine(adjacency, "threshold", threshold=0.1), torch.tensor([[0.0, 0.2], [0.5, 0.0]]))


def test_external_edges_respect_causality_and_broadcast_over_heads():
    allowed = graph.causal_mask(3, 3)
    external = torch.ones(2, 3, 3)
    combined = graph.add_external(torch.zeros(2, 4, 3, 3), external, allowed)
    assert combined.shape == (2, 4, 3, 3)
    assert torch.equal(combined[1, 2], allowed.float())


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="activation must be one of"):
        graph.activate(torch.zeros(2, 2), graph.causal_mask(2, 2), "tanh")
    with pytest.raises(ValueError, match="refinement must be one of"):
        graph.refine(torch.zeros(2, 2), "dropout")
