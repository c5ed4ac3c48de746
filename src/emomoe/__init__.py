"""emomoe: pretrain Mixture-of-Experts language models whose modules emerge (EMO)."""

import os

# Back large CPU tensors with transparent huge pages: page faults are expensive in VMs, and this
# gave +18% training tokens/s on the 2-core machine the project is tested on. torch reads the
# variable at its first allocation, so it is set here, before torch is imported; set it to 0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from emomoe.hf.auto import register_when_transformers_loads  # noqa: E402
from emomoe.hf.formats import register_hf_formats  # noqa: E402
from emomoe.model import ModelConfig, build_model  # noqa: E402

# Hugging Face directories read as checkpoints everywhere; our EMO classes in transformers' Auto
# classes once the program imports transformers (see emomoe.hf.auto).
register_hf_formats()
register_when_transformers_loads()

__version__ = "0.1.0"

__all__ = ["ModelConfig", "build_model", "__version__"]
