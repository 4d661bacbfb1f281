"""The text task end to end: any corpus, trained from scratch with the char, byte or SmolLM2 tokenizer, or with a
Sparse-GIN adapter on a pretrained model; bits per character beside the unigram baseline; the block size checked
against the model's positions; `ginformer generate`; a comparison of attention kinds on text."""

import io
import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from ginformer.cli import main
from ginformer.data.text import PackedBlocks
from ginformer.runs.compare import run_comparison
from ginformer.runs.compare_config import compare_settings_from_dict
from ginformer.runs.config import load_run_settings
from ginformer.runs.evaluate import evaluate_run, load_run
from ginformer.errors import ConfigError
from ginformer.runs.train import train
from ginformer.tasks.text import TextSettings, TextTask

LINES = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder of three .txt documents."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (root / f"part{i}.txt").write_text("\n".join(LINES[i:] + LINES[:i]) * 4 + "\n")
    return root


def tiny(tmp_path, source, *overrides, side="scratch"):
    model = ["model.num_hidden_layers=2", "model.num_attention_heads=2", "model.hidden_size=32",
             "model.intermediate_size=64", "model.max_position_embeddings=16"] if side == "scratch" else []
    return load_run_settings(None, side=side, overrides=[
        *model,
        "data.task=text",
        f"data.source={source}",
        "data.block_size=16",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"training.output_root={tmp_path}",
        "training.run_name=text",
        "training.max_steps=4",
        "training.per_device_train_batch_size=4",
        "training.per_device_eval_batch_size=8",
        "training.gradient_accumulation_steps=1",
        "training.warmup_steps=0",
        "training.learning_rate=1.0e-2",
        "training.logging_steps=1",
        "training.eval_steps=2",
        "training.save_steps=4",
        *overrides,
    ])


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def unigram_by_hand(train_blocks, val_blocks, vocab):
    """Cross-entropy of add-one-smoothed training target frequencies on the validation targets, block by block."""
    counts = np.zeros(vocab)
    for block in train_blocks:
        for token in block["labels"][1:]:
            counts[token] += 1
    targets = [t for block in val_blocks for t in block["labels"][1:]]
    return -np.mean([math.log((counts[t] + 1) / (counts.sum() + vocab)) for t in targets])


@pytest.fixture(scope="module")
def char_run(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("runs")
    return train(tiny(root, corpus))


def test_a_char_run_trains_on_a_folder_and_reports_bits_per_character(char_run, corpus):
    settings = load_run_settings(char_run / "config.yaml")
    corpus_ids = settings.task().tokenized("char")
    metrics = read_metrics(char_run)
    train_blocks, val_blocks = PackedBlocks(corpus_ids.train.ids, 16), PackedBlocks(corpus_ids.val.ids, 16)
    assert (metrics[0]["train_examples"], metrics[0]["val_examples"]) == (len(train_blocks), len(val_blocks))

    tokenizer = AutoTokenizer.from_pretrained(char_run / "model")  # the char vocabulary is saved with the run
    characters = set("".join((corpus / f"part{i}.txt").read_text() for i in range(3)))
    assert set(tokenizer.get_vocab()) == characters | {"<|endoftext|>", "<|pad|>", "<|unk|>"}

    result = evaluate_run(char_run)
    last_eval = [e for e in metrics if e["event"] == "eval"][-1]
    assert result.loss == pytest.approx(last_eval["val_loss"], rel=1e-5)
    assert (result.examples, result.trained_on) == (len(val_blocks), 0)
    # One token per character (and per separator): bits per character are the loss in bits.
    assert result.notes["tokens_per_character"] == 1.0
    assert result.scores["bits_per_char"] == pytest.approx(result.loss / math.log(2))
    unigram = unigram_by_hand(train_blocks, val_blocks, len(tokenizer))
    assert math.log(result.unigram_perplexity) == pytest.approx(unigram, rel=1e-6)
    assert result.baselines["bits_per_char"] == pytest.approx(unigram / math.log(2), rel=1e-6)


@pytest.mark.parametrize("tokenizer", ["byte", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_byte_and_smollm2_tokenizers_give_bits_per_character_on_the_same_scale(tmp_path, corpus, tokenizer):
    run_dir = train(tiny(tmp_path, corpus, f"data.tokenizer={tokenizer}", "training.max_steps=2"))
    result = evaluate_run(run_dir)
    val = load_run_settings(run_dir / "config.yaml").task().tokenized(load_run(run_dir)[2]).val
    per_character = len(val.ids) / val.characters
    assert (per_character == 1.0) == (tokenizer == "byte")  # the corpus is ASCII: a byte is a character
    assert per_character < 1.0 or tokenizer == "byte"  # SmolLM2 packs several characters in a token
    assert result.scores["bits_per_char"] == pytest.approx(result.loss * per_character / math.log(2))


def test_a_block_longer_than_the_models_positions_is_refused_before_anything_is_written(tmp_path, corpus):
    settings = tiny(tmp_path, corpus, "data.block_size=32")
    with pytest.raises(ConfigError, match="longest example has 32 tokens but the model has 16 positions"):
        train(settings)
    assert not settings.run_dir.exists()


def test_evaluate_another_file_but_not_the_training_corpus(char_run, corpus, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("\n".join(reversed(LINES)) * 2)
    result = evaluate_run(char_run, other, write=False)
    assert result.data == str(other) and result.examples == math.ceil(len(other.read_text()) / 16)
    trained_on = TextTask(TextSettings(source=str(other)))
    with pytest.raises(ValueError, match="other.txt is the run's training corpus; leave out --data"):
        trained_on.held_out(load_run(char_run)[2], other, None)
    with pytest.raises(ValueError, match="--generate does not apply to a text run"):
        evaluate_run(char_run, generate=2)


def greedy_by_hand(model, ids, new_tokens, window):
    """Greedy decoding without a cache, reading at most the last `window` tokens (nanoGPT's sampling loop)."""
    ids = list(ids)
    for _ in range(new_tokens):
        with torch.no_grad():
            logits = model(torch.tensor([ids[-window:]])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids


def test_generate_streams_greedy_and_seeded_samples(char_run, capsys):
    _, model, tokenizer = load_run(char_run)
    prompt = tokenizer("To be", add_special_tokens=False)["input_ids"]
    for new_tokens in (10, 30):  # within the 16-token blocks the model trained on, and beyond them
        assert main(["generate", "--run", str(char_run), "--prompt", "To be", "--max-new-tokens", str(new_tokens)]) == 0
        expected = greedy_by_hand(model, prompt, new_tokens, window=16)[len(prompt):]
        if tokenizer.eos_token_id in expected:
            expected = expected[: expected.index(tokenizer.eos_token_id) + 1]
        assert capsys.readouterr().out.rstrip("\n") == tokenizer.decode(expected, skip_special_tokens=True)
    sampled = []
    for _ in range(2):
        argv = ["generate", "--run", str(char_run), "--prompt", "To be", "--max-new-tokens", "12",
                "--temperature", "1.5", "--top-k", "20", "--seed", "7"]
        assert main(argv) == 0
        sampled.append(capsys.readouterr().out)
    assert sampled[0] == sampled[1]  # the seed fixes the sample
    assert main(["generate", "--run", str(char_run), "--prompt", "x", "--temperature", "0"]) == 2
    assert "temperature must be > 0" in capsys.readouterr().err
    assert main(["generate", "--run", str(char_run), "--prompt", "x", "--batch-size", "4"]) == 2
    assert "--batch-size applies to --prompts only" in capsys.readouterr().err


def test_generate_refuses_conversations_on_a_text_run(char_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    assert main(["generate", "--run", str(char_run), "--chat"]) == 2
    assert "--chat needs an instruction run; a text run continues text" in capsys.readouterr().err
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    assert main(["generate", "--run", str(char_run), "--prompts", str(prompts)]) == 2
    assert "need an instruction run" in capsys.readouterr().err


def test_sparse_gin_on_a_pretrained_model_learns_more_text(tmp_path, corpus, base_dir):
    settings = tiny(tmp_path, corpus, f"model.base={base_dir}", "model.sparse_gin.d_gnn=8", side="pretrained")
    run_dir = train(settings)
    start = read_metrics(run_dir)[0]
    assert start["method"] == "sparse-gin" and start["graph"]["lambda"] == [0.0, 0.0]
    result = evaluate_run(run_dir)
    assert result.model == f"sparse-gin on {base_dir}" and result.scores["bits_per_char"] > 0


def test_a_comparison_of_attention_kinds_on_text(tmp_path, corpus):
    base = tiny(tmp_path, corpus, "training.max_steps=2")
    raw = {
        "name": "text_cmp",
        "seeds": [0],
        "target_params": 30_000,
        "variants": {"standard": {"attention_kind": "standard"}, "gin": {"attention_kind": "gin"}},
        "model": {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                  "max_position_embeddings": 16},
        "data": dict(vars(base.data)),
        "training": {k: v for k, v in vars(base.training).items() if k not in ("run_name", "seed")},
    }
    root = run_comparison(compare_settings_from_dict(raw))
    summary = (root / "summary.md").read_text()
    assert "bits/char" in summary and "| standard" in summary and "| gin" in summary
    assert (root / "figures" / "score_bits_per_char.png").is_file()
