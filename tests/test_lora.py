"""LoRA baseline: the rank picked for a budget gives, in real peft, a trainable count within tolerance."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ginformer.adapter.lora import get_lora_model, lora_config_for_budget, lora_target_modules, lora_trainable_count
from ginformer.errors import ConfigError

SIZES = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2,
)


def tiny_model(kind: str, tie: bool = True):
    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**SIZES, tie_word_embeddings=tie)).eval()
    if kind == "qwen2":  # q/k/v carry biases, which LoRA must not count
        return Qwen2ForCausalLM(Qwen2Config(**SIZES, tie_word_embeddings=tie)).eval()
    if kind == "gpt2":  # Conv1D projections, no q_proj
        return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("target", ["attention", "all_linear"])
@pytest.mark.parametrize("budget", [77_777])
@pytest.mark.parametrize("extra", [{}, {"use_dora": True}])
def test_chosen_rank_matches_the_budget_in_real_peft(kind, tie, target, budget, extra):
    model = tiny_model(kind, tie)
    shapes = lora_target_modules(model, target)  # before peft swaps the Linear layers for its own
    config, count = lora_config_for_budget(model, budget, target, **extra)
    peft_model = get_lora_model(model, config)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == count  # the analytic count is exact
    assert abs(trainable - budget) <= 0.05 * budget
    for other in (config.r - 1, config.r + 1):  # no neighbouring rank is closer
        assert abs(lora_trainable_count(shapes, other, **extra) - budget) >= abs(count - budget)
    assert config.lora_alpha == config.r and config.task_type == "CAUSAL_LM"


def test_targets_follow_peft():
    model = tiny_model("llama", tie=False)
    attention = lora_target_modules(model, "attention")
    assert len(attention) == 4 * 2
    assert {n.rsplit(".", 1)[-1] for n in attention} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert attention["model.layers.0.self_attn.k_proj"] == (64, 32)  # GQA: 2 kv heads of 16
    everything = lora_target_modules(model, "all_linear")
    assert "lm_head" not in everything and len(everything) == 7 * 2
    config, _ = lora_config_for_budget(model, 60_000, "all_linear")
    wrapped = {n.removeprefix("base_model.model.").removesuffix(".lora_A.default") for n, _ in
               get_lora_model(model, config).named_modules() if n.endswith("lora_A.default")}
    assert wrapped == set(everything)


def test_gpt2_conv1d_counts_for_all_linear_and_has_no_attention_projections():
    model = tiny_model("gpt2")
    with pytest.raises(ConfigError, match="q_proj.*all_linear"):
        lora_config_for_budget(model, 10_000, "attention")
    config, count = lora_config_for_budget(model, 50_000, "all_linear")
    assert get_lora_model(model, config).get_nb_trainable_parameters()[0] == count


def test_impossible_budgets_raise_naming_the_closest_counts():
    model = tiny_model("llama")
    per_rank = lora_trainable_count(lora_target_modules(model, "attention"), 1)
    with pytest.raises(ConfigError, match=rf"closest achievable: r=1: {per_rank:,}"):
        lora_config_for_budget(model, 100, "attention")
    between = int(10.5 * per_rank)  # halfway between ranks 10 and 11: 4.8% off either way
    with pytest.raises(ConfigError, match=r"within 1%.*r=10.*r=11"):
        lora_config_for_budget(model, between, "attention", tolerance=0.01)
    _, count = lora_config_for_budget(model, between, "attention", tolerance=0.05)
    assert count in (10 * per_rank, 11 * per_rank)


def test_bad_arguments_raise():
    model = tiny_model("llama")
    for budget in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="budget"):
            lora_config_for_budget(model, budget)
    with pytest.raises(ValueError, match="target must be"):
        lora_config_for_budget(model, 40_000, "mlp")
    with pytest.raises(ValueError, match="tolerance"):
        lora_config_for_budget(model, 40_000, tolerance=1.5)
    with pytest.raises(ValueError, match=r"\['bias', 'modules_to_save'\] are not supported"):
        lora_config_for_budget(model, 40_000, bias="all", modules_to_save=["lm_head"])


def test_lora_model_starts_equal_to_the_base_and_trains_only_lora():
    model = tiny_model("qwen2")
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        base_logits = model(ids).logits
    config, _ = lora_config_for_budget(model, 40_000, lora_alpha=16, lora_dropout=0.1)
    assert config.lora_alpha == 16 and config.lora_dropout == 0.1
    peft_model = get_lora_model(model, config).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, base_logits)  # B starts at zero
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
