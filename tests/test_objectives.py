"""`training.method: dpo | grpo`: `ginformer finetune` trains a Sparse-GIN or LoRA adapter with TRL's DPOTrainer and
GRPOTrainer against the frozen base, on preference rows and on GSM8K prompts with a reward; refusals name the key.
Tiny random Llama base (conftest.py)."""

import json
import math

import pytest
import torch
from conftest import LAYERS  # noqa: E402
from safetensors.torch import load_file
from transformers import TrainerCallback

from ginformer.cli import main
from ginformer.data.instruct import load_instruct, tokenize_example
from ginformer.errors import ConfigError, DataError
from ginformer.runs.compare import run_comparison
from ginformer.runs.compare_config import BASELINE, compare_settings_from_dict
from ginformer.runs.summary import run_summary
from ginformer.runs.config import load_run_settings
from ginformer.runs.train import train
from ginformer.tasks.instruct import GSM8KTask

pytestmark = pytest.mark.usefixtures("one_thread")

D_GNN = 9  # 1,340 Sparse-GIN parameters on the tiny base; LoRA r=3 on q/k/v/o has 1,344


@pytest.fixture(scope="module")
def preference_file(tmp_path_factory, task_files):
    """GSM8K-like questions, the right sum chosen over one more than it."""
    rows = []
    for line in (task_files / "gsm8k.jsonl").read_text().splitlines():
        row = json.loads(line)
        total = int(row["answer"].rsplit("#### ", 1)[1])
        rows.append({"prompt": row["question"], "chosen": f"{total}", "rejected": f"{total + 1}"})
    path = tmp_path_factory.mktemp("preference") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overrides(tmp_path, base_dir, method, source, task, *more):
    return [
        f"model.base={base_dir}", f"model.sparse_gin.d_gnn={D_GNN}", f"data.task={task}", f"data.source={source}",
        "data.max_length=128", "data.max_train_examples=16", "data.max_val_examples=4",
        f"training.output_root={tmp_path}", f"training.run_name={method}", f"training.method={method}",
        "training.max_steps=4", "training.per_device_train_batch_size=4", "training.per_device_eval_batch_size=4",
        "training.gradient_accumulation_steps=1", "training.warmup_steps=0", "training.learning_rate=1.0e-2",
        "training.logging_steps=1", "training.eval_steps=2", "training.save_steps=2", *more,
    ]


def settings(*args, **kwargs):
    return load_run_settings(None, overrides(*args, **kwargs), side="pretrained")


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class Dataset(TrainerCallback):
    """The rows the trainer tokenized, as its training dataloader holds them."""

    rows = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.rows = train_dataloader.dataset


@pytest.mark.parametrize("adapter, trainable", [("sparse-gin", 1340), ("lora", 1344)])
def test_dpo_from_the_cli_trains_the_adapter_from_the_base_as_its_reference(tmp_path, base_dir, preference_file,
                                                                            adapter, trainable):
    args = overrides(tmp_path, base_dir, "dpo", preference_file, "instruct", f"model.method={adapter}")
    assert main(["finetune", "--config", "instruct_cpu_sparse_gin", *(a for o in args for a in ("--set", o))]) == 0
    run = tmp_path / "dpo"
    events = read_metrics(run)
    start, trains = events[0], [e for e in events if e["event"] == "train"]
    evals = [e for e in events if e["event"] == "eval"]
    assert start["objective"] == "dpo" and start["parameters"] == trainable
    assert start["total_parameters"] - trainable == 32732 - 1340  # the base once: no second copy in the model
    # The first step's policy is the reference (λ = 0, LoRA's B = 0): the DPO loss is log 2, no pair is preferred.
    assert trains[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert trains[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert [e["step"] for e in trains] == [1, 2, 3, 4] and trains[-1]["train_loss"] != trains[0]["train_loss"]
    assert [e["step"] for e in evals] == [2, 4]
    assert all("val_perplexity" not in e and 0.0 <= e["val_reward_accuracy"] <= 1.0 for e in evals)
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert not any("embed_tokens" in name or name.endswith("proj.weight") and "lora" not in name
                   and not name.startswith("adapters.") for name in weights)  # the adapter alone, no base weight
    assert any(w.abs().max() > 0 for name, w in weights.items() if "scale" in name or "lora_B" in name)
    assert not (run / "README.md").exists()  # the run directory holds only the run's own files
    if adapter == "sparse-gin":
        assert trains[0]["graph"]["lambda"] != [0.0] * LAYERS  # λ moved in the first step
        assert main(["evaluate", "--run", str(run), "--generate", "0"]) == 0  # the adapter loads back
        assert json.loads((run / "eval_val.json").read_text())["loss"] > 0


def test_dpo_sees_the_tokens_sft_trains_on_plus_trls_end_token(tmp_path, base_dir, preference_file, base_tokenizer):
    """The paper template's prompt and chosen answer, as TRL tokenizes them, are the ids SFT trains on (data/
    instruct.py), with the tokenizer's end token TRL appends to a plain-text completion."""
    rows = Dataset()
    train(settings(tmp_path, base_dir, "dpo", preference_file, "instruct", "training.max_steps=1",
                   "data.template=paper"), callbacks=[rows])
    examples = load_instruct(preference_file).examples
    by_ids = {tuple(tokenize_example(e, base_tokenizer, "paper")["input_ids"]): e for e in examples}
    row = rows.rows[0]
    assert tuple(row["prompt_ids"] + row["chosen_ids"][:-1]) in by_ids
    assert row["chosen_ids"][-1] == base_tokenizer.eos_token_id


def test_grpo_trains_the_adapter_on_the_tasks_reward_with_the_base_as_reference(tmp_path, base_dir, task_files,
                                                                                monkeypatch):
    scored = []

    def reward(self, completions, references):
        # the tiny random base never writes the sum: reward something its completions differ in
        scored.append((completions, references))
        return [float(sum(map(ord, c)) % 3) for c in completions]

    monkeypatch.setattr(GSM8KTask, "reward", reward)
    run = train(settings(tmp_path, base_dir, "grpo", task_files / "gsm8k.jsonl", "gsm8k", "data.template=chat",
                         "training.max_completion_length=6", "training.num_generations=2"))
    events = read_metrics(run)
    trains = [e for e in events if e["event"] == "train"]
    evals = [e for e in events if e["event"] == "eval"]
    assert events[0]["objective"] == "grpo" and events[0]["graph"]["lambda"] == [0.0] * LAYERS
    assert all({"reward", "reward_std", "kl", "completion_length"} <= set(e) for e in trains)
    assert trains[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # the first policy is the reference
    assert trains[-1]["graph"]["lambda"] != [0.0] * LAYERS  # the adapter trained
    assert all("val_reward" in e and "val_perplexity" not in e for e in evals)
    completions, references = scored[0]
    assert all(isinstance(c, str) for c in completions)  # the chat completion's text, not its message list
    assert set(references) <= {json.loads(line)["answer"].rsplit("#### ", 1)[1]
                               for line in (task_files / "gsm8k.jsonl").read_text().splitlines()}


def test_a_dpo_run_resumes_from_its_checkpoint(tmp_path, base_dir, preference_file):
    whole = train(settings(tmp_path, base_dir, "dpo", preference_file, "instruct", "training.run_name=whole"))
    train(settings(tmp_path, base_dir, "dpo", preference_file, "instruct", "training.run_name=cut",
                   "training.max_steps=2"))
    resumed = train(settings(tmp_path, base_dir, "dpo", preference_file, "instruct", "training.run_name=cut"),
                    resume=True)
    a = load_file(str(whole / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    losses = [[e["train_loss"] for e in read_metrics(run) if e["event"] == "train"] for run in (whole, resumed)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_grpo_comparison_reports_rewards_and_the_base_in_its_own_terms(tmp_path, base_dir, task_files,
                                                                         monkeypatch):
    monkeypatch.setattr(GSM8KTask, "reward", lambda self, completions, references: [
        float(len(c) % 2) for c in completions])
    base = settings(tmp_path, base_dir, "grpo", task_files / "gsm8k.jsonl", "gsm8k", "training.max_completion_length=4",
                    "training.num_generations=2")
    raw = {
        "name": "grpo_cmp", "seeds": [0], "variants": {"sparse_gin": {}, "lora": {"method": "lora"}},
        "evaluate": {"generate": 2, "max_new_tokens": 4},
        "model": {"base": str(base_dir), "sparse_gin": {"d_gnn": D_GNN}},
        "data": dict(vars(base.data)),
        "training": {k: v for k, v in vars(base.training).items() if k not in ("run_name", "seed")},
    }
    compare = compare_settings_from_dict(raw)
    assert compare.baseline_settings().training.method == "sft"  # the base trains nothing: its own numbers
    root = run_comparison(compare)
    summary = (root / "summary.md").read_text()
    assert "train reward (2nd half)" in summary and "val reward" in summary and "GSM8K strict" in summary
    assert "base (frozen)" in summary
    figures = {p.name for p in (root / "figures").glob("*.png")}
    assert {"reward.png", "val_reward.png", "train_loss.png"} <= figures
    assert "min_val_perplexity.png" not in figures  # GRPO's loss has no perplexity
    assert "generalisation_gap.png" not in figures  # nor a gap: its losses on the two splits do not compare
    assert read_metrics(root / BASELINE)[0]["objective"] == "sft"


@pytest.mark.parametrize("task, method, more, message", [
    ("gsm8k", "dpo", [], "DPO reads preference rows"),
    ("instruct", "grpo", [], "GRPO needs a reward"),
    ("instruct", "dpo", ["training.num_generations=4"], "training.num_generations applies to training.method grpo"),
    ("gsm8k", "sft", ["training.beta=0.1"], "training.beta applies to training.method dpo or grpo"),
    ("gsm8k", "grpo", ["training.num_generations=3"], "must be a multiple of training.num_generations = 3"),
    ("gsm8k", "grpo", ["training.num_generations=1"], "at least 2"),
    ("instruct", "dpo", ["model.method=none"], "model.method='none' trains nothing"),
])
def test_objectives_refuse_what_they_cannot_train(tmp_path, base_dir, task_files, preference_file, task, method,
                                                   more, message):
    source = preference_file if task == "instruct" else task_files / "gsm8k.jsonl"
    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, base_dir, method, source, task, *more)


def test_dpo_and_grpo_refuse_a_model_from_scratch():
    with pytest.raises(ConfigError, match="not a model from scratch"):
        load_run_settings(None, ["data.task=protein", "training.method=dpo"], side="scratch")


def test_dpo_on_rows_without_a_rejected_answer_is_refused_by_name(tmp_path, base_dir, task_files):
    rows = tmp_path / "pc.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(20)))
    with pytest.raises(DataError, match="pc.jsonl: training.method=dpo needs preference rows .* prompt_completion"):
        train(settings(tmp_path, base_dir, "dpo", rows, "instruct"))


def test_preference_rows_in_both_of_trls_shapes_and_bad_ones_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [{"role": "user", "content": "3+3?"}], "chosen": [{"role": "assistant", "content": "6"}],
         "rejected": [{"role": "assistant", "content": "7"}]},
        {"prompt": "1+1?", "chosen": "2"},
        {"prompt": "5+5?", "chosen": [{"role": "assistant", "content": "10"}, {"role": "assistant", "content": "!"}],
         "rejected": "11"},
    ]) + "\n")
    with pytest.warns(UserWarning, match=r"line 3: missing 'rejected'.*line 4: 'chosen' must be a string or a list "
                                         r"of one assistant message"):
        data = load_instruct(path)
    assert data.format == "preference" and data.conversational
    plain, chat = data.examples
    assert plain.answer == "4" and [m.content for m in plain.rejected] == ["5"] and plain.prompt[0].content == "2+2?"
    assert chat.answer == "6" and chat.rejected[0].content == "7" and chat.rejected[0].trained


@pytest.mark.parametrize("objective, perplexity, gap", [("sft", True, True), ("dpo", False, True),
                                                         ("grpo", False, False)])
def test_a_summary_reports_perplexity_and_gap_only_where_the_loss_means_them(objective, perplexity, gap):
    events = [{"event": "start", "step": 0, "parameters": 10, "objective": objective},
              {"event": "train", "step": 1, "train_loss": 0.5},
              {"event": "eval", "step": 1, "val_loss": 0.7, "val_perplexity": math.exp(0.7)}]
    run = run_summary("v", 0, events, {"scores": {}})
    assert (run.min_val_perplexity is not None) == perplexity
    if gap:
        assert run.gap == pytest.approx(0.2) and run.ratio == pytest.approx(0.5 / 0.7)
    else:
        assert run.gap is None and run.ratio is None
