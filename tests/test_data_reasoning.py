"""GSM8K and FOLIO (data/reasoning.py): the bundled files, every row read with its reference, bad rows named by
line, FOLIO's story groups, the grouped split, and the answer extraction that scores generations."""

import hashlib
import json
import warnings
from collections import Counter

import pytest

from ginformer.data.instruct import conversation, split_examples
from ginformer.data.reasoning import (
    BUNDLED,
    extract_label,
    folio_user_text,
    gsm8k_extract_flexible,
    gsm8k_extract_strict,
    load_folio,
    load_gsm8k,
    majority_baseline,
    normalize_number,
)
from ginformer.data.rows import bundled_path
from ginformer.errors import DataError, MissingInput


def _raw_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def user(example):
    return example.prompt[-1].content


# ------------------------------------------------------------------------------------------------ bundled files


@pytest.mark.parametrize(
    "name, sha256",
    [
        ("gsm8k", "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
        ("folio", "008d34b750d31fa7f014e953228adf4db81ec34bbda9e7f67c96c60438d1e6b2"),
    ],
)
def test_bundled_files_are_the_documented_upstream_files(name, sha256):
    path = bundled_path(BUNDLED[name])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    assert (path.parent / "SOURCE.md").is_file() and (path.parent / "LICENSE").is_file()


def test_gsm8k_loader_keeps_every_bundled_row_with_its_final_answer(gsm8k):
    raw = _raw_rows(bundled_path(BUNDLED["gsm8k"]))
    assert len(gsm8k) == len(raw) == 7473
    for example, row in zip(gsm8k, raw):
        assert user(example) == row["question"].strip() and example.answer == row["answer"].strip()
        # oracle: the text after the last "#### " with thousands commas dropped
        assert example.reference == row["answer"].rsplit("#### ", 1)[1].strip().replace(",", "")
    assert [e.where for e in gsm8k] == [f"line {n}" for n in range(1, len(raw) + 1)]


def test_folio_loader_maps_unknown_to_uncertain_and_builds_the_user_turn(folio):
    raw = _raw_rows(bundled_path(BUNDLED["folio"]))
    assert len(folio) == len(raw)
    raw_labels = Counter(r["label"] for r in raw)
    assert Counter(e.reference for e in folio) == {
        "True": raw_labels["True"],
        "False": raw_labels["False"],
        "Uncertain": raw_labels["Unknown"],
    }
    first = folio[0]
    lines = user(first).split("\n")
    assert lines[: len(raw[0]["premises"])] == [p.strip() for p in raw[0]["premises"]]
    assert lines[-2:] == [f"Conclusion: {raw[0]['conclusion']}", "True, False, or Uncertain?"]
    assert first.answer == first.reference == raw[0]["label"]


def test_folio_groups_merge_stories_that_share_a_premise(folio):
    raw = _raw_rows(bundled_path(BUNDLED["folio"]))
    group_of_story = {}
    for example, row in zip(folio, raw):
        group_of_story.setdefault(row["story_id"], set()).add(example.group)
    assert all(len(groups) == 1 for groups in group_of_story.values())  # a story never spans two groups
    stories_of_premise = {}
    for row in raw:
        for premise in row["premises"]:
            stories_of_premise.setdefault(premise.strip(), set()).add(row["story_id"])
    shared = [stories for stories in stories_of_premise.values() if len(stories) > 1]
    assert shared, "the bundled file has stories sharing premises; this test needs one"
    for stories in shared:
        assert len({next(iter(group_of_story[s])) for s in stories}) == 1


# ------------------------------------------------------------------------------------------------ bad rows


GOOD_GSM8K = json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"})


def test_gsm8k_bad_rows_are_reported_by_line_and_skipped(tmp_path):
    path = _write_jsonl(
        tmp_path / "g.jsonl",
        [
            GOOD_GSM8K,
            json.dumps({"question": "No answer key"}),  # line 2
            json.dumps({"question": "   ", "answer": "#### 1"}),  # line 3: empty question
            json.dumps({"question": "Q?", "answer": "the answer is 4"}),  # line 4: no ####
            "{not json",  # line 5
            "",  # blank: not a row
            json.dumps(["a", "list"]),  # line 7
            json.dumps({"question": "Q2?", "answer": "so\n#### 1,250"}),
        ],
    )
    with pytest.warns(UserWarning) as record:
        examples = load_gsm8k(path)
    message = str(record[0].message)
    assert "5 bad row(s)" in message
    for line, why in [(2, "missing key 'answer'"), (3, "'question' is empty"), (4, "####"), (5, "JSON"), (7, "list")]:
        assert f"line {line}: " in message and why in message
    assert [(e.where, e.reference) for e in examples] == [("line 1", "5"), ("line 8", "1250")]


def test_bad_rows_raise_in_error_mode(tmp_path):
    path = _write_jsonl(tmp_path / "g.jsonl", [GOOD_GSM8K, json.dumps({"question": "Q?", "answer": "#### x"})])
    with pytest.raises(DataError, match=r"line 2: answer has no final"):
        load_gsm8k(path, on_bad_row="error")
    with pytest.raises(ValueError, match="on_bad_row"):
        load_gsm8k(path, on_bad_row="ignore")


def test_folio_bad_rows(tmp_path):
    good = {"story_id": 1, "premises": ["All cats purr.", "Tom is a cat."], "conclusion": "Tom purrs.", "label": "True"}
    rows = [
        good,
        {**good, "label": "Maybe"},
        {**good, "premises": []},
        {**good, "premises": ["  ", ""]},
        {k: v for k, v in good.items() if k != "story_id"},
        {**good, "conclusion": ""},
        {**good, "premises": 7},
        {**good, "label": "unknown", "story_id": 2},
    ]
    path = _write_jsonl(tmp_path / "f.jsonl", [json.dumps(r) for r in rows])
    with pytest.raises(DataError) as err:
        load_folio(path, on_bad_row="error")
    for line, why in [(2, "'Maybe' is not one of"), (3, "empty"), (4, "empty"), (5, "story_id"), (6, "conclusion")]:
        assert f"line {line}: " in str(err.value) and why in str(err.value)
    assert "and 1 more" in str(err.value)  # six bad rows, five spelled out
    with pytest.warns(UserWarning, match="6 bad row"):
        examples = load_folio(path)
    assert [(e.where, e.reference) for e in examples] == [("line 1", "True"), ("line 8", "Uncertain")]


def test_a_file_with_no_usable_row_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "g.jsonl", [json.dumps({"question": "Q?"})])
    with pytest.raises(DataError, match="no usable rows"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_gsm8k(path)


def test_missing_files_and_hub_ids(tmp_path, monkeypatch):
    with pytest.raises(MissingInput, match="nope.jsonl"):
        load_gsm8k(tmp_path / "nope.jsonl")
    with pytest.raises(MissingInput, match="not a hub id"):
        load_folio(str(tmp_path / "some" / "dir"))

    import datasets

    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        if name == "someone/offline":
            raise ConnectionError("no network")
        return [{"story_id": 9, "premises": "A is B.\nB is C.", "conclusion": "A is C.", "label": "Uncertain"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (example,) = load_folio("yale-nlp/FOLIO", hub_config=None, hub_split="validation")
    assert calls == [("yale-nlp/FOLIO", None, "validation")]
    assert user(example).split("\n") == ["A is B.", "B is C.", "Conclusion: A is C.", "True, False, or Uncertain?"]
    with pytest.raises(DataError, match="'someone/offline'.*ConnectionError"):
        load_gsm8k("someone/offline")


def test_split_is_deterministic_disjoint_and_about_ten_percent(gsm8k):
    train, val = split_examples(gsm8k)
    again_train, again_val = split_examples(list(gsm8k))
    assert [e.where for e in val] == [e.where for e in again_val] and len(train) == len(again_train)
    assert {e.where for e in train}.isdisjoint(e.where for e in val)
    assert sorted(e.where for e in train + val) == sorted(e.where for e in gsm8k)
    assert len(val) == round(0.1 * len(gsm8k))  # groups of one row: the target is hit exactly
    assert [int(e.where.split()[1]) for e in val] == sorted(int(e.where.split()[1]) for e in val)  # source order
    _, other_val = split_examples(gsm8k, seed=7)
    assert {e.where for e in other_val} != {e.where for e in val}


def test_folio_split_keeps_stories_and_premises_on_one_side(folio):
    train, val = split_examples(folio)
    assert {e.group for e in train}.isdisjoint(e.group for e in val)
    premises = lambda examples: {p for e in examples for p in user(e).split("\n")[:-2]}  # noqa: E731
    assert premises(train).isdisjoint(premises(val))
    assert 0.09 <= len(val) / len(folio) <= 0.12


def test_split_edge_cases():
    examples = [conversation(f"q{i}", "a", group=f"g{i // 3}", where=f"line {i + 1}") for i in range(9)]  # 3 groups
    train, val = split_examples(examples, val_fraction=0.0)
    assert len(train) == 9 and val == []
    train, val = split_examples(examples, val_fraction=0.9)
    assert len({e.group for e in train}) == 1  # never all groups to validation
    _, val = split_examples(examples, val_fraction=0.05)
    assert len(val) == 3  # at least one whole group
    with pytest.raises(ValueError, match="val_fraction"):
        split_examples(examples, val_fraction=1.0)


# ------------------------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize(
    "text, strict, flexible",
    [
        ("She pays 3 + 4 = <<3+4=7>>7.\n#### 7", "7", "7"),
        ("#### 1,234", "1234", "1234"),
        ("Total: $1,234.50.\n#### $1,234.50", "1234.5", "1234.5"),
        ("#### -5", "-5", "-5"),
        ("####42", "42", "42"),
        ("#### 3.00<|eot_id|>", "3", "3"),
        ("#### 0.50", "0.5", "0.5"),
        ("The answer is 12.", None, "12"),
        ("10-5 = 5 apples", None, "5"),
        ("It drops to -3 degrees", None, "-3"),
        ("from 1,000,000 to 2,500,000 people.", None, "2500000"),
        ("#### 8\nThen 9 more", "8", "9"),
        ("no numbers here", None, None),
        ("#### many", None, None),
    ],
)
def test_gsm8k_number_extraction(text, strict, flexible):
    assert gsm8k_extract_strict(text) == strict
    assert gsm8k_extract_flexible(text) == flexible


def test_normalize_number():
    assert normalize_number(" $2,000. ") == "2000"
    assert normalize_number("-0.0") == "0"
    assert normalize_number("007") == "7"
    assert normalize_number(".25") == "0.25"
    for bad in ("", "$", "abc", "nan", "inf", "1.2.3"):
        assert normalize_number(bad) is None


@pytest.mark.parametrize(
    "text, label",
    [
        ("True<|eot_id|>", "True"),
        (" false", "False"),
        ("The conclusion is Uncertain.", "Uncertain"),
        ("UNKNOWN", "Uncertain"),
        ("Untrue? No: False, not True", "False"),
        ("truely nothing", None),
        ("", None),
    ],
)
def test_extract_label(text, label):
    assert extract_label(text) == label


def test_majority_baseline(folio):
    train, val = split_examples(folio)
    label, accuracy = majority_baseline(train, val)
    counts = Counter(e.reference for e in train)
    assert counts[label] == max(counts.values())
    assert accuracy == pytest.approx(sum(e.reference == label for e in val) / len(val))
    labels = ["Uncertain", "False", "False", "Uncertain"]
    tie = [conversation("q", x, reference=x, group=str(i)) for i, x in enumerate(labels)]
    assert majority_baseline(tie, tie) == ("False", 0.5)  # tie broken by FOLIO_LABELS order
    with pytest.raises(ValueError, match="non-empty"):
        majority_baseline([], tie)



def test_folio_user_turn():
    assert folio_user_text(["P1.", "P2."], "C.") == "P1.\nP2.\nConclusion: C.\nTrue, False, or Uncertain?"
