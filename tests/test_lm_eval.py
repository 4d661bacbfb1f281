"""lm-evaluation-harness on ginformer's models, offline: lm-eval's GSM8K on local rows, a task YAML on a local JSON
file, every kind of run, from Python and from `ginformer evaluate --lm-eval`."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LlamaForCausalLM

from ginformer.adapter import SparseGINConfig, get_sparse_gin_model
from ginformer.adapter.lora import get_lora_model, lora_config_for_budget
from ginformer.cli import main
from ginformer.errors import MissingExtra
from ginformer.modeling import GinformerConfig, GinformerForCausalLM
from ginformer.runs.train import train
from ginformer.tasks.instruct import GSM8KTask, InstructSettings

lm_eval = pytest.importorskip("lm_eval")

from ginformer.integrations.lm_eval import evaluate_model, gsm8k_task  # noqa: E402
from test_finetune import tiny  # noqa: E402  (tests/ is on sys.path: conftest.py)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(base_tokenizer):
    return base_tokenizer


@pytest.mark.slow  # tens of seconds on 2 cores: runs in CI (make test-all)
def test_gsm8k_bundled_is_lm_evals_own_task_on_rows_held_out_by_ginformers_split(task_files):
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    # What gsm8k_task relies on: lm-eval's registered gsm8k is the file it reads, plain YAML that includes nothing.
    registered = Path(TaskManager().task_index["gsm8k"].yaml_path)
    assert registered == Path(lm_eval.tasks.__file__).parent / "gsm8k" / "gsm8k.yaml"
    assert "include" not in yaml.safe_load(registered.read_text())
    ours = gsm8k_task(task_files / "gsm8k.jsonl")
    # The published GSM8K set-up (module docstring of ginformer.integrations.lm_eval).
    assert ours["doc_to_text"] == "Question: {{question}}\nAnswer:" and ours["num_fewshot"] == 5
    assert [f["name"] for f in ours["filter_list"]] == ["strict-match", "flexible-extract"]
    assert [m["metric"] for m in ours["metric_list"]] == ["exact_match"]
    splits = ours["custom_dataset"]()
    train, val = GSM8KTask(InstructSettings(task="gsm8k", source=str(task_files / "gsm8k.jsonl"))).splits()
    assert splits["test"]["question"] == [e.prompt[-1].content for e in val]
    assert not set(splits["test"]["question"]) & set(splits["train"]["question"])
    assert len(splits["train"]) == len(train) and splits["test"][0]["answer"].split("#### ")[-1] == val[0].reference


def scripted_answers(model, tokenizer, answers):
    """Make `model.generate` (what lm-eval calls) answer each GSM8K question with a fixed text."""

    def generate(input_ids, attention_mask=None, max_length=None, **kwargs):
        rows = []
        for ids in input_ids:
            question = tokenizer.decode(ids, skip_special_tokens=True).rsplit("Question: ", 1)[-1]
            text = next(answer for q, answer in answers.items() if question.startswith(q))
            rows.append(torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]))
        width = max(len(r) for r in rows)
        new = torch.stack([torch.cat([r, r.new_full((width - len(r),), tokenizer.pad_token_id)]) for r in rows])
        return torch.cat([input_ids, new], dim=1)

    model.generate = generate
    return model


def test_lm_evals_strict_and_flexible_filters_score_what_the_model_generates(base_dir, tokenizer, task_files):
    _, val = GSM8KTask(InstructSettings(task="gsm8k", source=str(task_files / "gsm8k.jsonl"))).splits()
    first, second, third = val[:3]
    answers = {first.prompt[-1].content: f"so\n#### {first.reference}",  # strict and flexible right
               second.prompt[-1].content: f"it is {second.reference}.",  # no '####': flexible right only
               third.prompt[-1].content: "#### 99999"}  # both wrong
    model = get_sparse_gin_model(LlamaForCausalLM.from_pretrained(base_dir), SparseGINConfig(d_gnn=8)).eval()
    results = evaluate_model(scripted_answers(model, tokenizer, answers), tokenizer, ["gsm8k_bundled"],
                             gsm8k_source=task_files / "gsm8k.jsonl", limit=3, num_fewshot=1)
    scores = results["results"]["gsm8k_bundled"]
    assert scores["exact_match,strict-match"] == pytest.approx(1 / 3)
    assert scores["exact_match,flexible-extract"] == pytest.approx(2 / 3)
    assert results["n-shot"]["gsm8k_bundled"] == 1 and results["n-samples"]["gsm8k_bundled"]["effective"] == 3


@pytest.fixture(scope="module")
def choice_task(tmp_path_factory):
    """A task YAML in lm-eval's format on a local JSON file: all that offline evaluation needs."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    rows = [{"question": f"Tom has {a} apples and gets {b} more. How many now?",
             "choices": [str(a + b), str(a * b + 1)], "label": 0} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tiny_choice.yaml").write_text(
        "task: tiny_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {root / 'rows.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n"
    )
    return root


def test_every_kind_of_model_is_scored_on_a_local_task_yaml(base_dir, tokenizer, choice_task):
    budget = 1340
    torch.manual_seed(0)
    scratch = GinformerForCausalLM(GinformerConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=4, attention_kind="gin"))
    lora_base = LlamaForCausalLM.from_pretrained(base_dir)
    models = {
        "base": LlamaForCausalLM.from_pretrained(base_dir),
        "sparse-gin": get_sparse_gin_model(LlamaForCausalLM.from_pretrained(base_dir), SparseGINConfig(d_gnn=9)),
        "lora": get_lora_model(lora_base, lora_config_for_budget(lora_base, budget)[0]),
        "scratch": scratch,
    }
    for name, model in models.items():
        results = evaluate_model(model.eval(), tokenizer, ["tiny_choice"], task_paths=[choice_task])
        assert 0.0 <= results["results"]["tiny_choice"]["acc,none"] <= 1.0, name
        assert results["n-samples"]["tiny_choice"]["effective"] == 4, name
    yaml_path = str(choice_task / "tiny_choice.yaml")  # a task YAML named by its path
    assert "tiny_choice" in evaluate_model(models["base"], tokenizer, [yaml_path])["results"]


@pytest.mark.slow  # trains runs, then lm-eval indexes all its tasks
def test_cli_evaluates_runs_on_gsm8k_rows_and_names_bad_tasks(tmp_path, base_dir, task_files, capsys):
    for method in ("none", "sparse-gin"):
        run_dir = train(tiny(tmp_path, base_dir, task_files, f"model.method={method}", "training.max_steps=2",
                             f"training.run_name={method}"))
        code = main(["evaluate", "--run", str(run_dir), "--lm-eval", "gsm8k_bundled", "--data",
                     str(task_files / "gsm8k.jsonl"), "--limit", "2", "--num-fewshot", "1"])
        printed = capsys.readouterr().out
        assert code == 0 and re.search(r"strict-match\s*\|", printed) and "flexible-extract" in printed
        saved = json.loads((run_dir / "lm_eval_gsm8k_bundled.json").read_text())
        assert saved["n-samples"]["gsm8k_bundled"]["effective"] == 2
    assert main(["evaluate", "--run", str(run_dir), "--lm-eval", "no_such_task"]) == 2
    assert "unknown lm-eval task(s) ['no_such_task']" in capsys.readouterr().err
    for shots in ("2", "0"):  # zero shots is a value too, not an absent flag
        assert main(["evaluate", "--run", str(run_dir), "--num-fewshot", shots]) == 2
        assert "--num-fewshot applies to --lm-eval" in capsys.readouterr().err


def test_without_lm_eval_installed_the_extra_to_install_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` fails as it does where it is not installed
    with pytest.raises(MissingExtra, match=r"lm-evaluation-harness, which is not installed: .*ginformer\[integrations\]"):
        gsm8k_task()
    # Before the run is even looked for: the one thing to fix is the install.
    assert main(["evaluate", "--run", str(tmp_path / "no-run"), "--lm-eval", "gsm8k_bundled"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'ginformer[integrations]'" in err and "Traceback" not in err
