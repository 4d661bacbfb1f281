import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoConfig, AutoModelForCausalLM, CompileConfig, LlamaConfig, LlamaForCausalLM, StaticCache

from ginformer import GinformerConfig, GinformerForCausalLM, count_parameters, size_config
from ginformer.attention import GINAttention, PNAAttention
from ginformer.sizing import config_parameters, forward_flops_per_token
from test_attention import OPTIONS, tiny_config

GENERATION_CASES = [("standard", "fast_softmax")] + [
    (kind, name) for kind in ("gin", "pna") for name in ("fast_softmax", "sigmoid", "top_k", "hidden_slice", "gqa")
]
# Every adjacency activation and refinement, since each treats a static cache's empty slots (zero keys) its own way.
STATIC_CACHE_CASES = [("standard", "fast_softmax")] + [
    (kind, name)
    for kind in ("gin", "pna")
    for name in ("fast_softmax", "sigmoid", "sharp_softplus", "relu", "threshold", "top_k", "gqa", "hidden_slice")
] + [("pna", "all_pna_aggregators")]


def generation_model(kind: str, option: str) -> GinformerForCausalLM:
    config = tiny_config(kind, **OPTIONS[option])
    torch.manual_seed(1)
    model = GinformerForCausalLM(config).eval()
    with torch.no_grad():  # make the graph branch matter: GIN/PNA outputs are small at init
        for name, parameter in model.named_parameters():
            if "mlp.w_" in name:
                parameter.mul_(20)
    return model


def prompt_batch(config, padded: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of 6 tokens, or of 6 and 4 with the shorter left-padded as generate wants a batch: ids and mask.
    Without padding transformers hands a static cache's prefill no mask; with padding it builds one."""
    generator = torch.Generator().manual_seed(2)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0 if padded else 1
    prompt = torch.randint(1, config.vocab_size, (2, 6), generator=generator) * mask  # pad id 0
    return prompt, mask


def greedy(model, prompt, mask, **options):
    return model.generate(
        prompt, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0,
        return_dict_in_generate=True, output_logits=True, **options,
    )


def assert_same_generation(got, want) -> None:
    """Identical greedy tokens, and logits that agree at every step, not just in their argmax."""
    assert torch.equal(got.sequences, want.sequences)
    for got_logits, want_logits in zip(got.logits, want.logits, strict=True):
        torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=1e-5)


def test_standard_kind_is_exactly_llama():
    config = tiny_config("standard", num_key_value_heads=2)
    torch.manual_seed(0)
    ours = GinformerForCausalLM(config).eval()
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.to_dict().items() if k in LlamaConfig.__dataclass_fields__})).eval()
    missing, unexpected = llama.load_state_dict(ours.state_dict(), strict=True)
    tokens = torch.randint(0, config.vocab_size, (2, 11))
    with torch.no_grad():
        assert torch.equal(ours(tokens).logits, llama(tokens).logits)


def test_per_layer_kinds_build_the_right_modules():
    config = tiny_config(["pna", "gin"])
    model = GinformerForCausalLM(config)
    assert isinstance(model.model.layers[0].self_attn, PNAAttention)
    assert isinstance(model.model.layers[1].self_attn, GINAttention)
    assert model.graph_parameters()["pna_blend"][0] == pytest.approx(0.5)
    assert model.graph_parameters()["gin_eps"] == [None, 0.0]


@pytest.mark.parametrize("kind", ["standard", "gin", "pna"])
def test_save_and_auto_load_give_identical_logits(kind, tmp_path):
    config = tiny_config(kind, sharpening_init=1.7)
    torch.manual_seed(0)
    model = GinformerForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "ginformer"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is GinformerForCausalLM
    tokens = torch.randint(0, config.vocab_size, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, loaded(tokens).logits)
    if kind != "standard":
        assert loaded.graph_parameters()["sharpening"] == pytest.approx([1.7, 1.7])


@pytest.mark.parametrize("kind,option", GENERATION_CASES)
def test_cached_generation_equals_uncached(kind, option):
    model = generation_model(kind, option)
    config = model.config
    prompt = torch.randint(0, config.vocab_size, (2, 5))
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **settings)
    uncached = model.generate(prompt, use_cache=False, **settings)
    assert torch.equal(cached, uncached)
    # and the cached logits agree with a full forward, not just the argmax
    with torch.no_grad():
        full = model(cached).logits
        out = model(cached[:, :7], use_cache=True)
        step = model(cached[:, 7:9], past_key_values=out.past_key_values).logits
    torch.testing.assert_close(step, full[:, 7:9], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [True, False], ids=["left_padded", "unpadded"])
@pytest.mark.parametrize("kind,option", STATIC_CACHE_CASES)
def test_static_cache_generation_equals_uncached(kind, option, padded):
    """A static cache (a buffer filled from slot 0, empty slots last) generates what the default cache and the
    uncached model generate."""
    model = generation_model(kind, option)
    prompt, mask = prompt_batch(model.config, padded)
    with torch.no_grad():
        uncached = greedy(model, prompt, mask, use_cache=False)
        default = greedy(model, prompt, mask)
        static = greedy(model, prompt, mask, cache_implementation="static")
    assert isinstance(static.past_key_values, StaticCache)
    assert_same_generation(default, uncached)
    assert_same_generation(static, uncached)


@pytest.mark.parametrize("kind", ["gin", "pna"])
def test_static_cache_refuses_more_node_heads_than_key_heads(kind):
    """hidden_slice with GQA caches H node heads beside H_kv key heads; a static cache allocates H_kv for both."""
    model = generation_model(kind, "gqa_hidden_slice")
    prompt, mask = prompt_batch(model.config)
    with pytest.raises(ValueError, match="hidden_slice.*default cache"):
        greedy(model, prompt, mask, cache_implementation="static")


@pytest.mark.parametrize("kind,option", [("standard", "fast_softmax"), ("gin", "fast_softmax"), ("gin", "relu"),
                                         ("gin", "top_k"), ("pna", "fast_softmax"), ("pna", "sigmoid")])
def test_static_cache_prefill_is_causal(kind, option):
    """Changing token 5 changes no logit before position 5 when the prompt fills a static cache (transformers hands
    the layers no mask there), and the logits are the uncached forward's."""
    model = generation_model(kind, option)
    tokens = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % model.config.vocab_size

    def static_cache_logits(ids):
        return model(ids, past_key_values=StaticCache(config=model.config, max_cache_len=16), use_cache=True).logits

    with torch.no_grad():
        before, after = static_cache_logits(tokens), static_cache_logits(changed)
        uncached = model(tokens, use_cache=False).logits
    torch.testing.assert_close(before[:, :5], after[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(before[:, 5:], after[:, 5:])
    torch.testing.assert_close(before, uncached, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind,option", [("standard", "fast_softmax"), ("gin", "fast_softmax"), ("pna", "fast_softmax")])
def test_compiled_static_cache_generation_equals_uncached(kind, option):
    """generate's own torch.compile of the decoding steps, which a static cache gets by default on a GPU
    (_compile_all_devices asks for it on CPU, as transformers' own tests do): the same tokens and logits."""
    model = generation_model(kind, option)
    prompt, mask = prompt_batch(model.config)
    compile_config = CompileConfig(fullgraph=True, mode="default")
    compile_config._compile_all_devices = True
    graphs_before = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        uncached = greedy(model, prompt, mask, use_cache=False)
        compiled = greedy(model, prompt, mask, cache_implementation="static", compile_config=compile_config)
    assert counters["stats"]["unique_graphs"] > graphs_before  # the decoding steps did run compiled
    assert_same_generation(compiled, uncached)


@pytest.mark.parametrize(
    "options,field",
    [
        (dict(hidden_size=30), "hidden_size"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(attention_kind="gat"), "attention_kind"),
        (dict(attention_kind=["gin"]), "attention_kind"),
        (dict(adjacency_activation="tanh"), "adjacency_activation"),
        (dict(refinement="dropout"), "refinement"),
        (dict(adjacency_top_k=0), "adjacency_top_k"),
        (dict(refinement="threshold", refinement_threshold=-0.1), "refinement_threshold"),
        (dict(gin_mlp_multiplier=0.0), "gin_mlp_multiplier"),
        (dict(gin_mlp_multiplier=-1.0), "gin_mlp_multiplier"),
        (dict(gin_self_term="two"), "gin_self_term"),
        (dict(node_features="embeddings"), "node_features"),
        (dict(pna_aggregators=["median"]), "pna_aggregators"),
        (dict(pna_scalers=["log"]), "pna_scalers"),
        (dict(pna_blend_init=1.0), "pna_blend_init"),
        (dict(gin_mlp_dropout=1.0), "gin_mlp_dropout"),
        (dict(head_dim=16, use_o_proj=False), "use_o_proj"),
    ],
)
def test_bad_configs_name_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        tiny_config("gin", **options)


def test_allowed_values_are_listed():
    with pytest.raises(ValueError, match=r"\['softmax', 'sigmoid', 'sharp_softplus', 'relu'\]"):
        tiny_config("gin", adjacency_activation="tanh")


def test_count_parameters_counts_tied_weights_once():
    config = tiny_config("gin", tie_word_embeddings=True)
    model = GinformerForCausalLM(config)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == config_parameters(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    trainable_before = count_parameters(model, trainable_only=True)
    model.model.embed_tokens.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == trainable_before - 37 * 32


@pytest.mark.parametrize("kind", ["standard", "gin", "pna"])
def test_size_config_reaches_the_target(kind):
    base = GinformerConfig(vocab_size=40, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, attention_kind=kind)
    sized = size_config(base, 400_000)
    assert abs(config_parameters(sized) - 400_000) <= 0.05 * 400_000
    assert sized.head_dim * sized.num_attention_heads == sized.hidden_size
    assert sized.intermediate_size / sized.hidden_size == pytest.approx(3.0, rel=0.02)
    fixed_ffn = size_config(base, 400_000, scale_intermediate=False)
    assert fixed_ffn.intermediate_size == 192


def test_size_config_rejects_unreachable_targets():
    base = tiny_config("gin")
    with pytest.raises(ValueError, match="target_params"):
        size_config(base, 10, tolerance=0.01)


@pytest.mark.slow
def test_static_cache_generation_with_a_compiled_forward_equals_uncached():
    """model.forward through torch.compile compiles the prefill as well, where the cache's count of tokens is a
    traced tensor: a dense PNA layer (sigmoid adjacency) generates the uncached model's tokens and logits."""
    model = generation_model("pna", "sigmoid")
    prompt, mask = prompt_batch(model.config, padded=False)
    graphs_before = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        uncached = greedy(model, prompt, mask, use_cache=False)
        model.forward = torch.compile(model.forward, fullgraph=True)
        compiled = greedy(model, prompt, mask, cache_implementation="static")
    assert counters["stats"]["unique_graphs"] > graphs_before
    assert_same_generation(compiled, uncached)


@pytest.mark.parametrize("kind, options", [
    ("standard", {}),
    ("gin", {}),  # A'·X through SDPA
    ("gin", {"adjacency_activation": "relu", "node_features": "hidden_slice", "use_o_proj": True}),  # dense A'
    ("pna", {"pna_compile": False, "pna_aggregators": ["sum", "max", "std"], "pna_scalers": ["identity", "attenuation"]}),
])
def test_the_flop_count_equals_torchs_count_of_the_models_own_products(kind, options):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    heads_kv = 4 if options.get("node_features") == "hidden_slice" else 2
    config = GinformerConfig(vocab_size=37, hidden_size=32, num_attention_heads=4, num_key_value_heads=heads_kv,
                             num_hidden_layers=2, intermediate_size=48, attention_kind=kind, **options)
    model, length = GinformerForCausalLM(config).eval(), 16
    # SDPA's math backend runs as matrix products, which torch's counter sees; every attention here is dense T × T.
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(input_ids=torch.randint(0, 37, (2, length)))
    terms = forward_flops_per_token(config, length, context=length)
    assert counter.get_total_flops() / (2 * length) == sum(terms.values()) - terms["extrema"]  # max/min: no products
    assert (terms["extrema"] > 0, terms["graph_mlp"] > 0) == (kind == "pna", kind != "standard")
    causal = forward_flops_per_token(config, length)
    assert causal["attention"] == terms["attention"] * (length + 1) / (2 * length)  # a query sees (T + 1) / 2 keys
