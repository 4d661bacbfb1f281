"""Training from scratch on Trainer (the protein task): data preparation, the run directory, metrics, resume,
NaN stop, two processes. The same trainer serves fine-tuning (test_finetune.py) and the text task (test_text.py)."""

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback

import ginformer
from ginformer.data.batches import IGNORE_INDEX, CausalLMCollator, tokenize_with_prompt
from ginformer.data.protein import ProteinRecord, format_protein_example, format_protein_prompt
from ginformer.data.tokenizer import build_protein_tokenizer
from ginformer.files import UnsafeFileError
from ginformer.runs.config import load_run_settings
from ginformer.runs.run_dir import RunLocked, checkpoint_problem
from ginformer.errors import ConfigError
from ginformer.runs.train import TrainingDiverged, train
from ginformer.runs.trainers import token_nll

TINY = [
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.max_position_embeddings=300",
    "data.max_train_examples=16",
    "data.max_val_examples=6",
    "training.run_name=tiny",
    "training.max_steps=6",
    "training.per_device_train_batch_size=4",
    "training.per_device_eval_batch_size=4",
    "training.gradient_accumulation_steps=1",
    "training.warmup_steps=2",
    "training.learning_rate=1.0e-3",
    "training.logging_steps=1",
    "training.eval_steps=3",
    "training.save_steps=3",
]


def tiny_settings(tmp_path, *overrides):
    return load_run_settings(None, [*TINY, f"training.output_root={tmp_path}", *overrides], side="scratch")


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def events(metrics: list[dict], kind: str) -> dict[int, dict]:
    return {m["step"]: m for m in metrics if m["event"] == kind}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return build_protein_tokenizer()


def test_collator_pads_right_and_masks_padding(tokenizer):
    examples = [{"input_ids": [2, 5, 15, 6], "labels": [2, 5, 15, 6]}, {"input_ids": [2, 5], "labels": [-100, 5]}]
    batch = CausalLMCollator(pad_token_id=tokenizer.pad_token_id)(examples)
    pad = tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[2, 5, 15, 6], [2, 5, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[2, 5, 15, 6], [-100, 5, -100, -100]]


def test_loss_on_labels_scores_only_the_two_label_tokens_and_the_end_token(tokenizer):
    record = ProteinRecord("MKVL", "AH", "BS", None, 0)
    text = format_protein_example(record)
    example = tokenize_with_prompt(text, tokenizer, format_protein_prompt(record.sequence))
    scored = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(scored) == "<|AH|><|BS|><|eot_id|>"
    assert example["labels"][-3:] == example["input_ids"][-3:]
    assert tokenize_with_prompt(text, tokenizer)["labels"] == example["input_ids"]


def test_build_datasets_follows_loss_on(tmp_path, tokenizer):
    for loss_on in ("all", "labels"):
        splits = tiny_settings(tmp_path, f"data.loss_on={loss_on}").task().datasets(tokenizer)
        assert (len(splits.train), len(splits.val)) == (16, 6)
        assert splits.longest == max(len(e["input_ids"]) for e in [*splits.train, *splits.val])
        for example in [*splits.train, *splits.val]:
            scored = [t for t in example["labels"] if t != IGNORE_INDEX]
            if loss_on == "all":
                assert example["labels"] == example["input_ids"]
            else:
                assert len(scored) == 3 and scored[-1] == tokenizer.eos_token_id


def test_token_nll_is_the_models_own_loss():
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    )
    examples = [{"input_ids": [2, 5, 15, 16, 17, 6], "labels": [-100, -100, 15, 16, 17, 6]},
                {"input_ids": [2, 5, 18, 6], "labels": [2, 5, 18, 6]}]
    batch = CausalLMCollator(pad_token_id=0)(examples)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, tokens = token_nll(logits, batch["labels"])
        expected = model(**batch).loss
    assert tokens.tolist() == [4, 3]
    torch.testing.assert_close(nll.sum() / tokens.sum(), expected)


def test_pretrain_writes_config_metrics_checkpoints_and_model(tmp_path, tokenizer):
    settings = tiny_settings(tmp_path)
    run_dir = train(settings)
    assert run_dir == tmp_path / "tiny"
    assert load_run_settings(run_dir / "config.yaml") == settings
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    assert isinstance(model, ginformer.GinformerForCausalLM)
    assert AutoTokenizer.from_pretrained(run_dir / "model").get_vocab() == tokenizer.get_vocab()

    metrics = read_metrics(run_dir)
    assert [m["event"] for m in metrics][0] == "start" and metrics[-1]["event"] == "end"
    assert metrics[0]["parameters"] == metrics[0]["total_parameters"] == ginformer.count_parameters(model)
    assert (metrics[0]["model"], metrics[0]["hidden_size"]) == ("scratch", 32)
    trains, evals = events(metrics, "train"), events(metrics, "eval")
    assert sorted(trains) == [1, 2, 3, 4, 5, 6] and sorted(evals) == [3, 6]
    assert all(math.isfinite(m["train_loss"]) for m in trains.values())
    assert trains[1]["learning_rate"] == 0.0 and trains[6]["learning_rate"] == pytest.approx(1e-3)  # 2-step warm-up
    for m in list(trains.values()) + list(evals.values()):
        alphas = m["graph"]["sharpening"]
        assert len(alphas) == 2 and all(isinstance(a, float) for a in alphas)
    assert trains[6]["graph"]["sharpening"] != [1.0, 1.0]  # α is learned, and the log follows it
    for m in evals.values():
        assert m["val_perplexity"] == pytest.approx(math.exp(m["val_loss"]))

    # The logged validation loss is the final model's token-weighted loss over the validation set.
    val = settings.task().datasets(tokenizer).val
    collate = CausalLMCollator(tokenizer.pad_token_id)
    with torch.no_grad():
        per_example = [(model(**collate([e])).loss.item(), sum(t != IGNORE_INDEX for t in e["labels"][1:]))
                       for e in val]
    expected = sum(loss * n for loss, n in per_example) / sum(n for _, n in per_example)
    assert evals[6]["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_a_setting_that_fails_late_leaves_no_run_directory(tmp_path):
    settings = tiny_settings(tmp_path, "model.max_position_embeddings=64")
    with pytest.raises(ConfigError, match="the model has 64 positions"):
        train(settings)
    assert not settings.run_dir.exists()


def test_an_existing_run_directory_is_never_overwritten_unless_asked(tmp_path):
    settings = tiny_settings(tmp_path, "training.max_steps=1")
    (tmp_path / "tiny").mkdir()
    marker = tmp_path / "tiny" / "results.txt"
    marker.write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(settings)
    assert marker.read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(settings, resume=True)
    with pytest.raises(ValueError, match="exclude each other"):
        train(settings, resume=True, overwrite=True)
    assert marker.read_text() == "keep me"

    train(settings, overwrite=True)
    assert not marker.exists() and (tmp_path / "tiny" / "model").is_dir()


class _CrashAfterSave(TrainerCallback):
    """Kills the run right after the checkpoint of `step` is written, as a pre-empted job would be."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_reaches_the_same_losses_as_an_uninterrupted_run(tmp_path):
    # 14 examples in steps of 2 × 2 (gradient accumulation): epochs end mid-step, dropout draws random numbers.
    common = ["data.max_train_examples=14", "training.per_device_train_batch_size=2",
              "training.gradient_accumulation_steps=2", "training.max_steps=7", "model.gin_mlp_dropout=0.1"]
    uninterrupted = read_metrics(train(tiny_settings(tmp_path, *common, "training.run_name=whole")))

    settings = tiny_settings(tmp_path, *common, "training.run_name=resumed")
    with pytest.raises(KeyboardInterrupt):
        train(settings, callbacks=[_CrashAfterSave(3)])
    assert not (settings.run_dir / "model").exists()
    resumed = read_metrics(train(settings, resume=True))

    assert [m["step"] for m in resumed if m["event"] == "resume"] == [3]
    for kind, key in (("train", "train_loss"), ("eval", "val_loss")):
        a, b = events(uninterrupted, kind), events(resumed, kind)
        assert sorted(a) == sorted(b)
        for step in a:
            assert abs(a[step][key] - b[step][key]) <= 1e-4, (kind, step)
        assert a[max(a)][key] < a[min(a)][key]  # it did train

    with pytest.raises(ConfigError, match="model.hidden_size"):
        train(tiny_settings(tmp_path, *common, "training.run_name=resumed", "model.hidden_size=64"), resume=True)


# ---------------------------------------------------------------------------------------------------- crash safety

# Checkpoints at steps 3, 6 and 9; dropout and epochs ending mid-step, so a resume must restore RNG and data order.
CRASH = ["data.max_train_examples=14", "training.per_device_train_batch_size=2",
         "training.gradient_accumulation_steps=2", "training.max_steps=9", "model.gin_mlp_dropout=0.1"]
WORKER = Path(__file__).parent / "crash_worker.py"
RESUME_TOLERANCE = 1e-4  # as test_resume_reaches_the_same_losses_as_an_uninterrupted_run allows the losses


def run_worker(tmp_path, point: str, step: int, *overrides: str, wait: bool = True):
    """crash_worker.py in a subprocess: trains a tiny run and SIGKILLs itself at `point` of checkpoint-`step`."""
    settings = [*TINY, f"training.output_root={tmp_path}", *overrides]
    src = str(Path(ginformer.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(WORKER), point, str(step), json.dumps(settings)]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= RESUME_TOLERANCE, worst


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its bytes: what "nothing changed on disk" compares."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run every crash test must end up equal to."""
    root = tmp_path_factory.mktemp("whole")
    return train(tiny_settings(root, *CRASH, "training.run_name=whole"))


@pytest.mark.slow  # tens of seconds on 2 cores: runs in CI (make test-all)
@pytest.mark.parametrize("point", ["weights", "optimizer", "rename"])
def test_kill_9_while_writing_a_checkpoint_then_resume_equals_an_uninterrupted_run(
    tmp_path, point, uninterrupted, caplog
):
    result = run_worker(tmp_path, point, 6, *CRASH, "training.run_name=killed")
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    run_dir = tmp_path / "killed"
    # The half-written checkpoint-6 is nowhere under a checkpoint's name; checkpoint-3 is whole.
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-3"]
    assert (run_dir / ".partial" / "checkpoint-6").is_dir()
    written = (run_dir / "metrics.jsonl").read_text().splitlines()

    with caplog.at_level(logging.INFO, logger="ginformer"):
        train(tiny_settings(tmp_path, *CRASH, "training.run_name=killed"), resume=True)
    assert "resuming from checkpoint-3" in caplog.text and "checkpoint-6 (in .partial/)" in caplog.text

    assert_same_weights(final_weights(run_dir), final_weights(uninterrupted))
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics if m["event"] == "resume"] == [3]
    # Nothing already written is lost: the events up to the checkpoint stay as they were written.
    kept = [line for line in written if json.loads(line)["step"] <= 3]
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[: len(kept)] == kept
    whole = read_metrics(uninterrupted)
    for kind, key in (("train", "train_loss"), ("eval", "val_loss")):
        a, b = events(whole, kind), events(metrics, kind)
        assert sorted(a) == sorted(b)
        assert all(abs(a[step][key] - b[step][key]) <= RESUME_TOLERANCE for step in a), kind
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint-3", "checkpoint-6", "checkpoint-9", "config.yaml", "metrics.jsonl", "model"]


def test_resume_skips_damaged_checkpoints_names_them_and_equals_an_uninterrupted_run(
    tmp_path, uninterrupted, caplog
):
    run_dir = tmp_path / "damaged"
    shutil.copytree(uninterrupted, run_dir)
    shutil.rmtree(run_dir / "model")
    (run_dir / "checkpoint-9" / "model.safetensors").write_bytes(b"")  # zero-byte weights
    state = run_dir / "checkpoint-6" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # a truncated trainer state
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"event": "train", "st')  # a torn last line

    with caplog.at_level(logging.INFO, logger="ginformer"):
        train(tiny_settings(tmp_path, *CRASH, "training.run_name=damaged"), resume=True)
    assert "resuming from checkpoint-3" in caplog.text
    assert "checkpoint-9: model.safetensors is empty (0 bytes)" in caplog.text
    assert "checkpoint-6: trainer_state.json is not valid JSON" in caplog.text
    assert "metrics.jsonl: line" in caplog.text and "torn" in caplog.text
    assert_same_weights(final_weights(run_dir), final_weights(uninterrupted))
    assert [m["step"] for m in read_metrics(run_dir) if m["event"] == "resume"] == [3]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda c: (c / "trainer_state.json").write_text('{"global_step": "6"}'), "global_step='6', not a step"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_step": 3}'), "says step 3, but the directory"),
        (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
        (lambda c: os.truncate(c / "model.safetensors", 1000), "model.safetensors is truncated or corrupt"),
        (lambda c: (c / "model.safetensors").unlink(), "no weights file"),
        (lambda c: os.truncate(c / "optimizer.pt", 100), "optimizer.pt is truncated or corrupt"),
        (lambda c: (c / "optimizer.pt").unlink(), "no optimizer state"),
        (lambda c: (c / "scheduler.pt").write_bytes(b""), "scheduler.pt is empty"),
        (lambda c: (c / "rng_state.pth").unlink(), "no RNG state"),
    ],
)
def test_a_damaged_checkpoint_is_named_with_what_is_wrong(tmp_path, uninterrupted, damage, reason):
    checkpoint = tmp_path / "checkpoint-6"
    shutil.copytree(uninterrupted / "checkpoint-6", checkpoint)
    assert checkpoint_problem(checkpoint, 6) is None
    damage(checkpoint)
    assert reason in checkpoint_problem(checkpoint, 6)


def test_a_failed_or_refused_resume_changes_nothing_on_disk(tmp_path, uninterrupted):
    run_dir = tmp_path / "whole"
    shutil.copytree(uninterrupted, run_dir)
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match="model.hidden_size"):  # refused: another model
        train(tiny_settings(tmp_path, *CRASH, "training.run_name=whole", "model.hidden_size=64"), resume=True)
    assert snapshot(run_dir) == before

    for checkpoint in run_dir.glob("checkpoint-*"):
        (checkpoint / "optimizer.pt").write_bytes(b"")
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match=r"no complete checkpoint \(checkpoint-9: optimizer.pt is empty.*checkpoint-3"):
        train(tiny_settings(tmp_path, *CRASH, "training.run_name=whole"), resume=True)
    assert snapshot(run_dir) == before

    shutil.rmtree(run_dir)
    shutil.copytree(uninterrupted, run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:15]  # a damaged line in the middle: an error naming it, not a guess
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 3: not a JSON object"):
        train(tiny_settings(tmp_path, *CRASH, "training.run_name=whole"), resume=True)
    assert snapshot(run_dir) == before


def test_a_checkpoint_holding_a_refused_pickle_is_refused_naming_the_file(tmp_path, uninterrupted):
    run_dir = tmp_path / "whole"
    shutil.copytree(uninterrupted, run_dir)
    torch.save({"payload": _Payload()}, run_dir / "checkpoint-9" / "rng_state.pth")
    before = snapshot(run_dir)
    with pytest.raises(UnsafeFileError, match=r"checkpoint-9/rng_state.pth: refused to load"):
        train(tiny_settings(tmp_path, *CRASH, "training.run_name=whole"), resume=True)
    assert snapshot(run_dir) == before


class _Payload:
    """Unpickling it would call print: what torch's weights_only loading refuses."""

    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.slow  # tens of seconds on 2 cores: runs in CI (make test-all)
def test_a_second_process_is_refused_while_one_trains_and_a_dead_ones_lock_is_taken_over(tmp_path, caplog):
    holder = run_worker(tmp_path, "hold", 2, "training.run_name=shared", wait=False)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "shared" / "holding").exists():
            assert holder.poll() is None and time.monotonic() < deadline, holder.stderr and holder.stderr.read()
            time.sleep(0.2)
        before = snapshot(tmp_path / "shared")
        for flags in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(RunLocked, match=f"locked by process {holder.pid}, which is training into it"):
                train(tiny_settings(tmp_path, "training.run_name=shared"), **flags)
        assert snapshot(tmp_path / "shared") == before
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "shared" / ".lock").read_text().strip() == str(holder.pid)  # left by the killed process

    with caplog.at_level(logging.INFO, logger="ginformer"):
        run_dir = train(tiny_settings(tmp_path, "training.run_name=shared"), overwrite=True)
    assert f"took over the lock of process {holder.pid}, which is no longer running" in caplog.text
    assert (run_dir / "model").is_dir() and not (run_dir / ".lock").exists()


def test_a_split_that_ends_up_empty_fails_before_training_naming_it(tmp_path):
    corpus = tmp_path / "ten.txt"
    corpus.write_text("abcdefghij")  # 9 training and 1 validation character: no validation block of 64
    settings = load_run_settings(None, [
        "data.task=text", f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "data.block_size=64",
        "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.hidden_size=16",
        "model.intermediate_size=32", "model.max_position_embeddings=64", f"training.output_root={tmp_path}",
        "training.run_name=ten", "training.max_steps=2",
    ], side="scratch")
    with pytest.raises(ConfigError, match=r"the validation split is empty \(training: 1 examples, validation: 0; 9 "
                       r"training and 1 validation tokens in blocks of data.block_size=64"):
        train(settings)
    assert not settings.run_dir.exists()


class _NanFromStep(TrainerCallback):
    """From step `step` on, the embeddings output NaN: the loss of that step is NaN."""

    def __init__(self, step: int):
        self.step, self.model = step, None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            self.model = model
            model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output * math.nan)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    settings = tiny_settings(tmp_path, "training.save_steps=2", "training.max_steps=8")
    poison = _NanFromStep(5)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5.*checkpoint-4"):
        train(settings, callbacks=[poison])

    run_dir = settings.run_dir
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (run_dir / "model").exists()
    last = read_metrics(run_dir)[-1]
    assert last == {**last, "event": "stopped", "step": 5, "reason": "non-finite loss", "loss": "nan",
                    "last_checkpoint": "checkpoint-4"}
    # The NaN step never reached the optimizer: the weights in memory and on disk are finite.
    assert all(torch.isfinite(p).all() for p in poison.model.parameters())
    saved = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoint-4")
    assert all(torch.isfinite(p).all() for p in saved.parameters())



def test_cli_reports_a_diverged_run_in_one_line_with_exit_code_1(tmp_path, monkeypatch, capsys):
    from ginformer.cli import main

    def diverge(settings, resume, overwrite):
        raise TrainingDiverged("loss became nan at step 5; training stopped and the last good checkpoint is c-4")

    monkeypatch.setattr("ginformer.runs.train.train", diverge)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"training": {"max_steps": 2}}))
    assert main(["pretrain", "--config", str(config)]) == 1
    assert capsys.readouterr().err.strip() == (
        "ginformer pretrain: stopped: loss became nan at step 5; training stopped and the last good checkpoint is c-4"
    )

LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # --multi_gpu is accelerate's torch.distributed launcher; without CUDA the processes use gloo on the CPU.
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.slow  # two processes per launcher
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_train_like_one_process_with_the_combined_batch(tmp_path, launcher):
    """2 processes × batch 4, against one process × batch 8: same examples per step, same losses.

    What differs is float32 summation order only (each process pads to its own longest example, and DDP
    averages the two halves' gradients), about 1e-7 relative; over 8 steps the largest difference seen was
    5e-7. A real fault (wrong sharding, tokens counted twice, a lost loss normalisation) moves the loss by 1e-3
    or more from the first step, so 1e-5 separates the two with margin on both sides.
    """
    common = ["data.max_train_examples=24", "training.max_steps=4", "training.eval_steps=4",
              "training.save_steps=100", "training.warmup_steps=1"]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({}))
    sets = [arg for item in [*TINY, f"training.output_root={tmp_path}", *common,
                             "training.run_name=two"] for arg in ("--set", item)]
    src = str(Path(ginformer.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *LAUNCHERS[launcher], "-m", "ginformer.cli", "pretrain", "--config", str(config), *sets],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two = read_metrics(tmp_path / "two")
    one = read_metrics(train(tiny_settings(tmp_path, *common, "training.run_name=one",
                                              "training.per_device_train_batch_size=8")))

    assert two[0]["world_size"] == 2 and one[0]["world_size"] == 1
    a, b = events(two, "train"), events(one, "train")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert a[1]["epoch"] == b[1]["epoch"]  # both consumed 8 examples per step
    for step in a:
        assert abs(a[step]["train_loss"] - b[step]["train_loss"]) < 1e-5, step
    assert abs(events(two, "eval")[4]["val_loss"] - events(one, "eval")[4]["val_loss"]) < 1e-5
