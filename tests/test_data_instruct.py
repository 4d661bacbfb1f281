"""Instruction data (data/instruct.py) in TRL's shapes: reading text, prompt/completion (plain and conversational)
and messages rows with mapped columns; bad rows and mixed formats named; the paper and chat templates; labels on
exactly the trained assistant turns; the generation prompt as the training prefix; long rows dropped or cut from
the left; the collator."""

import json
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ginformer.data.batches import IGNORE_INDEX, CausalLMCollator
from ginformer.data.instruct import (
    InstructExample,
    Message,
    conversation,
    encode_generation_prompt,
    load_instruct,
    segments,
    tokenize_example,
    truncate_left,
)
from ginformer.errors import ConfigError, DataError, MissingInput
from ginformer.pretrained import load_base_tokenizer
from ginformer.tasks.instruct import GSM8KTask, InstructSettings, InstructTask

MULTI_TURN = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And times 3?"},
    {"role": "assistant", "content": "12, since 4 × 3 = 12."},
]


@pytest.fixture(scope="module")
def smol_tokenizer():
    return load_base_tokenizer()


@pytest.fixture(scope="module")
def bos_tokenizer():
    """A tiny byte-level BPE tokenizer that, like Llama 3's, prepends BOS by itself; no pad, no chat template."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(["### User: how many apples are left?<|eot_id|>### Assistant: 42 apples"] * 4, trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
                    encoding="utf-8")
    return path


def trained_runs(feature, tokenizer) -> list[str]:
    """The decoded runs of consecutive tokens that carry the loss."""
    runs, current = [], []
    for token, label in zip(feature["input_ids"], feature["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run) for run in runs + ([current] if current else [])]


# ------------------------------------------------------------------------------------------------ reading


def test_every_shape_is_read_with_its_loss_and_auto_says_which(tmp_path):
    rows = {
        "text": [{"text": "Once upon a time.", "id": 1}],
        "prompt_completion": [{"prompt": "2 + 2?", "completion": "4", "source": "x"}],
        "messages": [{"messages": MULTI_TURN}],
    }
    for shape, data in rows.items():
        loaded = load_instruct(write_jsonl(tmp_path / f"{shape}.jsonl", data))
        assert loaded.format == shape and len(loaded.examples) == 1
        assert loaded.conversational == (shape == "messages")
    text = load_instruct(tmp_path / "text.jsonl").examples[0]
    assert (text.text, text.messages) == ("Once upon a time.", ())
    plain = load_instruct(tmp_path / "prompt_completion.jsonl").examples[0]
    assert plain == conversation("2 + 2?", "4", group="2 + 2?", where="line 1")
    chat = load_instruct(tmp_path / "messages.jsonl").examples[0]
    assert [m.trained for m in chat.messages] == [False, False, True, False, True]
    assert chat.answer == MULTI_TURN[-1]["content"] and len(chat.prompt) == 4


def test_conversational_prompt_completion_trains_the_completion_only(tmp_path):
    row = {"prompt": MULTI_TURN[:4], "completion": [MULTI_TURN[4]]}
    loaded = load_instruct(write_jsonl(tmp_path / "pc.jsonl", [row]))
    assert loaded.conversational and loaded.format == "prompt_completion"
    (example,) = loaded.examples
    assert [m.trained for m in example.messages] == [False, False, False, False, True]  # the prompt's "4." is not


def test_columns_map_other_names_and_json_and_parquet_files_read_alike(tmp_path):
    rows = [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(3)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    columns = {"prompt": "question", "completion": "answer"}
    read = [load_instruct(tmp_path / name, columns=columns).examples for name in ("rows.json", "rows.parquet")]
    assert read[0] == read[1] and [e.answer for e in read[0]] == ["a0", "a1", "a2"]
    assert read[0][2].where == "row 2"
    with pytest.raises(DataError, match="no row has the columns of a format.*data.columns"):
        load_instruct(tmp_path / "rows.json")


def test_a_mapped_column_must_exist_and_wins_over_one_bearing_our_name(tmp_path):
    both = write_jsonl(tmp_path / "both.jsonl", [
        {"prompt": "the file's own prompt", "question": f"q{i}?", "completion": f"a{i}"} for i in range(3)])
    read = load_instruct(both, columns={"prompt": "question"}).examples
    assert [e.prompt[-1].content for e in read] == ["q0?", "q1?", "q2?"]
    without = write_jsonl(tmp_path / "without.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(ConfigError, match=r"without.jsonl: the column mapping \{prompt: question\} names a column "
                                         r"'question' that no row has \(columns: completion, prompt\)"):
        load_instruct(without, columns={"prompt": "question"})
    with pytest.raises(ConfigError, match="gives 'question' to both prompt and completion"):
        load_instruct(both, columns={"prompt": "question", "completion": "question"})
    swapped = load_instruct(both, columns={"prompt": "completion", "completion": "question"}).examples
    assert (swapped[0].prompt[-1].content, swapped[0].answer) == ("a0", "q0?")


def test_rows_that_are_no_objects_are_named_as_such(tmp_path):
    (tmp_path / "array.jsonl").write_text(json.dumps([{"prompt": "p", "completion": "c"}]) + "\n")
    with pytest.raises(DataError, match=r"array.jsonl: 1 bad row\(s\): line 1: a JSON list, expected an object"):
        load_instruct(tmp_path / "array.jsonl")


def test_a_byte_order_mark_and_crlf_are_read_as_text_and_a_lone_surrogate_is_a_bad_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes('\ufeff{"prompt": "p1", "completion": "c1"}\r\n{"prompt": "p\\ud800", "completion": "c2"}\r\n'
                     '{"prompt": "p3", "completion": "c3"}\r\n'.encode())
    with pytest.warns(UserWarning, match=r"line 2: holds a lone surrogate escape \(\\ud800\)"):
        read = load_instruct(path).examples
    assert [e.where for e in read] == ["line 1", "line 3"]


def test_bad_rows_are_named_by_line_and_field(tmp_path):
    good = {"messages": MULTI_TURN}
    path = write_jsonl(tmp_path / "chat.jsonl", [
        good,
        {"messages": MULTI_TURN[:4]},  # line 2: ends with the user
        {"messages": [MULTI_TURN[1]]},  # line 3: no assistant turn
        {"messages": [{"role": "bot", "content": "hi"}, MULTI_TURN[2]]},  # line 4
        {"messages": [MULTI_TURN[1], {"role": "assistant", "content": " "}]},  # line 5: empty content
        "{oops",  # line 6
        {"messages": [MULTI_TURN[2], MULTI_TURN[1], MULTI_TURN[2]]},  # line 7: starts with the assistant
    ])
    with pytest.raises(DataError) as err:
        load_instruct(path, on_bad_row="error")
    message = str(err.value)
    for where, why in [("line 2", "ends with a user message, not the assistant's"),
                       ("line 3", "has no assistant turn"), ("line 4", "role 'bot' is not one of"),
                       ("line 5", "'messages[1].content' is empty"), ("line 6", "not valid JSON")]:
        assert f"{where}: " in message and why in message
    assert "6 bad row(s)" in message and "and 1 more" in message
    with pytest.warns(UserWarning, match="skipped .*chat.jsonl: 6 bad row"):
        assert len(load_instruct(path).examples) == 1


def test_a_file_that_mixes_formats_names_the_rows_that_disagree(tmp_path):
    rows = [{"prompt": "p", "completion": "c"}, {"prompt": "p2", "completion": "c"}, {"messages": MULTI_TURN}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(DataError, match=r"rows disagree on the format \(line 1 is prompt_completion, line 3 is "
                                         r"messages\)"):
        load_instruct(path)
    with pytest.warns(UserWarning, match="line 3: missing 'prompt'"):  # told the format, the odd row is a bad row
        assert len(load_instruct(path, format="prompt_completion").examples) == 2


def test_undecodable_and_missing_files(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl: line 1, column \d+: not UTF-8"):
        load_instruct(tmp_path / "latin1.jsonl")
    with pytest.raises(MissingInput, match="nope.jsonl"):
        load_instruct(tmp_path / "nope.jsonl")
    (tmp_path / "rows.csv").write_text("prompt,completion\n")
    with pytest.raises(DataError, match="rows.csv: unsupported source; expected a file ending in .jsonl, .json"):
        load_instruct(tmp_path / "rows.csv")


# ------------------------------------------------------------------------------------------------ templates


def test_the_paper_template_is_the_papers_format(gsm8k):
    example = gsm8k[0]
    parts = segments(example, "paper", None)
    question = example.prompt[-1].content
    assert parts == [(f"### User: {question}<|eot_id|>### Assistant:", False), (f" {example.answer}<|eot_id|>", True)]
    chat = InstructExample(tuple(Message(m["role"], m["content"], m["role"] == "assistant") for m in MULTI_TURN))
    assert "".join(text for text, _ in segments(chat, "paper", None)) == (
        "### System: You are terse.<|eot_id|>### User: What is 2 + 2?<|eot_id|>### Assistant: 4.<|eot_id|>"
        "### User: And times 3?<|eot_id|>### Assistant: 12, since 4 × 3 = 12.<|eot_id|>"
    )


@pytest.mark.parametrize("template, end", [("chat", "<|im_end|>"), ("paper", "<|eot_id|>")])
def test_a_multi_turn_conversation_trains_exactly_its_assistant_turns(tmp_path, smol_tokenizer, template, end):
    """Decoding the tokens that carry the loss gives the two assistant turns with their end markers, and nothing
    else: not the system prompt, the user turns, the template's headers or the newline after a marker."""
    (example,) = load_instruct(write_jsonl(tmp_path / "chat.jsonl", [{"messages": MULTI_TURN}])).examples
    feature = tokenize_example(example, smol_tokenizer, template)
    space = " " if template == "paper" else ""
    assert trained_runs(feature, smol_tokenizer) == [f"{space}4.{end}", f"{space}12, since 4 × 3 = 12.{end}"]
    whole = "".join(text for text, _ in segments(example, template, smol_tokenizer))
    assert smol_tokenizer.decode(feature["input_ids"]) == whole
    if template == "chat":
        assert whole == smol_tokenizer.apply_chat_template(MULTI_TURN, tokenize=False)


def test_the_chat_template_needs_a_tokenizer_with_one(gsm8k, bos_tokenizer):
    with pytest.raises(ConfigError, match="has no chat template; use data.template=paper"):
        tokenize_example(gsm8k[0], bos_tokenizer, "chat")


def test_a_text_row_trains_every_token_and_its_end(smol_tokenizer):
    feature = tokenize_example(InstructExample((), text="Hello there."), smol_tokenizer, "chat")
    assert feature["labels"] == feature["input_ids"]
    assert smol_tokenizer.decode(feature["input_ids"]) == "Hello there." + smol_tokenizer.eos_token


def test_bos_is_added_only_where_the_tokenizer_adds_it(gsm8k, bos_tokenizer, smol_tokenizer):
    feature = tokenize_example(gsm8k[0], bos_tokenizer)
    assert feature["input_ids"][0] == bos_tokenizer.bos_token_id
    assert feature["input_ids"].count(bos_tokenizer.bos_token_id) == 1
    assert bos_tokenizer.decode(feature["input_ids"][1:]) == "".join(t for t, _ in segments(gsm8k[0], "paper", None))
    smol = tokenize_example(gsm8k[0], smol_tokenizer)
    assert smol["input_ids"][0] != smol_tokenizer.bos_token_id  # SmolLM2 adds none by itself


@pytest.mark.parametrize("template", ["paper", "chat"])
def test_generation_prompts_are_the_training_prefix(folio, smol_tokenizer, template):
    chat = InstructExample(tuple(Message(m["role"], m["content"], m["role"] == "assistant") for m in MULTI_TURN))
    for example in (folio[3], chat):
        ids = encode_generation_prompt(example, smol_tokenizer, template)
        feature = tokenize_example(example, smol_tokenizer, template)
        n = len(ids)
        assert feature["input_ids"][:n] == ids
        assert feature["labels"][n - 1] == IGNORE_INDEX
        rest = {key: values[n:] for key, values in feature.items()}  # the last answer starts right there
        space, end = (" ", "<|eot_id|>") if template == "paper" else ("", "<|im_end|>")
        assert trained_runs(rest, smol_tokenizer)[0] == f"{space}{example.answer}{end}"


# ------------------------------------------------------------------------------------------------ length


def test_too_long_rows_are_dropped_with_a_count(gsm8k, bos_tokenizer):
    examples = gsm8k[:20]
    lengths = [len(tokenize_example(e, bos_tokenizer)["input_ids"]) for e in examples]
    limit = sorted(lengths)[10]
    task = GSM8KTask(InstructSettings(task="gsm8k", max_length=limit))
    with pytest.warns(UserWarning, match=rf"dropped {sum(n > limit for n in lengths)} of 20 .*max_length={limit}"):
        kept, features = task.fit(examples, bos_tokenizer, limit=None)
    assert [len(f["input_ids"]) for f in features] == [n for n in lengths if n <= limit]
    assert kept == [e for e, n in zip(examples, lengths) if n <= limit]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(task.fit(examples, bos_tokenizer, limit=3)[1]) == 3  # the first 3 that fit


def test_truncate_left_keeps_the_last_assistant_turn_whole(smol_tokenizer):
    example = InstructExample(tuple(Message(m["role"], m["content"], m["role"] == "assistant") for m in MULTI_TURN))
    feature = tokenize_example(example, smol_tokenizer, "chat")
    last_turn = len(smol_tokenizer("12, since 4 × 3 = 12.<|im_end|>", add_special_tokens=False)["input_ids"])
    tail = 1  # the newline after the last <|im_end|>
    cut = truncate_left(feature, last_turn + tail + 3)
    assert cut["input_ids"] == feature["input_ids"][-(last_turn + tail + 3):]
    assert trained_runs(cut, smol_tokenizer)[-1] == "12, since 4 × 3 = 12.<|im_end|>"
    assert truncate_left(feature, last_turn + tail - 1) is None  # the answer itself would be cut
    task = InstructTask(InstructSettings(source="x.jsonl", template="chat", max_length=last_turn + tail + 3,
                                         truncate="left"))
    kept, features = task.fit([example], smol_tokenizer, None)
    assert features == [cut]


# ------------------------------------------------------------------------------------------------ collator


def test_collator_pads_right_and_keeps_every_label(folio, smol_tokenizer):
    features = [tokenize_example(e, smol_tokenizer, "chat") for e in folio[:3]]
    pad = smol_tokenizer.pad_token_id
    assert pad == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")  # pad id is also a label id here
    batch = CausalLMCollator(pad)(features)
    longest = max(len(f["input_ids"]) for f in features)
    assert batch["input_ids"].shape == (3, longest) and batch["input_ids"].dtype == torch.long
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == feature["input_ids"]
        assert batch["labels"][row, :n].tolist() == feature["labels"]
        assert (batch["input_ids"][row, n:] == pad).all() and (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert (batch["labels"][row] == pad).sum() >= 1  # the end-of-turn label survived padding


def test_collator_rejects_bad_input():
    with pytest.raises(ValueError, match="pad_token_id"):
        CausalLMCollator(None)
    with pytest.raises(ValueError, match="example 0: 2 input_ids but 1 labels"):
        CausalLMCollator(0)([{"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(ValueError, match="empty batch"):
        CausalLMCollator(0)([])


def test_padded_batch_loss_equals_the_loss_of_the_unpadded_rows(gsm8k, bos_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(bos_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    features = [tokenize_example(e, bos_tokenizer) for e in gsm8k[:3]]
    batch = CausalLMCollator(bos_tokenizer.eos_token_id)(features)
    with torch.no_grad():
        batched = model(**batch).loss
        total, count = 0.0, 0
        for f in features:
            logits = model(torch.tensor([f["input_ids"]])).logits[0, :-1]  # (T-1, V): predicts tokens 1..T-1
            targets = torch.tensor(f["labels"][1:])
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
            count += int((targets != IGNORE_INDEX).sum())
    torch.testing.assert_close(batched, total / count, rtol=1e-4, atol=1e-5)


