"""Text corpora: sources, position/document split, char/byte/SmolLM2 ids, the cache, packing, bad input.

The oracles are plain Python on strings: the documents joined by the separator, cut at nanoGPT's
``int(N * (1 - val_fraction))``; decoding the ids must give exactly that text back.
"""

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerFast, default_data_collator

from ginformer.data import text as text_module
from ginformer.data.text import PackedBlocks, TokenizedCorpus, tokenize_corpus, tokenize_source
from ginformer.data.tokenizer import build_byte_tokenizer, build_char_tokenizer
from ginformer.pretrained import load_base_tokenizer

# The bundled corpus in the checkout (installed copies are found by ginformer.data.rows.bundled_path).
TINY_SHAKESPEARE = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare" / "input.txt"

# Documents with what tokenizers get wrong: newlines (one ending a document, one starting it), tabs, runs of
# spaces, a space before punctuation, accents, an astral emoji. "Ω" and "ß" occur only in the last document,
# near its end: in the validation side of a position split, so the char tokenizer has never seen them.
DOCS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "\tAll:  Speak , speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?",
    "café — naïve coöperation 😀 and e\u0301 too\n",
    "\nShort one.",
    "Last: the end is near; " * 8 + "Ω ß!",
]


@pytest.fixture(scope="module")
def smollm2():
    return load_base_tokenizer("smollm2")


@pytest.fixture
def folder(tmp_path):
    """DOCS as .txt files, written out of sorted order, plus an empty file and a non-.txt file (both ignored)."""
    root = tmp_path / "corpus"
    names = ["c.txt", "a/z.txt", "b.txt", "a/b/c.txt", "d.txt"]  # created in this order; DOCS go in path order
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(DOCS[sorted(names).index(name)].encode("utf-8"))
    (root / "e-empty.txt").write_text("")
    (root / "notes.md").write_text("not part of the corpus")
    return root


@pytest.fixture
def jsonl(tmp_path):
    """DOCS in a JSONL file's "text" column, among other columns, with a blank line and an empty document."""
    path = tmp_path / "corpus.jsonl"
    rows = [{"id": i, "text": doc, "meta": {"lang": "en", "n": [1, 2]}, "score": 0.5} for i, doc in enumerate(DOCS)]
    lines = [json.dumps(row) for row in rows]
    lines.insert(2, "")
    lines.insert(4, json.dumps({"id": 99, "text": ""}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tokenizer(name, smollm2):
    return smollm2 if name == "smollm2" else name


def _position_oracle(docs, val_fraction):
    """(train parts, val parts): the first int(N * (1 - val_fraction)) characters of the documents train."""
    cut = int(sum(len(d) for d in docs) * (1 - val_fraction))
    train, val, position = [], [], 0
    for doc in docs:
        head = doc[: max(0, cut - position)]
        tail = doc[len(head) :]
        train += [head] if head else []
        val += [tail] if tail else []
        position += len(doc)
    return train, val


def _decode(corpus: TokenizedCorpus, ids) -> str:
    return corpus.tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=False)


def _with_unk(text: str, known: set[str]) -> str:
    return "".join(c if c in known else "<|unk|>" for c in text)


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("tokenizer", ["char", "byte", "smollm2"])
@pytest.mark.parametrize("kind", ["folder", "jsonl"])
def test_position_split_decodes_to_the_prefix_and_the_suffix(kind, tokenizer, request, smollm2):
    source = request.getfixturevalue(kind)
    corpus = tokenize_corpus(source, tokenizer=_tokenizer(tokenizer, smollm2))
    sep = corpus.tokenizer.eos_token
    train_parts, val_parts = _position_oracle(DOCS, 0.1)
    train_text, val_text = sep.join(train_parts), sep.join(val_parts)

    assert (corpus.train.documents, corpus.val.documents) == (len(train_parts), len(val_parts))
    characters = [sum(map(len, parts)) + len(parts) - 1 for parts in (train_parts, val_parts)]  # a separator is 1
    assert [corpus.train.characters, corpus.val.characters] == characters
    assert _decode(corpus, corpus.train.ids) == train_text  # no val character in train, nothing lost
    if tokenizer == "char":  # the vocabulary is the training characters; the rest of val is <|unk|>
        known = set("".join(train_parts))
        assert corpus.tokenizer.convert_ids_to_tokens(list(range(len(known)))) == sorted(known)
        assert len(corpus.tokenizer) == len(known) + 3
        assert {"Ω", "ß"} & known == set() and corpus.tokenizer.unk_token_id in corpus.val.ids
        val_text = sep.join(_with_unk(part, known) for part in val_parts)
    assert _decode(corpus, corpus.val.ids) == val_text
    eos = corpus.tokenizer.eos_token_id
    assert np.count_nonzero(corpus.train.ids == eos) == len(train_parts) - 1  # between documents, none after
    assert np.count_nonzero(corpus.val.ids == eos) == len(val_parts) - 1
    if tokenizer == "byte":  # the ids themselves: UTF-8 bytes, eos between documents
        expected = []
        for i, part in enumerate(train_parts):
            expected += ([eos] if i else []) + list(part.encode("utf-8"))
        assert corpus.train.ids.tolist() == expected


@pytest.mark.parametrize("tokenizer", ["char", "byte", "smollm2"])
@pytest.mark.parametrize("kind", ["folder", "jsonl"])
def test_document_split_keeps_documents_whole_and_apart(kind, tokenizer, request, smollm2):
    source = request.getfixturevalue(kind)
    corpus = tokenize_corpus(source, tokenizer=_tokenizer(tokenizer, smollm2), split="document", val_fraction=0.2)
    sep = corpus.tokenizer.eos_token
    train_docs = _decode(corpus, corpus.train.ids).split(sep)
    val_docs = [d for d in DOCS if d not in train_docs]

    assert train_docs == [d for d in DOCS if d in train_docs]  # whole documents, in source order
    known = set("".join(train_docs))
    unk = (lambda d: _with_unk(d, known)) if tokenizer == "char" else (lambda d: d)
    assert _decode(corpus, corpus.val.ids) == sep.join(unk(d) for d in val_docs)  # exactly the others, in order
    assert 1 <= len(val_docs) < len(DOCS)
    assert sum(map(len, val_docs)) >= 0.2 * sum(map(len, DOCS))
    assert (corpus.train.documents, corpus.val.documents) == (len(train_docs), len(val_docs))
    assert corpus.train.characters == sum(map(len, train_docs)) + len(train_docs) - 1
    assert corpus.val.characters == sum(map(len, val_docs)) + len(val_docs) - 1


def _document_oracle(docs, val_fraction, seed):
    """(train, val) documents as tokenize_corpus documents the rule: the non-empty ones shuffled with
    random.Random(seed) go to val in that order until it holds val_fraction of the characters, the last one
    always trains; both sides keep the source order. Pins which documents a seed validates on."""
    docs = [d for d in docs if d]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    val: set[int] = set()
    for i in order[:-1]:
        if sum(len(docs[j]) for j in val) >= val_fraction * sum(map(len, docs)):
            break
        val.add(i)
    return [d for i, d in enumerate(docs) if i not in val], [d for i, d in enumerate(docs) if i in val]


@pytest.mark.parametrize("kind", ["folder", "jsonl"])
def test_document_split_is_the_seeded_shuffle_and_depends_on_the_seed_only(kind, request):
    source = request.getfixturevalue(kind)

    def sides(seed):
        corpus = tokenize_corpus(source, tokenizer="byte", split="document", val_fraction=0.2, split_seed=seed)
        return _decode(corpus, corpus.train.ids), _decode(corpus, corpus.val.ids)

    for seed in range(8):
        train, val = _document_oracle(DOCS, 0.2, seed)
        assert sides(seed) == ("<|endoftext|>".join(train), "<|endoftext|>".join(val))
    assert len({sides(seed) for seed in range(8)}) > 1


def test_a_single_file_is_exactly_its_characters_ids(tmp_path):
    text = "".join(DOCS)
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    corpus = tokenize_corpus(tmp_path / "one.txt", tokenizer="byte", val_fraction=0.25)
    cut = int(len(text) * 0.75)
    assert corpus.train.ids.tolist() == list(text[:cut].encode())
    assert corpus.val.ids.tolist() == list(text[cut:].encode())
    assert (corpus.train.documents, corpus.val.documents) == (1, 1)
    assert corpus.source == str(tmp_path / "one.txt")


def test_text_of_a_special_token_is_plain_text_and_empty_documents_are_dropped(tmp_path, smollm2):
    docs = ["a <|endoftext|> b", "", "c <|im_end|> d", "e"]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    for tokenizer in ("byte", smollm2):
        corpus = tokenize_corpus(tmp_path / "s.jsonl", tokenizer=tokenizer, split="document", val_fraction=0.1)
        ids = np.concatenate([corpus.train.ids, corpus.val.ids])
        eos = corpus.tokenizer.eos_token_id
        # 3 non-empty documents on two sides: one separator, none from the text inside the documents
        assert np.count_nonzero(ids == eos) == 1
        assert corpus.train.documents + corpus.val.documents == 3


def test_a_held_out_source_is_tokenized_whole_with_the_models_tokenizer(tmp_path, folder):
    corpus = tokenize_corpus(folder, tokenizer="char")
    held_out = ["Speak, citizen!\n", "", "Ω is new"]
    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in held_out))
    split = tokenize_source(path, corpus.tokenizer, "body")
    eos, unk = corpus.tokenizer.eos_token_id, corpus.tokenizer.unk_token_id
    expected = corpus.tokenizer(held_out[0])["input_ids"] + [eos] + corpus.tokenizer(held_out[2])["input_ids"]
    assert split.ids.tolist() == expected and unk in expected  # "Ω" is not in the training characters
    assert (split.characters, split.documents) == (len(held_out[0]) + 1 + len(held_out[2]), 2)
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        tokenize_source(path, "char", "body")


def test_a_python_tokenizer_without_a_rust_backend_works_too(jsonl):
    tokenizer = ByT5Tokenizer()  # pure Python, needs no files: bytes offset by 3, eos "</s>"
    corpus = tokenize_corpus(jsonl, tokenizer=tokenizer)
    train_parts, val_parts = _position_oracle(DOCS, 0.1)
    assert _decode(corpus, corpus.train.ids) == "</s>".join(train_parts)
    assert _decode(corpus, corpus.val.ids) == "</s>".join(val_parts)
    split = tokenize_source(_write(jsonl.parent / "eos.txt", "a</s>b"), tokenizer)
    assert split.ids.tolist() == [b + 3 for b in b"a</s>b"]  # the text "</s>" is not the eos token


def test_a_tokenizer_object_is_used_as_is(jsonl):
    tokenizer = build_byte_tokenizer()
    assert tokenize_corpus(jsonl, tokenizer=tokenizer).tokenizer is tokenizer


def test_tokenizer_without_eos_is_refused(jsonl):
    backend = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", name_or_path="tiny-no-eos")
    with pytest.raises(ValueError, match="tiny-no-eos.*no eos token"):
        tokenize_corpus(jsonl, tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------------ long files


@pytest.mark.parametrize("tokenizer", ["char", "byte"])
def test_a_long_file_read_in_pieces_gives_the_whole_text_ids(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(text_module, "CHUNK_BYTES", 64)  # pieces of ~64 bytes
    monkeypatch.setattr(text_module, "BATCH_CHARS", 100)  # several encoded batches
    rng = random.Random(3)
    alphabet = "abcdefgh éü€😀\t"
    lines = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 90))) for _ in range(60)]
    lines[20] = "€😀é" * 60  # 540 bytes with no newline: cut at a character boundary, never inside one
    text = "\n".join(lines) * 2  # the second copy: every validation character is also a training one
    (tmp_path / "long.txt").write_text(text, encoding="utf-8")

    corpus = tokenize_corpus(tmp_path / "long.txt", tokenizer=tokenizer)
    whole = corpus.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert np.concatenate([corpus.train.ids, corpus.val.ids]).tolist() == whole
    assert corpus.train.characters == int(len(text) * 0.9) and corpus.tokenizer.decode(whole) == text


def test_tiny_shakespeare_in_pieces_gives_smollm2_the_whole_text_ids(smollm2):
    # 1 MB in ~17 pieces of 64 KiB, each cut at a newline between printable characters: no BPE merge is lost.
    whole = smollm2(TINY_SHAKESPEARE.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    split = tokenize_source(TINY_SHAKESPEARE, smollm2)
    assert split.ids.tolist() == whole and (split.characters, split.documents) == (1_115_394, 1)


def test_numpy_fast_path_gives_the_tokenizers_ids(tmp_path):
    rng = random.Random(5)
    texts = ["".join(chr(rng.choice([rng.randrange(9, 128), rng.randrange(128, 0x3000), 0x1F600])) for _ in range(300))
             for _ in range(20)]  # fmt: skip
    char = build_char_tokenizer(set(texts[0]))  # the other texts hold characters it maps to <|unk|>
    char.save_pretrained(tmp_path / "char")
    for tokenizer in (char, build_byte_tokenizer(), AutoTokenizer.from_pretrained(tmp_path / "char")):
        fast = text_module._numpy_encoder(tokenizer)
        assert fast is not None
        assert [ids.tolist() for ids in fast(texts)] == [tokenizer(t)["input_ids"] for t in texts]
    assert char.unk_token_id in char(texts[1])["input_ids"]
    changed = build_char_tokenizer(set(texts[0]))
    changed.add_tokens(["ab"])  # "ab" is now one token: the fast path must not claim this tokenizer
    assert text_module._numpy_encoder(changed) is None
    assert text_module._numpy_encoder(build_char_tokenizer("")) is not None


def test_undecodable_bytes_are_located_across_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(text_module, "CHUNK_BYTES", 16)
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine line\n" * 30 + "caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not UTF-8 text: line 31, byte offset 303"):
        tokenize_corpus(path)
    path.write_bytes(b"ok\n" * 10 + "\u20ac".encode()[:2])  # a character cut off at the end of the file
    with pytest.raises(ValueError, match=r"latin1\.txt: not UTF-8 text: line 11, byte offset 30"):
        tokenize_corpus(path)


# ------------------------------------------------------------------------------------------------ Tiny Shakespeare


def test_tiny_shakespeare_reproduces_nanogpt_char_split():
    path = TINY_SHAKESPEARE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == (
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    )
    assert (path.parent / "SOURCE.md").is_file() and (path.parent / "LICENSE").is_file()
    corpus = tokenize_corpus(path, tokenizer="char")
    assert (corpus.train.characters, corpus.val.characters) == (1_003_854, 111_540)
    assert (len(corpus.train.ids), len(corpus.val.ids)) == (1_003_854, 111_540)
    assert corpus.train.ids.dtype == np.uint16
    # nanoGPT's prepare.py, written out: stoi over the sorted characters of the whole text, 90/10 by position.
    text = path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    assert len(chars) == 65 and sorted(set(text[:1_003_854])) == chars  # the training part has them all
    assert len(corpus.tokenizer) == 65 + 3
    lookup = np.zeros(128, dtype=np.uint16)
    lookup[[ord(c) for c in chars]] = np.arange(65)
    stream = lookup[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    assert np.array_equal(corpus.train.ids, stream[:1_003_854]) and np.array_equal(corpus.val.ids, stream[1_003_854:])


# ------------------------------------------------------------------------------------------------ parquet, hub


def test_parquet_rows_give_the_same_ids_as_jsonl(tmp_path, jsonl, monkeypatch):
    monkeypatch.setattr(text_module, "PARQUET_BATCH_ROWS", 2)
    table = pa.table({"id": list(range(len(DOCS))), "text": DOCS, "score": [0.5] * len(DOCS)})
    pq.write_table(table, tmp_path / "corpus.parquet", row_group_size=2)  # 3 row groups, read in batches of 2
    assert pq.ParquetFile(tmp_path / "corpus.parquet").num_row_groups == 3
    for split in ("position", "document"):
        from_parquet = tokenize_corpus(tmp_path / "corpus.parquet", tokenizer="byte", split=split)
        from_jsonl = tokenize_corpus(jsonl, tokenizer="byte", split=split)
        for side in ("train", "val"):
            a, b = getattr(from_parquet, side), getattr(from_jsonl, side)
            assert a.ids.tolist() == b.ids.tolist() and (a.characters, a.documents) == (b.characters, b.documents)


def test_hub_dataset_is_read_through_datasets(monkeypatch):
    import datasets

    def fake(dataset_id, config, split):
        assert (dataset_id, config, split) == ("someone/stories", None, "train")
        return datasets.Dataset.from_dict({"story": DOCS, "n": list(range(len(DOCS)))})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    corpus = tokenize_corpus("someone/stories", text_column="story", tokenizer="byte")
    train_parts, _ = _position_oracle(DOCS, 0.1)
    assert _decode(corpus, corpus.train.ids) == "<|endoftext|>".join(train_parts)
    assert corpus.source == "someone/stories"
    with pytest.raises(ValueError, match=r"'someone/stories'.*no column 'text' \(found \['story', 'n'\]\)"):
        tokenize_corpus("someone/stories")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict({"text": ["a", None]}))
    with pytest.raises(ValueError, match=r"row 1 \(0-based\): 'text' is NoneType, expected a string"):
        tokenize_corpus("someone/stories")


def test_missing_hub_dataset_fails_naming_the_id(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying the network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="could not load hub dataset 'nobody-ginformer/no-such-corpus'"):
        tokenize_corpus("nobody-ginformer/no-such-corpus")


# ------------------------------------------------------------------------------------------------ cache


@pytest.mark.parametrize("tokenizer", ["char", "byte"])
def test_cache_is_reused_without_tokenizing_again(tmp_path, jsonl, monkeypatch, tokenizer):
    cache = tmp_path / "cache"
    first = tokenize_corpus(jsonl, tokenizer=tokenizer, cache_dir=cache)
    fresh = tokenize_corpus(jsonl, tokenizer=tokenizer)
    assert isinstance(first.train.ids, np.memmap) and isinstance(first.val.ids, np.memmap)
    assert first.train.ids.tolist() == fresh.train.ids.tolist() and first.val.ids.tolist() == fresh.val.ids.tolist()
    (entry,) = cache.iterdir()
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["train"]["tokens"] == len(fresh.train.ids)
    assert meta["val"] == {"tokens": len(fresh.val.ids), "characters": fresh.val.characters, "documents": 1}
    assert (entry / "train.bin").stat().st_size == 2 * len(fresh.train.ids)

    def no_tokenizing(tokenizer):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(text_module, "_encoder", no_tokenizing)
    again = tokenize_corpus(jsonl, tokenizer=tokenizer, cache_dir=cache)
    assert isinstance(again.train.ids, np.memmap)
    assert np.array_equal(again.train.ids, first.train.ids) and np.array_equal(again.val.ids, first.val.ids)
    assert (again.train.characters, again.val.documents) == (first.train.characters, first.val.documents)
    assert again.tokenizer.get_vocab() == first.tokenizer.get_vocab()  # the char vocabulary comes from the cache
    assert again.tokenizer.decode(again.val.ids.tolist()) == first.tokenizer.decode(first.val.ids.tolist())

    # Anything that changes the ids changes the key: these must tokenize again.
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_corpus(jsonl, tokenizer=tokenizer, cache_dir=cache, val_fraction=0.2)
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_corpus(jsonl, tokenizer=tokenizer, cache_dir=cache, split="document")
    with jsonl.open("a") as f:
        f.write(json.dumps({"text": "one more"}) + "\n")
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_corpus(jsonl, tokenizer=tokenizer, cache_dir=cache)


def test_an_interrupted_run_leaves_nothing_a_later_run_reuses(tmp_path, jsonl, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(text_module, "BATCH_CHARS", 50)  # several batches, so a file is half written
    real_encoder = text_module._encoder

    def interrupted_encoder(tokenizer):
        encode, calls = real_encoder(tokenizer), []

        def encode_then_stop(texts):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return encode(texts)

        return encode_then_stop

    monkeypatch.setattr(text_module, "_encoder", interrupted_encoder)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(jsonl, tokenizer="byte", cache_dir=cache)
    assert list(cache.iterdir()) == []  # the temporary folder is removed

    # A killed run cannot clean up: its temporary folder stays, with a half-written train.bin and no meta.json.
    monkeypatch.setattr(text_module.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(jsonl, tokenizer="byte", cache_dir=cache)
    (leftover,) = cache.iterdir()
    assert (leftover / "train.bin").stat().st_size > 0 and not (leftover / "meta.json").exists()

    monkeypatch.setattr(text_module, "_encoder", real_encoder)
    corpus = tokenize_corpus(jsonl, tokenizer="byte", cache_dir=cache)
    fresh = tokenize_corpus(jsonl, tokenizer="byte")
    assert corpus.train.ids.tolist() == fresh.train.ids.tolist() and corpus.val.ids.tolist() == fresh.val.ids.tolist()
    finished = [p for p in cache.iterdir() if (p / "meta.json").is_file()]
    assert len(finished) == 1 and finished[0] != leftover


def test_a_damaged_cache_is_reported_not_used(tmp_path, jsonl):
    cache = tmp_path / "cache"
    tokenize_corpus(jsonl, tokenizer="byte", cache_dir=cache)
    (entry,) = cache.iterdir()
    with (entry / "val.bin").open("ab") as f:
        f.write(b"\x00")
    with pytest.raises(ValueError, match=r"val\.bin: .*damaged: delete"):
        tokenize_corpus(jsonl, tokenizer="byte", cache_dir=cache)


# ------------------------------------------------------------------------------------------------ packing


@pytest.mark.parametrize("n", [0, 1, 2, 5, 9, 10, 11, 12])
@pytest.mark.parametrize("block_size", [2, 3, 5])
def test_packing_keeps_every_token_once(n, block_size, tmp_path):
    ids = np.memmap(tmp_path / "ids.bin", dtype=np.uint16, mode="w+", shape=(max(n, 1),))[:n]
    ids[:] = np.arange(1000, 1000 + n)
    blocks = PackedBlocks(ids, block_size)
    items = [blocks[i] for i in range(len(blocks))]
    joined = [t for item in items for t in item["input_ids"]]
    rest = n % block_size
    kept = n - rest if rest == 1 else n  # a 1-token tail has no next token and is the only thing dropped
    assert joined == list(range(1000, 1000 + kept))
    assert all(len(item["input_ids"]) == block_size for item in items[:-1])
    assert all(len(item["input_ids"]) >= 2 for item in items)
    assert all(item["labels"] == item["input_ids"] and type(item["labels"][0]) is int for item in items)
    assert len(blocks) == len(items) == n // block_size + (rest >= 2)
    with pytest.raises(IndexError):
        blocks[len(blocks)]
    if len(blocks):
        assert blocks[-1] == items[-1]


def test_packing_rejects_bad_arguments():
    for block_size in (1, 0, -3, True, 2.0):
        with pytest.raises(ValueError, match="block_size"):
            PackedBlocks(np.arange(10), block_size)
    with pytest.raises(ValueError, match="1-D"):
        PackedBlocks(np.zeros((2, 5)), 4)
    with pytest.raises(TypeError):
        PackedBlocks(np.arange(10), 4)["0"]


def test_full_blocks_batch_with_the_default_collator(jsonl):
    corpus = tokenize_corpus(jsonl, tokenizer="byte")
    blocks = PackedBlocks(corpus.train.ids, 16)
    batch = default_data_collator([blocks[0], blocks[1]])
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert batch["input_ids"].flatten().tolist() == corpus.train.ids[:32].tolist()


# ------------------------------------------------------------------------------------------------ bad input


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


BAD_INPUTS = {
    "empty file": ("empty.txt", "", {}, ValueError, r"empty\.txt: the corpus is empty: it holds no text"),
    "only empty documents": (
        "blank.jsonl", '{"text": ""}\n\n{"text": ""}\n', {}, ValueError, r"blank\.jsonl: the corpus is empty: all 2 of its documents are empty"
    ),
    "missing column": (
        "rows.jsonl", '{"text": "a"}\n{"body": "b", "id": 2}\n', {}, ValueError,
        r"rows\.jsonl: line 2: no column 'text' \(found \['body', 'id'\]\)",
    ),
    "undecodable bytes": ("bad.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', {}, ValueError,
                          r"bad\.jsonl: line 2, column 14: not UTF-8 text"),
    "undecodable text file": ("bad.txt", b"ok\nna\xefve\n", {}, ValueError,
                              r"bad\.txt: not UTF-8 text: line 2, byte offset 5"),
    "not JSON": ("rows.jsonl", '{"text": "a"}\n\n{"text": oops}\n', {}, ValueError,
                 r"rows\.jsonl: line 3: not valid JSON"),
    "not an object": ("rows.jsonl", '["text", "a"]\n', {}, ValueError,
                      r"rows\.jsonl: line 1: a JSON list, expected an object"),
    "not a string": ("rows.jsonl", '{"text": "a"}\n{"text": 12}\n', {}, ValueError,
                     r"rows\.jsonl: line 2: 'text' is int, expected a string"),
    "null": ("rows.jsonl", '{"text": null}\n', {}, ValueError, r"rows\.jsonl: line 1: 'text' is NoneType"),
    "lone surrogate": ("rows.jsonl", '{"text": "a\\ud800b"}\n', {}, ValueError, r"rows\.jsonl: line 1: .*surrogate"),
    "nested too deeply": ("rows.jsonl", "[" * 40_000 + "]" * 40_000 + "\n", {}, ValueError,
                          r"rows\.jsonl: line 1: nested too deeply to read"),
    "unsupported suffix": ("rows.csv", "text\na\n", {}, ValueError,
                           r"rows\.csv: unsupported file type '\.csv'.*\.txt, \.jsonl or \.parquet"),
    "one document, document split": (
        "one.txt", "a whole book", {"split": "document"}, ValueError,
        r"one\.txt: split 'document' needs at least 2 non-empty documents, found 1; use split: position",
    ),
    "train side empty": ("tiny.txt", "a", {}, ValueError,
                         r"tiny\.txt: .*leaves the train split empty \(0 train and 1 val"),
    "val side empty": ("tiny.txt", "abcde", {"val_fraction": 1e-17}, ValueError,
                       r"leaves the val split empty \(5 train and 0 val characters of 5\)"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_named_with_file_and_line(case, tmp_path):
    name, content, kwargs, error, message = BAD_INPUTS[case]
    path = _write(tmp_path / name, content)
    with pytest.raises(error, match=message):
        tokenize_corpus(path, **kwargs)


def test_a_byte_order_mark_is_an_encoding_marker_and_crlf_stays_text(tmp_path):
    plain = tokenize_corpus(_write(tmp_path / "plain.txt", "hello\r\nworld\n"), tokenizer="byte")
    marked = tokenize_corpus(_write(tmp_path / "marked.txt", "\ufeffhello\r\nworld\n".encode()), tokenizer="byte")
    assert bytes(marked.train.ids.tolist()) == bytes(plain.train.ids.tolist()) == b"hello\r\nworl"
    rows = tokenize_corpus(_write(tmp_path / "rows.jsonl", '\ufeff{"text": "abc"}\r\n{"text": "def"}\r\n'.encode()),
                           tokenizer="byte", val_fraction=0.5)
    assert rows.train.documents + rows.val.documents == 2  # line 1 is read, not dropped as bad JSON


def test_a_named_pipe_is_refused_before_it_is_opened(tmp_path):
    for name in ("corpus.txt", "rows.jsonl"):
        os.mkfifo(tmp_path / name)  # opening one would wait for a writer that never comes
        with pytest.raises(ValueError, match=rf"{name} is a named pipe, not a regular file"):
            tokenize_corpus(tmp_path / name)
    folder = tmp_path / "folder"
    folder.mkdir()
    _write(folder / "a.txt", "text")
    os.mkfifo(folder / "b.txt")
    with pytest.raises(ValueError, match=r"folder, the file .*b\.txt is a named pipe"):
        tokenize_corpus(folder)


def test_a_file_as_the_cache_dir_is_named_before_any_work(tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    path = _write(tmp_path / "ok.txt", "some text to split")
    with pytest.raises(FileExistsError, match=r"cache_dir .*cache is a file, not a directory"):
        tokenize_corpus(path, cache_dir=tmp_path / "cache")
    with pytest.raises(FileExistsError, match=r"cache_dir .*cache/sub: .*cache is a file"):
        tokenize_corpus(path, cache_dir=tmp_path / "cache" / "sub")


def test_bad_parquet_is_named_with_file_row_and_columns(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"body": ["a", "b"], "id": [1, 2]}), path)
    with pytest.raises(ValueError, match=r"rows\.parquet: no column 'text' \(found \['body', 'id'\]\)"):
        tokenize_corpus(path)
    pq.write_table(pa.table({"text": ["a", "b", None, "d"]}), path, row_group_size=2)
    with pytest.raises(ValueError, match=r"rows\.parquet: row 2 \(0-based\): 'text' is null"):
        tokenize_corpus(path)
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(ValueError, match=r"rows\.parquet: .*'text' holds int64 values, expected strings"):
        tokenize_corpus(path)
    _write(tmp_path / "fake.parquet", "not parquet at all")
    with pytest.raises(ValueError, match=r"fake\.parquet: not a readable Parquet file"):
        tokenize_corpus(tmp_path / "fake.parquet")


def test_missing_sources_and_bad_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"text source not found: .*absent\.txt"):
        tokenize_corpus(tmp_path / "absent.txt")
    with pytest.raises(FileNotFoundError, match=r"absent\.jsonl"):
        tokenize_corpus(str(tmp_path / "absent.jsonl"))
    (tmp_path / "no-text" / "sub").mkdir(parents=True)
    _write(tmp_path / "no-text" / "sub" / "readme.md", "hello")
    with pytest.raises(ValueError, match=r"no-text: folder has no \.txt files"):
        tokenize_corpus(tmp_path / "no-text")
    path = _write(tmp_path / "ok.txt", "some text to split")
    for val_fraction in (0, 1, -0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="val_fraction must be a number in"):
            tokenize_corpus(path, val_fraction=val_fraction)
    with pytest.raises(ValueError, match="split must be 'position' or 'document'"):
        tokenize_corpus(path, split="random")
    with pytest.raises(FileNotFoundError, match="model path not found"):
        tokenize_corpus(path, tokenizer=str(tmp_path / "no-tokenizer-here"))
