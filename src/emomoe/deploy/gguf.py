"""`export_gguf`: a checkpoint or subset as one GGUF file that llama.cpp (and ollama, LM Studio,
llama-cpp-python) runs, with its tokenizer inside.

It streams like `select`: the tensors' names, shapes and types go into the header first (known
from the checkpoint without reading it), then each tensor is read from `CheckpointReader` in its
stored dtype, converted, written and dropped, so memory holds one tensor (a layer's stacked
experts at most) whatever the model's size. gguf's own `add_tensor` would keep every tensor until
the file is closed. The file appears atomically, when complete.

Types: `f32` holds our weights exactly, `f16` rounds them, and `q8_0` is quantized here with
gguf's quantizer (llama.cpp's blocks of 32). gguf has no quantizer for the k-quants, so `q4_k` runs
llama.cpp's own (`llama_model_quantize`, through llama-cpp-python) on an intermediate file in the
stored dtype, asking for its Q4_K_M mix. Norms and routers stay float32 in every type, and a
matrix whose rows do not split into blocks falls back to f16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType
from gguf.quants import quant_shape_to_byte_shape, quantize

from emomoe.checkpoint import CheckpointReader
from emomoe.data.tokenizer import TextTokenizer
from emomoe.deploy.config import GGUFExportConfig, GGUFType
from emomoe.deploy.layout import Architecture, GGUFTensor, add_hparams, architecture, gguf_tensors
from emomoe.deploy.llama_quantizer import llama_cpp, quantize_file
from emomoe.deploy.vocab import add_vocab, pre_tokenizer_name
from emomoe.io import atomic_path, check_output_file
from emomoe.train.provenance import checkpoint_tokenizer

# What each type writes: the type of the weight matrices, and the file type it declares.
_TYPES = {
    GGUFType.F32: (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    GGUFType.F16: (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    GGUFType.Q8_0: (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
_EXACT_TYPES = {
    torch.float32: (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    torch.float16: (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    torch.bfloat16: (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
}
"""The types that hold a stored dtype without rounding: what llama.cpp's quantizer starts from."""


def export_gguf(
    checkpoint: str | Path,
    out: str | Path,
    cfg: GGUFExportConfig | None = None,
    *,
    tokenizer: str | Path | None = None,
    force: bool = False,
    **fields: Any,
) -> Path:
    """Write `checkpoint` (ours, a subset, or a readable HF EMO directory) to the GGUF file `out`.

    `tokenizer`: a tokenizer folder or file (default: the checkpoint's, its source's or its run's).
    `fields` set fields of `cfg` (default: `GGUFExportConfig()`).
    """
    export = (cfg or GGUFExportConfig()).replace(**fields)
    checkpoint, out = Path(checkpoint), Path(out)
    check_output_file(out, force)
    with CheckpointReader(checkpoint) as reader:
        model_cfg = reader.config
        arch = architecture(model_cfg)
        tok = checkpoint_tokenizer(checkpoint, model_cfg, tokenizer, any_tokenizer=export.any_tokenizer)
        pre_tokenizer_name(tok)  # refuse before any writing
        if export.type == GGUFType.Q4_K:
            llama_cpp()
        with atomic_path(out) as tmp:
            if export.type == GGUFType.Q4_K:
                intermediate = tmp.with_name(tmp.name + ".stored")
                _write(reader, arch, tok, intermediate, *_EXACT_TYPES[reader.dtype("embed.weight")], checkpoint.name)
                quantize_file(intermediate, tmp, LlamaFileType.MOSTLY_Q4_K_M)
                intermediate.unlink()
            else:
                _write(reader, arch, tok, tmp, *_TYPES[export.type], checkpoint.name)
    return out


def _write(
    reader: CheckpointReader, arch: Architecture, tok: TextTokenizer, path: Path,
    matrix_type: GGMLQuantizationType, file_type: LlamaFileType, name: str,
) -> None:
    cfg = reader.config
    writer = GGUFWriter(path, arch.name)
    writer.add_name(name)
    writer.add_file_type(file_type)
    add_hparams(writer, cfg, arch)
    add_vocab(writer, tok, cfg.vocab_size)
    tensors = gguf_tensors(cfg, arch)
    types, sizes = [], []
    for t in tensors:
        shape = t.shape(reader.shape(t.source))
        qtype = _tensor_type(t, shape, matrix_type)
        nbytes = int(np.prod(quant_shape_to_byte_shape(shape, qtype)))
        writer.add_tensor_info(t.name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        types.append(qtype)
        sizes.append(nbytes)
    try:  # a failed write is named by the caller's atomic_path, which drops the partial file
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, qtype, nbytes in zip(tensors, types, sizes):
            source = reader.get(t.source, rows=None if t.rows is None else list(t.rows))
            data = quantize(t.apply(source).float().contiguous().numpy(), qtype)
            assert data.nbytes == nbytes, f"{t.name}: {data.nbytes} bytes, the header says {nbytes}"
            _write_data(writer, data)
            del source
            reader.close()  # unmap what was read: pages read through a mapping count as ours
    finally:
        writer.close()


def _write_data(writer: GGUFWriter, data: np.ndarray) -> None:
    """`writer.write_tensor_data`, through Python's file object: numpy's `tofile`, which that uses,
    reports a full disk as an OSError without an errno, which no caller can tell apart."""
    [fout] = writer.fout
    writer.write_padding(fout, fout.tell())
    fout.write(memoryview(np.ascontiguousarray(data)).cast("B"))
    writer.write_padding(fout, data.nbytes)


def _tensor_type(t: GGUFTensor, shape: tuple[int, ...], matrix_type: GGMLQuantizationType) -> GGMLQuantizationType:
    if not t.matrix:
        return GGMLQuantizationType.F32
    block_size, _ = GGML_QUANT_SIZES[matrix_type]
    return matrix_type if shape[-1] % block_size == 0 else GGMLQuantizationType.F16
