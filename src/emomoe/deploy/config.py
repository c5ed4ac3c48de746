"""The settings of `emomoe export gguf`, apart from the writer so that the CLI can list them
without the optional `gguf` package installed."""

from __future__ import annotations

import dataclasses
import enum

from emomoe.data.windows import TokenizerCheckConfig


class GGUFType(enum.StrEnum):
    F32 = "f32"
    """float32: exactly our weights; what the tests compare logits with."""
    F16 = "f16"
    """float16 matrices: half the size; exact for weights that fit float16's range."""
    Q8_0 = "q8_0"
    """8-bit blocks of 32 with a float16 scale (8.5 bits a weight), quantized here."""
    Q4_K = "q4_k"
    """llama.cpp's Q4_K_M mix (about 4.9 bits a weight), quantized by llama.cpp itself: needs
    llama-cpp-python (the `gguf` extra)."""


@dataclasses.dataclass
class GGUFExportConfig(TokenizerCheckConfig):
    type: GGUFType = GGUFType.F16
    """Type of the weight matrices in the file."""
