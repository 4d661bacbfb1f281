"""The generated tasks, mqar and khop: seeded generation, held-out examples, labels against a naive re-derivation
from the papers' definitions, loss only on the answers, accuracy on hand-built predictions, settings that cannot
be generated refused by key, and `ginformer pretrain` + `ginformer evaluate` end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ginformer.cli import main
from ginformer.data.batches import IGNORE_INDEX, CausalLMCollator
from ginformer.data.synthetic import SYMBOLS, hop_targets, label_accuracy
from ginformer.errors import ConfigError
from ginformer.modeling import GinformerConfig, GinformerForCausalLM
from ginformer.runs.compare_config import load_compare_settings
from ginformer.runs.config import load_run_settings
from ginformer.tasks import TASKS, Generation, Losses
from ginformer.tasks.khop import KHopSettings, KHopTask
from ginformer.tasks.mqar import MQARSettings, MQARTask

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def mqar(**changes):
    values = {"sequence_length": 32, "num_kv_pairs": 4, "vocab_size": 64, "num_train_examples": 300,
              "num_val_examples": 100, **changes}
    return MQARTask(MQARSettings(**values))


def khop(**changes):
    values = {"sequence_length": 24, "alphabet_size": 4, "hops": [0, 1, 2, 3], "num_train_examples": 300,
              "num_val_examples": 200, **changes}
    return KHopTask(KHopSettings(**values))


TASK_BUILDERS = {"mqar": mqar, "khop": khop}


# ---------------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("name", TASK_BUILDERS)
def test_examples_are_the_same_for_a_seed_and_differ_across_seeds(name):
    build = TASK_BUILDERS[name]
    first, again, other = build().examples(), build().examples(), build(seed=1).examples()
    for split in (0, 1):
        assert np.array_equal(first[split].input_ids, again[split].input_ids)
        assert np.array_equal(first[split].labels, again[split].labels)
        assert not np.array_equal(first[split].input_ids, other[split].input_ids)


@pytest.mark.parametrize("name", TASK_BUILDERS)
def test_validation_examples_come_from_their_own_stream_and_none_was_trained_on(name):
    task = TASK_BUILDERS[name]()
    train, val = task.examples()
    tokenizer = task.tokenizer(None)
    trained = {row.tobytes() for row in train.input_ids}
    assert not any(row.tobytes() in trained for row in val.input_ids)
    assert task.held_out(tokenizer, None, None).trained_on == 0
    # The validation examples do not depend on how many training examples are drawn.
    assert np.array_equal(TASK_BUILDERS[name](num_train_examples=600).examples()[1].input_ids, val.input_ids)


def test_validation_examples_equal_to_training_ones_are_counted_not_assumed_away():
    """Two symbols and one after the hop token: every sequence is "ab" or "ba", so validation repeats training."""
    task = khop(sequence_length=3, alphabet_size=2, hops=[0], num_train_examples=20, num_val_examples=10)
    held_out = task.held_out(task.tokenizer(None), None, None)
    assert held_out.trained_on == 10


# ---------------------------------------------------------------------------------------------------- labels


def mqar_answers_by_hand(ids, n, vocab):
    """What each labelled position must hold, re-derived from the token ids alone: the first 2n tokens are the
    pairs; afterwards every non-zero token is a query (fillers are 0) and its value is the label after it."""
    pairs = {int(ids[2 * i]): int(ids[2 * i + 1]) for i in range(n)}
    assert len(pairs) == n and all(1 <= k < vocab // 2 for k in pairs)
    assert len(set(pairs.values())) == n and all(vocab // 2 <= v < vocab for v in pairs.values())
    answers = {t + 1: pairs[int(ids[t])] for t in range(2 * n, len(ids)) if ids[t] != 0}
    assert sorted(int(ids[t - 1]) for t in answers) == sorted(pairs)  # each key is queried exactly once
    return answers


@pytest.mark.parametrize("changes", [{}, {"power_a": 1.0}, {"sequence_length": 17, "num_kv_pairs": 4}])
def test_mqar_labels_are_the_values_of_the_queried_keys_and_nothing_else(changes):
    task = mqar(**changes)
    s = task.settings
    for examples in task.examples():
        for ids, labels in zip(examples.input_ids, examples.labels):
            answers = mqar_answers_by_hand(ids, s.num_kv_pairs, s.vocab_size)
            assert {t: int(labels[t]) for t in np.flatnonzero(labels != IGNORE_INDEX)} == answers


def test_mqar_random_fillers_keep_the_labels_on_the_queries():
    task = mqar(random_non_queries=True)
    plain = mqar()
    for noisy, clean in zip(task.examples(), plain.examples()):
        labelled = noisy.labels != IGNORE_INDEX
        assert labelled.sum(axis=1).tolist() == [4] * len(noisy)
        assert (noisy.input_ids == 0).mean() < 0.1  # the fillers are random tokens, not 0
        # The label after a query is the value paired with the key just before it, wherever fillers fall.
        for ids, labels in zip(noisy.input_ids, noisy.labels):
            pairs = {int(ids[2 * i]): int(ids[2 * i + 1]) for i in range(4)}
            for t in np.flatnonzero(labels != IGNORE_INDEX):
                assert labels[t] == pairs[int(ids[t - 1])] and t - 1 >= 8


def mqar_gap_shares(power_a):
    task = mqar(power_a=power_a, num_train_examples=2000)
    labels = task.examples()[0].labels
    gaps = (np.argwhere(labels != IGNORE_INDEX)[:, 1] - 1 - 8) // 2  # the query's offset after the pairs, halved
    return np.bincount(gaps, minlength=12) / len(gaps)


def test_mqar_query_gaps_follow_zoology_power_law():
    """p(g) ∝ (g + 1)^(a − 1) for the first draw; a = 1 is uniform over the 12 gaps of this sequence."""
    assert mqar_gap_shares(1.0) == pytest.approx(np.full(12, 1 / 12), abs=0.02)
    steep = mqar_gap_shares(0.01)
    assert steep[0] > 2 * steep[3] > 4 * steep[11]


def khop_by_hand(symbols, k):
    """hop_k of a symbol sequence, literally as Sanford et al.'s Definition 4.1 writes it (1-indexed, 0 for none):
    find¹(i) = max({0} ∪ {j ≤ i : X_{j−1} = X_i}), findᵏ = find¹(findᵏ⁻¹), hop_k(X)_i = X_{findᵏ(i)} or None."""
    x = [None, *symbols]  # x[1..N]

    def find1(i):
        return max([0] + [j for j in range(2, i + 1) if x[j - 1] == x[i]]) if i > 0 else 0

    answers = []
    for i in range(1, len(x)):
        found = i
        for _ in range(k):
            found = find1(found)
        answers.append(x[found] if found else None)
    return answers


def test_hop_targets_on_the_papers_example():
    """baebcabebdea: induction heads (k = 1) complete the last a with b, two hops with c (the paper's example)."""
    symbols = np.array([[SYMBOLS.index(c) for c in "baebcabebdea"]])
    last = {k: hop_targets(symbols, np.array([k]))[0, -1] for k in (0, 1, 2)}
    assert last == {0: SYMBOLS.index("a"), 1: SYMBOLS.index("b"), 2: SYMBOLS.index("c")}


def test_khop_labels_are_hop_k_of_each_symbol_by_the_definition():
    task = khop(hops=[0, 1, 2, 3, 5])
    tokenizer = task.tokenizer(None)
    for examples in task.examples():
        for ids, labels in zip(examples.input_ids, examples.labels):
            k = int(tokenizer.convert_ids_to_tokens(int(ids[0]))[len("<|hops="):-2])
            symbols = ids[1:-1].tolist()
            assert tokenizer.convert_ids_to_tokens(int(ids[-1])) == "<|end|>"
            assert all(a != b for a, b in zip(symbols, symbols[1:]))  # no symbol twice in a row
            expected = [IGNORE_INDEX if a is None else a for a in khop_by_hand(symbols, k)]
            # The symbol at position p answers at label p + 1; the hop token answers nothing.
            assert labels[:2].tolist() == [IGNORE_INDEX, IGNORE_INDEX]
            assert labels[2:].tolist() == expected


def test_khop_hop_counts_are_mixed_uniformly():
    task = khop(num_train_examples=2000)
    hops = task.hops_of(task.examples()[0])
    assert np.bincount(hops, minlength=4) / len(hops) == pytest.approx(np.full(4, 0.25), abs=0.04)


@pytest.mark.parametrize("name", TASK_BUILDERS)
def test_the_loss_covers_the_answers_only(name):
    """Through the features Trainer gets and a model's own loss: it is the mean cross-entropy of the model's logits
    over the labelled positions alone."""
    task = TASK_BUILDERS[name]()
    tokenizer = task.tokenizer(None)
    splits = task.datasets(tokenizer)
    batch = CausalLMCollator(tokenizer.pad_token_id)([splits.train[i] for i in range(8)])
    config = GinformerConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    output = GinformerForCausalLM(config)(**batch)
    targets = batch["labels"][:, 1:]
    answered = targets != IGNORE_INDEX
    assert answered.any() and not answered.all()
    by_hand = torch.nn.functional.cross_entropy(output.logits[:, :-1][answered], targets[answered])
    assert output.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------------- accuracy


class Answers(torch.nn.Module):
    """A stand-in model whose most likely next token is `answer(ids)`: logits one-hot on it at every position."""

    def __init__(self, answer, vocab):
        super().__init__()
        self.answer, self.vocab = answer, vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so the scorer finds a device

    def forward(self, input_ids):
        predicted = self.answer(input_ids.numpy())  # (B, T): the token predicted at each position
        logits = torch.nn.functional.one_hot(torch.as_tensor(predicted), self.vocab).float()

        class Output:
            pass

        output = Output()
        output.logits = logits
        return output


def oracle(examples):
    """Predicts, at each position, the label one to the right: a perfect predictor of these examples."""
    labels = {row.tobytes(): lab for row, lab in zip(examples.input_ids, examples.labels)}
    return lambda ids: np.stack([np.append(np.maximum(labels[row.tobytes()][1:], 0), 0) for row in ids])


def score(task, model):
    tokenizer = task.tokenizer(None)
    held_out = task.held_out(tokenizer, None, None)
    return task.score(model, tokenizer, held_out, Generation(None, None, 32), Losses(1.0, 2.0))


def test_label_accuracy_by_hand():
    labels = np.array([[IGNORE_INDEX, 5, IGNORE_INDEX, 7], [IGNORE_INDEX, IGNORE_INDEX, 5, IGNORE_INDEX]])
    assert label_accuracy(labels.copy(), labels) == 1.0
    assert label_accuracy(np.full_like(labels, 5), labels) == pytest.approx(2 / 3)
    assert label_accuracy(np.zeros_like(labels), labels) == 0.0
    with pytest.raises(ValueError, match="no labelled position"):
        label_accuracy(labels, np.full_like(labels, IGNORE_INDEX))


@pytest.mark.parametrize("name", TASK_BUILDERS)
def test_a_perfect_predictor_scores_one_and_a_constant_one_the_best_constant_baseline(name):
    task = TASK_BUILDERS[name](num_train_examples=2000, num_val_examples=600)
    tokenizer = task.tokenizer(None)
    val = task.examples()[1]
    perfect = score(task, Answers(oracle(val), len(tokenizer)))
    assert all(value == 1.0 for value in perfect.values.values())
    assert perfect.notes["published"] == task.reference

    held_out = task.held_out(tokenizer, None, None)
    majority = int(np.argmax(held_out.train_counts))
    constant = score(task, Answers(lambda ids: np.full(ids.shape, majority), len(tokenizer)))
    assert constant.values == constant.baselines == perfect.baselines
    answers = task.chance_levels()["chance"]
    chance = 1 / answers
    assert constant.notes["chance"] == f"1/{answers} = {chance:.4f}"
    # The best constant answer is about as good as a uniform guess among the possible answers: within four
    # binomial standard deviations of it on this many answers.
    scored = int((val.labels != IGNORE_INDEX).sum())
    assert abs(constant.values["accuracy"] - chance) < 4 * (chance * (1 - chance) / scored) ** 0.5


def test_khop_reports_the_accuracy_of_each_hop_count():
    task = khop()
    val = task.examples()[1]
    hops = task.hops_of(val)

    def right_for_small_k(ids):
        predicted = oracle(val)(ids)
        wrong = (ids[:, :1] - task.settings.alphabet_size) >= 2  # hop counts 2 and 3 answer one symbol too far
        return np.where(wrong, (predicted + 1) % task.settings.alphabet_size, predicted)

    values = score(task, Answers(right_for_small_k, len(task.tokenizer(None)))).values
    assert (values["accuracy_k0"], values["accuracy_k1"], values["accuracy_k2"], values["accuracy_k3"]) == (
        1.0, 1.0, 0.0, 0.0)
    assert values["accuracy_max_hops"] == 0.0
    answered = val.labels != IGNORE_INDEX
    assert values["accuracy"] == pytest.approx(answered[hops <= 1].sum() / answered.sum())


# ---------------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.task=mqar", "data.sequence_length=32", "data.num_kv_pairs=9"],
         r"data\.num_kv_pairs=9 is not allowed: expected at most data\.sequence_length / 4 = 8.*lower num_kv_pairs "
         r"or raise sequence_length"),
        (["data.task=mqar", "data.num_kv_pairs=8", "data.vocab_size=16"],
         r"data\.vocab_size=16 is not allowed: expected at least 2 × 8 \+ 2 = 18.*raise vocab_size or lower "
         r"num_kv_pairs"),
        (["data.task=mqar", "data.power_a=0"], r"data\.power_a=0\.0 is not allowed: expected > 0"),
        (["data.task=mqar", "data.num_kv_pairs=two"], r"data\.num_kv_pairs='two' is not allowed: expected an integer"),
        (["data.task=khop", "data.alphabet_size=1"], r"data\.alphabet_size=1 is not allowed: expected in \[2, 26\]"),
        (["data.task=khop", "data.hops=[1, 1]"], r"data\.hops=\[1, 1\] is not allowed: expected a non-empty list"),
        (["data.task=khop", "data.hops=[]"], r"data\.hops=\[\] is not allowed"),
        (["data.task=mqar", "data.hops=[1]"], r"unknown key in 'data': 'data\.hops'.*task 'mqar'"),
        (["data.task=mqar", "model.base=smollm2"], r"needs a model trained from scratch"),
    ],
)
def test_settings_that_cannot_be_generated_are_refused_naming_the_key_and_the_fix(overrides, message):
    side = "pretrained" if any(o.startswith("model.base") for o in overrides) else None
    with pytest.raises(ConfigError, match=message):
        load_run_settings(None, overrides, side=side)


def test_a_hop_count_with_no_answer_in_the_validation_split_is_refused():
    """Sixteen hops along 7 symbols of a 4-letter alphabet never land: the run would report no accuracy for it."""
    task = khop(sequence_length=8, hops=[1, 16])
    with pytest.raises(ConfigError, match=r"data\.hops=\[1, 16\]: no validation sequence has a defined 16-hop "
                                          r"answer.*raise sequence_length or num_val_examples, or drop 16"):
        task.examples()


@pytest.mark.parametrize("name", ["mqar_cpu", "khop_cpu"])
def test_the_bundled_cpu_configs_are_standard_attention_on_their_task_and_fit_the_model(name):
    settings = load_run_settings(CONFIGS / f"{name}.yaml", side="scratch")
    assert settings.data.task == name.removesuffix("_cpu") and settings.model.attention_kind == "standard"
    longest = settings.task().generate(1, np.random.default_rng(0)).input_ids.shape[1]
    assert longest == settings.model.max_position_embeddings


@pytest.mark.parametrize("name", ["mqar_compare_cpu", "mqar_compare_hard_cpu", "khop_compare_cpu",
                                  "khop_compare_hard_cpu"])
def test_the_compare_configs_pit_standard_gin_and_pna_against_each_other_on_three_seeds(name):
    settings = load_compare_settings(CONFIGS / f"{name}.yaml")
    assert set(settings.variants) == {"standard", "gin", "pna"} and settings.seeds == [0, 1, 2]
    run = settings.run_settings("gin", 0)
    assert run.data.task == name.split("_")[0]
    longest = run.task().generate(1, np.random.default_rng(0)).input_ids.shape[1]
    assert longest <= run.model.max_position_embeddings


def test_evaluating_another_file_and_unknown_prompt_tokens_are_refused(tmp_path):
    task = mqar()
    tokenizer = task.tokenizer(None)
    with pytest.raises(ConfigError, match=r"--data .*rows.jsonl: a mqar run generates its examples"):
        task.held_out(tokenizer, tmp_path / "rows.jsonl", None)
    assert task.prompt_ids("3 40 0 3", tokenizer) == [3, 40, 0, 3]
    with pytest.raises(ConfigError, match=r"--prompt: 'x' is no token of a mqar run; its tokens are the integers "
                                          r"0 … 63"):
        task.prompt_ids("3 x 0", tokenizer)
    hop = khop()
    hop_tokenizer = hop.tokenizer(None)
    assert hop.prompt_ids("<|hops=2|>abca", hop_tokenizer) == [4 + 2, 0, 1, 2, 0]
    with pytest.raises(ConfigError, match=r"--prompt: 'e' is no token of a khop run; its tokens are the symbols "
                                          r"abcd"):
        hop.prompt_ids("<|hops=2|>abe", hop_tokenizer)


# ---------------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", TASK_BUILDERS)
def test_pretrain_then_evaluate_writes_accuracy_beside_its_baselines(tmp_path, capsys, name):
    data = {"mqar": {"task": "mqar", "sequence_length": 16, "num_kv_pairs": 2, "vocab_size": 32},
            "khop": {"task": "khop", "sequence_length": 12, "hops": [1, 2]}}[name]
    config = {
        "model": {"attention_kind": "gin", "num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 16,
                  "intermediate_size": 32, "max_position_embeddings": 16},
        "data": {**data, "num_train_examples": 64, "num_val_examples": 32},
        "training": {"run_name": name, "output_root": str(tmp_path), "max_steps": 3, "warmup_steps": 0,
                     "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
                     "gradient_accumulation_steps": 1, "logging_steps": 1, "eval_steps": 3, "save_steps": 3},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pretrain", "--config", str(path)]) == 0
    assert main(["evaluate", "--run", str(tmp_path / name)]) == 0
    printed = capsys.readouterr().out
    evaluation = json.loads((tmp_path / name / "eval_val.json").read_text())
    assert evaluation["task"] == name and evaluation["examples"] == 32 and evaluation["trained_on"] == 0
    assert 0.0 <= evaluation["scores"]["accuracy"] <= 1.0
    assert set(evaluation["baselines"]) >= {c.key for c in TASKS[name].columns}
    assert evaluation["notes"]["published"] == TASKS[name].reference
    assert "accuracy" in printed and "published: " in printed and "chance: 1/" in printed
