"""Sparse-GIN as a peft tuner (adapter/tuner.py): a real PeftModel whose untrained adapter is its base, named adapters
that switch, disable and delete exactly, saving and loading a chosen one (in the files SparseGINModel reads and
writes too), and the LoRA-only operations refused with the reason."""

import json

import peft
import pytest
import torch
from accelerate.utils import is_peft_model
from peft.tuners.lora.conversion import convert_to_lora
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from ginformer.adapter import (
    AutoSparseGINModelForCausalLM,
    SparseGINConfig,
    SparseGINModel,
    SparseGINPeftConfig,
    get_sparse_gin_model,
)
from ginformer.adapter.host import TAP
from ginformer.errors import CheckpointError, ConfigError, NotMergeable

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_base(seed=0, **overrides):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})).eval()


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    """The tiny base saved, so that an adapter names a base AutoSparseGINModelForCausalLM can load."""
    path = tmp_path_factory.mktemp("tiny_base")
    tiny_base().save_pretrained(path)
    return path


def config(**fields):
    return SparseGINPeftConfig(**{"d_gnn": 8, "dropout": 0.0, **fields})


def branches(model, name):
    return model.base_model.model.sparse_gin.sparse_gin_branches[name]


def set_scales(model, name, scale):
    """λ away from 0 (and per layer), so that the adapter changes the output."""
    with torch.no_grad():
        for k, layer in enumerate(branches(model, name)):
            layer.scale.fill_(scale * (k + 1))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(3, 64, (2, 9), generator=torch.Generator().manual_seed(1))


def test_the_peft_model_is_a_peft_model_whose_untrained_adapter_is_its_base():
    base = tiny_base()
    expected = logits(base, IDS)
    model = peft.get_peft_model(base, config())
    assert isinstance(model, peft.PeftModelForCausalLM) and is_peft_model(model)  # what TRL asks
    assert torch.equal(logits(model, IDS), expected)  # λ = 0
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".sparse_gin.sparse_gin_branches.default." in name for name in trainable)
    assert model.get_nb_trainable_parameters()[0] == get_sparse_gin_model(tiny_base(), config()
                                                                          ).get_nb_trainable_parameters()[0]


def test_named_adapters_switch_disable_and_delete_exactly(tmp_path):
    base = tiny_base()
    expected_base = logits(base, IDS)
    model = peft.get_peft_model(base, config()).eval()
    set_scales(model, "default", 0.3)
    a = logits(model, IDS)
    model.add_adapter("b", config(d_gnn=4, alpha=5.0))
    set_scales(model, "b", 0.2)
    assert torch.equal(logits(model, IDS), a)  # adding an adapter leaves the active one running
    model.set_adapter("b")
    b = logits(model, IDS)
    assert not torch.allclose(b, a, atol=1e-3) and not torch.allclose(b, expected_base, atol=1e-3)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if ".sparse_gin_branches.b." in n}  # only the active adapter trains
    with model.disable_adapter():
        assert torch.equal(logits(model, IDS), expected_base)
    assert torch.equal(logits(model, IDS), b)
    model.set_adapter("default")
    assert torch.equal(logits(model, IDS), a)

    # Each adapter computes what a SparseGINModel with its weights computes.
    for name, expected in (("default", a), ("b", b)):
        model.save_pretrained(tmp_path / "all", selected_adapters=[name])
        saved = tmp_path / "all" if name == "default" else tmp_path / "all" / name
        torch.testing.assert_close(logits(SparseGINModel.from_pretrained(tiny_base(), saved).eval(), IDS), expected,
                                   rtol=0, atol=0)

    with pytest.warns(UserWarning, match="Setting active adapter to b"):
        model.delete_adapter("default")
    assert model.active_adapter == "b" and list(model.peft_config) == ["b"]
    assert torch.equal(logits(model, IDS), b)
    assert not any(".default." in name for name in model.state_dict())


def test_a_chosen_adapter_saves_and_loads_under_any_name(tmp_path, base_path):
    model = peft.get_peft_model(LlamaForCausalLM.from_pretrained(base_path).eval(), config()).eval()
    model.add_adapter("b", config(d_gnn=4))
    set_scales(model, "b", 0.25)
    model.set_adapter("b")
    b = logits(model, IDS)
    model.save_pretrained(tmp_path, selected_adapters=["b"])
    saved = tmp_path / "b"
    single = get_sparse_gin_model(tiny_base(), SparseGINConfig(d_gnn=4))
    assert set(load_file(str(saved / "adapter_model.safetensors"))) == set(single.adapter_state_dict())  # its keys

    fresh = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_path).eval(), saved,
                                           adapter_name="mine")
    assert list(fresh.peft_config) == ["mine"] and fresh.peft_config["mine"].d_gnn == 4
    torch.testing.assert_close(logits(fresh, IDS), b, rtol=0, atol=0)

    model.load_adapter(saved, adapter_name="c")  # beside the adapter it was saved from
    model.set_adapter("c")
    torch.testing.assert_close(logits(model, IDS), b, rtol=0, atol=0)
    loaded = AutoSparseGINModelForCausalLM.from_pretrained(saved).eval()  # reads the base the adapter names
    torch.testing.assert_close(logits(loaded, IDS), b, rtol=0, atol=0)


def test_an_adapter_trained_with_either_face_loads_into_the_other(tmp_path):
    single = get_sparse_gin_model(tiny_base(), SparseGINConfig(d_gnn=8, dropout=0.0, train_tau=True)).eval()
    with torch.no_grad():
        for adapter in single.adapters:
            adapter.scale.fill_(0.4)
            adapter.tau.fill_(0.3)
    single.save_pretrained(tmp_path / "single")
    as_peft = peft.PeftModel.from_pretrained(tiny_base(), tmp_path / "single", is_trainable=True)
    assert as_peft.peft_config["default"].train_tau and not as_peft.peft_config["default"].inference_mode
    torch.testing.assert_close(logits(as_peft.eval(), IDS), logits(single, IDS), rtol=0, atol=0)

    as_peft.save_pretrained(tmp_path / "peft")
    back = SparseGINModel.from_pretrained(tiny_base(), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(back, IDS), logits(single, IDS), rtol=0, atol=0)


def test_an_adapter_for_another_base_or_with_other_weights_is_refused(tmp_path):
    model = peft.get_peft_model(tiny_base(), config())
    model.save_pretrained(tmp_path)
    other = tiny_base(hidden_size=48)
    with pytest.raises(CheckpointError, match="different base model.*hidden_size: adapter 32 vs base 48"):
        peft.PeftModel.from_pretrained(other, tmp_path)
    assert not hasattr(other, "sparse_gin") and other.config._attn_implementation == "sdpa"  # left untouched
    assert not any(hasattr(module, TAP) for module in other.modules())

    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    for damage, match in ((lambda w: w.pop("adapters.1.in_proj.weight"), "missing.*1.in_proj.weight"),
                          (lambda w: w.update({"adapters.7.bias": torch.zeros(8)}), "for no branch.*adapters.7.bias"),
                          (lambda w: w.update({"adapters.0.bias": torch.zeros(5)}), "shapes differ.*saved \\(5,\\)"),
                          (lambda w: w.update({"q_proj.lora_A.weight": torch.zeros(2, 32)}),
                           "not Sparse-GIN adapter keys: \\['q_proj.lora_A.weight'\\]")):
        damaged = dict(weights)
        damage(damaged)
        save_file(damaged, str(tmp_path / "adapter_model.safetensors"))
        with pytest.raises(CheckpointError, match=f"adapter 'default': the saved weights do not fit it .*{match}"):
            peft.PeftModel.from_pretrained(tiny_base(), tmp_path)


def test_merging_is_refused_with_the_reason_and_leaves_the_adapter_attached():
    model = peft.get_peft_model(tiny_base(), config()).eval()
    set_scales(model, "default", 0.3)
    before = logits(model, IDS)
    for operation in ("merge_and_unload", "merge_adapter", "unmerge_adapter"):
        with pytest.raises(NotMergeable, match=f"{operation}: .*nonlinear in the attention graph.*save_pretrained"):
            getattr(model, operation)()
    with pytest.raises(NotMergeable, match="merge: "):  # peft's layer-level merge, as TRL's vLLM sync reaches it
        model.base_model.model.sparse_gin.merge()
    assert torch.equal(logits(model, IDS), before) and hasattr(model.base_model.model, "sparse_gin")
    with pytest.raises(TypeError, match="do not support LoRA conversion.*SparseGINBranches"):
        convert_to_lora(model, rank=4)
    single = get_sparse_gin_model(tiny_base(), SparseGINConfig(d_gnn=8))
    for operation in ("merge_and_unload", "merge_adapter", "unmerge_adapter"):
        with pytest.raises(NotMergeable, match=f"{operation}: .*Keep the adapter attached"):
            getattr(single, operation)()


def test_one_adapter_runs_at_a_time_and_the_adapters_of_a_base_share_a_placement():
    model = peft.get_peft_model(tiny_base(), config())
    model.add_adapter("b", config())
    with pytest.raises(ConfigError, match=r"adapters \['default', 'b'\]: one runs at a time"):
        model.base_model.set_adapter(["default", "b"])
    with pytest.raises(ConfigError, match="placement='after_mlp', but the adapters on this base join at "
                                          "'after_attention'"):
        model.add_adapter("c", config(placement="after_mlp"))
    assert list(model.peft_config) == ["default", "b"]  # peft rolls the failed adapter back
    base = tiny_base()
    with pytest.raises(ConfigError, match="not on the meta device"):
        peft.get_peft_model(base, config(), low_cpu_mem_usage=True)
    assert not hasattr(base, "sparse_gin") and not any(hasattr(module, TAP) for module in base.modules())
    with pytest.raises(ConfigError, match="low_cpu_mem_usage=True"):
        model.add_adapter("d", config(), low_cpu_mem_usage=True)


def test_unload_returns_the_base_as_it_was():
    base = tiny_base()
    expected = logits(base, IDS)
    model = peft.get_peft_model(base, config()).eval()
    set_scales(model, "default", 0.3)
    unloaded = model.unload()
    assert unloaded is base and not hasattr(base, "sparse_gin") and not hasattr(base, "peft_config")
    assert base.config._attn_implementation == "sdpa" and all(p.requires_grad for p in base.parameters())
    assert torch.equal(logits(base, IDS), expected)
    assert torch.equal(logits(peft.get_peft_model(base, config()), IDS), expected)  # and it can be adapted again


def test_graph_adjacency_and_cached_generation_run_as_on_sparse_gin_model(tmp_path):
    model = peft.get_peft_model(tiny_base(), config()).eval()
    set_scales(model, "default", 0.3)
    model.save_pretrained(tmp_path)
    single = SparseGINModel.from_pretrained(tiny_base(), tmp_path).eval()
    graph = torch.rand(2, 9, 9, generator=torch.Generator().manual_seed(3)).tril()
    with torch.no_grad():
        with_graph = model(input_ids=IDS, graph_adjacency=graph).logits
        torch.testing.assert_close(with_graph, single(input_ids=IDS, graph_adjacency=graph).logits, rtol=0, atol=0)
    assert not torch.allclose(with_graph, logits(model, IDS), atol=1e-4)  # the graph reached the branches
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    generated = model.generate(input_ids=IDS[:1], **kwargs)
    assert torch.equal(generated, single.generate(input_ids=IDS[:1], **kwargs))
    assert torch.equal(generated, model.generate(input_ids=IDS[:1], use_cache=False, **kwargs))


def test_both_faces_describe_an_adapter_alike(tmp_path):
    """The base is named as its config names it ("smollm2" for the bundled base, whose weights are read from the
    GGUF package's directory: peft's base_model_name_or_path), so the adapter loads back by that name."""
    def named_base():
        base = tiny_base()
        base.config._name_or_path, base.name_or_path = "bundled", "/where/its/weights/were/read"
        return base

    peft.get_peft_model(named_base(), config()).save_pretrained(tmp_path / "peft")
    get_sparse_gin_model(named_base(), config().sparse_gin_config()).save_pretrained(tmp_path / "single")
    described = [json.loads((tmp_path / face / "adapter_config.json").read_text()) for face in ("peft", "single")]
    assert described[0] == described[1] and described[0]["base_model_name_or_path"] == "bundled"
