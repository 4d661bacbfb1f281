"""TRL's trainers that score against a reference model (DPO, GRPO, KTO, RLOO), training a Sparse-GIN adapter with
`ref_model=None`: given `peft_config=SparseGINPeftConfig(...)` they take the model for a peft model (adapter/tuner.py)
and use the frozen base as the reference, by disabling the adapter, with no second copy of the base. Checked here:
the adapter trains and the base does not; every reference log-probability TRL computed equals the one an independent,
never-wrapped copy of the base gives; peak memory is that of the same trainer with LoRA at the same budget."""

import gc

import pytest
import torch
from datasets import Dataset
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM

from ginformer.adapter import SparseGINConfig, SparseGINModel, SparseGINPeftConfig, get_sparse_gin_model
from ginformer.adapter.lora import lora_config_for_budget

trl = pytest.importorskip("trl")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(base_tokenizer):
    return base_tokenizer


@pytest.fixture(scope="module")
def wide_base(tmp_path_factory, tokenizer):
    """A base whose weights (1.3 M parameters), not the activations of these short rows, fill the trainers' memory:
    a second copy of it would more than double the peak."""
    path = tmp_path_factory.mktemp("wide_base")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1,
    )).save_pretrained(path)
    return path


def sparse_gin():
    # d_gnn=6: 7,210 trainable parameters, which LoRA r=2 on q, k, v, o matches within 1% (7,168)
    return SparseGINPeftConfig(d_gnn=6, dropout=0.0)


def reward(completions, **kwargs):
    """Any reward that differs between the completions of a prompt gives GRPO and RLOO a gradient."""
    return [float(sum(map(ord, completion)) % 7) for completion in completions]


PROMPTS = ["Tom has 3 apples.", "Every cat is small.", "Rex is a cat.", "How many now?"]
# trainer, its config, its rows, config and trainer keywords (GRPO and RLOO take no ref_model: theirs is always the
# base or the adapter off)
TRAINERS = {
    "dpo": ("DPOTrainer", "DPOConfig", {"prompt": PROMPTS, "chosen": [" 7", " True", " yes", " 4"],
                                        "rejected": [" 9", " False", " no", " 5"]}, {}, {"ref_model": None}),
    "kto": ("KTOTrainer", "KTOConfig", {"prompt": PROMPTS, "completion": [" 7", " 9", " True", " no"],
                                        "label": [True, False, True, False]}, {}, {"ref_model": None}),
    "grpo": ("GRPOTrainer", "GRPOConfig", {"prompt": PROMPTS}, {"num_generations": 2, "max_completion_length": 4,
                                                                "beta": 0.04}, {"reward_funcs": reward}),
    "rloo": ("RLOOTrainer", "RLOOConfig", {"prompt": PROMPTS}, {"num_generations": 2, "max_completion_length": 4},
             {"reward_funcs": reward}),
}


def trainer_for(name, model, peft_config, tokenizer, out):
    trainer_cls, config_cls, rows, config_kwargs, trainer_kwargs = TRAINERS[name]
    args = getattr(trl, config_cls)(
        str(out), max_steps=2, per_device_train_batch_size=2, learning_rate=5e-2, report_to="none", use_cpu=True,
        bf16=False, logging_steps=1, disable_tqdm=True, save_strategy="no", **config_kwargs)
    return getattr(trl, trainer_cls)(model=model, peft_config=peft_config, args=args,
                                     train_dataset=Dataset.from_dict(rows), processing_class=tokenizer,
                                     **trainer_kwargs)


class Forwards:
    """Every scoring forward TRL makes through the peft model, filed as the reference's (the adapter off, or TRL's
    frozen "ref" adapter on) or the policy's."""

    def __init__(self, model):
        self.model, self.reference, self.policy = model, [], []
        model.register_forward_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs, output):
        off = self.model.base_model.model.sparse_gin.disable_adapters or self.model.active_adapter == "ref"
        (self.reference if off else self.policy).append(
            (kwargs["input_ids"], kwargs["attention_mask"], kwargs["labels"], output.log_probs.detach().clone()))


def log_probs_of(model, input_ids, attention_mask, labels):
    """(log p(labels), which positions are scored) from a model's full logits: the oracle for TRL's fused head."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = labels[:, 1:]
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return log_probs, targets != -100


def assert_scored_like(forwards, oracle):
    for input_ids, attention_mask, labels, log_probs in forwards:
        expected, scored = log_probs_of(oracle, input_ids, attention_mask, labels)
        assert scored.any()
        torch.testing.assert_close(log_probs[scored], expected[scored], rtol=1e-4, atol=1e-5)


def peak_bytes(run):
    """The peak of torch's CPU allocations while `run()` runs, above what was held when it began. The garbage
    collector is held off meanwhile: freeing an earlier test's tensors inside the run would hide its allocations."""
    gc.collect()
    gc.disable()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = run()
    finally:
        gc.enable()
    held = peak = 0
    for event in sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return peak, result


def train(name, model, peft_config, tokenizer, out):
    """(peak bytes, trainer, its Sparse-GIN model's forwards) for a 2-step run of trainer `name`, built and trained."""
    def run():
        trainer = trainer_for(name, model, peft_config, tokenizer, out)
        forwards = Forwards(trainer.model) if hasattr(trainer.model.get_base_model(), "sparse_gin") else None
        trainer.train()
        return trainer, forwards
    peak, (trainer, forwards) = peak_bytes(run)
    return peak, trainer, forwards


@pytest.mark.parametrize("name", TRAINERS)
def test_the_trainer_trains_the_adapter_against_the_frozen_base_with_no_second_copy(name, tmp_path, wide_base,
                                                                                   tokenizer, record_property):
    base = LlamaForCausalLM.from_pretrained(wide_base)
    before = {key: value.clone() for key, value in base.state_dict().items()}
    peak, trainer, forwards = train(name, base, sparse_gin(), tokenizer, tmp_path / "sparse_gin")
    model = trainer.model
    assert trainer.ref_model is None and isinstance(model, peft.PeftModel)

    after = model.get_base_model().state_dict()
    assert all(torch.equal(after[key], value) for key, value in before.items())  # the base did not train
    branches = model.base_model.model.sparse_gin.sparse_gin_branches["default"]
    assert any(layer.scale.abs().item() > 1e-4 for layer in branches)  # λ left 0: the adapter trained

    oracle = LlamaForCausalLM.from_pretrained(wide_base).eval()  # never wrapped
    assert len(forwards.reference) >= 2 and forwards.policy  # a reference forward in each step
    assert_scored_like(forwards.reference, oracle)
    input_ids, attention_mask, labels, log_probs = forwards.policy[-1]  # after the first step, the policy is not
    expected, scored = log_probs_of(oracle, input_ids, attention_mask, labels)  # the base
    assert not torch.allclose(log_probs[scored], expected[scored], atol=1e-5)

    budget = model.get_nb_trainable_parameters()[0]
    lora, lora_count = lora_config_for_budget(LlamaForCausalLM.from_pretrained(wide_base), budget)
    assert abs(lora_count - budget) <= 0.05 * budget
    lora_peak, lora_trainer, _ = train(name, LlamaForCausalLM.from_pretrained(wide_base), lora, tokenizer,
                                       tmp_path / "lora")
    assert lora_trainer.ref_model is None
    record_property("peak_bytes", {"sparse_gin": peak, "lora": lora_peak})  # in --junitxml's report
    assert abs(peak / lora_peak - 1) <= 0.10, (peak, lora_peak)


def test_dpo_on_a_trained_adapter_scores_against_a_frozen_copy_of_it(tmp_path, wide_base, tokenizer):
    """Given a peft model with an adapter (here one a SparseGINModel trained and saved), TRL keeps a frozen copy of
    it as the named adapter "ref" and trains "default": the reference is the adapter as it was, not the base."""
    trained = get_sparse_gin_model(LlamaForCausalLM.from_pretrained(wide_base), SparseGINConfig(d_gnn=6,
                                                                                                 dropout=0.0))
    with torch.no_grad():
        for adapter in trained.adapters:
            adapter.scale.fill_(0.3)
    trained.save_pretrained(tmp_path / "sft")
    model = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(wide_base), tmp_path / "sft",
                                           is_trainable=True)
    _, trainer, forwards = train("dpo", model, None, tokenizer, tmp_path / "dpo")
    assert trainer.ref_model is None and list(model.peft_config) == ["default", "ref"]

    oracle = SparseGINModel.from_pretrained(LlamaForCausalLM.from_pretrained(wide_base), tmp_path / "sft").eval()
    assert forwards.reference and forwards.policy
    assert_scored_like(forwards.reference, oracle)
    trained_branches = model.base_model.model.sparse_gin.sparse_gin_branches
    assert not torch.equal(trained_branches["default"][0].scale, trained_branches["ref"][0].scale)
