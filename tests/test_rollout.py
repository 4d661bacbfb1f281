"""ginformer.viz.rollout: attention rollout against Abnar & Zuidema's recipe written out entry by entry, the window
rollout against the crop of the whole one, and the triangular product against a plain one."""

import pytest
import torch

from reference import naive_rollout

from ginformer.viz.rollout import attention_rollout, lower_triangular_matmul, rollout_step


def causal_attention(layers: int, heads: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    future = torch.ones(size, size, dtype=torch.bool).triu(1)
    return [
        torch.randn(heads, size, size, generator=generator).mul(2).masked_fill(future, float("-inf")).softmax(-1)
        for _ in range(layers)
    ]


def test_rollout_matches_the_recipe_written_out():
    attentions = causal_attention(layers=4, heads=3, size=9)
    for ours, naive in zip(attention_rollout(attentions), naive_rollout(attentions), strict=True):
        torch.testing.assert_close(ours, naive.float(), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ours.sum(-1), torch.ones(9))  # rows stay distributions
        assert torch.count_nonzero(ours.triu(1)) == 0  # nothing flows back in time


def test_rows_that_do_not_sum_to_one_are_renormalised():
    sigmoid_like = [torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(k)).tril() for k in range(3)]
    for ours, naive in zip(attention_rollout(sigmoid_like), naive_rollout(sigmoid_like), strict=True):
        torch.testing.assert_close(ours, naive.float(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("window", [(0, 5), (3, 11), (7, 12)])
def test_window_rollout_is_the_crop_of_the_whole_rollout(window):
    start, stop = window
    attentions = [attention.mean(0) for attention in causal_attention(layers=5, heads=2, size=12, seed=1)]
    whole = attention_rollout(attentions)
    windowed = None
    for layer, attention in enumerate(attentions):
        windowed = rollout_step(windowed, attention[start:stop, start:stop], attention[start:stop].sum(-1))
        torch.testing.assert_close(windowed, whole[layer][start:stop, start:stop], atol=1e-6, rtol=1e-5)
    # without the whole rows' sums the crop's rows are renormalised as if the window were the whole text
    cropped = rollout_step(None, attentions[0][start:stop, start:stop])
    if start > 0:
        assert not torch.allclose(cropped, whole[0][start:stop, start:stop])


@pytest.mark.parametrize("size", [7, 64, 130])
def test_lower_triangular_product_equals_the_plain_one(size):
    generator = torch.Generator().manual_seed(size)
    a, b = (torch.rand(size, size, generator=generator).tril() for _ in range(2))
    torch.testing.assert_close(lower_triangular_matmul(a, b, block=32), a @ b)
