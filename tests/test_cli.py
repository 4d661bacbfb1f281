"""Bad input at the command line ends in one line naming the file, row or field and the fix, exit code 2, no
traceback, and before any work that its output would need: the cases of issue 19 (malformed data, bad options,
unsafe or damaged files, outputs where a file stands)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from test_evaluate import TINY  # noqa: E402  (tests/ is on sys.path: conftest.py)

from ginformer.cli import main
from ginformer.runs.config import load_run_settings
from ginformer.runs.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = {
    "model": {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 16, "intermediate_size": 32,
              "max_position_embeddings": 64},
    "data": {"task": "text", "block_size": 16},
    "training": {"run_name": "text", "max_steps": 1},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return train(load_run_settings(None, [*TINY, f"training.output_root={root}"], side="scratch"))


def refused(capsys, argv, fragment: str) -> str:
    """Run the CLI; it must exit 2 with one error line containing `fragment` and no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"ginformer {argv[0]}: error: ")]
    assert code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and fragment in errors[0], err
    return errors[0]


def text_config(tmp_path, source, **changes) -> Path:
    config = json.loads(json.dumps(TEXT))
    config["data"].update(source=str(source), cache_dir=str(tmp_path / "cache"))
    config["training"]["output_root"] = str(tmp_path / "runs")
    for section, values in changes.items():
        config[section].update(values)
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("name, content, fragment", [
    ("rows.jsonl", '{"text": "abc\\ud800"}\n', "rows.jsonl: line 1: holds a lone surrogate escape (\\ud800)"),
    ("rows.jsonl", "[" * 40_000 + "]" * 40_000 + "\n", "rows.jsonl: line 1: nested too deeply to read"),
    ("rows.jsonl", '[{"text": "abc"}]\n', "rows.jsonl: line 1: a JSON list, expected an object"),
    ("ten.txt", "ab", "the training split is empty (training: 0 examples, validation: 0; 1 training and 1 "
                      "validation tokens in blocks of data.block_size=16"),
])
def test_malformed_or_too_small_data_is_named_and_leaves_no_run_directory(tmp_path, capsys, name, content, fragment):
    (tmp_path / name).write_text(content)
    refused(capsys, ["pretrain", "--config", text_config(tmp_path, tmp_path / name)], fragment)
    assert not (tmp_path / "runs" / "text").exists()


def test_a_named_pipe_as_the_source_is_refused_without_waiting(tmp_path, capsys):
    os.mkfifo(tmp_path / "corpus.txt")
    refused(capsys, ["pretrain", "--config", text_config(tmp_path, tmp_path / "corpus.txt")],
            "corpus.txt is a named pipe, not a regular file")


@pytest.mark.parametrize("where, changes, fragment", [
    ("cache", {}, "cache_dir {root}/cache is a file, not a directory"),
    ("runs", {}, "the run directory (training.output_root/training.run_name) {root}/runs/text: {root}/runs is a file"),
    ("runs/text", {}, "the run directory (training.output_root/training.run_name) {root}/runs/text is a file"),
])
def test_a_file_where_an_output_directory_goes_is_named_before_any_work(tmp_path, capsys, where, changes, fragment):
    (tmp_path / "corpus.txt").write_text("some words to learn from, " * 20)
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).write_text("a file")
    refused(capsys, ["pretrain", "--config", text_config(tmp_path, tmp_path / "corpus.txt", **changes)],
            fragment.format(root=tmp_path))
    assert (tmp_path / where).read_text() == "a file"


def test_a_key_written_twice_in_a_config_is_named_with_both_lines(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("training:\n  run_name: a\n  run_name: b\n")
    refused(capsys, ["pretrain", "--config", tmp_path / "run.yaml"],
            "run.yaml: key 'run_name' is written twice, on lines 2 and 3; keep one of them")


def test_a_resume_without_a_complete_checkpoint_names_each_and_changes_nothing(run_dir, tmp_path, capsys):
    copy = tmp_path / "tiny"
    shutil.copytree(run_dir, copy)
    (copy / "checkpoint-4" / "model.safetensors").write_bytes(b"")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in copy.rglob("*"))
    refused(capsys, ["pretrain", "--config", copy / "config.yaml", "--resume", "--set",
                     f"training.output_root={tmp_path}"],
            f"cannot resume {copy}: no complete checkpoint (checkpoint-4: model.safetensors is empty (0 bytes))")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in copy.rglob("*")) == before


def test_generate_never_overwrites_its_prompts_and_checks_its_output_first(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("MKV\nMAL\n")
    refused(capsys, ["generate", "--run", run_dir, "--prompts", prompts, "--output", prompts],
            "is also the input")
    assert prompts.read_text() == "MKV\nMAL\n"
    (tmp_path / "blocker").write_text("a file")
    refused(capsys, ["generate", "--run", run_dir, "--prompts", prompts, "--output", tmp_path / "blocker" / "o.jsonl"],
            f"{tmp_path}/blocker is a file, not a directory")


def test_a_model_whose_config_does_not_fit_its_weights_is_refused_naming_both(run_dir, tmp_path, capsys):
    for layers in (1, 3):
        copy = tmp_path / f"layers{layers}"
        shutil.copytree(run_dir, copy)
        config = json.loads((copy / "model" / "config.json").read_text())
        (copy / "model" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}))
        refused(capsys, ["generate", "--run", copy, "--prompt", "MKV", "--max-new-tokens", "2"],
                f"the weights do not fit config.json: config.json says num_hidden_layers={layers}, the weights hold 2")


def test_graph_checks_its_output_folder_before_loading_a_model(run_dir, tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    refused(capsys, ["graph", "--model", run_dir, "--text", "MKV", "--out", tmp_path / "out"],
            f"--out {tmp_path}/out is a file, not a directory")


def test_evaluating_a_file_named_val_would_overwrite_the_runs_own_evaluation(run_dir, tmp_path, capsys):
    (tmp_path / "val.csv").write_text("Sequence,Secondary_structure\nMKV,CCC\n")
    refused(capsys, ["evaluate", "--run", run_dir, "--data", tmp_path / "val.csv"],
            "its results would go to eval_val.json, the run's own validation evaluation")


def test_an_lm_eval_task_whose_data_is_out_of_reach_is_one_line(run_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("lm_eval")

    def offline(**options):
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr("lm_eval.simple_evaluate", offline)
    task = tmp_path / "arc.yaml"
    task.write_text("task: arc_like\ndataset_path: allenai/ai2_arc\n")
    refused(capsys, ["evaluate", "--run", run_dir, "--lm-eval", task],
            "Couldn't reach 'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError): their data is on the Hugging "
            "Face Hub, which this machine cannot reach")


@pytest.mark.parametrize("bug", [KeyError("step"), ValueError("an internal invariant broke")])
def test_an_error_that_is_not_the_librarys_own_is_a_bug_with_its_traceback(tmp_path, capsys, monkeypatch, bug):
    """Only ginformer's error types are bad input; anything else, a ValueError included, is shown as the bug it is."""
    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr("ginformer.runs.train.train", broken)
    code = main(["pretrain", "--config", str(text_config(tmp_path, tmp_path / "corpus.txt"))])
    err = capsys.readouterr().err
    assert code == 70
    assert "Traceback" in err and f"{type(bug).__name__}: " in err, err
    assert "this is a bug in ginformer or in a library it calls" in err.splitlines()[-1]
