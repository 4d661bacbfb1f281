import pytest
import torch
from transformers import DynamicCache, StaticCache
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from ginformer import GinformerConfig, GinformerForCausalLM
from ginformer.attention import (
    COMPILE_MIN_QUERIES,
    GINAttention,
    PNAAttention,
    _compiled_pna_aggregate,
)
from reference import naive_graph_attention

ALL_PNA = dict(pna_aggregators=["sum", "mean", "max", "min", "var", "std"], pna_scalers=["identity", "amplification", "attenuation"])

# Every option of the paper, one at a time, plus GQA combinations.
OPTIONS = {
    "fast_softmax": {},
    "sharpened": dict(sharpening_init=2.5),
    "sigmoid": dict(adjacency_activation="sigmoid", sharpness_init=2.0, threshold_init=0.1),
    "sharp_softplus": dict(adjacency_activation="sharp_softplus", sharpness_init=3.0, threshold_init=-0.2),
    "relu": dict(adjacency_activation="relu", threshold_init=-0.05),
    "threshold": dict(refinement="threshold", refinement_threshold=0.1),
    "top_k": dict(refinement="top_k", adjacency_top_k=2),
    "eps_self_term": dict(gin_self_term="eps", gin_eps_init=0.3),
    "hidden_slice": dict(node_features="hidden_slice"),
    "o_proj_wide_mlp": dict(use_o_proj=True, gin_mlp_multiplier=2.0),
    "gqa": dict(num_key_value_heads=2),
    "gqa_sigmoid_top_k": dict(num_key_value_heads=2, adjacency_activation="sigmoid", refinement="top_k", adjacency_top_k=3),
    "gqa_hidden_slice": dict(num_key_value_heads=2, node_features="hidden_slice"),
    "all_pna_aggregators": ALL_PNA,
}
CASES = [(kind, name) for kind in ("gin", "pna") for name in OPTIONS]


def tiny_config(kind: str, **options) -> GinformerConfig:
    values = dict(
        vocab_size=37,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        attention_kind=kind,
        max_position_embeddings=64,
        pna_compile=False,  # compiling every tiny case would take minutes; one test below checks compiled == eager
    )
    values.update(options)
    return GinformerConfig(**values)


def layer_inputs(config, batch=2, length=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, config.hidden_size, generator=generator, requires_grad=True)
    positions = torch.arange(length)[None].expand(batch, -1)
    return hidden, LlamaRotaryEmbedding(config)(hidden, positions)


def attention_layer(config, seed=0):
    torch.manual_seed(seed)
    layer = {"gin": GINAttention, "pna": PNAAttention}[config.attention_kind](config, layer_idx=0)
    with torch.no_grad():  # move learnable scalars off their init so that mistakes in their use show
        for name, parameter in layer.named_parameters():
            if parameter.dim() == 0:
                parameter.add_(0.1)
    return layer


@pytest.mark.parametrize("external", [None, "shared", "per_head"])
@pytest.mark.parametrize("kind,option", CASES)
def test_layer_matches_naive_reference(kind, option, external):
    config = tiny_config(kind, **OPTIONS[option])
    layer = attention_layer(config)
    hidden, position_embeddings = layer_inputs(config)
    adjacency = None
    if external is not None:
        shape = (2, 7, 7) if external == "shared" else (2, config.num_attention_heads, 7, 7)
        adjacency = torch.rand(shape)
    fast, _ = layer(hidden, position_embeddings, graph_adjacency=adjacency)
    naive = naive_graph_attention(layer, hidden, position_embeddings, external=adjacency)
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)

    weights = torch.randn_like(fast)
    inputs = [hidden] + [p for p in layer.parameters() if p.requires_grad]
    fast_grads = torch.autograd.grad((fast * weights).sum(), inputs, allow_unused=True)
    naive_grads = torch.autograd.grad((naive * weights).sum(), inputs, allow_unused=True)
    for fast_grad, naive_grad in zip(fast_grads, naive_grads):
        if naive_grad is None:
            assert fast_grad is None or not fast_grad.any()
        else:
            torch.testing.assert_close(fast_grad, naive_grad, atol=1e-5, rtol=1e-5)


def test_fast_path_keeps_no_quadratic_tensor():
    """Softmax GIN-Attention without refinement saves nothing of size T×T for backward."""
    config = tiny_config("gin", num_key_value_heads=2)
    layer = attention_layer(config)
    length = 64
    hidden, position_embeddings = layer_inputs(config, length=length)
    saved_shapes = []

    def remember(tensor):
        saved_shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(remember, lambda tensor: tensor):
        output, adjacency = layer(hidden, position_embeddings)
    assert layer.uses_fast_path and adjacency is None
    assert saved_shapes, "the hook saw nothing: the check would be vacuous"
    assert not [shape for shape in saved_shapes if shape[-2:] == (length, length)]
    output.sum().backward()


@pytest.mark.parametrize("kind,option", CASES)
def test_model_is_causal(kind, option):
    """Changing token t never changes any output before t."""
    config = tiny_config(kind, **OPTIONS[option])
    torch.manual_seed(0)
    model = GinformerForCausalLM(config).eval()
    tokens = torch.randint(0, config.vocab_size, (2, 9))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % config.vocab_size
    with torch.no_grad():
        before, after = model(tokens).logits, model(changed).logits
    torch.testing.assert_close(before[:, :5], after[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_external_adjacency_reaches_the_output_causally():
    config = tiny_config("gin")
    torch.manual_seed(0)
    model = GinformerForCausalLM(config).eval()
    tokens = torch.randint(0, config.vocab_size, (1, 6))
    adjacency = torch.zeros(1, 6, 6)
    with torch.no_grad():
        plain = model(tokens).logits
        adjacency[0, 4, 1] = 1.0  # an edge 1 → 4
        with_edge = model(tokens, graph_adjacency=adjacency).logits
        adjacency[0, 1, 4] = 5.0  # a future edge 4 → 1: must be masked away
        with_future_edge = model(tokens, graph_adjacency=adjacency).logits
    torch.testing.assert_close(plain[:, :4], with_edge[:, :4])
    assert not torch.allclose(plain[:, 4:], with_edge[:, 4:])
    torch.testing.assert_close(with_edge, with_future_edge)


@pytest.mark.parametrize("cache_argument", ["cache", "past_key_values"])
@pytest.mark.parametrize(
    "kind,option",
    [("gin", "fast_softmax"), ("gin", "sigmoid"), ("gin", "relu"), ("gin", "top_k"), ("pna", "sharp_softplus"),
     ("pna", "threshold"), ("pna", "all_pna_aggregators")],
)
def test_static_cache_empty_slots_are_never_edges(kind, option, cache_argument):
    """A static cache hands the layer its whole buffer: the slots after the queries hold zero keys and features,
    which sigmoid, softplus and ReLU would weigh > 0 and PNA's max, min, mean and degree would count. Neither in a
    prompt nor in a decoding step (no mask either time) do they get an edge: the outputs are the uncached layer's.
    The cache arrives under its transformers ≥ 5.24 name (cache) or its earlier one (past_key_values)."""
    config = tiny_config(kind, **OPTIONS[option])
    layer = attention_layer(config)
    hidden, (cos, sin) = layer_inputs(config, length=8)
    cache = StaticCache(config=config, max_cache_len=12)
    with torch.no_grad():
        uncached, _ = layer(hidden, (cos, sin))
        prompt, adjacency = layer(hidden[:, :7], (cos[:, :7], sin[:, :7]), **{cache_argument: cache})
        step, _ = layer(hidden[:, 7:], (cos[:, 7:], sin[:, 7:]), **{cache_argument: cache})
    if adjacency is not None:  # the dense paths
        assert adjacency.shape[-1] == 12 and adjacency[..., :7].any()
        assert not adjacency[..., 7:].any()
    torch.testing.assert_close(prompt, uncached[:, :7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step, uncached[:, 7:], atol=1e-5, rtol=1e-5)


def test_a_cache_under_an_unknown_name_is_refused():
    """Were transformers to rename the cache argument again, the layer must not silently run without it."""
    config = tiny_config("gin")
    hidden, position_embeddings = layer_inputs(config)
    with pytest.raises(TypeError, match="kv_cache"):
        attention_layer(config)(hidden, position_embeddings, kv_cache=DynamicCache(config=config))


@pytest.mark.parametrize("option", ["fast_softmax", "gqa", "sigmoid", "top_k"])
def test_inspection_adjacency_matches_naive(option):
    from reference import naive_adjacency

    config = tiny_config("gin", **OPTIONS[option])
    layer = attention_layer(config)
    hidden, position_embeddings = layer_inputs(config)
    adjacency = layer.adjacency(hidden, position_embeddings)  # (B, H, T, T)
    query, key, _ = layer.project(hidden, position_embeddings)
    key = layer.per_head(key)
    for b in range(2):
        for h in range(config.num_attention_heads):
            scores = query[b, h] @ key[b, h].T * layer.scaling
            torch.testing.assert_close(adjacency[b, h], naive_adjacency(scores, config, layer), atol=1e-6, rtol=1e-6)
    assert (adjacency.triu(1) == 0).all()


@pytest.mark.parametrize("kind, options", [("gin", {}), ("gin", {"adjacency_activation": "sigmoid"}), ("pna", {})])
def test_attention_dropout_drops_edges_in_training_only(kind, options):
    """attention_dropout acts on the attention weights (SDPA's dropout on the fast path, the dense adjacency
    otherwise) while training, and never in eval mode: there the model equals the same weights without it."""
    torch.manual_seed(0)
    dropped = GinformerForCausalLM(tiny_config(kind, attention_dropout=0.5, **options))
    plain = GinformerForCausalLM(tiny_config(kind, **options))
    plain.load_state_dict(dropped.state_dict())
    ids = torch.randint(0, 37, (2, 12))
    dropped.eval(), plain.eval()
    torch.testing.assert_close(dropped(ids).logits, plain(ids).logits)
    dropped.train(), plain.train()
    first, second = dropped(ids).logits, dropped(ids).logits
    assert not torch.allclose(first, second)  # a fresh mask each call
    assert not torch.allclose(first, plain(ids).logits)
    torch.testing.assert_close(plain(ids).logits, plain(ids).logits)  # without dropout, training mode is exact


@pytest.mark.slow  # torch.compile's first build
def test_compiled_pna_layer_equals_eager():
    """pna_compile (the default) runs the same aggregation through torch.compile: same output and gradients."""
    config = tiny_config("pna", pna_compile=True, **ALL_PNA)
    layer = attention_layer(config)
    hidden, position_embeddings = layer_inputs(config, length=COMPILE_MIN_QUERIES)  # the shortest compiled step
    compiled, _ = layer(hidden, position_embeddings)
    assert _compiled_pna_aggregate.cache_info().currsize == 1  # the compiled path ran
    layer.config.pna_compile = False
    eager, _ = layer(hidden, position_embeddings)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    inputs = [hidden] + [p for p in layer.parameters() if p.requires_grad]
    weights = torch.randn_like(eager)
    for got, want in zip(torch.autograd.grad((compiled * weights).sum(), inputs, allow_unused=True),
                         torch.autograd.grad((eager * weights).sum(), inputs, allow_unused=True)):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
