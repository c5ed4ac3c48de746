"""A byte-level BPE tokenizer as GGUF `tokenizer.ggml.*` keys, with a pre-tokenizer llama.cpp knows.

llama.cpp does not read the splitting regex from the file: it picks one of its built-in
pre-tokenizers by the name in `tokenizer.ggml.pre`. So a tokenizer is exported only when its
pre-tokenizer is one whose regex llama.cpp has under some name, and then under that name:

| our `tokenizer.json` pre-tokenizer                     | `tokenizer.ggml.pre` | llama.cpp's regex        |
|--------------------------------------------------------|----------------------|--------------------------|
| `ByteLevel` with its own (GPT-2) regex (`emomoe tokenizer train`) | `gpt-2` | GPT-2's, the same     |
| `Split` by cl100k's regex, then `ByteLevel` without one (dolma2, the released EMO's) | `dbrx` | cl100k's (as for llama 3) |
| the same, with the BPE model's `ignore_merges` on        | `llama-bpe`          | the same, merges ignored for words in the vocabulary |

Anything else (a normalizer, a prefix space, another regex, BPE options llama.cpp lacks) is
refused with the field named: a file that tokenizes differently would load without a warning.
The vocabulary is padded to the model's rows with unused `[PAD{i}]` tokens, as llama.cpp's own
converters do, since llama.cpp takes the number of embedding rows from the token list.
"""

from __future__ import annotations

import json
from typing import Any

from gguf import GGUFWriter, TokenType

from emomoe.data.tokenizer import TextTokenizer
from emomoe.errors import DataError

GPT2_REGEX = None
"""`ByteLevel(use_regex=True)` applies GPT-2's regex, which the file does not spell out."""
CL100K_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {(GPT2_REGEX, False): "gpt-2", (CL100K_REGEX, False): "dbrx", (CL100K_REGEX, True): "llama-bpe"}
"""(splitting regex, the BPE model's `ignore_merges`) -> llama.cpp's name for that pre-tokenizer."""


def pre_tokenizer_name(tok: TextTokenizer) -> str:
    """llama.cpp's name for the way `tok` splits text into words; DataError naming the field if none."""
    spec = json.loads(tok.tokenizer.to_str())
    model = spec.get("model") or {}
    _require(model.get("type") == "BPE", "model.type", model.get("type"), "llama.cpp's gpt2 vocabulary is a BPE")
    _require(spec.get("normalizer") is None, "normalizer", spec.get("normalizer"), "llama.cpp normalizes nothing")
    for field in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        _require(not model.get(field), f"model.{field}", model.get(field), "llama.cpp's BPE has no such option")
    key = (_split_regex(spec.get("pre_tokenizer")), bool(model.get("ignore_merges")))
    if key not in PRE_TOKENIZERS:
        raise DataError(
            f"tokenizer.json: pre_tokenizer splits by {key[0]!r} (ignore_merges {key[1]}), which no llama.cpp "
            "pre-tokenizer does; exporting it would tokenize differently"
        )
    return PRE_TOKENIZERS[key]


def _split_regex(pre: Any) -> str | None:
    """The regex of a byte-level pre-tokenizer (None: GPT-2's, built into `ByteLevel`)."""
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    *splits, byte_level = steps if steps else [None]
    if not isinstance(byte_level, dict) or byte_level.get("type") != "ByteLevel":
        raise DataError(f"tokenizer.json: pre_tokenizer {pre!r} does not end in a ByteLevel step")
    _require(not byte_level.get("add_prefix_space"), "pre_tokenizer.add_prefix_space", True,
             "llama.cpp adds no space before the text")
    if not splits:
        _require(byte_level.get("use_regex", True), "pre_tokenizer.use_regex", False, "llama.cpp always splits")
        return GPT2_REGEX
    split = splits[0]
    if len(splits) != 1 or split.get("type") != "Split" or byte_level.get("use_regex", True):
        raise DataError(f"tokenizer.json: pre_tokenizer {pre!r} is not one regex Split before a ByteLevel step")
    _require(split.get("behavior") == "Isolated" and not split.get("invert"), "pre_tokenizer Split.behavior",
             split.get("behavior"), "llama.cpp keeps every match as its own word")
    return (split.get("pattern") or {}).get("Regex")


def _require(ok: bool, field: str, value: Any, why: str) -> None:
    if not ok:
        raise DataError(f"tokenizer.json: {field} {value!r} is not supported: {why}")


def add_vocab(writer: GGUFWriter, tok: TextTokenizer, num_rows: int) -> None:
    """Write `tok` (padded to the model's `num_rows` embedding rows) into `writer`'s metadata."""
    vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
    added = {token.content: token.special for token in tok.tokenizer.get_added_tokens_decoder().values()}
    tokens = [f"[PAD{i}]" for i in range(num_rows)]
    types = [TokenType.UNUSED] * num_rows
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = TokenType.NORMAL if text not in added else TokenType.CONTROL if added[text] else TokenType.USER_DEFINED
    merges = json.loads(tok.tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tok))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # tokenizers writes merges as "a b" strings (older files) or as [a, b] pairs (newer ones).
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    # No BOS: documents are separated by EOS alone, and a prompt starts with its first token.
    writer.add_bos_token_id(tok.eos_id)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_pad_token_id(tok.eos_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
