"""emomoe: pretrain Mixture-of-Experts language models whose modules emerge (EMO)."""

from emomoe.model import ModelConfig, build_model

__version__ = "0.1.0"

__all__ = ["ModelConfig", "build_model", "__version__"]
