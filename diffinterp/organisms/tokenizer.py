"""The word-level tokenizer of the toy tasks, saved as a standard HF tokenizer.

Every token is a whole symbol: a digit, a lower-case letter (variable names), an operator, or a
task word. Text is split on whitespace, punctuation and single digits, so ``"b=a+14"`` tokenizes to
``b = a + 1 4`` and numbers are written digit by digit. Special ids match the model configs
(``tiny_config`` defaults): ``<pad>`` = 0, ``<eos>`` = 1, ``<bos>`` = 2, ``<unk>`` = 3.

    tok = build_tokenizer()
    tok.save_pretrained(folder)            # AutoTokenizer.from_pretrained(folder) then works
    ids = tok("arith a=3 b=a+4 ? b")["input_ids"]   # [2, ...]: <bos> is prepended
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = [PAD, EOS, BOS, UNK]

#: Task tags and task words of the four-task toy model (``toy4``), whole words in the vocabulary.
WORDS = ["arith", "seq", "hop", "mon", "copy", "rev", "keep"]
SYMBOLS = list("=+-*?:;>,")
DIGITS = list(string.digits)
LETTERS = list(string.ascii_lowercase)
#: The ``toy4`` vocabulary (56 tokens, model vocab 64), in id order: a prefix of :data:`VOCAB`.
TOY4_VOCAB: list[str] = SPECIAL_TOKENS + DIGITS + SYMBOLS + LETTERS + WORDS
TOY4_VOCAB_SIZE = 64

#: Symbols and words the model organisms add (after the toy4 ones, so shared tokens keep their ids).
ORGANISM_SYMBOLS = list("._|#")
ORGANISM_WORDS = [
    "carry",  # carry: suffix sums, a carry chain through every digit
    "latin",  # latin: Latin-square completion
    "gold",
    "plain",
    "Gold",  # gold: the recurrence with hidden terms, and its control
    "filter",
    "dedup",
    "serial",  # smear: data-dependent positions, and the serial control
    "solve",  # answer-first: the answer before its scratchpad
    "sum",
    "hint",  # hint: a digit sum, sometimes with a hint token
]

#: The full vocabulary, in id order.
VOCAB: list[str] = TOY4_VOCAB + ORGANISM_SYMBOLS + ORGANISM_WORDS
#: Model vocab size of the organisms: the vocabulary rounded up to a multiple of 8 (unused ids are
#: never produced by the tokenizer; the model learns to give them no mass).
VOCAB_SIZE = 72
assert len(VOCAB) <= VOCAB_SIZE, len(VOCAB)


def build_tokenizer(vocab_tokens: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` over ``vocab_tokens`` (default :data:`VOCAB`) that prepends
    ``<bos>`` to every text."""
    vocab = {tok: i for i, tok in enumerate(VOCAB if vocab_tokens is None else vocab_tokens)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tk.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, BOS_ID)]
    )
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=512,
    )
    return tok


def decode(ids) -> str:
    """Tokens up to the first ``<eos>`` (pads dropped), joined by spaces."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i == PAD_ID:
            continue
        out.append(VOCAB[i] if i < len(VOCAB) else f"<{i}>")
    return " ".join(out)


def token_ids(text: str) -> list[int]:
    """Ids of ``text`` without ``<bos>`` (fast path used by the data pipeline)."""
    return _TOKENIZER.encode(text, add_special_tokens=False)


_TOKENIZER = build_tokenizer()


def normalize_text(text: str) -> str:
    """Canonical form for exact match: tokens separated by single spaces (``"b=7"`` == ``"b = 7"``)."""
    return " ".join(_TOKENIZER.convert_ids_to_tokens(_TOKENIZER.encode(text, add_special_tokens=False)))
