"""Saved Sparse-GIN adapters: the model card, hub ids (read from a local hub cache, offline), Trainer's layout, and
clear errors for files that are not an adapter."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from ginformer.adapter import AutoSparseGINModelForCausalLM, SparseGINConfig, SparseGINModel, get_sparse_gin_model
from ginformer.errors import CheckpointError, MissingInput

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def tiny_base():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY)).eval()


def trained(base):
    model = get_sparse_gin_model(base, SparseGINConfig(d_gnn=8, dropout=0.0, alpha=7.0)).eval()
    with torch.no_grad():
        for k, adapter in enumerate(model.adapters):
            adapter.scale.fill_(0.1 * (k + 1))
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_save_pretrained_writes_a_model_card(tmp_path):
    model = trained(tiny_base())
    model.save_pretrained(tmp_path, data="GSM8K train rows 0-99", metrics={"val_loss": 1.25})
    card = (tmp_path / "README.md").read_text()
    trainable = model.get_nb_trainable_parameters()[0]
    assert f"{trainable:,} trainable parameters" in card and "LlamaForCausalLM, 2 layers" in card
    assert "GSM8K train rows 0-99" in card and "| val_loss | 1.25 |" in card
    assert '"alpha": 7.0' in card and "library_name: ginformer" in card


def test_a_hub_id_loads_from_the_local_hub_cache(tmp_path):
    """A hub id resolves through huggingface_hub; offline, from its cache (laid out here as the hub client does)."""
    model = trained(tiny_base())
    snapshot = tmp_path / "cache" / "models--someone--tiny-sparse-gin" / "snapshots" / ("0" * 40)
    model.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    ids = torch.randint(0, 64, (1, 6))
    loaded = SparseGINModel.from_pretrained(tiny_base(), "someone/tiny-sparse-gin", cache_dir=tmp_path / "cache",
                                            local_files_only=True).eval()
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=0)
    with pytest.raises(MissingInput, match="someone/absent.*hub repository could not be read"):
        SparseGINModel.from_pretrained(tiny_base(), "someone/absent", cache_dir=tmp_path / "cache",
                                       local_files_only=True)


def test_auto_class_loads_the_base_the_adapter_names(tmp_path):
    base_dir = tmp_path / "base"
    tiny_base().save_pretrained(base_dir)
    model = trained(LlamaForCausalLM.from_pretrained(base_dir))
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, 64, (2, 6))
    loaded = AutoSparseGINModelForCausalLM.from_pretrained(tmp_path / "adapter")
    assert isinstance(loaded, SparseGINModel) and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(logits(loaded.eval(), ids), logits(model, ids), rtol=0, atol=0)

    shutil.move(base_dir, tmp_path / "moved")  # the named base is gone: say so, or take another copy of it
    with pytest.raises(MissingInput, match="model path not found"):
        AutoSparseGINModelForCausalLM.from_pretrained(tmp_path / "adapter")
    bf16 = AutoSparseGINModelForCausalLM.from_pretrained(tmp_path / "adapter", dtype=torch.bfloat16,
                                                         base_model_name_or_path=tmp_path / "moved", is_trainable=True)
    assert bf16.get_base_model().dtype == torch.bfloat16
    assert {p.dtype for p in bf16.adapters.parameters()} == {torch.float32}
    assert all(p.requires_grad for p in bf16.adapters.parameters())

    trained(tiny_base()).save_pretrained(tmp_path / "unnamed")  # a base built in memory has no name to load by
    with pytest.raises(CheckpointError, match="does not say which base it was trained on"):
        AutoSparseGINModelForCausalLM.from_pretrained(tmp_path / "unnamed")


def test_files_that_are_not_an_adapter_are_named(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"adapter_type": "lora"}))
    with pytest.raises(CheckpointError, match="adapter_config.json: adapter_type='lora'"):
        SparseGINModel.from_pretrained(tiny_base(), tmp_path)
    (tmp_path / "adapter_config.json").unlink()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors has no _extra_state"):
        SparseGINModel.from_pretrained(tiny_base(), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        SparseGINModel.from_pretrained(tiny_base(), tmp_path)


def test_an_adapter_whose_config_or_weights_were_changed_is_a_checkpoint_error(tmp_path):
    trained(tiny_base()).save_pretrained(tmp_path)
    config_file, weights_file = tmp_path / "adapter_config.json", tmp_path / "adapter_model.safetensors"
    saved = json.loads(config_file.read_text())
    for config, why in (({**saved["config"], "lambda_gnn": 1.0}, r"unknown fields \['lambda_gnn'\]"),
                        ({**saved["config"], "dropout": 2.0}, r"dropout=2.0"), ([1, 2], "list, not a mapping")):
        config_file.write_text(json.dumps({**saved, "config": config}))
        with pytest.raises(CheckpointError, match=rf"adapter in {tmp_path}: its config .*{why}"):
            SparseGINModel.from_pretrained(tiny_base(), tmp_path)
    config_file.write_bytes(b"\xff{")
    with pytest.raises(CheckpointError, match="adapter_config.json is not valid JSON"):
        SparseGINModel.from_pretrained(tiny_base(), tmp_path)
    config_file.write_text(json.dumps(saved))
    tensors = load_file(str(weights_file))
    dropped = sorted(tensors)[0]
    save_file({key: value for key, value in tensors.items() if key != dropped}, str(weights_file))
    with pytest.raises(CheckpointError, match=r"the adapter's weights do not fit this adapter: Missing key"):
        SparseGINModel.from_pretrained(tiny_base(), tmp_path)


def test_adapters_saved_with_zero_dimensional_scalars_still_load(tmp_path):
    """λ, ε, α and τ were 0-d tensors before FSDP2 (which refuses them) made them 1-element ones."""
    model = trained(tiny_base())
    model.save_pretrained(tmp_path)
    old = {key: value.reshape(()) if value.numel() == 1 else value for key, value in model.adapter_state_dict().items()}
    save_file(old, str(tmp_path / "adapter_model.safetensors"))
    loaded = SparseGINModel.from_pretrained(tiny_base(), tmp_path).eval()
    assert loaded.adapter_scales() == pytest.approx([0.1, 0.2])
    ids = torch.randint(0, 64, (1, 6))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=0)
