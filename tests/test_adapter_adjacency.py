"""The Sparse-GIN graph maths against naive per-head and per-entry oracles, and against eager attention."""

import copy
import math

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from ginformer.adapter import SparseGINConfig, allowed_edges, get_sparse_gin_model, head_aggregated_attention
from ginformer.adapter import sparse_adjacency


def naive_head_aggregate(query, key, mask_allows, aggregation):
    """Every head's full (T_q, T_k) softmax at once, by the textbook formula; queries are the last T_q keys."""
    heads, kv_heads = query.shape[1], key.shape[1]
    key = key.repeat_interleave(heads // kv_heads, dim=1)  # (B, H, T_k, D)
    scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5  # (B, H, T_q, T_k)
    q_len, k_len = scores.shape[-2:]
    allowed = torch.zeros(scores.shape[0], q_len, k_len, dtype=torch.bool)
    for b in range(scores.shape[0]):
        for i in range(q_len):
            for j in range(k_len):
                allowed[b, i, j] = j <= i + k_len - q_len and bool(mask_allows[b, i, j])
    probs = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
    if aggregation == "sum":
        return probs.sum(1).clamp(max=1.0), allowed
    if aggregation == "mean":
        return probs.mean(1), allowed
    return probs.amax(1), allowed


def padding_allows(batch, q_len, k_len):
    allows = torch.ones(batch, q_len, k_len, dtype=torch.bool)
    allows[1, :, :2] = False  # sequence 1 is left-padded by two tokens
    return allows


@pytest.mark.parametrize("aggregation", ["sum", "mean", "max"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_head_aggregation_matches_naive(aggregation, heads, kv_heads, mask_kind):
    torch.manual_seed(0)
    for q_len, k_len in [(5, 5), (3, 8), (1, 6), (37, 37), (29, 40)]:  # one to many query chunks
        query = torch.randn(2, heads, q_len, 8) * 2
        key = torch.randn(2, kv_heads, k_len, 8) * 2
        allows = torch.ones(2, q_len, k_len, dtype=torch.bool)
        if mask_kind != "none":
            allows = padding_allows(2, q_len, k_len)
        mask = None
        if mask_kind == "bool":
            mask = allows[:, None]
        elif mask_kind == "float":
            mask = torch.zeros(2, 1, q_len, k_len).masked_fill(~allows[:, None], torch.finfo(torch.float32).min)
        fast, allowed = head_aggregated_attention(query, key, mask, 8**-0.5, aggregation)
        slow, slow_allowed = naive_head_aggregate(query, key, allows, aggregation)
        assert torch.equal(allowed.expand_as(slow_allowed), slow_allowed)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
        assert fast.shape == (2, q_len, k_len)


def test_sum_is_clamped_at_one_and_mean_is_not():
    torch.manual_seed(0)
    query, key = torch.randn(1, 8, 6, 4), torch.randn(1, 8, 6, 4)
    summed, _ = head_aggregated_attention(query, key, None, 0.5, "sum")
    mean, _ = head_aggregated_attention(query, key, None, 0.5, "mean")
    assert summed.max() == 1.0  # the first query has one key: 8 heads x 1.0, clamped
    torch.testing.assert_close(mean.sum(-1), torch.ones(1, 6))


def test_mask_of_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="expected \\(B, 1, 3, 5\\)"):
        allowed_edges(torch.ones(2, 1, 3, 4, dtype=torch.bool), 3, 5, torch.device("cpu"))


def naive_sparse(aggregated, allowed, alpha, tau, threshold, top_k, self_loops_only, external):
    batch, q_len, k_len = aggregated.shape
    out = torch.zeros_like(aggregated)
    for b in range(batch):
        for i in range(q_len):
            row = {}
            for j in range(k_len):
                a = float(aggregated[b, i, j]) + (0.0 if external is None else float(external[b, i, j]))
                s = 1.0 / (1.0 + math.exp(-alpha * (min(a, 1.0) - tau)))
                diagonal = j == i + k_len - q_len
                if allowed[b, i, j] and s > threshold and (diagonal or not self_loops_only):
                    row[j] = s
            strongest = sorted(row, key=lambda j: -row[j])[: top_k or k_len]
            for j in strongest:
                out[b, i, j] = row[j]
    return out


@pytest.mark.parametrize(
    "threshold,top_k,self_loops_only,with_external",
    [
        (0.2, None, False, False),
        (0.0, None, False, False),
        (0.2, 2, False, False),
        (0.2, None, True, False),
        (0.2, None, False, True),
    ],
)
def test_sparse_adjacency_matches_naive(threshold, top_k, self_loops_only, with_external):
    torch.manual_seed(1)
    q_len, k_len = 4, 7
    aggregated = torch.rand(2, q_len, k_len)
    allowed = allowed_edges(padding_allows(2, q_len, k_len)[:, None], q_len, k_len, torch.device("cpu"))
    aggregated = aggregated * allowed
    external = torch.rand(2, q_len, k_len) if with_external else None
    fast = sparse_adjacency(aggregated, allowed, 10.0, 0.5, threshold, top_k, self_loops_only, external)
    slow = naive_sparse(aggregated, allowed, 10.0, 0.5, threshold, top_k, self_loops_only, external)
    torch.testing.assert_close(fast, slow)
    future = ~allowed_edges(None, q_len, k_len, torch.device("cpu"))
    assert (fast[:, future[0]] == 0).all()  # causal even when the threshold lets everything else through


def test_threshold_makes_the_graph_sparse():
    aggregated = torch.tensor([[[1.0, 0.0], [0.3, 0.9]]])
    allowed = allowed_edges(None, 2, 2, torch.device("cpu"))
    graph = sparse_adjacency(aggregated, allowed, 10.0, 0.5, 0.2, None, False)
    assert graph[0, 1, 0] == 0  # sigmoid(10 (0.3 - 0.5)) = 0.12 <= 0.2
    assert graph[0, 1, 1] > 0.98 and graph[0, 0, 0] > 0.99 and graph[0, 0, 1] == 0


# --- end to end: what the adapter computes inside a model equals eager attention probabilities --------

TINY_LLAMA = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    intermediate_size=128,
    vocab_size=100,
)


def eager_reference(model, **inputs):
    """Per-layer eager attention probabilities (B, H, T_q, T_k) from output_attentions."""
    return model(**inputs, output_attentions=True).attentions


@pytest.mark.parametrize("aggregation", ["sum", "mean", "max"])
def test_adapter_adjacency_equals_eager_attentions_with_padding_and_cache(aggregation):
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA, attn_implementation="eager")).eval()
    eager = copy.deepcopy(base)
    base.set_attn_implementation("sdpa")  # the adapter wraps sdpa; the oracle stays eager
    # lambda = 0: the adapted model's hidden states, hence its attention, equal the eager oracle's
    model = get_sparse_gin_model(base, SparseGINConfig(aggregation=aggregation)).eval()
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    reduce = {"sum": lambda p: p.sum(1).clamp(max=1), "mean": lambda p: p.mean(1), "max": lambda p: p.amax(1)}
    reduce = reduce[aggregation]
    valid_rows = mask[:, :, None].bool()  # rows of padding queries carry no meaning

    calls = [(slice(0, 5), None), (slice(5, 8), "cache"), (slice(8, 9), "cache")]  # prefill, T_q=3 < T_k, decode
    cache_eager, cache_adapted = DynamicCache(config=eager.config), DynamicCache(config=base.config)
    for positions, use in calls:
        end = positions.stop
        kwargs = dict(input_ids=ids[:, positions], attention_mask=mask[:, :end], use_cache=True)
        attentions = eager_reference(eager, past_key_values=cache_eager, **kwargs)
        with torch.no_grad(), model.capture_adjacency() as graphs:
            model(past_key_values=cache_adapted, **kwargs)
        assert [g.layer for g in graphs] == [0, 1]
        for graph, probs in zip(graphs, attentions):
            assert graph.aggregated.shape == (2, positions.stop - positions.start, end)
            rows = valid_rows[:, positions]
            expected = reduce(probs.float())
            torch.testing.assert_close(graph.aggregated * rows, expected * rows, rtol=1e-5, atol=1e-6)
