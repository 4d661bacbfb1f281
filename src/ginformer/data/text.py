"""Text corpora for language modelling, from scratch or on a pretrained base: read any corpus, split it, tokenize it, pack it into blocks.

Pipeline::

    source        .txt file | folder of .txt | .jsonl | .parquet | hub id  ->  documents, read in pieces
    split         "position" (nanoGPT's cut) | "document" (whole documents)  ->  train and val pieces
    tokenizer     "char" | "byte" | any Hugging Face tokenizer               ->  ids, documents joined by eos
    cache_dir     <cache_dir>/<key>/{train,val}.bin + meta.json              ->  np.memmap, reused when unchanged
    PackedBlocks  consecutive blocks of block_size ids                       ->  {"input_ids", "labels"}

A split's token stream is ``doc₁ <eos> doc₂ <eos> … docₙ``: the tokenizer's eos token separates documents (none
after the last), so a corpus of one file is exactly its characters' ids, as in nanoGPT's ``shakespeare_char``.
Empty documents are dropped (they would only add a second separator). The text is taken as stored: no newline
translation, no stripping (a byte-order mark at the start of a file is dropped: it marks the encoding, it is not
text); a document that contains the text of a special token (say ``<|endoftext|>``) is
tokenized as ordinary text, so the only special ids in a stream are the separators put there.

Memory. The corpus is read three times, never held whole: once to count characters (and to validate every file,
line and row, so that a bad row fails before anything is written), once for the training characters (char
tokenizer only; the vocabulary is built from the training split, so that validation characters the model never
saw map to <|unk|> rather than to untrained embeddings), once to tokenize. Ids go to numpy arrays (uint16 when
the vocabulary fits, else uint32), in memory or, with ``cache_dir``, to files that are mapped back.

Long files. A .txt file is read in pieces of about ``CHUNK_BYTES`` (64 KiB: small pieces keep a tokenizer's
working memory small; they are encoded in batches of about ``BATCH_CHARS`` characters), each cut after a
newline, preferably one between two printable ASCII characters. Pieces are encoded separately. Char and byte ids
never depend on the cut. A regex pre-tokenizer (GPT-2, Llama 3, SmolLM2, Qwen) never joins a newline between
printable characters with its neighbours, so such a cut gives the whole text's ids too (Tiny Shakespeare with
SmolLM2: identical); only where no such newline is near (whitespace or non-ASCII around every newline, or a
line longer than a piece) can a BPE merge across the cut be lost, and a tokenizer that prepends a space to
every input (SentencePiece's Metaspace) adds one per piece. The split cut (position split) is a tokenization
boundary in any case, as in nanoGPT, where train and val are encoded separately.

Speed. Our own char and byte tokenizers are recognised (whole serialized tokenizer compared) and encoded with
numpy, 10 (char) to 1,000 (byte) times faster than through the tokenizers library; any other tokenizer goes
through its fast (Rust) backend in batches, or through its Python implementation when it has no backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ginformer.data.rows import HUB_ID, load_hub_dataset, read_jsonl
from ginformer.data.tokenizer import TEXT_SPECIAL_TOKENS, UNK, build_byte_tokenizer, build_char_tokenizer
from ginformer.errors import ConfigError, DataError, MissingInput
from ginformer.files import UTF8_BOM, check_output_dir, refuse_special_file
from ginformer.pretrained import load_base_tokenizer

Split = Literal["position", "document"]

SUFFIXES = (".txt", ".jsonl", ".parquet")
# A long .txt file is read in pieces of about this many bytes, cut after a newline (or, in a longer line, at a
# character boundary); ids are encoded in batches of about BATCH_CHARS characters. Read when called, so tests
# can shrink them. CHUNK_BYTES is part of the cache key: with a BPE tokenizer it can change the ids.
CHUNK_BYTES = 1 << 16
BATCH_CHARS = 1 << 20
PARQUET_BATCH_ROWS = 1024
CACHE_FORMAT = 2  # bump when the files or the way ids are made change, so old caches are not reused
META = "meta.json"
UTF8_BOM_BYTES = UTF8_BOM.encode("utf-8")


@dataclass(frozen=True)
class CorpusSplit:
    """One side of the split, as token ids."""

    ids: np.ndarray  # 1-D token ids, np.memmap when cached on disk; documents joined by the end token
    characters: int  # characters of text these ids encode; each document separator counts as 1
    documents: int  # documents (or parts of documents) in this split


@dataclass(frozen=True)
class TokenizedCorpus:
    """A corpus split into train and val ids, with the tokenizer that made them (and decodes them)."""

    tokenizer: PreTrainedTokenizerBase
    train: CorpusSplit
    val: CorpusSplit
    source: str  # the path or hub id, for messages and run records


# ---------------------------------------------------------------------------------------------------- public


def tokenize_corpus(
    source: str | Path,
    *,
    text_column: str = "text",
    tokenizer: str | PreTrainedTokenizerBase = "char",
    split: Split = "position",
    val_fraction: float = 0.1,
    split_seed: int = 42,
    cache_dir: str | Path | None = None,
) -> TokenizedCorpus:
    """Read ``source``, split it into train and val, and tokenize both sides.

    ``source``: a ``.txt`` file (one document), a folder (every ``*.txt`` below it, sorted by relative path, one
    document each), a ``.jsonl`` or ``.parquet`` file (one document per row, from ``text_column``), or a hub
    dataset id ``owner/name`` (its ``train`` split, ``text_column``).

    ``tokenizer``: ``"char"`` (one id per character of the training split, see ``build_char_tokenizer``),
    ``"byte"`` (UTF-8 bytes), any other string is ``"smollm2"``, a local tokenizer directory or a hub id (loaded
    with ``load_base_tokenizer``), or a tokenizer object, used as is. Its eos token separates documents.

    ``split="position"`` is nanoGPT's: over the N characters of the documents (separators not counted), the
    first ``int(N * (1 - val_fraction))`` train and the rest validate, so the cut may fall inside a document.
    ``split="document"`` keeps documents whole: they are shuffled with ``random.Random(split_seed)`` and go to
    val until it holds at least ``val_fraction`` of the characters (one document at least, never all); both
    sides keep the source order. Use it when documents are independent and a model must not see the start of a
    validation document in training.

    ``cache_dir``: write ``<cache_dir>/<key>/{train,val}.bin`` and ``meta.json`` and return memory maps; the key
    hashes everything that changes the ids (the files' paths, sizes and modification times, or the hub id and
    its fingerprint; the column; the split settings; the tokenizer), so a later call with the same inputs reuses
    the files. Without it, the ids are plain in-memory arrays.
    """
    _check_settings(split, val_fraction, split_seed)
    if cache_dir is not None:
        check_output_dir(cache_dir, "cache_dir")
    corpus = _open_source(source, text_column)
    resolved = None if _is_spec(tokenizer, "char") else _resolve_tokenizer(tokenizer)

    directory = None
    if cache_dir is not None:
        key = _cache_key(corpus, split, val_fraction, split_seed, resolved)
        directory = Path(cache_dir) / key
        if (directory / META).is_file():
            return _load_cached(directory, resolved, corpus.name)

    plan = _plan_split(corpus, split, val_fraction, split_seed)
    if resolved is None:
        resolved = build_char_tokenizer(_training_characters(corpus, plan))
    if directory is None:
        sinks = _tokenize(corpus, plan, resolved, out=None)
        train, val = (CorpusSplit(sink.array(), sink.characters, sink.documents) for sink in sinks)
        return TokenizedCorpus(resolved, train, val, corpus.name)
    return _tokenize_to_cache(corpus, plan, resolved, directory, char=_is_spec(tokenizer, "char"))


def tokenize_source(
    source: str | Path, tokenizer: str | PreTrainedTokenizerBase, text_column: str = "text"
) -> CorpusSplit:
    """All of ``source`` (any source ``tokenize_corpus`` reads) in ``tokenizer``'s ids, unsplit and in memory:
    a held-out file scored as a whole. Documents are joined by the eos token; characters outside a char
    tokenizer's vocabulary become <|unk|>. ``"char"`` is refused: a new vocabulary would not be the model's."""
    if _is_spec(tokenizer, "char"):
        raise ValueError(
            "tokenize_source needs the model's tokenizer; 'char' would build a new vocabulary from this text. Pass "
            "the tokenizer the model was trained with"
        )
    resolved = _resolve_tokenizer(tokenizer)
    corpus = _open_source(source, text_column)
    plan = _Plan(sum(_count_characters(corpus).values()), cut=None, val_documents=frozenset())  # all: train
    sink, _ = _tokenize(corpus, plan, resolved, out=None)
    return CorpusSplit(sink.array(), sink.characters, sink.documents)


class PackedBlocks(torch.utils.data.Dataset):
    """Map-style dataset of consecutive, non-overlapping blocks of ``block_size`` token ids, for Trainer.

    Every id is in exactly one block: block i is ``ids[i*block_size : (i+1)*block_size]``. The last, shorter
    block is kept when it holds at least 2 ids and dropped otherwise, since one id has no next token to
    predict; so at most one id is lost. Blocks cross document separators, as in nanoGPT: the model learns to
    start a new document after eos. ``labels`` equal ``input_ids``; the model shifts them for next-token
    prediction. The final block may be shorter, so batch with a collator that pads (labels with -100).
    """

    def __init__(self, ids: np.ndarray, block_size: int):
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 2:
            raise ValueError(f"block_size must be an int >= 2 (a block needs a next token), got {block_size!r}")
        if np.ndim(ids) != 1:
            raise ValueError(f"ids must be 1-D, got shape {np.shape(ids)}")
        self.ids = ids
        self.block_size = int(block_size)
        full, rest = divmod(len(ids), self.block_size)
        self._length = full + (1 if rest >= 2 else 0)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"block index must be an int, got {type(i).__name__}")
        n = self._length
        if not -n <= i < n:
            raise IndexError(f"block {i} out of range: {n} blocks of {self.block_size} ids")
        start = (int(i) % n) * self.block_size
        block = self.ids[start : start + self.block_size].tolist()  # Python ints, whatever the stored dtype
        return {"input_ids": block, "labels": list(block)}


# ---------------------------------------------------------------------------------------------------- settings


def _check_settings(split: str, val_fraction: float, split_seed: int) -> None:
    if split not in ("position", "document"):
        raise ValueError(f"split must be 'position' or 'document', got {split!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise ValueError(f"split_seed must be an int, got {split_seed!r}")


def _is_spec(tokenizer: object, name: str) -> bool:
    return isinstance(tokenizer, str) and tokenizer == name


def _resolve_tokenizer(spec: str | Path | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer object for every spec but "char" (whose vocabulary waits for the training split)."""
    if _is_spec(spec, "byte"):
        tokenizer = build_byte_tokenizer()
    elif isinstance(spec, (str, os.PathLike)):
        tokenizer = load_base_tokenizer(spec)
    elif isinstance(spec, PreTrainedTokenizerBase):
        tokenizer = spec
    else:
        raise ValueError(
            f"tokenizer must be 'char', 'byte', a tokenizer directory or hub id, or a tokenizer object, got {spec!r}"
        )
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            f"tokenizer {tokenizer.name_or_path or type(tokenizer).__name__!r} has no eos token, which separates "
            "documents in the token stream; set tokenizer.eos_token, or use 'char' or 'byte'"
        )
    return tokenizer


# ---------------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Corpus:
    """A source opened for reading; ``read`` may be called again and yields the same pieces each time."""

    name: str  # the path or hub id: in messages, run records and meta.json
    read: Callable[[], Iterator[tuple[int, str]]]  # (document number, a piece of its text), in source order
    identity: dict  # what the cache key hashes: changes whenever the text may have changed


def _open_source(source: str | Path, text_column: str) -> _Corpus:
    """Check that the source exists and has a supported kind; reading and validating wait for ``read()``."""
    path = Path(source)
    refuse_special_file(path, "text source")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"), key=lambda p: p.relative_to(path).as_posix())
        for file in files:
            refuse_special_file(file, f"in the text source {path}, the file")
        files = [file for file in files if file.is_file()]  # a folder named *.txt is not a document
        if not files:
            raise DataError(f"{path}: folder has no .txt files (searched recursively)")
        identity = {"folder": str(path.resolve()), "files": [_file_identity(f, path) for f in files]}
        return _Corpus(str(path), lambda: _folder_pieces(files), identity)
    if path.is_file():
        identity = {"file": _file_identity(path, path.parent), "path": str(path.resolve())}
        if path.suffix == ".txt":
            return _Corpus(str(path), lambda: ((0, piece) for piece in _text_file_pieces(path)), identity)
        if path.suffix == ".jsonl":
            return _Corpus(str(path), lambda: _jsonl_documents(path, text_column), identity | {"column": text_column})
        if path.suffix == ".parquet":
            return _Corpus(str(path), lambda: _parquet_documents(path, text_column), identity | {"column": text_column})
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; a text source is a .txt, .jsonl or "
            ".parquet file, a folder of .txt files, or a hub dataset id owner/name"
        )
    if isinstance(source, Path) or path.suffix in SUFFIXES or not HUB_ID.match(str(source)):
        raise MissingInput(f"text source not found: {path} (and it is not a hub dataset id owner/name)")
    return _hub_corpus(str(source), text_column)


def _file_identity(path: Path, root: Path) -> list:
    stat = path.stat()
    return [path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns]


def _folder_pieces(files: list[Path]) -> Iterator[tuple[int, str]]:
    for number, file in enumerate(files):
        for piece in _text_file_pieces(file):
            yield number, piece


def _text_file_pieces(path: Path) -> Iterator[str]:
    """The UTF-8 text of ``path`` in pieces of about CHUNK_BYTES, each cut after a newline (a newline byte never
    occurs inside a multi-byte character); a line longer than that is cut at a character boundary. See
    _piece_end for which newline."""
    chunk_bytes = CHUNK_BYTES
    offset, line = 0, 1  # byte offset and line number of the start of `pending`
    pending = b""
    with path.open("rb") as f:
        while True:
            block = f.read(chunk_bytes)
            data = pending + block
            if not block:
                if data:
                    yield _decode(data, path, offset, line)
                return
            if offset == 0 and data.startswith(UTF8_BOM_BYTES):  # an encoding marker, not text
                data, offset = data[len(UTF8_BOM_BYTES) :], len(UTF8_BOM_BYTES)
            cut = _piece_end(data)
            if cut == 0:
                pending = data
                continue
            piece = data[:cut]
            yield _decode(piece, path, offset, line)
            offset, line = offset + cut, line + piece.count(b"\n")
            pending = data[cut:]


# A newline between two printable ASCII characters, as in "speak.\nFirst": regex pre-tokenizers (GPT-2's, Llama 3's,
# SmolLM2's) never join such a newline with its neighbours, so a cut after it gives the whole text's ids.
_CLEAN_NEWLINE = re.compile(rb"[!-~]\n(?=[!-~])")
_CLEAN_NEWLINE_WINDOW = 1 << 13


def _piece_end(data: bytes) -> int:
    """Where to cut ``data``: after its last newline between printable ASCII characters (searched in the last
    8 KiB), else after its last newline (BPE ids may then differ from the whole text's by a merge across it),
    else at a character boundary."""
    start = max(0, len(data) - _CLEAN_NEWLINE_WINDOW)
    last = None
    for last in _CLEAN_NEWLINE.finditer(data, start):
        pass
    if last is not None:
        return last.start() + 2
    return data.rfind(b"\n") + 1 or _character_start(data)


def _character_start(data: bytes) -> int:
    """Offset of the start of the last (possibly incomplete) UTF-8 character in ``data``: a cut there never
    splits a character. UTF-8 continuation bytes are 0b10xxxxxx, and a character has at most 3 of them."""
    i = len(data) - 1
    while i > 0 and len(data) - i < 4 and data[i] & 0xC0 == 0x80:
        i -= 1
    return max(i, 0)


def _decode(data: bytes, path: Path, offset: int, line: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        at = offset + err.start
        line += data[: err.start].count(b"\n")
        raise DataError(
            f"{path}: not UTF-8 text: line {line}, byte offset {at} (0x{data[err.start]:02x}: {err.reason}); "
            "convert the file to UTF-8"
        ) from None


def _jsonl_documents(path: Path, column: str) -> Iterator[tuple[int, str]]:
    """One document per non-blank line: the line's JSON object's ``column``, which must be a string. A corpus
    has no "skip" mode: the first bad line stops the read, before anything is tokenized."""
    for number, row in read_jsonl(path):
        where = f"{path}: line {number}"
        if isinstance(row, str):  # the reader's reason: not JSON, or not an object
            raise DataError(f"{where}: {row}")
        if column not in row:
            raise DataError(f"{where}: no column {column!r} (found {sorted(row)}); set text_column")
        yield number, _text_value(row[column], where, column)


def _text_value(value: object, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {column!r} is {type(value).__name__}, expected a string")
    if not value.isascii():  # JSON may escape a lone surrogate, which no UTF-8 text (and no tokenizer) takes
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DataError(f"{where}: {column!r} holds a lone surrogate ({err.reason}), which is not text") from None
    return value


def _parquet_documents(path: Path, column: str) -> Iterator[tuple[int, str]]:
    """One document per row, from ``column``, read in record batches: never the whole table at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    with parquet:
        names = parquet.schema_arrow.names
        if column not in names:
            raise DataError(f"{path}: no column {column!r} (found {names}); set text_column")
        kind = parquet.schema_arrow.field(column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
            raise DataError(f"{path}: row 0 (0-based): column {column!r} holds {kind} values, expected strings")
        row = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[column]):
            values = batch.column(0)
            if values.null_count:
                first = row + values.is_null().to_pylist().index(True)
                raise DataError(f"{path}: row {first} (0-based): {column!r} is null, expected a string")
            for value in values.to_pylist():
                yield row, value
                row += 1


def _hub_corpus(dataset_id: str, column: str) -> _Corpus:
    dataset = load_hub_dataset(dataset_id, None, "train", local_formats=".txt, .jsonl or .parquet")
    name = f"hub dataset {dataset_id!r} (train)"
    if column not in dataset.column_names:
        raise DataError(f"{name}: no column {column!r} (found {dataset.column_names}); set text_column")

    def read() -> Iterator[tuple[int, str]]:
        row = 0
        for batch in dataset.select_columns([column]).iter(batch_size=PARQUET_BATCH_ROWS):
            for value in batch[column]:
                yield row, _text_value(value, f"{name}: row {row} (0-based)", column)
                row += 1

    identity = {"hub": dataset_id, "fingerprint": getattr(dataset, "_fingerprint", None), "column": column}
    return _Corpus(dataset_id, read, identity)


# ---------------------------------------------------------------------------------------------------- split


@dataclass(frozen=True)
class _Plan:
    """Where each piece of text goes: before character ``cut`` to train (position split), or by document."""

    characters: int  # N: characters of all documents, separators not counted
    cut: int | None  # position split: the first val character
    val_documents: frozenset[int] | None  # document split: the document numbers that validate


def _count_characters(corpus: _Corpus) -> dict[int, int]:
    """First pass: characters per non-empty document (validating every file and row on the way)."""
    counts: dict[int, int] = {}
    with _progress(f"reading {corpus.name}", None) as bar:
        for document, piece in corpus.read():
            counts[document] = counts.get(document, 0) + len(piece)
            bar.update(len(piece))
    if not any(counts.values()):
        detail = f"all {len(counts)} of its documents are empty" if counts else "it holds no text"
        raise DataError(f"{corpus.name}: the corpus is empty: {detail}")
    return {d: n for d, n in counts.items() if n > 0}  # empty documents are dropped


def _plan_split(corpus: _Corpus, split: Split, val_fraction: float, seed: int) -> _Plan:
    """Count, then decide where each character goes."""
    counts = _count_characters(corpus)
    total, documents = sum(counts.values()), list(counts)

    if split == "position":
        cut = int(total * (1 - val_fraction))
        if cut == 0 or cut == total:
            empty, hint = ("train", "a smaller") if cut == 0 else ("val", "a larger")
            raise DataError(
                f"{corpus.name}: split 'position' with val_fraction {val_fraction} leaves the {empty} split empty "
                f"({cut:,} train and {total - cut:,} val characters of {total:,}); use {hint} val_fraction or a "
                "larger corpus"
            )
        return _Plan(total, cut, None)

    if len(documents) < 2:
        raise DataError(
            f"{corpus.name}: split 'document' needs at least 2 non-empty documents, found {len(documents)}; "
            "use split: position to cut the text by character position instead"
        )
    order = list(documents)
    random.Random(seed).shuffle(order)
    val, held = set(), 0
    for document in order[:-1]:  # the last one always stays in train
        if held >= val_fraction * total:
            break
        val.add(document)
        held += counts[document]
    return _Plan(total, None, frozenset(val))


def _route(corpus: _Corpus, plan: _Plan) -> Iterator[tuple[bool, int, str]]:
    """(is_val, document, text) for every non-empty piece; a piece across the position cut comes as two."""
    position = 0
    for document, piece in corpus.read():
        if not piece:
            continue
        if plan.cut is None:
            yield document in plan.val_documents, document, piece
            continue
        end = position + len(piece)
        if end <= plan.cut:
            yield False, document, piece
        elif position >= plan.cut:
            yield True, document, piece
        else:
            yield False, document, piece[: plan.cut - position]
            yield True, document, piece[plan.cut - position :]
        position = end


def _training_characters(corpus: _Corpus, plan: _Plan) -> set[str]:
    """Second pass (char tokenizer): the distinct characters of the training split."""
    characters: set[str] = set()
    for is_val, _, text in _route(corpus, plan):
        if is_val and plan.cut is not None:
            break  # position split: everything after the first val piece validates
        if not is_val:
            characters.update(text)
    return characters


# ---------------------------------------------------------------------------------------------------- tokenize


def _encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[str]], list]:
    """Texts -> ids with no special tokens added, and the text of a special token read as plain text."""
    fast = _numpy_encoder(tokenizer)
    if fast is not None:
        return fast
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python (slow) tokenizer
        return lambda texts: tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())  # a copy: the caller's tokenizer is left as it is
    plain.encode_special_tokens = True
    plain.no_truncation()
    plain.no_padding()
    return lambda texts: [e.ids for e in plain.encode_batch_fast(texts, add_special_tokens=False)]


def _numpy_encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[str]], list[np.ndarray]] | None:
    """The same ids as ``tokenizer`` at numpy speed (10 to 1,000 times faster), when it is one of our char or byte
    tokenizers, built here or loaded from disk. Recognised by rebuilding it and comparing the whole serialized
    tokenizer, so a tokenizer that differs in any way takes the general path. None otherwise."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(tokenizer, PreTrainedTokenizerFast):
        return None
    serialized = backend.to_str()
    if serialized == build_byte_tokenizer().backend_tokenizer.to_str():
        return lambda texts: [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]
    vocab = tokenizer.get_vocab()
    special = {vocab.get(token) for token in TEXT_SPECIAL_TOKENS}
    if None in special or special != set(range(len(vocab) - 3, len(vocab))):
        return None
    characters = [token for token, i in sorted(vocab.items(), key=lambda item: item[1]) if i < len(vocab) - 3]
    if any(len(c) != 1 for c in characters):
        return None
    if serialized != build_char_tokenizer(characters).backend_tokenizer.to_str():
        return None
    codes = np.array([ord(c) for c in characters], dtype=np.uint32)  # sorted, as the ids are
    unk = vocab[UNK]

    def encode(texts: list[str]) -> list[np.ndarray]:
        out = []
        for text in texts:
            points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            ids = np.searchsorted(codes, points).clip(max=max(len(codes) - 1, 0))
            known = codes[ids] == points if len(codes) else np.zeros(len(points), dtype=bool)
            out.append(np.where(known, ids, unk))
        return out

    return encode


def _ids_dtype(tokenizer: PreTrainedTokenizerBase) -> np.dtype:
    size = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=0) + 1)
    return np.dtype(np.uint16 if size <= 1 << 16 else np.uint32)


class _IdSink:
    """One split's ids: text pieces are buffered, encoded a batch at a time, and joined by the separator."""

    def __init__(
        self,
        encode: Callable[[list[str]], list],
        separator: int,
        dtype: np.dtype,
        out: BinaryIO | None,
        progress: Callable[[int], object],
    ):
        self.encode, self.dtype, self.out, self.progress = encode, dtype, out, progress
        self.separator = np.array([separator], dtype=dtype)
        self.texts: list[str] = []
        self.separated: list[bool] = []  # whether a separator goes before each buffered text
        self.buffered = 0
        self.chunks: list[np.ndarray] = []  # in memory only (out is None)
        self.last_document: int | None = None
        self.documents = self.characters = self.tokens = 0

    def add(self, document: int, text: str) -> None:
        starts = document != self.last_document
        separated = starts and self.documents > 0
        if starts:
            self.last_document = document
            self.documents += 1
        self.texts.append(text)
        self.separated.append(separated)
        self.characters += len(text) + separated
        self.buffered += len(text)
        if self.buffered >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        if not self.texts:
            return
        parts: list[np.ndarray] = []
        for separated, ids in zip(self.separated, self.encode(self.texts)):
            if separated:
                parts.append(self.separator)
            parts.append(np.asarray(ids, dtype=self.dtype))
        ids = np.concatenate(parts)
        if self.out is None:
            self.chunks.append(ids)
        else:
            ids.tofile(self.out)
        self.tokens += len(ids)
        self.progress(self.buffered)
        self.texts, self.separated, self.buffered = [], [], 0

    def array(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=self.dtype)


def _tokenize(
    corpus: _Corpus, plan: _Plan, tokenizer: PreTrainedTokenizerBase, out: tuple[BinaryIO, BinaryIO] | None
) -> tuple[_IdSink, _IdSink]:
    """Last pass: encode the train and val pieces, in memory (out None) or appended to the two files."""
    encode, dtype = _encoder(tokenizer), _ids_dtype(tokenizer)
    with _progress(f"tokenizing {corpus.name}", plan.characters) as bar:
        train, val = (_IdSink(encode, tokenizer.eos_token_id, dtype, f, bar.update) for f in (out or (None, None)))
        for is_val, document, text in _route(corpus, plan):
            (val if is_val else train).add(document, text)
        train.flush()
        val.flush()
    return train, val


def _progress(desc: str, total: int | None):
    return tqdm(total=total, desc=desc, unit="char", unit_scale=True, leave=False, disable=None)


# ---------------------------------------------------------------------------------------------------- cache


def _cache_key(
    corpus: _Corpus, split: Split, val_fraction: float, seed: int, tokenizer: PreTrainedTokenizerBase | None
) -> str:
    """``<source name>-<hash>``: a hash of everything that changes the ids; the name only helps a reader."""
    settings = {
        "format": CACHE_FORMAT,
        "chunk_bytes": CHUNK_BYTES,
        "source": corpus.identity,
        "split": split,
        "val_fraction": val_fraction,
        "split_seed": seed if split == "document" else None,
        "tokenizer": "char" if tokenizer is None else _tokenizer_identity(tokenizer),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    stem = re.sub(r"[^\w.-]+", "_", Path(corpus.name).stem or corpus.name)[:40]
    return f"{stem}-{digest}"


def _tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of the whole tokenizer (model, merges, normalizer, added tokens), not of its name: a name says
    nothing about local edits."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    text += f"|eos={tokenizer.eos_token_id}"
    return hashlib.sha256(text.encode()).hexdigest()


def _tokenize_to_cache(
    corpus: _Corpus, plan: _Plan, tokenizer: PreTrainedTokenizerBase, directory: Path, char: bool
) -> TokenizedCorpus:
    """Tokenize into a temporary folder beside ``directory`` and rename it into place only when complete, so
    that an interrupted run leaves nothing a later run would take for a finished cache."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        with (work / "train.bin").open("wb") as train_file, (work / "val.bin").open("wb") as val_file:
            train, val = _tokenize(corpus, plan, tokenizer, out=(train_file, val_file))
        if char:
            tokenizer.save_pretrained(work / "tokenizer")
        meta = {
            "format": CACHE_FORMAT,
            "source": corpus.name,
            "tokenizer": "char" if char else tokenizer.name_or_path,
            "tokenizer_sha256": _tokenizer_identity(tokenizer),
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
            "dtype": _ids_dtype(tokenizer).name,
            "split": "position" if plan.cut is not None else "document",
            "train": {"tokens": train.tokens, "characters": train.characters, "documents": train.documents},
            "val": {"tokens": val.tokens, "characters": val.characters, "documents": val.documents},
        }
        (work / META).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(work, directory)
        except OSError:
            if not (directory / META).is_file():  # not a finished cache written meanwhile by another run
                raise
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return _load_cached(directory, None if char else tokenizer, corpus.name)


def _load_cached(directory: Path, tokenizer: PreTrainedTokenizerBase | None, name: str) -> TokenizedCorpus:
    """The finished cache in ``directory``; the char tokenizer comes from it, any other is the one given."""
    meta = json.loads((directory / META).read_text())
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer", trust_remote_code=False)
    dtype = np.dtype(meta["dtype"])
    splits = []
    for side in ("train", "val"):
        path, counts = directory / f"{side}.bin", meta[side]
        size = path.stat().st_size if path.is_file() else -1
        if size != counts["tokens"] * dtype.itemsize:
            raise DataError(
                f"{path}: {size} bytes, but {directory / META} says {counts['tokens']} {dtype.name} ids; the cache "
                f"is damaged: delete {directory} to rebuild it"
            )
        ids = np.memmap(path, dtype=dtype, mode="r", shape=(counts["tokens"],)) if size else np.zeros(0, dtype)
        splits.append(CorpusSplit(ids, counts["characters"], counts["documents"]))
    return TokenizedCorpus(tokenizer, splits[0], splits[1], name)
