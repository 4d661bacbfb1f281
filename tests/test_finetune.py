"""Fine-tuning: configs, the run directory, adapter-only saves, resume, LoRA budget, λ logging, evaluation maths,
the fine-tuning comparison. Tiny random Llama bases and a tiny tokenizer trained on tiny task files."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import LAYERS  # noqa: E402  (the tiny base's, built in conftest.py)
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

from ginformer.adapter import SparseGINConfig, get_sparse_gin_model
from ginformer.adapter.lora import lora_target_modules, lora_trainable_count
from ginformer.cli import main
from ginformer.data.instruct import PAPER_END, conversation, encode_generation_prompt
from ginformer.data.reasoning import load_gsm8k
from ginformer.runs.compare import pending_runs, run_comparison
from ginformer.runs.compare_config import BASELINE, compare_settings_from_dict
from ginformer.runs.summary import mean_history, run_summary
from ginformer.runs.config import load_run_settings
from ginformer.runs.evaluate import evaluate_run
from ginformer.generation import generate_batched
from ginformer.runs.models import MODEL_SIDES, sparse_gin_parameter_count
from ginformer.errors import ConfigError
from ginformer.runs.train import train
from ginformer.tasks import Generation, HeldOut, Losses
from ginformer.tasks.instruct import FolioTask, GSM8KTask, InstructSettings, score_folio, score_gsm8k

D_GNN = 9  # on the tiny base, 2 × 67 × (9 + 1) = 1,340 Sparse-GIN parameters; LoRA r=3 on q/k/v/o has 1,344


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path, base_dir, task_files, *overrides, task="gsm8k"):
    return load_run_settings(None, side="pretrained", overrides=[
        f"model.base={base_dir}",
        f"model.sparse_gin.d_gnn={D_GNN}",
        f"data.task={task}",
        f"data.source={task_files / (task + '.jsonl')}",
        "data.max_length=128",
        "data.max_train_examples=16",
        "data.max_val_examples=4",
        f"training.output_root={tmp_path}",
        "training.run_name=tiny",
        "training.max_steps=4",
        "training.per_device_train_batch_size=4",
        "training.per_device_eval_batch_size=4",
        "training.gradient_accumulation_steps=1",
        "training.warmup_steps=0",
        "training.learning_rate=1.0e-2",
        "training.logging_steps=1",
        "training.eval_steps=2",
        "training.save_steps=2",
        *overrides,
    ])


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------- training


def test_sparse_gin_run_writes_the_layout_adapter_only_and_logs_lambda(tmp_path, base_dir, task_files):
    run_dir = train(tiny(tmp_path, base_dir, task_files))
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.jsonl", "adapter", "checkpoint-2",
                                                   "checkpoint-4"}
    adapter_files = {p.name for p in (run_dir / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= adapter_files
    assert not {p for p in adapter_files if p.endswith(".safetensors")} - {"adapter_model.safetensors"}
    metrics = read_metrics(run_dir)
    start = metrics[0]
    saved = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert all(key.startswith("adapters.") for key in saved)
    trained = [t for key, t in saved.items() if not key.endswith((".alpha", ".tau"))]  # fixed α, τ: saved buffers
    assert start["parameters"] == sum(t.numel() for t in trained) == 2 * 67 * (D_GNN + 1)
    assert (start["model"], start["method"], start["base"]) == ("pretrained", "sparse-gin", str(base_dir))
    for checkpoint in ("checkpoint-2", "checkpoint-4"):  # no copy of the frozen base in any checkpoint
        weights = load_file(str(run_dir / checkpoint / "model.safetensors"))  # Trainer's file: the state dict
        assert set(weights) == set(saved) | {"_extra_state"}  # the adapter and its description
    card = (run_dir / "adapter" / "README.md").read_text()
    assert f"`{base_dir}`" in card and "val_loss" in card and "gsm8k" in card

    trains = [e for e in metrics if e["event"] == "train"]
    evals = [e for e in metrics if e["event"] == "eval"]
    assert [e["step"] for e in trains] == [1, 2, 3, 4] and [e["step"] for e in evals] == [2, 4]
    assert start["graph"]["lambda"] == [0.0] * LAYERS  # zero-init: the adapted model starts as its base
    for event in trains + evals:
        assert len(event["graph"]["lambda"]) == LAYERS
    assert all(e["step_time"] > 0 for e in trains)
    assert trains[-1]["graph"]["lambda"] != start["graph"]["lambda"]
    final = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert [final[f"adapters.{k}.scale"].item() for k in range(LAYERS)] == pytest.approx(trains[-1]["graph"]["lambda"])

    result = evaluate_run(run_dir, generate=0)  # the loss of the reloaded adapter is the one logged
    assert result.loss == pytest.approx(evals[-1]["val_loss"], rel=1e-5)
    assert result.scores == {} and result.parameters == start["parameters"]
    assert result.model == f"sparse-gin on {base_dir}"

    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny(tmp_path, base_dir, task_files))


def test_resume_equals_the_uninterrupted_run(tmp_path, base_dir, task_files):
    whole = train(tiny(tmp_path, base_dir, task_files, "training.run_name=whole"))
    train(tiny(tmp_path, base_dir, task_files, "training.run_name=cut", "training.max_steps=2"))
    with pytest.raises(ConfigError, match="model"):  # a resumed run keeps what it trains
        train(tiny(tmp_path, base_dir, task_files, "training.run_name=cut", "model.sparse_gin.d_gnn=4"), resume=True)
    resumed = train(tiny(tmp_path, base_dir, task_files, "training.run_name=cut"), resume=True)

    a = load_file(str(whole / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    trains = [[e for e in read_metrics(run) if e["event"] == "train"] for run in (whole, resumed)]
    assert [e["step"] for e in trains[1]] == [e["step"] for e in trains[0]] == [1, 2, 3, 4]
    assert [e["train_loss"] for e in trains[1]] == pytest.approx([e["train_loss"] for e in trains[0]], rel=1e-5)
    assert [e["event"] for e in read_metrics(resumed)].count("resume") == 1


def test_lora_rank_is_matched_to_the_sparse_gin_budget(tmp_path, base_dir, task_files):
    settings = tiny(tmp_path, base_dir, task_files, "model.method=lora", "training.max_steps=2", "training.bf16=true")
    side = MODEL_SIDES["pretrained"]
    built = side.build(settings.model, side.base_tokenizer(settings.model))
    base = LlamaForCausalLM.from_pretrained(base_dir)
    budget = built.record["budget"]
    assert budget == sparse_gin_parameter_count(base, settings.model.sparse_gin)
    assert budget == get_sparse_gin_model(base, SparseGINConfig(d_gnn=D_GNN)).get_nb_trainable_parameters()[0]
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    assert built.record["lora_rank"] == 3 and abs(trainable - budget) <= 0.05 * budget

    run_dir = train(settings)
    files = {p.name for p in (run_dir / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    start = read_metrics(run_dir)[0]
    assert (start["parameters"], start["lora_rank"], start["graph"]) == (1344, 3, {})
    evals = [e for e in read_metrics(run_dir) if e["event"] == "eval"]
    assert evaluate_run(run_dir, generate=0).loss == pytest.approx(evals[-1]["val_loss"], rel=1e-5)


class _Look(TrainerCallback):
    """What Trainer trains with, seen from inside it."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        base = model.get_base_model()
        self.seen = {"optimizer": type(getattr(optimizer, "optimizer", optimizer)).__name__,
                     "base_dtypes": {p.dtype for p in base.parameters()},
                     "adapter_dtypes": {p.dtype for p in model.adapters.parameters()},
                     "checkpointing": base.is_activation_checkpointing}


def test_scale_knobs_bf16_base_gradient_checkpointing_optimizer_and_tensorboard(tmp_path, base_dir, task_files):
    look = _Look()
    run_dir = train(tiny(tmp_path, base_dir, task_files, "model.base_dtype=bfloat16",
                         "training.gradient_checkpointing=true", "training.optim=sgd",
                         "training.report_to=[tensorboard]", "training.max_steps=2"), callbacks=[look])
    assert look.seen == {"optimizer": "SGD", "base_dtypes": {torch.bfloat16}, "adapter_dtypes": {torch.float32},
                         "checkpointing": True}
    assert list((run_dir / "runs").glob("*/events.out.tfevents.*"))  # TensorBoard's event files, written offline
    trains = [e for e in read_metrics(run_dir) if e["event"] == "train"]
    assert len(trains) == 2 and all(math.isfinite(e["train_loss"]) for e in trains)
    assert trains[-1]["graph"]["lambda"] != [0.0] * LAYERS
    assert math.isfinite(evaluate_run(run_dir, generate=0).loss)  # loads back on a bfloat16 base


@pytest.mark.parametrize("option, d_gnn, rank", [("use_dora", 26, 3), ("use_rslora", 14, 2)])
def test_lora_on_every_linear_layer_with_dora_or_rslora_matches_the_budget(tmp_path, base_dir, task_files, option,
                                                                           d_gnn, rank):
    """The paper's second LoRA run wraps every linear layer; DoRA's magnitude vectors count against the budget."""
    settings = tiny(tmp_path, base_dir, task_files, "model.method=lora", "model.lora.target=all_linear",
                    f"model.lora.{option}=true", f"model.sparse_gin.d_gnn={d_gnn}", "training.max_steps=2")
    side = MODEL_SIDES["pretrained"]
    built = side.build(settings.model, side.base_tokenizer(settings.model))
    shapes = lora_target_modules(LlamaForCausalLM.from_pretrained(base_dir), "all_linear")
    budget = built.record["budget"]
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    assert built.record["lora_rank"] == rank and abs(trainable - budget) <= 0.05 * budget
    assert trainable == lora_trainable_count(shapes, rank, use_dora=option == "use_dora")
    wrapped = {name.split(".")[-3] for name, _ in built.model.named_modules() if name.endswith("lora_A.default")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    config = built.model.peft_config["default"]
    assert getattr(config, option) is True
    layer = built.model.get_base_model().model.layers[0].mlp.down_proj
    scale = config.lora_alpha / (math.sqrt(rank) if option == "use_rslora" else rank)
    assert layer.scaling["default"] == pytest.approx(scale)

    run_dir = train(settings)
    evals = [e for e in read_metrics(run_dir) if e["event"] == "eval"]
    assert read_metrics(run_dir)[0]["parameters"] == trainable
    assert evaluate_run(run_dir, generate=0).loss == pytest.approx(evals[-1]["val_loss"], rel=1e-5)


@pytest.mark.slow  # two torchrun processes
def test_torchrun_two_processes_equal_one_process_with_twice_the_batch(tmp_path, base_dir, task_files):
    """Sparse-GIN under torchrun (2 × batch 2, gloo on CPU) follows the single-process run with batch 4: same
    losses and the same λ; GIN dropout is off so both draw no random numbers (see test_train for the tolerance)."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({}))
    common = ["model.sparse_gin.dropout=0.0", "training.max_steps=2", "training.save_steps=100"]
    settings = tiny(tmp_path, base_dir, task_files, *common)
    sets = [arg for item in [f"model.base={base_dir}", f"model.sparse_gin.d_gnn={D_GNN}",
                             f"data.source={task_files / 'gsm8k.jsonl'}", "data.max_length=128",
                             "data.max_train_examples=16", "data.max_val_examples=4",
                             f"training.output_root={tmp_path}",
                             "training.run_name=two", "training.per_device_train_batch_size=2",
                             "training.gradient_accumulation_steps=1", "training.warmup_steps=0",
                             "training.learning_rate=1.0e-2", "training.logging_steps=1", "training.eval_steps=2",
                             *common] for arg in ("--set", item)]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ginformer.cli", "finetune", "--config", str(config), *sets],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two = read_metrics(tmp_path / "two")
    one = read_metrics(train(settings))
    assert two[0]["world_size"] == 2 and one[0]["world_size"] == 1
    a, b = ([e for e in run if e["event"] == "train"] for run in (two, one))
    assert [e["step"] for e in a] == [e["step"] for e in b] == [1, 2]
    assert [e["train_loss"] for e in a] == pytest.approx([e["train_loss"] for e in b], rel=1e-5)
    assert a[-1]["graph"]["lambda"] == pytest.approx(b[-1]["graph"]["lambda"], rel=1e-4)


def test_method_none_trains_nothing_and_records_the_base(tmp_path, base_dir, task_files):
    run_dir = train(tiny(tmp_path, base_dir, task_files, "model.method=none"))
    metrics = read_metrics(run_dir)
    assert [e["event"] for e in metrics] == ["start", "eval"] and metrics[1]["step"] == 0
    assert metrics[0]["parameters"] == 0 and not (run_dir / "adapter").exists()
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(tiny(tmp_path, base_dir, task_files, "model.method=none"), resume=True)


def test_cli_evaluate_of_a_fine_tuning_run(tmp_path, base_dir, task_files, capsys):
    run_dir = train(tiny(tmp_path, base_dir, task_files, "model.method=none"))
    assert main(["evaluate", "--run", str(run_dir), "--generate", "1", "--max-new-tokens", "2"]) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "GSM8K strict" in printed and "generated_rows: 1" in printed
    saved = json.loads((run_dir / "eval_val.json").read_text())
    assert saved["model"] == f"none on {base_dir}" and saved["notes"]["generated_rows"] == 1


# ---------------------------------------------------------------------------------------------------- evaluation


class ScriptedModel(torch.nn.Module):
    """A model whose greedy generation is fixed per prompt: `generate` appends the scripted text's tokens (cut at
    max_new_tokens, padded to the longest) to whatever left-padded prompt it is given."""

    def __init__(self, tokenizer, script: dict[str, str]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.script = tokenizer, script
        self.calls = []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **kwargs):
        self.calls.append(kwargs)
        new = []
        for ids, mask in zip(input_ids, attention_mask):
            assert mask.tolist() == sorted(mask.tolist()), "prompts must be left-padded"
            prompt = self.tokenizer.decode(ids[mask.bool()])
            new.append(self.tokenizer(self.script[prompt], add_special_tokens=False)["input_ids"][:max_new_tokens])
        width = max(map(len, new))
        rows = [n + [pad_token_id] * (width - len(n)) for n in new]
        return torch.cat([input_ids, torch.tensor(rows, dtype=torch.long)], dim=1)


def scores_of(task, model, tokenizer, rows, train_rows, max_new_tokens, batch_size):
    held_out = HeldOut("val", [], rows, train_rows, None, 0)
    return task.score(model, tokenizer, held_out, Generation(None, max_new_tokens, batch_size), Losses(1.0, 1.0))


def gsm8k_rows(n):
    return [conversation(f"What is {i} + {i}? ({'x' * i})", f"#### {2 * i}", reference=str(2 * i), group=str(i))
            for i in range(n)]


def test_gsm8k_strict_and_flexible_exact_match_from_generation(base_dir):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base_dir)
    tokenizer.pad_token = tokenizer.eos_token
    rows = gsm8k_rows(5)  # references 0, 2, 4, 6, 8
    answers = [
        "0 + 0 = 0\n#### 0",  # strict and flexible right
        "2 and 2 make 4, so 2",  # no ####: flexible (last number, 2) right
        f"#### 4{PAPER_END}then 99",  # the stop marker ends it: strict and flexible right
        "#### 5 is wrong, 6",  # strict wrong, flexible right
        "#### 1,008.00",  # both wrong (1008)
    ]
    prompts = [encode_generation_prompt(row, tokenizer) for row in rows]
    model = ScriptedModel(tokenizer, {tokenizer.decode(p): a for p, a in zip(prompts, answers)})
    task = GSM8KTask(InstructSettings(task="gsm8k"))
    train_rows = gsm8k_rows(3) + gsm8k_rows(2)  # the most common training answer: 0 (and 2), ties by text: "0"
    scores = scores_of(task, model, tokenizer, rows, train_rows, max_new_tokens=64, batch_size=2)
    assert scores.generations[2]["generation"] == "#### 4" and scores.generations[2]["reference"] == "4"
    assert scores.values == {"strict": 2 / 5, "flexible": 4 / 5, "no_strict_answer": 1 / 5}
    assert scores.baselines == {"strict": 1 / 5, "flexible": 1 / 5} and scores.notes["majority_answer"] == "0"
    assert all(call["stop_strings"] == [PAPER_END] for call in model.calls)
    # the cap on new tokens is applied: a cut answer loses its number
    capped = generate_batched(model, tokenizer, prompts[:1], max_new_tokens=2, batch_size=1)
    assert capped[0] == tokenizer(answers[0], add_special_tokens=False)["input_ids"][:2]


def test_folio_accuracy_and_majority_baseline_from_generation(base_dir):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base_dir)
    tokenizer.pad_token = tokenizer.eos_token
    labels = ["True", "False", "Uncertain", "True"]
    question = "\nConclusion: c\nTrue, False, or Uncertain?"
    rows = [conversation(f"premise {i}{question}", label, reference=label, group=str(i))
            for i, label in enumerate(labels)]
    train = [conversation("t", label, reference=label, group=f"t{i}")
             for i, label in enumerate(["False", "False", "True"])]
    answers = ["True", "It is false.", "unknown", "no idea"]  # right, right, right (Unknown = Uncertain), none
    model = ScriptedModel(tokenizer, {tokenizer.decode(encode_generation_prompt(row, tokenizer)): a
                                      for row, a in zip(rows, answers)})
    scores = scores_of(FolioTask(InstructSettings(task="folio")), model, tokenizer, rows, train, 8, 3)
    assert scores.values == {"accuracy": 3 / 4, "no_label": 1 / 4}
    assert (scores.notes["majority_label"], scores.baselines["accuracy"]) == ("False", 1 / 4)


def test_scoring_is_plain_maths():
    assert score_gsm8k(["#### 3", "3", "x"], ["3", "3", "3"], ["3"]).values["strict"] == pytest.approx(1 / 3)
    assert score_gsm8k(["#### 3"], ["3"], ["4", "3", "4"]).baselines["strict"] == 0.0  # always answering 4
    assert score_folio(["True", "False"], ["True", "True"], "True").baselines["accuracy"] == 1.0
    with pytest.raises(ValueError, match="2 completions for 1 references"):
        score_gsm8k(["1", "2"], ["1"], ["1"])


def test_evaluate_any_file_in_the_format_counts_rows_seen_in_training(tmp_path, base_dir, task_files):
    run_dir = train(tiny(tmp_path, base_dir, task_files, "model.method=none"))
    rows = load_gsm8k(task_files / "gsm8k.jsonl")
    with pytest.warns(UserWarning, match="not held-out"):
        result = evaluate_run(run_dir, data=task_files / "gsm8k.jsonl", limit=10, generate=2, max_new_tokens=3)
    assert result.examples == 10 and 0 < result.trained_on <= 10 and result.notes["generated_rows"] == 2
    assert len(rows) == 60 and (run_dir / "eval_gsm8k.json").is_file()
    generations = (run_dir / "eval_gsm8k_generations.jsonl").read_text().splitlines()
    assert len(generations) == 2
    with pytest.raises(FileNotFoundError, match="not found"):
        evaluate_run(run_dir, data=tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------------- compare


def _events(method, lambdas, val_ppl, train_loss):
    events = [{"event": "start", "step": 0, "method": method, "parameters": 10,
               "graph": {"lambda": [0.0] * len(lambdas[0])} if lambdas else {}}]
    for step, (lam, ppl, loss) in enumerate(zip(lambdas or [None] * len(val_ppl), val_ppl, train_loss), start=1):
        graph = {"lambda": lam} if lam else {}
        events.append({"event": "train", "step": step, "train_loss": loss, "graph": graph, "step_time": 0.5 * step})
        events.append({"event": "eval", "step": step, "val_loss": math.log(ppl), "val_perplexity": ppl,
                       "graph": graph})
    events.append({"event": "end", "step": len(val_ppl), "train_runtime": 3.0})
    return events


def test_run_summary_and_lambda_history():
    metrics = _events("sparse-gin", [[0.05, 0.0], [0.1, 0.2], [0.3, 0.1]], [9.0, 5.0, 6.0], [2.0, 1.5, 1.0])
    run = run_summary("sg", 0, metrics, {"scores": {"strict": 0.5, "flexible": 0.75}})
    assert (run.final_val_perplexity, run.final_train_loss) == (6.0, 1.0)
    assert run.min_val_perplexity == pytest.approx(5.0)
    assert (run.step_time_s, run.wall_time_s, run.scores["strict"]) == (pytest.approx(1.0), 3.0, 0.5)
    history = run.graph["lambda"]
    assert history[-1] == (3, [0.3, 0.1]) and [s for s, _ in history] == [0, 1, 2, 3]
    assert history[1] == (1, [0.05, 0.0])
    other = run_summary("sg", 1, _events("sparse-gin", [[0.0, 0.1], [0.3, 0.0], [0.1, 0.3]],
                                         [8.0, 4.0, 5.0], [2.0, 1.5, 1.0]), {"scores": {}})
    mean = mean_history([run.graph["lambda"], other.graph["lambda"]])
    assert mean[1] == (1, pytest.approx([0.025, 0.05])) and mean[-1] == (3, pytest.approx([0.2, 0.2]))
    frozen = [{"event": "start", "step": 0, "parameters": 0, "graph": {}},
              {"event": "eval", "step": 0, "val_loss": math.log(7.0), "val_perplexity": 7.0, "graph": {}}]
    base = run_summary("base", None, frozen, {"scores": {}})
    assert (base.min_train_loss, base.gap, base.final_val_perplexity) == (None, None, 7.0)  # the frozen base
    with pytest.raises(ValueError, match="eval events"):
        run_summary("sg", 0, metrics[:1], {"scores": {}})


def test_compare_config_errors():
    good = {"name": "c", "seeds": [0], "variants": {"sg": {}}, "model": {"base": "x"}}
    settings = compare_settings_from_dict(good)
    assert settings.run_settings("sg", 0).training.run_name == "seed0" and settings.baseline
    assert settings.side == "pretrained" and settings.baseline_settings().model.method == "none"
    for bad, message in (
        ({**good, "seeds": [0, 0]}, "seeds"),
        ({**good, "variants": {"sg": {"sparse_gin": {"d_gnnn": 3}}}}, "variant 'sg'.*d_gnnn"),
        ({**good, "variants": {"base": {}}}, "base"),
        ({**good, "evaluate": {"generat": 3}}, "generat"),
        ({**good, "training": {"seed": 3}}, "training.seed"),
        ({**good, "target_params": 1000}, "target_params sizes models trained from scratch"),
        ({**good, "extra": 1}, "extra"),
    ):
        with pytest.raises(ConfigError, match=message):
            compare_settings_from_dict(bad)


def test_compare_trains_evaluates_and_writes_summary_and_figures(tmp_path, base_dir, task_files):
    base = tiny(tmp_path, base_dir, task_files)
    raw = {
        "name": "cmp",
        "seeds": [0],
        "variants": {"sparse_gin": {}, "fixed_lambda": {"sparse_gin": {"train_scale": False, "scale_init": "ramp"}}},
        "evaluate": {"generate": 2, "max_new_tokens": 4},
        "model": {"base": str(base_dir), "sparse_gin": {"d_gnn": D_GNN}},
        "data": {k: v for k, v in vars(base.data).items()},
        "training": {k: v for k, v in vars(base.training).items() if k not in ("run_name", "seed")},
    }
    root = run_comparison(compare_settings_from_dict(raw))
    summary = (root / "summary.md").read_text()
    assert "| sparse_gin" in summary and "| fixed_lambda" in summary and "base (frozen)" in summary
    assert "GSM8K strict" in summary
    # which layers each Sparse-GIN variant adapted, and where its branch joined them
    assert "  - sparse_gin adapts llama: 2 of 2 layers adapted (all); placement after_attention;" in summary
    figures = {p.name for p in (root / "figures").glob("*.png")}
    assert figures == {"train_loss.png", "val_perplexity.png", "min_val_perplexity.png", "min_train_loss.png",
                       "generalisation_gap.png", "score_strict.png", "lambda_per_layer.png",
                       "lambda_over_training_sparse_gin.png", "lambda_summary_sparse_gin.png"}
    fixed = read_metrics(root / "fixed_lambda" / "seed0")
    assert fixed[0]["graph"]["lambda"] == fixed[-2]["graph"]["lambda"] == [0.0, 0.5]  # the ramp, never trained
    rows = (root / "runs.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 + 1  # header, two runs, the frozen base
    assert run_comparison(compare_settings_from_dict(raw)) == root  # finished runs are reused
    base_metrics = root / BASELINE / "metrics.jsonl"  # a frozen base cut off before its evaluation is redone
    base_metrics.write_text(base_metrics.read_text().splitlines()[0] + "\n")
    assert pending_runs(compare_settings_from_dict(raw)) == [BASELINE]
    with pytest.raises(ConfigError, match="--overwrite deletes the whole comparison"):
        run_comparison(compare_settings_from_dict(raw), overwrite=True, only=[BASELINE])
    raw["variants"]["sparse_gin"] = {"sparse_gin": {"alpha": 3.0}}
    with pytest.raises(FileExistsError, match=r"other settings \(model.sparse_gin\)"):
        run_comparison(compare_settings_from_dict(raw))  # never reused with other settings


def test_a_wrong_field_in_a_saved_adapter_config_is_named_not_blamed_on_the_weights(base_dir, tmp_path):
    from ginformer.runs.models import check_adapter_description, read_weights

    base = LlamaForCausalLM.from_pretrained(base_dir)
    adapter = tmp_path / "adapter"
    get_sparse_gin_model(base, SparseGINConfig(d_gnn=8)).save_pretrained(adapter)
    check_adapter_description(adapter)  # as saved: fine
    config_file = adapter / "adapter_config.json"
    payload = json.loads(config_file.read_text())
    payload["config"]["edge_threshold"] = "high"
    config_file.write_text(json.dumps(payload))
    with pytest.raises(ConfigError, match=r"adapter_config.json: config.edge_threshold='high' is not allowed: "
                                          r"expected a (finite )?number; fix the field"):
        check_adapter_description(adapter)
    # What the weights do hold is read as such: a shape mismatch is not called a corrupt file.
    def mismatched():
        raise RuntimeError("size mismatch for adapters.0.w_in: copying [8, 32], the model has [16, 32]")
    with pytest.raises(ValueError, match=r"adapter: the saved model cannot be loaded \(RuntimeError: size mismatch"):
        read_weights(adapter, mismatched)
