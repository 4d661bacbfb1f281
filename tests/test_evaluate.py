"""ginformer evaluate on protein runs: loss against the run's own log, label scoring by hand, batched generation
against one-by-one generation, a model wired to answer the labels, held-out bookkeeping, errors, the CLI."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from ginformer.cli import main
from ginformer.data.protein import SEQ_END, ProteinRecord, format_protein_prompt, majority_baseline
from ginformer.data.tokenizer import build_protein_tokenizer, label_token_ids
from ginformer.modeling import GinformerConfig, GinformerForCausalLM
from ginformer.runs.config import load_run_settings
from ginformer.runs.evaluate import evaluate_run, format_evaluation, load_run, unigram_loss
from ginformer.generation import generate_batched
from ginformer.runs.train import train
from ginformer.tasks import Generation, HeldOut, Losses
from ginformer.tasks.protein import ProteinSettings, ProteinTask, score_labels

TINY = [
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.max_position_embeddings=300",
    "data.max_train_examples=16",
    "data.max_val_examples=6",
    "training.run_name=tiny",
    "training.max_steps=4",
    "training.per_device_train_batch_size=4",
    "training.per_device_eval_batch_size=4",
    "training.gradient_accumulation_steps=1",
    "training.warmup_steps=1",
    "training.learning_rate=1.0e-3",
    "training.logging_steps=2",
    "training.eval_steps=4",
    "training.save_steps=4",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_protein_tokenizer()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return train(load_run_settings(None, [*TINY, f"training.output_root={root}"], side="scratch"))


def label_pairs(model, tokenizer, sequences, batch_size):
    """The two token ids the model generates greedily after each sequence's prompt."""
    prompts = [tokenizer(format_protein_prompt(s), add_special_tokens=False)["input_ids"] for s in sequences]
    new = generate_batched(model, tokenizer, prompts, max_new_tokens=2, batch_size=batch_size)
    return [tuple((ids + [tokenizer.pad_token_id] * 2)[:2]) for ids in new]


def score(model, tokenizer, records):
    """The protein task's scores of `model` on `records` (trained on the same records)."""
    held_out = HeldOut("val", [], records, records, np.zeros(1), 0)
    return ProteinTask(ProteinSettings()).score(model, tokenizer, held_out, Generation(None, None, 2), Losses(1, 1))


def test_evaluate_run_scores_the_validation_split_with_the_baseline_beside_it(run_dir):
    result = evaluate_run(run_dir)
    settings = load_run_settings(run_dir / "config.yaml")
    train_records, val = settings.task().splits()
    assert result.data == "val" and result.examples == len(val) == 6 and result.trained_on == 0
    assert (result.task, result.model) == ("protein", "gin attention, 2 layers × 2 heads")

    # The loss is the run's own last validation loss: same records, same tokens, same weighting.
    last_eval = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last_eval = [e for e in last_eval if e["event"] == "eval"][-1]
    assert result.loss == pytest.approx(last_eval["val_loss"], rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))

    scores = result.scores
    for rate in (scores["primary"], scores["secondary"], scores["both"], scores["non_label"]):
        assert 0.0 <= rate <= 1.0
    assert scores["both"] <= min(scores["primary"], scores["secondary"])
    majority = majority_baseline(train_records, val)
    assert result.baselines == {"primary": majority.primary_accuracy, "secondary": majority.secondary_accuracy,
                                "both": majority.pair_accuracy}
    assert result.notes["majority"]["pair"] == list(majority.pair)

    saved = json.loads((run_dir / "eval_val.json").read_text())
    assert saved["loss"] == result.loss and saved["scores"]["both"] == scores["both"]
    assert saved["baselines"]["both"] == majority.pair_accuracy
    table = format_evaluation(result, ProteinTask.columns)
    assert "primary acc" in table and f"{majority.primary_accuracy:.3f}" in table


def test_evaluate_run_on_a_file_counts_proteins_the_run_trained_on(run_dir, tmp_path):
    train_records, _ = load_run_settings(run_dir / "config.yaml").task().splits()
    path = tmp_path / "mixed.csv"
    rows = [(train_records[0].sequence, "H" * len(train_records[0].sequence)), ("MKVLAAGIVG", "HHHHEEEE~~"),
            ("ACDEFGHIK", "EEEE~~~SS")]
    path.write_text("Sequence,Secondary_structure\n" + "".join(f"{s},{d}\n" for s, d in rows))
    with pytest.warns(UserWarning, match="1 of 3 evaluated rows are in the run's training split"):
        result = evaluate_run(run_dir, path)
    assert (result.examples, result.trained_on) == (3, 1)
    assert json.loads((run_dir / "eval_mixed.json").read_text())["examples"] == 3
    with pytest.warns(UserWarning, match="1 of 2"):
        assert evaluate_run(run_dir, path, limit=2, write=False).examples == 2


def test_score_labels_by_hand(tokenizer):
    ah, bs, unstructured = label_token_ids(tokenizer)[:3]
    residue = tokenizer.convert_tokens_to_ids("A")
    records = [ProteinRecord("AAA", "AH", "BS", None, 0), ProteinRecord("CCC", "BS", "AH", None, 1),
               ProteinRecord("DDD", "AH", "UNSTRUCTURED", None, 2), ProteinRecord("EEE", "AH", "AH", None, 3)]
    generated = [(ah, bs), (bs, residue), (ah, bs), (residue, tokenizer.eos_token_id)]
    scores = score_labels(generated, records, label_token_ids(tokenizer))
    # primary right for rows 0, 1, 2; secondary right for row 0 only; 3 of the 8 tokens are no class token.
    assert scores == {"primary": 0.75, "secondary": 0.25, "both": 0.25, "non_label": 3 / 8}
    with pytest.raises(ValueError, match="2 generations for 4 records"):
        score_labels(generated[:2], records, label_token_ids(tokenizer))


def test_unigram_loss_by_hand():
    from ginformer.data.batches import target_counts

    train = [{"input_ids": [], "labels": [3, 1, 1, 2]}]  # targets skip the first token: 1, 1, 2
    val = [{"input_ids": [], "labels": [0, 1, 3, -100]}]  # scored: 1, 3
    assert target_counts(train, 4).tolist() == [0, 2, 1, 0] and target_counts(val, 4).tolist() == [0, 1, 0, 1]
    # add-one smoothing over a vocabulary of 4: p(1) = 3/7, p(3) = 1/7
    expected = -(math.log(3 / 7) + math.log(1 / 7)) / 2
    assert unigram_loss(target_counts(train, 4), target_counts(val, 4)) == pytest.approx(expected)


def labelling_model(tokenizer) -> GinformerForCausalLM:
    """A model whose layers add nothing and whose head maps <|/sequence|> -> <|AH|> and <|AH|> -> <|BS|>:
    it answers every protein with (AH, BS), through the real generate path."""
    vocab = len(tokenizer)
    config = GinformerConfig(
        vocab_size=vocab, hidden_size=vocab, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
        num_key_value_heads=1, attention_kind="standard", pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False,
    )
    model = GinformerForCausalLM(config).eval()
    ah, bs = label_token_ids(tokenizer)[:2]
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))  # token i is the unit vector e_i
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[ah, tokenizer.convert_tokens_to_ids(SEQ_END)] = 1.0
        model.lm_head.weight[bs, ah] = 1.0
    return model


def test_a_model_that_answers_the_labels_scores_them(tokenizer):
    model = labelling_model(tokenizer)
    records = [ProteinRecord("MKV", "AH", "BS", None, 0), ProteinRecord("MKVLLAG", "AH", "BS", None, 1),
               ProteinRecord("ACDEFGHIKLMN", "AH", "BS", None, 2)]
    ah, bs = label_token_ids(tokenizer)[:2]
    generated = label_pairs(model, tokenizer, [r.sequence for r in records], batch_size=3)
    assert generated == [(ah, bs)] * 3  # left padding of the shorter prompts does not change the answer
    scores = score(model, tokenizer, records)
    assert scores.values == {"primary": 1.0, "secondary": 1.0, "both": 1.0, "non_label": 0.0}
    assert scores.baselines == {"primary": 1.0, "secondary": 1.0, "both": 1.0}  # every record is (AH, BS)
    wrong = [ProteinRecord("MKV", "BS", "AH", None, 0)] + records[1:]
    scores = score(model, tokenizer, wrong)
    assert [scores.values[k] for k in ("primary", "secondary", "both")] == [2 / 3, 2 / 3, 2 / 3]


@pytest.mark.parametrize("kind", ["standard", "gin", "pna"])
def test_batched_left_padded_generation_equals_one_by_one(tokenizer, kind):
    torch.manual_seed(0)
    config = GinformerConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, attention_kind=kind, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, initializer_range=0.5,
    )
    model = GinformerForCausalLM(config).eval()
    sequences = ["MKV", "ACDEFGHIKLMNPQ", "WWYV", "MKVLAAGIVGLLLA", "C"]
    batched = label_pairs(model, tokenizer, sequences, batch_size=5)
    alone = [label_pairs(model, tokenizer, [s], batch_size=1)[0] for s in sequences]
    assert batched == alone
    assert len(set(batched)) > 1  # the check means something only if the answers differ


def test_missing_run_model_or_file_is_a_clear_error(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        evaluate_run(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="data file not found"):
        evaluate_run(run_dir, tmp_path / "missing.csv")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished, ignore=shutil.ignore_patterns("model"))
    with pytest.raises(FileNotFoundError, match="has no model/.*ginformer pretrain.*--resume"):
        load_run(unfinished)
    with pytest.raises(ValueError, match="--generate does not apply to a protein run"):
        evaluate_run(run_dir, generate=3)


def test_corrupt_weights_are_a_clear_error_naming_the_file(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    weights = broken / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated copy
    with pytest.raises(ValueError, match=r"model: model.safetensors is truncated or corrupt: train the run again"):
        load_run(broken)
    assert main(["evaluate", "--run", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truncated or corrupt" in err


def test_cli_evaluate_prints_the_table_and_reports_errors(run_dir, capsys, tmp_path):
    assert main(["evaluate", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "unigram" in out and "both acc" in out and "eval_val.json" in out
    assert main(["evaluate", "--run", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
