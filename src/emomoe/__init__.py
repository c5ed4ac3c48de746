"""emomoe: pretrain Mixture-of-Experts language models whose modules emerge (EMO)."""

import os

# Back large CPU tensors with transparent huge pages: page faults are expensive in VMs, and this
# gave +18% training tokens/s on the 2-core machine the project is tested on. torch reads the
# variable at its first allocation, so it is set here, before torch is imported; set it to 0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"

__all__ = ["ModelConfig", "build_model", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so that `import emomoe` (and the CLI's start-up, which must be able to
    # report a Ctrl-C in one line) does not pay for importing torch.
    if name in ("ModelConfig", "build_model"):
        from emomoe import model

        return getattr(model, name)
    raise AttributeError(f"module 'emomoe' has no attribute {name!r}")
