"""Fine-tuning on your own instruction data, from the command line: Sparse-GIN and LoRA runs on a messages JSONL
(system prompt, multi-turn), a prompt/completion JSONL and a conversational prompt/completion JSONL; evaluation
with generated samples; `ginformer generate` on a Sparse-GIN run with one prompt, a prompts file and a scripted
--chat session."""

import io
import json

import pytest
import yaml

from ginformer.cli import main
from ginformer.runs.config import load_run_settings
from ginformer.runs.evaluate import evaluate_run, load_run
from ginformer.runs.generate import RunGenerator

pytestmark = pytest.mark.usefixtures("one_thread")

SYSTEM = {"role": "system", "content": "You answer in one short sentence."}


def turn(role, content):
    return {"role": role, "content": content}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The three shapes, 24 rows each, under other column names where TRL's differ."""
    root = tmp_path_factory.mktemp("instruct")
    messages, plain, conversational = [], [], []
    for i in range(24):
        question, answer = f"How many legs do {i} cats have?", f"{4 * i} legs."
        messages.append({"conversation": [SYSTEM, turn("user", f"Hi, I have {i} cats."), turn("assistant", "Nice."),
                                          turn("user", question), turn("assistant", answer)]})
        plain.append({"question": question, "answer": answer, "id": i})
        conversational.append({"prompt": [SYSTEM, turn("user", question)], "completion": [turn("assistant", answer)]})
    for name, rows in (("messages", messages), ("plain", plain), ("conversational", conversational)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def finetune(tmp_path, base_dir, source, run_name, *overrides):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"base": str(base_dir), "sparse_gin": {"d_gnn": 9}},  # LoRA r = 3 matches it
        "data": {"task": "instruct", "source": str(source), "max_length": 160, "max_val_examples": 4},
        "training": {"output_root": str(tmp_path), "run_name": run_name, "max_steps": 2,
                     "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
                     "gradient_accumulation_steps": 1, "warmup_steps": 0, "learning_rate": 1.0e-2,
                     "logging_steps": 1, "eval_steps": 2, "save_steps": 2},
    }))
    assert main(["finetune", "--config", str(config), *(a for o in overrides for a in ("--set", o))]) == 0
    return tmp_path / run_name


@pytest.mark.parametrize("method", ["sparse-gin", "lora"])
@pytest.mark.parametrize(
    "name, columns, template",
    [("messages", "{messages: conversation}", "chat"), ("plain", "{prompt: question, completion: answer}", "paper"),
     ("conversational", "{}", "chat")],
)
def test_fine_tuning_on_each_shape_from_the_cli(tmp_path, base_dir, datasets, capfd, method, name, columns,
                                                template):
    run_dir = finetune(tmp_path, base_dir, datasets / f"{name}.jsonl", "run", f"model.method={method}",
                       f"data.columns={columns}")
    notes = capfd.readouterr().err
    format_name = "prompt_completion" if name != "messages" else "messages"
    assert f"read as {format_name} rows (data.format: auto)" in notes
    settings = load_run_settings(run_dir / "config.yaml")
    assert settings.task().template == template  # chat for conversations, paper for plain strings
    start = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert start["method"] == method and start["train_examples"] > 0

    result = evaluate_run(run_dir, generate=2, max_new_tokens=6)
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert result.loss == pytest.approx([e for e in evals if e["event"] == "eval"][-1]["val_loss"], rel=1e-5)
    assert result.scores == {} and result.notes["generated_rows"] == 2  # any dataset: samples for a look
    samples = [json.loads(line) for line in (run_dir / "eval_val_generations.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s["reference"].endswith("legs.") for s in samples)


def test_generate_on_a_sparse_gin_run_one_prompt_a_file_and_a_chat(tmp_path, base_dir, datasets, capsys,
                                                                   monkeypatch):
    run_dir = finetune(tmp_path, base_dir, datasets / "messages.jsonl", "chat_run", "data.columns={messages: "
                       "conversation}")
    capsys.readouterr()
    generator = RunGenerator(run_dir)
    _, model, tokenizer = load_run(run_dir)

    # One prompt: the user's turn in the run's (chat) template, streamed, greedy.
    assert main(["generate", "--run", str(run_dir), "--prompt", "How many legs do 3 cats have?",
                 "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out.strip()
    prompt = tokenizer.apply_chat_template([turn("user", "How many legs do 3 cats have?")], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    expected = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=8, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    assert printed == tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True).strip()

    # A prompts file: plain prompts and a conversation so far, answered in a batch; the same answers one by one.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "How many legs do 3 cats have?"}) + "\n"
                       + json.dumps({"messages": [SYSTEM, turn("user", "Hi"), turn("assistant", "Nice."),
                                                  turn("user", "Legs of 2 cats?")]}) + "\n")
    assert main(["generate", "--run", str(run_dir), "--prompts", str(prompts), "--max-new-tokens", "8"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "prompts.out.jsonl").read_text().splitlines()]
    assert [r["where"] for r in rows] == ["line 1", "line 2"] and rows[0]["completion"].strip() == printed
    assert isinstance(rows[1]["prompt"], list)

    # A scripted chat: the second turn is generated from the whole history, the first answer included.
    monkeypatch.setattr("sys.stdin", io.StringIO("How many legs do 3 cats have?\nAnd 5 cats?\n"))
    assert main(["generate", "--run", str(run_dir), "--chat", "--max-new-tokens", "8"]) == 0
    transcript = generator.chat(["How many legs do 3 cats have?", "And 5 cats?"], max_new_tokens=8,
                                show=lambda text: None)
    assert [m["role"] for m in transcript] == ["user", "assistant", "user", "assistant"]
    assert transcript[1]["content"] == printed and rows[0]["completion"].strip() == transcript[1]["content"]
    history = generator.encode(transcript[:3])
    assert tokenizer.decode(history).count("<|assistant|>") == 2  # the first answer is in the second prompt
    assert generator.chat(["/reset", "/exit", "never read"], show=lambda text: None) == []
