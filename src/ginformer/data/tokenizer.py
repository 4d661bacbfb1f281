"""Tokenizers built, not trained: the protein task's, and a character and a byte tokenizer for any text.

Protein: one id per residue, one id per control or label token. The paper reports 271 tokens, which is what
a byte-level vocabulary (256 bytes, amino-acid letters among them) plus its 15 control and label tokens adds up
to; most of those byte ids never occur in protein text, so this vocabulary keeps only what can. Ids, 40 in all:

     0- 6  control   <|pad|> <|eot_id|> <|begin_of_text|> <|unk|> <|mask|> <|sequence|> <|/sequence|>
     7-14  labels    <|AH|> <|BS|> <|UNSTRUCTURED|> <|BEND|> <|PHIHELIX|> <|310HELIX|> <|BETABRIDGE|> <|T|>
    15-34  residues  A R N D C E Q G H I L K M F P S T W Y V  (the paper's order)
    35-39  residues  X B Z U O  (ambiguous or rare; present so that allow_ambiguous data never maps to <|unk|>)

The control tokens are special (dropped by ``decode(skip_special_tokens=True)``); the label tokens are
ordinary added tokens, so a decoded completion still shows the predicted labels. Any other character (lower
case, space, digits) becomes <|unk|>. No token is added on encoding: the formatted text already carries
<|begin_of_text|> and <|eot_id|>.

Text (``build_char_tokenizer``, ``build_byte_tokenizer``): nanoGPT's character vocabulary and a UTF-8 byte
vocabulary, for training from scratch on any corpus (``ginformer.data.text``). The ordinary ids come first and
equal what they stand for: the index of the character in the sorted set (nanoGPT's ``stoi``), the byte's
value. The special tokens follow. <|endoftext|> is eos and bos: it separates documents in a packed stream.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ginformer.data.protein import AMBIGUOUS_AMINO_ACIDS, BOS, EOT, SEQ_END, SEQ_START, SS_CLASSES

PAD, UNK, MASK = "<|pad|>", "<|unk|>", "<|mask|>"
CONTROL_TOKENS: tuple[str, ...] = (PAD, EOT, BOS, UNK, MASK, SEQ_START, SEQ_END)
LABEL_TOKENS: tuple[str, ...] = tuple(f"<|{c}|>" for c in SS_CLASSES)
RESIDUE_TOKENS: tuple[str, ...] = tuple("ARNDCEQGHILKMFPSTWYV" + AMBIGUOUS_AMINO_ACIDS)


def build_protein_tokenizer() -> PreTrainedTokenizerFast:
    """The protein tokenizer; pad, eos and bos are set for Trainer and generate (eos = <|eot_id|>)."""
    vocab = {token: i for i, token in enumerate(CONTROL_TOKENS + LABEL_TOKENS + RESIDUE_TOKENS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # every character alone
    backend.decoder = decoders.Fuse()  # join without spaces, so decode(encode(text)) == text
    # Added tokens are matched before pre-tokenization, so "<|AH|>" is one id rather than six characters.
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in CONTROL_TOKENS])
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in LABEL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOT,
        unk_token=UNK,
        pad_token=PAD,
        mask_token=MASK,
        extra_special_tokens=[SEQ_START, SEQ_END],
    )


def label_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the 8 class tokens in SS_CLASSES order: slice a model's logits with them to score the labels."""
    return [_token_id(tokenizer, t) for t in LABEL_TOKENS]


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {token!r} token; build it with build_protein_tokenizer()")
    return token_id


# ---------------------------------------------------------------------------------------------------- text

END_OF_TEXT = "<|endoftext|>"
TEXT_SPECIAL_TOKENS: tuple[str, ...] = (END_OF_TEXT, PAD, UNK)  # the char tokenizer's, in id order


def build_char_tokenizer(characters: Iterable[str]) -> PreTrainedTokenizerFast:
    """One id per character of ``characters`` (sorted by code point, ids 0..n-1, as nanoGPT's ``stoi``), then
    <|endoftext|> (eos and bos), <|pad|> and <|unk|>. A character outside the set encodes to <|unk|>.

    Every character is one token, newline, tab and space included: the pre-tokenizer isolates each code point
    with ``[\\s\\S]`` because a regex ``.`` does not match a newline. No token is added on encoding, and
    ``decode(encode(text)) == text`` for any text of known characters (the Fuse decoder joins without spaces).
    """
    chars = sorted(set(characters))
    not_single = [c for c in chars if not isinstance(c, str) or len(c) != 1]
    if not_single:
        raise ValueError(f"characters must be single characters (str of length 1), got {not_single[:5]!r}")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({token: len(chars) + i for i, token in enumerate(TEXT_SPECIAL_TOKENS)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one code point each
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in TEXT_SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,  # " ." must decode to " .", not "."
    )


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens (id = the byte's value) of the UTF-8 encoding, then <|endoftext|> (256, eos and bos) and
    <|pad|> (257). Any string round-trips, one id per UTF-8 byte; there is no unknown token to need.

    It is GPT-2's byte-level scheme without merges: the ByteLevel pre-tokenizer maps each byte to a printable
    stand-in character, a BPE model with no merges keeps each stand-in a token, and the ByteLevel decoder maps
    the bytes back (a cut inside a multi-byte character decodes to U+FFFD, as any byte tokenizer does).
    """
    byte_char = _bytes_to_unicode()
    vocab = {byte_char[b]: b for b in range(256)}
    vocab.update({END_OF_TEXT: 256, PAD: 257})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (END_OF_TEXT, PAD)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> stand-in character table, which the ByteLevel pre-tokenizer and decoder use: printable
    Latin-1 bytes stand for themselves, the other 68 bytes take the code points 256, 257, … in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table
