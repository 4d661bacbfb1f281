"""Protein, char and byte tokenizers: the documented ids, lossless round trips, save/load."""

import random

import pytest
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ginformer.data.protein import SS_CLASSES, bundled_protein_path, format_protein_example, load_protein_records
from ginformer.data.tokenizer import (
    CONTROL_TOKENS,
    LABEL_TOKENS,
    RESIDUE_TOKENS,
    build_byte_tokenizer,
    build_char_tokenizer,
    build_protein_tokenizer,
    label_token_ids,
)

# The paper's section 4.1 list, written out here rather than imported.
PAPER_TOKENS = [
    "<|pad|>", "<|eot_id|>", "<|begin_of_text|>", "<|unk|>", "<|mask|>", "<|sequence|>", "<|/sequence|>",
    *"ARNDCEQGHILKMFPSTWYV",
    "<|AH|>", "<|BS|>", "<|UNSTRUCTURED|>", "<|BEND|>", "<|PHIHELIX|>", "<|310HELIX|>", "<|BETABRIDGE|>", "<|T|>",
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_protein_tokenizer()


@pytest.fixture(scope="module")
def examples() -> list[str]:
    records = load_protein_records(bundled_protein_path())
    return [format_protein_example(r) for r in records[:60]]


def test_every_paper_token_is_one_distinct_id(tokenizer):
    ids = []
    for token in PAPER_TOKENS:
        encoded = tokenizer(token)["input_ids"]
        assert len(encoded) == 1, token
        assert tokenizer.convert_ids_to_tokens(encoded) == [token]
        ids.append(encoded[0])
    assert len(set(ids)) == len(PAPER_TOKENS)
    assert len(tokenizer) == len(CONTROL_TOKENS) + len(LABEL_TOKENS) + len(RESIDUE_TOKENS) == 40
    assert set(PAPER_TOKENS) <= set(tokenizer.get_vocab())


def test_ids_follow_the_documented_layout(tokenizer):
    # Saved models depend on these ids: control 0-6, labels 7-14, residues 15-34, rare residues 35-39.
    control, labels, residues = PAPER_TOKENS[:7], PAPER_TOKENS[27:], PAPER_TOKENS[7:27]
    assert tokenizer.convert_ids_to_tokens(list(range(40))) == control + labels + residues + list("XBZUO")


def test_pad_eos_bos_unk(tokenizer):
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token) == (
        "<|pad|>", "<|eot_id|>", "<|begin_of_text|>", "<|unk|>",
    )  # fmt: skip
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id}) == 4
    expected = tokenizer.convert_tokens_to_ids(["A", "X"]) + [tokenizer.unk_token_id] * 3
    assert tokenizer("AXa 1")["input_ids"] == expected  # lower case, space and digits are unknown


def test_examples_round_trip_with_one_id_per_residue(tokenizer, examples):
    for text in examples:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
        sequence = text.split("<|sequence|>")[1].split("<|/sequence|>")[0]
        assert len(ids) == len(sequence) + 6  # bos, <|sequence|>, <|/sequence|>, two labels, eot
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert tokens[2 : 2 + len(sequence)] == list(sequence)
        assert tokens[:2] == ["<|begin_of_text|>", "<|sequence|>"] and tokens[-1] == "<|eot_id|>"
        assert tokenizer.unk_token_id not in ids


def test_skip_special_tokens_keeps_the_labels(tokenizer, examples):
    text = examples[0]
    decoded = tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)
    sequence = text.split("<|sequence|>")[1].split("<|/sequence|>")[0]
    labels = text.split("<|/sequence|>")[1].removesuffix("<|eot_id|>")
    assert decoded == sequence + labels


def test_label_ids_follow_the_class_order(tokenizer):
    ids = label_token_ids(tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids) == [f"<|{c}|>" for c in SS_CLASSES]


def test_helpers_reject_a_tokenizer_without_the_tokens():
    backend = Tokenizer(models.WordLevel(vocab={"<|unk|>": 0, "A": 1}, unk_token="<|unk|>"))
    other = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<|unk|>")
    with pytest.raises(ValueError, match=r"no '<\|AH\|>' token"):
        label_token_ids(other)


def test_batch_padding_uses_pad(tokenizer):
    batch = tokenizer(["ACD", "A"], padding=True)
    assert batch["input_ids"][1][1:] == [tokenizer.pad_token_id] * 2
    assert batch["attention_mask"] == [[1, 1, 1], [1, 0, 0]]


def test_save_and_load_round_trip(tokenizer, examples, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id) == (
        tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id,
    )  # fmt: skip
    assert label_token_ids(loaded) == label_token_ids(tokenizer)
    for text in examples[:10]:
        ids = loaded(text)["input_ids"]
        assert ids == tokenizer(text)["input_ids"]
        assert loaded.decode(ids) == text


# ------------------------------------------------------------------------------------------------ char and byte

# Characters a naive character tokenizer gets wrong: newline (a regex "." misses it), carriage return, tab,
# runs of spaces, a space before punctuation (decode clean-up would eat it), an astral emoji, a combining accent.
TRICKY_TEXT = "Hi ,  there .\nline\ttab\r\n€ 😀 e\u0301 \u00e9 ' s n't\n\n"


def _random_text(rng: random.Random, length: int) -> str:
    """Any code point but surrogates (which no UTF-8 text holds), weighted towards the awkward ranges."""
    ranges = [(0, 0x80), (0x80, 0x800), (0x800, 0xD800), (0xE000, 0x10000), (0x10000, 0x110000)]
    return "".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(length))


def test_char_tokenizer_gives_one_id_per_character_in_sorted_order():
    tokenizer = build_char_tokenizer(TRICKY_TEXT)
    chars = sorted(set(TRICKY_TEXT))  # nanoGPT's stoi: the index in the sorted character set
    ids = tokenizer(TRICKY_TEXT)["input_ids"]
    assert ids == [chars.index(c) for c in TRICKY_TEXT]  # no special token added, one id per code point
    assert tokenizer.decode(ids) == TRICKY_TEXT
    assert tokenizer.convert_ids_to_tokens(list(range(len(chars) + 3))) == [
        *chars, "<|endoftext|>", "<|pad|>", "<|unk|>",
    ]  # fmt: skip
    assert len(tokenizer) == len(chars) + 3
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<|endoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>",
    )  # fmt: skip


def test_char_tokenizer_maps_unknown_characters_to_unk():
    tokenizer = build_char_tokenizer("ab\n")
    ids = tokenizer("a\nZb€\t")["input_ids"]
    unk = tokenizer.unk_token_id
    assert ids == [1, 0, unk, 2, unk, unk]  # sorted set: "\n" 0, "a" 1, "b" 2
    assert tokenizer.decode(ids) == "a\n<|unk|>b<|unk|><|unk|>"


def test_char_tokenizer_is_deterministic_and_rejects_strings_longer_than_one_character():
    assert build_char_tokenizer("cab").get_vocab() == build_char_tokenizer(["b", "a", "c", "a"]).get_vocab()
    with pytest.raises(ValueError, match="single characters"):
        build_char_tokenizer(["a", "bc"])


def test_char_tokenizer_round_trips_random_unicode():
    rng = random.Random(0)
    texts = [_random_text(rng, rng.randrange(0, 40)) for _ in range(50)]
    tokenizer = build_char_tokenizer("".join(texts))
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert len(ids) == len(text) and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_byte_tokenizer_ids_are_the_utf8_bytes_of_any_string():
    tokenizer = build_byte_tokenizer()
    rng = random.Random(1)
    for text in [TRICKY_TEXT, "", "\x00\x7f\x80 ÿ", *(_random_text(rng, rng.randrange(1, 40)) for _ in range(100))]:
        ids = tokenizer(text)["input_ids"]
        assert ids == list(text.encode("utf-8"))
        assert tokenizer.decode(ids) == text
    assert len(tokenizer) == 258
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id) == (256, 256, 257)
    assert tokenizer.convert_ids_to_tokens([256, 257]) == ["<|endoftext|>", "<|pad|>"]
    assert tokenizer.decode([104, 105, 256], skip_special_tokens=True) == "hi"


@pytest.mark.parametrize(
    "build", [lambda: build_char_tokenizer(TRICKY_TEXT), build_byte_tokenizer], ids=["char", "byte"]
)
def test_char_and_byte_tokenizers_save_and_load(build, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = build()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.eos_token_id, loaded.bos_token_id, loaded.pad_token_id, loaded.unk_token_id) == (
        tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id,
    )  # fmt: skip
    for text in (TRICKY_TEXT, TRICKY_TEXT[::-1], "x<|endoftext|>y"):
        ids = loaded(text)["input_ids"]
        assert ids == tokenizer(text)["input_ids"]
        assert loaded.decode(ids) == tokenizer.decode(ids)
    assert loaded.decode(loaded(TRICKY_TEXT)["input_ids"]) == TRICKY_TEXT
