"""Sparse-GIN adapter on tiny random Llama, Qwen2 and Mistral decoders: the peft-shaped contract and the maths."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ginformer.adapter import (
    AttentionInputs,
    SparseGINConfig,
    SparseGINLayer,
    SparseGINModel,
    allowed_edges,
    get_sparse_gin_model,
    mark_only_adapter_as_trainable,
)
from ginformer.errors import CheckpointError, MissingInput, ModelRefused
from ginformer.gnn import gin_aggregate

TINY = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    intermediate_size=128,
    vocab_size=100,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
ARCHITECTURES = {
    "llama": lambda **kw: LlamaForCausalLM(LlamaConfig(**{**TINY, **kw})),
    "qwen2": lambda **kw: Qwen2ForCausalLM(Qwen2Config(**{**TINY, **kw})),
    # a window of 4 makes generation below run past it, through sliding-window cache layers
    "mistral": lambda **kw: MistralForCausalLM(MistralConfig(**{**TINY, "sliding_window": 4, **kw})),
}
PLACEMENTS = ["after_attention", "after_mlp", "parallel"]


def tiny(arch="llama", seed=0, **overrides):
    torch.manual_seed(seed)
    return ARCHITECTURES[arch](**overrides).eval()


def adapted(base, scale=0.5, **config):
    """Adapter with dropout off and every lambda set by hand, so the branch really changes the output."""
    model = get_sparse_gin_model(base, SparseGINConfig(dropout=0.0, **config)).eval()
    with torch.no_grad():
        for adapter in model.adapters:
            adapter.scale.fill_(scale)
    return model


def batch(seed=1, length=7):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (2, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding, as generation batches have it
    return ids, mask


def logits(model, ids, mask=None, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **kwargs).logits


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_zero_init_equals_base_and_disable_adapter_equals_base(arch):
    base = tiny(arch)
    reference = copy.deepcopy(base)
    ids, mask = batch()
    model = get_sparse_gin_model(base, SparseGINConfig())  # train mode: dropout on, lambda = 0
    assert model.adapter_scales() == [0.0, 0.0]
    torch.testing.assert_close(logits(model, ids, mask), logits(reference.train(), ids, mask), rtol=0, atol=0)

    model = adapted(get_sparse_gin_model(model.unload(), SparseGINConfig()).unload())
    assert not torch.allclose(logits(model, ids, mask), logits(reference.eval(), ids, mask), atol=1e-3)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, ids, mask), logits(reference, ids, mask), rtol=0, atol=0)


def test_unload_returns_the_never_adapted_model():
    base = tiny()
    reference = copy.deepcopy(base)
    ids, mask = batch()
    model = adapted(base)
    logits(model, ids, mask)
    unloaded = model.unload()
    assert unloaded is base
    assert unloaded.config._attn_implementation == "sdpa"
    assert all(p.requires_grad for p in unloaded.parameters())
    assert not any(hasattr(layer.self_attn, "_sparse_gin_tap") for layer in unloaded.model.layers)
    assert set(unloaded.state_dict()) == set(reference.state_dict())
    torch.testing.assert_close(logits(unloaded, ids, mask), logits(reference, ids, mask), rtol=0, atol=0)


def test_save_load_round_trip_saves_adapter_weights_only(tmp_path):
    ids, mask = batch()
    model = adapted(tiny(), scale_init="ramp", train_alpha=True)
    with torch.no_grad():
        model.adapters[1].alpha.fill_(7.0)
    model.save_pretrained(tmp_path)

    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert set(saved) == set(model.adapter_state_dict())
    assert all(key.startswith("adapters.") for key in saved)
    adapter_numel = sum(t.numel() for t in model.adapters.state_dict().values())
    assert sum(t.numel() for t in saved.values()) == adapter_numel
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["base_model"]["architecture"] == "LlamaForCausalLM"
    assert meta["base_model"]["hidden_size"] == 64 and meta["base_model"]["num_hidden_layers"] == 2
    assert meta["config"]["train_alpha"] is True

    loaded = SparseGINModel.from_pretrained(tiny(), tmp_path).eval()
    assert loaded.adapter_scales() == model.adapter_scales() == [0.5, 0.5]
    assert loaded.adapters[1].alpha.item() == 7.0
    assert not any(p.requires_grad for p in loaded.parameters())  # inference by default, as in peft
    torch.testing.assert_close(logits(loaded, ids, mask), logits(model, ids, mask), rtol=0, atol=0)
    trainable = SparseGINModel.from_pretrained(tiny(), tmp_path, is_trainable=True)
    assert all(p.requires_grad for p in trainable.adapters.parameters())


@pytest.mark.parametrize(
    "change,field", [(dict(hidden_size=32), "hidden_size"), (dict(num_hidden_layers=3), "num_hidden_layers")]
)
def test_loading_onto_a_different_base_fails_clearly(tmp_path, change, field):
    adapted(tiny()).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=f"different base model.*{field}"):
        SparseGINModel.from_pretrained(tiny(**change), tmp_path)
    with pytest.raises(MissingInput, match="adapter directory not found"):
        SparseGINModel.from_pretrained(tiny(), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInput, match="neither adapter_config.json .* nor model.safetensors"):
        SparseGINModel.from_pretrained(tiny(), tmp_path / "empty")


def test_only_adapter_parameters_receive_gradients():
    model = adapted(tiny(), train_alpha=True, train_tau=True).train()
    ids, mask = batch()
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    for name, param in model.get_base_model().named_parameters():
        assert not param.requires_grad and param.grad is None, name
    for name, param in model.adapters.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == sum(p.numel() for p in model.adapters.parameters()) < total


def test_fixed_values_are_buffers_and_the_filter_marks_only_adapters():
    model = get_sparse_gin_model(tiny(), SparseGINConfig(train_scale=False))
    names = dict(model.adapters[0].named_parameters())
    assert "scale" not in names and "alpha" not in names and "tau" not in names
    assert "scale" in model.adapters[0].state_dict()
    model.get_base_model().requires_grad_(True)
    mark_only_adapter_as_trainable(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"adapters.{name}" for name, _ in model.adapters.named_parameters()}


def test_print_trainable_parameters(capsys):
    model = get_sparse_gin_model(tiny(), SparseGINConfig(d_gnn=16))
    model.print_trainable_parameters()
    trainable, total = model.get_nb_trainable_parameters()
    assert f"trainable params: {trainable:,d} || all params: {total:,d}" in capsys.readouterr().out


def first_layer_trace(model, ids):
    """Layer 0's input h, attention output a and layer output, from one forward."""
    trace, layer = {}, model.model.layers[0]
    hooks = [
        layer.register_forward_pre_hook(lambda m, args: trace.update(h=args[0])),
        layer.self_attn.register_forward_hook(lambda m, args, out: trace.update(a=out[0])),
        layer.register_forward_hook(lambda m, args, out: trace.update(out=out)),
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return trace


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_the_branch_joins_the_layer_where_the_placement_says(placement):
    base = tiny()
    reference = copy.deepcopy(base)
    model = adapted(base, placement=placement)
    ids, _ = batch()
    before = first_layer_trace(reference, ids)
    with model.capture_adjacency() as graphs:
        after = first_layer_trace(model.get_base_model(), ids)
    adapter = model.adapters[0]
    with torch.no_grad():
        def branch(x):  # λ·W_out(Act(Norm(s·Z + A'·Z + b))), Z = W_in(RMSNorm(X)), written out on the captured A'
            z = adapter.in_proj(adapter.input_norm(x))
            messages = adapter.self_weight * z + graphs[0].adjacency @ z + adapter.bias
            return adapter.scale * adapter.out_proj(adapter.act(adapter.norm(messages)))

        layer = reference.model.layers[0]
        x = before["h"] + before["a"]
        if placement == "after_attention":
            y = x + branch(x)
            expected = y + layer.mlp(layer.post_attention_layernorm(y))
        elif placement == "parallel":
            expected = before["out"] + branch(x)
        else:
            expected = before["out"] + branch(before["out"])
    assert not torch.allclose(after["out"], before["out"], atol=1e-3)
    torch.testing.assert_close(after["out"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_a_later_token_never_changes_an_earlier_output(placement):
    model = adapted(tiny(), placement=placement)
    ids, _ = batch()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 100
    before, after = logits(model, ids), logits(model, changed)
    torch.testing.assert_close(before[:, :-1], after[:, :-1], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, -1], after[:, -1])


@pytest.mark.parametrize("keep_graph", [False, True])  # the blockwise path and the dense one
def test_messages_flow_from_earlier_tokens_unless_self_loops_only(keep_graph):
    """The GIN branch alone, on one fixed graph: only A' can carry token 0's change to token 3."""
    torch.manual_seed(0)
    attention = AttentionInputs(torch.randn(1, 4, 4, 8), torch.randn(1, 2, 4, 8), None, 8**-0.5)
    saturated = torch.ones(1, 4, 4)  # an outside graph that puts every causal edge at full weight
    x = torch.randn(1, 4, 64)
    x_changed = x.clone()
    x_changed[0, 0] += 1.0
    for self_loops_only, flows in [(False, True), (True, False)]:
        layer = SparseGINLayer(64, SparseGINConfig(dropout=0.0, self_loops_only=self_loops_only), scale=1.0).eval()
        delta, graph = layer(x, attention, external=saturated, keep_graph=keep_graph)
        delta_changed, _ = layer(x_changed, attention, external=saturated, keep_graph=keep_graph)
        if keep_graph:
            assert (graph[1][0, 3, 0] > 0) == flows
        assert not torch.allclose(delta[0, 0], delta_changed[0, 0])
        assert torch.allclose(delta[0, 3], delta_changed[0, 3]) != flows


def test_gin_aggregate_matches_torch_geometric_gin():
    geometric = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    features = torch.randn(1, 5, 3)
    adjacency = (torch.rand(1, 5, 5) > 0.5).float() * allowed_edges(None, 5, 5, torch.device("cpu"))
    adjacency = adjacency * (1 - torch.eye(5))  # GINConv adds (1 + eps) x itself: no explicit self-loops
    targets, sources = adjacency[0].nonzero(as_tuple=True)  # A'[i, j] is the edge j -> i
    conv = geometric.GINConv(torch.nn.Identity(), eps=0.3)
    expected = conv(features[0], torch.stack([sources, targets]))
    for self_term, shift in (("one_plus_eps", 0.0), ("eps", 1.0)):
        layer = SparseGINLayer(8, SparseGINConfig(gin_eps=0.3, self_term=self_term), scale=0.0)
        got = gin_aggregate(features, features, adjacency, layer.self_weight)
        torch.testing.assert_close(got[0], expected - shift * features[0])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cached_greedy_generate_equals_uncached(arch):
    base = tiny(arch)
    reference = copy.deepcopy(base)
    model = adapted(base)
    ids, mask = batch(length=6)
    settings = dict(attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    settings.update(output_logits=True, return_dict_in_generate=True)
    cached = model.generate(ids, **settings)
    uncached = model.generate(ids, use_cache=False, **settings)
    assert torch.equal(cached.sequences, uncached.sequences)
    for step_cached, step_uncached in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(step_cached, step_uncached, rtol=1e-5, atol=1e-5)
    base_logits = reference.generate(ids, **settings).logits[0]
    assert not torch.allclose(cached.logits[0], base_logits, atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "mistral"])  # mistral's window of 4 slides its static cache layers
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("padded", [True, False])  # unpadded, transformers hands the prefill no mask at all
def test_static_cache_generates_what_the_default_cache_generates(arch, placement, padded):
    model = adapted(tiny(arch), placement=placement)
    ids, mask = batch(length=6)
    mask = mask if padded else torch.ones_like(mask)
    settings = dict(attention_mask=mask, max_new_tokens=7, min_new_tokens=7, do_sample=False)
    settings.update(output_logits=True, return_dict_in_generate=True)
    default = model.generate(ids, **settings)
    static = model.generate(ids, cache_implementation="static", **settings)
    assert torch.equal(static.sequences, default.sequences)
    for step_static, step_default in zip(static.logits, default.logits):
        torch.testing.assert_close(step_static, step_default, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_static_cache_generates_what_the_default_cache_generates():
    model = adapted(tiny())
    ids, mask = batch(length=6)
    settings = dict(attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    default = model.generate(ids, **settings)
    model.get_base_model().forward = torch.compile(model.get_base_model().forward)
    assert torch.equal(model.generate(ids, cache_implementation="static", **settings), default)


def test_forward_in_cached_chunks_equals_one_full_forward():
    """A lazily grown DynamicCache, fed 4 + 3 + 1 tokens, gives the logits of one 8-token forward."""
    model = adapted(tiny())
    ids, mask = batch(length=8)
    full = logits(model, ids, mask)
    cache, pieces = DynamicCache(), []
    for start, stop in [(0, 4), (4, 7), (7, 8)]:
        pieces.append(logits(model, ids[:, start:stop], mask[:, :stop], past_key_values=cache, use_cache=True))
    assert len(cache.layers) == 4  # two decoder layers' keys and values, then their GIN features
    real = mask.bool()
    torch.testing.assert_close(torch.cat(pieces, dim=1)[real], full[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("placement", ["after_mlp", "parallel"])
def test_cached_beam_search_equals_uncached(placement):
    model = adapted(tiny(), placement=placement)
    ids, mask = batch(length=6)
    settings = dict(attention_mask=mask, max_new_tokens=5, num_beams=2, do_sample=False)
    assert torch.equal(model.generate(ids, **settings), model.generate(ids, use_cache=False, **settings))


def test_eager_and_sdpa_bases_give_the_same_adapted_model():
    ids, mask = batch()
    sdpa = adapted(tiny())
    eager = adapted(tiny(attn_implementation="eager"))
    assert eager.get_base_model().config._attn_implementation == "sparse_gin_eager"
    real = mask.bool()  # sdpa and eager bases themselves differ on the rows of padding queries
    torch.testing.assert_close(logits(eager, ids, mask)[real], logits(sdpa, ids, mask)[real], rtol=1e-5, atol=1e-5)


def test_graph_adjacency_is_added_to_every_layer():
    model = adapted(tiny(), tau=0.9)
    ids, _ = batch()
    plain = logits(model, ids)
    torch.testing.assert_close(logits(model, ids, graph_adjacency=torch.zeros(2, 7, 7)), plain, rtol=0, atol=0)
    with model.capture_adjacency() as graphs:
        guided = logits(model, ids, graph_adjacency=torch.ones(2, 7, 7))
    assert not torch.allclose(guided, plain)
    assert all((g.adjacency > 0).sum() == 2 * 28 for g in graphs)  # every causal edge, saturated
    with pytest.raises(ValueError, match="graph_adjacency of shape \\(2, 7, 6\\)"):
        logits(model, ids, graph_adjacency=torch.ones(2, 7, 6))


def test_detach_adjacency_decides_whether_earlier_adapters_learn_through_later_graphs():
    ids, _ = batch()
    grads = {}
    for detach in (True, False):
        model = adapted(tiny(), detach_adjacency=detach, train_tau=True)
        model(input_ids=ids, labels=ids).loss.backward()
        grads[detach] = model.adapters[0].in_proj.weight.grad
        assert model.adapters[1].tau.grad is not None
    assert not torch.allclose(grads[True], grads[False])


def test_ramp_init_rises_linearly_over_layers():
    model = get_sparse_gin_model(tiny(num_hidden_layers=3), SparseGINConfig(scale_init="ramp", scale_max=0.5))
    assert model.adapter_scales() == pytest.approx([0.0, 0.25, 0.5])


def test_two_adapted_models_do_not_share_state():
    ids, _ = batch()
    first, second = adapted(tiny()), adapted(tiny(), scale=0.25)
    alone = logits(second, ids)
    with first.disable_adapter():
        torch.testing.assert_close(logits(second, ids), alone, rtol=0, atol=0)
    assert not torch.allclose(logits(first, ids), alone)


def test_wrapping_twice_and_unsupported_attention_fail_clearly():
    model = adapted(tiny())
    with pytest.raises(ValueError, match="already carries a Sparse-GIN adapter"):
        get_sparse_gin_model(model.get_base_model())
    with pytest.raises(ModelRefused, match="attn_implementation='flex_attention'"):
        get_sparse_gin_model(tiny(attn_implementation="flex_attention"))


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("aggregation", "median", "sum, mean, max"),
        ("placement", "before_attention", "after_attention"),
        ("top_k", 0, ">= 1"),
    ],
)
def test_config_names_the_bad_field_and_the_allowed_values(field, value, allowed):
    with pytest.raises(ValueError, match=f"SparseGINConfig.{field}=.*allowed values.*{allowed}"):
        SparseGINConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown fields \\['lambda_gnn'\\]"):
        SparseGINConfig.from_dict({"lambda_gnn": 0.5})
