"""Sparse-GIN on tiny random models of every decoder family transformers ships that researchers fine-tune: each one
either passes the adapter's equalities or is refused by the wrap-time probe with a message naming the term.

Oracles are the host's own computations: its eager attention weights (`output_attentions`), its unadapted logits,
its uncached generation, and, for the residual stream, X written out from each family's modeling code.
"""

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ginformer.adapter import AutoSparseGINModelForCausalLM, SparseGINConfig, get_sparse_gin_model
from ginformer.adapter import host as host_module
from ginformer.adapter.host import HostMismatch, decoder_layers

BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=128, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
WINDOWED = dict(sliding_window=4, layer_types=["sliding_attention", "full_attention"])  # generation runs past it
HYBRID = dict(num_hidden_layers=4, head_dim=16, linear_num_value_heads=4, linear_num_key_heads=2,
              linear_key_head_dim=16, linear_value_head_dim=16)
# family -> (config overrides, the attention implementations the family has)
FAMILIES = {
    "llama": ({}, ("sdpa", "eager")),
    "mistral": (dict(sliding_window=4), ("sdpa",)),
    "mixtral": (dict(num_local_experts=4, num_experts_per_tok=2), ("sdpa",)),
    "qwen2": ({}, ("sdpa",)),
    "qwen3": (dict(head_dim=16), ("sdpa",)),
    "qwen3_moe": (dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16), ("sdpa",)),
    "gemma": (dict(head_dim=16), ("sdpa",)),
    "gemma2": (dict(attn_logit_softcapping=2.0, head_dim=16, sliding_window=4), ("eager",)),
    "gemma3_text": (dict(head_dim=16, **WINDOWED), ("sdpa",)),
    "phi": ({}, ("sdpa",)),
    "phi3": ({}, ("sdpa",)),
    "olmo": ({}, ("sdpa",)),
    "olmo2": ({}, ("sdpa",)),
    "olmo3": (WINDOWED, ("sdpa",)),
    "stablelm": ({}, ("sdpa",)),
    "starcoder2": ({}, ("sdpa",)),
    "cohere": ({}, ("sdpa",)),
    "cohere2": (WINDOWED, ("sdpa",)),
    "helium": (dict(head_dim=16), ("sdpa",)),
    "smollm3": ({}, ("sdpa",)),
    "granite": (dict(residual_multiplier=0.3, attention_multiplier=0.2, embedding_multiplier=2.0), ("sdpa", "eager")),
    "glm4": (dict(head_dim=16), ("sdpa",)),
    "exaone4": (WINDOWED, ("sdpa",)),
    "deepseek_v3": (dict(moe_intermediate_size=32, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
                         first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
                         qk_nope_head_dim=16, v_head_dim=16, n_group=1, topk_group=1), ("sdpa",)),
    "gpt_oss": (dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2, **WINDOWED), ("eager",)),
    "gpt2": ({}, ("sdpa", "eager")),
    "gpt_neox": ({}, ("sdpa",)),
    "llama4_text": (dict(head_dim=16, num_local_experts=2, intermediate_size_mlp=96, interleave_moe_layer_step=1,
                         attention_chunk_size=4, no_rope_layers=[1, 0]), ("sdpa",)),
    "qwen3_next": (dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                        shared_expert_intermediate_size=32, **HYBRID), ("sdpa",)),
    "qwen3_5_text": (HYBRID, ("sdpa",)),
}
# Refused by the probe, with the words its message must contain.
REFUSED = {
    "gptj": ({}, "eager", "does not route attention through transformers' attention interface"),
    "falcon": ({}, "sdpa", "does not route attention through transformers' attention interface"),
}
# Whose attention output passes through something the probe cannot rebuild before the residual add: after_mlp only.
AFTER_MLP_ONLY = {"gemma4_text": (dict(head_dim=16, global_head_dim=16, **WINDOWED), ("sdpa",))}
HYBRID_ADAPTED = {"qwen3_next": [3], "qwen3_5_text": [3]}  # their full-attention layers; the rest are linear
# One of each kind of trick runs by default; the rest of the matrix is marked slow (CI runs it all).
QUICK = {"llama", "mistral", "gemma2", "granite", "glm4", "deepseek_v3", "gpt_oss", "gpt2", "gpt_neox", "qwen3_next"}
CASES = [pytest.param(name, attn, marks=() if name in QUICK else pytest.mark.slow)
         for name, (_, attns) in FAMILIES.items() for attn in attns]


def tiny(name, attn, seed=0):
    overrides = {**FAMILIES, **AFTER_MLP_ONLY, **REFUSED}[name][0]
    config = AutoConfig.for_model(name, **{**BASE, **overrides})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def adapted(base, scale=0.5, **config):
    model = get_sparse_gin_model(base, SparseGINConfig(dropout=0.0, **config)).eval()
    with torch.no_grad():
        for adapter in model.adapters:
            adapter.scale.fill_(scale)
            adapter.out_proj.weight.normal_(std=0.5)  # a branch that really moves the output
    return model


def tokens(length=9, seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (2, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return ids, mask


def logits(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("name,attn", CASES)
def test_zero_init_and_disabled_adapter_equal_the_base(name, attn):
    base = tiny(name, attn)
    reference = copy.deepcopy(base)
    ids, mask = tokens()
    model = get_sparse_gin_model(base, SparseGINConfig(dropout=0.0)).eval()
    torch.testing.assert_close(logits(model, ids, mask), logits(reference, ids, mask), rtol=0, atol=0)
    assert model.adapted_layers == HYBRID_ADAPTED.get(name, list(range(BASE["num_hidden_layers"])))
    model = adapted(model.unload())
    assert not torch.allclose(logits(model, ids, mask), logits(reference, ids, mask), atol=1e-4)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, ids, mask), logits(reference, ids, mask), rtol=0, atol=0)


@pytest.mark.parametrize("name,attn", CASES)
def test_the_graph_is_the_models_own_attention(name, attn):
    """A_agg, as the adapter aggregated it, equals the head sum of the host's eager attention weights."""
    ids, mask = tokens()
    eager = tiny(name, "eager")
    with torch.no_grad():
        weights = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    model = get_sparse_gin_model(tiny(name, attn), SparseGINConfig(dropout=0.0)).eval()
    with model.capture_adjacency() as graphs, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert [graph.layer for graph in graphs] == model.adapted_layers
    per_layer = dict(zip(model.adapted_layers, weights))  # a hybrid returns its attention layers' weights only
    for graph in graphs:
        expected = per_layer[graph.layer].sum(dim=1).clamp(max=1.0)  # (B, T, T)
        attends = mask.bool()[:, :, None]  # padding rows attend to nothing: the host's are uniform, ours 0
        torch.testing.assert_close(graph.aggregated * attends, expected * attends, rtol=0, atol=2e-5)


@pytest.mark.parametrize("name,attn", CASES)
def test_a_later_token_never_changes_an_earlier_output(name, attn):
    model = adapted(tiny(name, attn))
    ids, _ = tokens()
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 125 + 3
    before, after = logits(model, ids), logits(model, changed)
    torch.testing.assert_close(before[:, :5], after[:, :5], rtol=0, atol=1e-5)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


@pytest.mark.parametrize("name,attn", CASES)
def test_cached_generation_equals_uncached(name, attn):
    model = adapted(tiny(name, attn))
    ids, mask = tokens(length=6)
    settings = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = model.generate(ids, use_cache=True, **settings)
    uncached = model.generate(ids, use_cache=False, **settings)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name,attn", CASES)
def test_saved_adapter_loads_back_in_one_call(name, attn, tmp_path):
    base = tiny(name, attn)
    base.save_pretrained(tmp_path / "base")
    base.config._name_or_path = str(tmp_path / "base")
    model = adapted(base)
    model.save_pretrained(tmp_path / "adapter")
    ids, mask = tokens()
    loaded = AutoSparseGINModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    assert loaded.config._attn_implementation == f"sparse_gin_{attn}"
    assert loaded.adapted_layers == model.adapted_layers
    torch.testing.assert_close(logits(loaded, ids, mask), logits(model, ids, mask), rtol=1e-5, atol=1e-5)


def _stream_oracles():
    """X after attention, written out from each family's modeling code: (layer, h, attention output) -> X."""
    return {
        "llama": lambda layer, h, a: h + a,
        "granite": lambda layer, h, a: h + 0.3 * a,  # hidden_states = residual + attn * residual_multiplier
        "glm4": lambda layer, h, a: h + layer.post_self_attn_layernorm(a),
        "gemma2": lambda layer, h, a: h + layer.post_attention_layernorm(a),
        "olmo2": lambda layer, h, a: h + layer.post_attention_layernorm(a),
        "gpt_neox": lambda layer, h, a: h + a,  # parallel residual: the MLP reads h, beside the attention
    }


@pytest.mark.parametrize("name", _stream_oracles())
def test_node_features_are_the_residual_stream_after_attention(name):
    oracle = _stream_oracles()[name]
    model = adapted(tiny(name, FAMILIES[name][1][0]))
    ids, mask = tokens()
    layers = decoder_layers(model.get_base_model())
    seen, handles = {}, []

    def keep(key, value):
        seen[key] = value

    for host, adapter in zip(model.host_layers, model.adapters):
        k = host.index
        handles.append(host.layer.register_forward_pre_hook(
            lambda module, args, kwargs, k=k: keep(("h", k), args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True, prepend=True))
        handles.append(host.attention.register_forward_hook(
            lambda module, args, output, k=k: keep(("a", k), output[0]), prepend=True))
        handles.append(adapter.register_forward_pre_hook(lambda module, args, k=k: keep(("x", k), args[0])))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    with torch.no_grad(), model.disable_adapter():  # the oracle calls the layer's own norms, unhooked
        for host in model.host_layers:
            k = host.index
            expected = oracle(layers[k], seen[("h", k)], seen[("a", k)])
            torch.testing.assert_close(seen[("x", k)], expected, rtol=1e-5, atol=1e-5)
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("name", REFUSED)
def test_families_the_adapter_cannot_see_are_refused_by_name(name):
    _, attn, words = REFUSED[name]
    with pytest.raises(HostMismatch, match=f"^{name}: .*{words}"):
        get_sparse_gin_model(tiny(name, attn))


def test_a_family_after_mlp_only_is_refused_for_after_attention_and_works_after_mlp():
    base = tiny("gemma4_text", "sdpa")
    with pytest.raises(HostMismatch, match="gemma4_text layer 0: the residual stream .* placement='after_mlp'"):
        get_sparse_gin_model(base)
    reference = copy.deepcopy(base)
    model = get_sparse_gin_model(base, SparseGINConfig(placement="after_mlp", dropout=0.0)).eval()
    ids, mask = tokens()
    torch.testing.assert_close(logits(model, ids, mask), logits(reference, ids, mask), rtol=0, atol=0)


def test_a_dropped_sink_term_is_caught_by_name_and_by_value(monkeypatch):
    """The probe sees what the rebuild would miss: by the keyword that carries it, and numerically."""
    monkeypatch.setattr(host_module, "READ_KWARGS", {"softcap": "softcap"})
    with pytest.raises(HostMismatch, match=r"gpt_oss layer 0: its attention gets s_aux=<tensor of shape \(4,\)>, a term .* does not rebuild"):
        get_sparse_gin_model(tiny("gpt_oss", "eager"))
    monkeypatch.setattr(host_module, "NEUTRAL_KWARGS", host_module.NEUTRAL_KWARGS | {"s_aux"})
    with torch.no_grad():
        for layer in decoder_layers(base := tiny("gpt_oss", "eager")):
            layer.self_attn.sinks.fill_(1.0)
    with pytest.raises(HostMismatch, match="gpt_oss layer 0: the rebuilt attention graph differs .* by 0.[1-9]"):
        get_sparse_gin_model(base)


def test_a_residual_stream_the_adapter_cannot_rebuild_is_refused():
    base = tiny("llama", "sdpa")
    layer = decoder_layers(base)[1]
    forward = layer.forward

    def squashed_residual(*args, **kwargs):  # a norm the probe cannot find: tanh on the attention's output
        handle = layer.self_attn.register_forward_hook(lambda m, a, out: (torch.tanh(3 * out[0]), *out[1:]))
        try:
            return forward(*args, **kwargs)
        finally:
            handle.remove()

    layer.forward = squashed_residual
    with pytest.raises(HostMismatch, match="llama layer 1: the residual stream after attention"):
        get_sparse_gin_model(base)
    assert not any(hasattr(module, "_sparse_gin_tap") for module in base.modules())
    assert base.config._attn_implementation == "sdpa"


def test_the_probe_can_be_skipped_and_then_assumes_the_llama_layout():
    base = tiny("granite", "sdpa")
    model = get_sparse_gin_model(base, SparseGINConfig(), probe_host=False)
    assert [host.stream_scale for host in model.host_layers] == [1.0, 1.0]  # wrong for Granite: hence "unsafe"
    assert get_sparse_gin_model(model.unload()).host_layers[0].stream_scale == pytest.approx(0.3)
