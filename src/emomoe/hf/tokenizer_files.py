"""The tokenizer and generation files that travel with a Hugging Face checkpoint.

An export needs a tokenizer: `tokenizer.json` goes along byte for byte, with the
`tokenizer_config.json` beside it (or one written here, naming EOS and padding) and a
`generation_config.json`. An import keeps these files in our checkpoint, so that exporting it
again reproduces them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from emomoe.data.tokenizer import HF_CONFIG_FILE, TOKENIZER_FILE, TextTokenizer
from emomoe.errors import DataError
from emomoe.model.config import ModelConfig

GENERATION_FILE = "generation_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
CARRIED_FILES = (TOKENIZER_FILE, HF_CONFIG_FILE, SPECIAL_TOKENS_FILE, GENERATION_FILE)
"""Files an import copies from the HF directory into our checkpoint."""
STORE_TOKENIZER_DIR = "tokenizer"


def find_export_tokenizer(tokenizer: str | Path | None, checkpoints: list[Path]) -> Path:
    """The `tokenizer.json` to export: from `tokenizer` (the file, its folder or a token store
    holding one), else the first of `checkpoints` (a model, then the models it was sliced from)
    that has one: an imported model keeps its tokenizer."""
    if tokenizer is None:
        for directory in checkpoints:
            if (directory / TOKENIZER_FILE).is_file():
                return directory / TOKENIZER_FILE
        raise DataError(
            f"{checkpoints[0]}: no tokenizer to export with the model ({TOKENIZER_FILE}); pass --tokenizer "
            "(a tokenizer.json, its folder, or the token store the model was trained on)"
        )
    path = Path(tokenizer)
    for candidate in (path, path / TOKENIZER_FILE, path / STORE_TOKENIZER_DIR / TOKENIZER_FILE):
        if candidate.is_file():
            return candidate
    raise DataError(f"{path}: no {TOKENIZER_FILE} there (expected the file, its folder or a token store)")


def pad_id(file: Path, tok: TextTokenizer) -> int:
    """The padding id its tokenizer_config.json names, else EOS (our tokenizers have no pad token)."""
    config = file.parent / HF_CONFIG_FILE
    if config.is_file():
        pad = json.loads(config.read_text()).get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        if isinstance(pad, str) and (pad_token_id := tok.tokenizer.token_to_id(pad)) is not None:
            return pad_token_id
    return tok.eos_id


def write_tokenizer_files(out: Path, file: Path, tok: TextTokenizer, cfg: ModelConfig) -> int:
    """Write the tokenizer files found beside `file` (or made for it) and a generation config into
    `out`; return the padding id they name."""
    shutil.copyfile(file, out / TOKENIZER_FILE)
    pad = pad_id(file, tok)
    if (file.parent / HF_CONFIG_FILE).is_file():
        for name in (HF_CONFIG_FILE, SPECIAL_TOKENS_FILE):
            if (file.parent / name).is_file():
                shutil.copyfile(file.parent / name, out / name)
    else:
        pad_token = tok.tokenizer.id_to_token(pad)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": tok.eos_token,
            "pad_token": pad_token,
            "bos_token": None,
            "model_max_length": cfg.max_seq_len,
            "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"],
        }
        (out / HF_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if (file.parent / GENERATION_FILE).is_file():
        shutil.copyfile(file.parent / GENERATION_FILE, out / GENERATION_FILE)
    else:
        generation = {"bos_token_id": None, "eos_token_id": tok.eos_id, "pad_token_id": pad}
        (out / GENERATION_FILE).write_text(json.dumps(generation, indent=2) + "\n")
    return pad


def carry_files(source: Path, out: Path) -> None:
    """Copy the tokenizer and generation files an HF directory has into our checkpoint `out`."""
    for name in CARRIED_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
