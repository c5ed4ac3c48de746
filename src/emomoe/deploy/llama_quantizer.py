"""llama.cpp's own quantizer, for the types gguf's Python package cannot make (the k-quants).

It runs through llama-cpp-python's binding of `llama_model_quantize`, which reads one GGUF and
writes another a tensor at a time (memory-mapped), so it streams as our writer does.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from gguf import LlamaFileType

from emomoe.errors import DataError, optional_import


def llama_cpp():
    """The llama_cpp module; MissingDependency naming the extra if it is not installed."""
    return optional_import("llama_cpp", "gguf", "a k-quant GGUF (made by llama.cpp's own quantizer)")


def quantize_file(source: Path, out: Path, file_type: LlamaFileType) -> None:
    """Write `source` quantized to `file_type` (e.g. MOSTLY_Q4_K_M) at `out`."""
    llama = llama_cpp()
    params = llama.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = os.cpu_count() or 1
    if llama.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise DataError(f"{out}: llama.cpp could not quantize {source.name} to {file_type.name}")
