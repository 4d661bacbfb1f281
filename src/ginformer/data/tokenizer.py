"""Character-level tokenizer for the protein task: one id per residue, one id per control or label token.

The vocabulary is fixed, not trained. The paper reports 271 tokens, which is what a byte-level vocabulary
(256 bytes, amino-acid letters among them) plus its 15 control and label tokens adds up to; most of those
byte ids never occur in protein text, so this vocabulary keeps only what can. Ids, 40 in all:

     0- 6  control   <|pad|> <|eot_id|> <|begin_of_text|> <|unk|> <|mask|> <|sequence|> <|/sequence|>
     7-14  labels    <|AH|> <|BS|> <|UNSTRUCTURED|> <|BEND|> <|PHIHELIX|> <|310HELIX|> <|BETABRIDGE|> <|T|>
    15-34  residues  A R N D C E Q G H I L K M F P S T W Y V  (the paper's order)
    35-39  residues  X B Z U O  (ambiguous or rare; present so that allow_ambiguous data never maps to <|unk|>)

The control tokens are special (dropped by ``decode(skip_special_tokens=True)``); the label tokens are
ordinary added tokens, so a decoded completion still shows the predicted labels. Any other character (lower
case, space, digits) becomes <|unk|>. No token is added on encoding: the formatted text already carries
<|begin_of_text|> and <|eot_id|>.
"""

from __future__ import annotations

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


def sequence_end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Id of <|/sequence|>: the primary label is predicted at the position right after it."""
    return _token_id(tokenizer, SEQ_END)


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {token!r} token; build it with build_protein_tokenizer()")
    return token_id
