"""A Sparse-GIN model under transformers' Trainer and TRL's SFTTrainer, unchanged: training, adapter-only
checkpoints, resume, saving, loading back in one call; packing and gradient checkpointing inside the model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer, TrainingArguments

from ginformer.adapter import (
    AutoSparseGINModelForCausalLM,
    SparseGINConfig,
    get_sparse_gin_model,
)

trl = pytest.importorskip("trl")

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_base(seed=0, **overrides):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides}))


def saved_base(tmp_path, seed=0):
    """A tiny tied-embedding Llama saved as a local directory, so an adapter can name its base."""
    directory = tmp_path / "base"
    tiny_base(seed).save_pretrained(directory)
    return directory


def adapted(base, scale=0.3, **config):
    model = get_sparse_gin_model(base, SparseGINConfig(d_gnn=8, dropout=0.0, **config))
    with torch.no_grad():
        for adapter in model.adapters:
            adapter.scale.fill_(scale)
    return model


def adapter_tensors(model):
    return {key: value.detach().clone() for key, value in model.adapter_state_dict().items()}


def assert_same_adapter(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- Trainer


def lm_rows(n=8, length=12):
    ids = torch.randint(3, 64, (n, length), generator=torch.Generator().manual_seed(1)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def trainer_args(out, **overrides):
    return TrainingArguments(str(out), **{"max_steps": 2, "save_steps": 1, "per_device_train_batch_size": 4,
                                          "learning_rate": 1e-2, "report_to": "none", "use_cpu": True,
                                          "logging_steps": 1, "disable_tqdm": True, **overrides})


def test_plain_trainer_checkpoints_the_adapter_alone_resumes_and_saves(tmp_path):
    """Issue 13's first failure: Trainer's first checkpoint of a tied-embedding base used to fail with "Some tensors
    share memory"; now every checkpoint holds the adapter and its description, and nothing of the base."""
    base_dir = saved_base(tmp_path)
    model = adapted(LlamaForCausalLM.from_pretrained(base_dir), scale=0.0)
    Trainer(model=model, args=trainer_args(tmp_path / "whole"), train_dataset=lm_rows()).train()
    whole = adapter_tensors(model)

    saved = load_file(str(tmp_path / "whole" / "checkpoint-1" / "model.safetensors"))
    assert set(saved) == set(model.adapter_state_dict()) | {"_extra_state"}
    description = json.loads(bytes(saved["_extra_state"].tolist()))
    assert description["config"]["d_gnn"] == 8 and description["base_model_name_or_path"] == str(base_dir)

    cut = adapted(LlamaForCausalLM.from_pretrained(base_dir), scale=0.0)
    Trainer(model=cut, args=trainer_args(tmp_path / "cut"), train_dataset=lm_rows()).train(
        resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-1"))
    assert_same_adapter(adapter_tensors(cut), whole)
    assert any(value.abs().sum() > 0 for key, value in whole.items() if key.endswith(".scale"))  # it trained

    trainer = Trainer(model=model, args=trainer_args(tmp_path / "again"))
    trainer.save_model(str(tmp_path / "final"))
    loaded = AutoSparseGINModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    assert_same_adapter(adapter_tensors(loaded), whole)
    ids = torch.randint(3, 64, (2, 9))
    torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_resuming_with_another_adapter_config_is_refused(tmp_path):
    model = adapted(tiny_base())
    state = model.state_dict()
    other = adapted(tiny_base(), alpha=3.0)
    with pytest.raises(ValueError, match="another config.*alpha: saved 10.0 vs this model 3.0"):
        other.load_state_dict(state)
    model.load_state_dict(state)  # a state dict without the frozen base is complete


# ---------------------------------------------------------------------------------------------------- SFTTrainer


@pytest.fixture(scope="module")
def chat_tokenizer(base_dir):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base_dir)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prompt_completion_rows(task_files, n=16):
    rows = [json.loads(line) for line in (task_files / "gsm8k.jsonl").read_text().splitlines()[:n]]
    return Dataset.from_list([{"prompt": r["question"], "completion": " " + r["answer"]} for r in rows])


def sft_args(out, **overrides):
    # Everything else is SFTConfig's default: bf16, gradient checkpointing, the fused LM head's loss and entropy,
    # completion-only loss on prompt/completion rows.
    return trl.SFTConfig(str(out), **{"max_steps": 2, "save_steps": 1, "per_device_train_batch_size": 4,
                                      "learning_rate": 1e-2, "report_to": "none", "use_cpu": True,
                                      "max_length": 128, "disable_tqdm": True, **overrides})


def sft_model(base_dir):
    return get_sparse_gin_model(LlamaForCausalLM.from_pretrained(base_dir), SparseGINConfig(d_gnn=8, dropout=0.0))


def greedy(model, tokenizer, text="Tom has 3 apples and gets 4 more. How many now?"):
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id)


def test_sft_trainer_defaults_train_checkpoint_resume_save_and_load_back(tmp_path, base_dir, task_files,
                                                                         chat_tokenizer):
    """Issue 13's second failure: SFTTrainer's fused LM head asked `model.base_model` for hidden states and got the
    causal LM's output ("no attribute 'last_hidden_state'"); `base_model` is now the backbone, as in transformers."""
    rows = prompt_completion_rows(task_files)
    model = sft_model(base_dir)
    trainer = trl.SFTTrainer(model=model, args=sft_args(tmp_path / "whole"), train_dataset=rows,
                             processing_class=chat_tokenizer)
    assert trainer.args.gradient_checkpointing and trainer.args.bf16 and trainer.completion_only_loss
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "entropy" in entry]
    assert logged, "the fused LM head (which also reports the entropy) did not run"
    whole = adapter_tensors(model)
    assert any(value.abs().sum() > 0 for key, value in whole.items() if key.endswith(".scale"))

    checkpoint = tmp_path / "whole" / "checkpoint-1"
    assert "model.safetensors" in {p.name for p in checkpoint.iterdir()}
    assert set(load_file(str(checkpoint / "model.safetensors"))) == set(model.adapter_state_dict()) | {"_extra_state"}
    resumed = sft_model(base_dir)
    trl.SFTTrainer(model=resumed, args=sft_args(tmp_path / "cut"), train_dataset=rows,
                   processing_class=chat_tokenizer).train(resume_from_checkpoint=str(checkpoint))
    assert_same_adapter(adapter_tensors(resumed), whole)

    model.eval()
    expected = greedy(model, chat_tokenizer)
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(input_ids=expected).logits
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=expected).logits, base_logits, atol=1e-3)  # the adapter matters
    trainer.save_model(str(tmp_path / "trainer_saved"))
    model.save_pretrained(tmp_path / "saved", data="16 GSM8K-format rows")
    for directory in (tmp_path / "trainer_saved", tmp_path / "saved"):
        loaded = AutoSparseGINModelForCausalLM.from_pretrained(directory).eval()
        assert torch.equal(greedy(loaded, chat_tokenizer), expected), directory


def test_sft_completion_only_loss_through_the_fused_head_is_the_completion_cross_entropy(tmp_path, base_dir,
                                                                                         task_files, chat_tokenizer):
    model = adapted(LlamaForCausalLM.from_pretrained(base_dir))
    trainer = trl.SFTTrainer(model=model, args=sft_args(tmp_path, bf16=False, gradient_checkpointing=False),
                             train_dataset=prompt_completion_rows(task_files, 4), processing_class=chat_tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"]
    completions = {row["completion"].strip() for row in prompt_completion_rows(task_files, 4)}
    for ids, scored in zip(batch["input_ids"], labels != -100):  # the prompt is never scored, the completion is
        assert chat_tokenizer.decode(ids[scored], skip_special_tokens=True).strip() in completions
    model.eval()
    with torch.no_grad():
        fused = trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100)
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)


def test_sft_trainer_packs_rows(tmp_path, base_dir, task_files, chat_tokenizer):
    model = sft_model(base_dir)
    trainer = trl.SFTTrainer(model=model, args=sft_args(tmp_path, packing=True, save_steps=10),
                             train_dataset=prompt_completion_rows(task_files), processing_class=chat_tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "position_ids" in batch and (batch["position_ids"][0] == 0).sum() > 1  # several rows in one
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_packed_row_equals_its_rows_apart(attn):
    """Packing (position_ids restarting, no attention mask, no cache: as trainers call it) keeps both the attention
    and the Sparse-GIN graph inside each row: the packed logits equal each row's own."""
    model = adapted(tiny_base(attn_implementation=attn)).eval()
    first, second = torch.randint(3, 64, (1, 5)), torch.randint(3, 64, (1, 7))
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits
        apart = torch.cat([model(input_ids=first).logits, model(input_ids=second).logits], dim=1)
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("placement", ["after_attention", "after_mlp", "parallel"])
def test_gradient_checkpointing_gives_the_same_gradients(placement):
    ids = torch.randint(3, 64, (2, 10), generator=torch.Generator().manual_seed(2))
    grads = []
    for checkpointing in (False, True):
        model = adapted(tiny_base(), placement=placement, train_tau=True).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def test_get_base_model_and_the_backbone():
    base = tiny_base()
    model = adapted(base)
    assert model.get_base_model() is base and model.base_model is base.model  # transformers' meaning of base_model


@pytest.mark.slow  # two FSDP processes
def test_fsdp2_on_two_cpu_processes_gives_the_unsharded_gradients(tmp_path):
    """accelerate turns FSDP on only for GPU-like devices (docs/integrations.md), so torch's fully_shard is driven
    directly here, as accelerate's FSDP2 plugin drives it: per decoder layer, then the whole model."""
    base_dir = tmp_path / "base"
    LlamaForCausalLM(LlamaConfig(**{**TINY, "vocab_size": 300})).save_pretrained(base_dir)
    worker = Path(__file__).with_name("fsdp_worker.py")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(worker), str(base_dir)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["world_size"] == 2 and report["max_grad_difference"] < 1e-6
    assert report["state_dict_keys"] == sorted([*report["adapter_keys"], "_extra_state"])
