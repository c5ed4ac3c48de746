"""Text generation with a KV cache: greedy or sampled, batched, streamed. Knows nothing of files."""

from emomoe.generate.config import GenerateConfig, GenerationConfig
from emomoe.generate.decoding import Completion, FinishReason, generate, stream
from emomoe.generate.text import TextCompletion, generate_text

__all__ = [
    "Completion",
    "FinishReason",
    "GenerateConfig",
    "GenerationConfig",
    "TextCompletion",
    "generate",
    "generate_text",
    "stream",
]
