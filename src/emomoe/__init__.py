"""emomoe: pretrain Mixture-of-Experts language models whose modules emerge (EMO)."""

import os
import sys

# Back large CPU tensors with transparent huge pages: page faults are expensive in VMs, and this
# gave +18% training tokens/s on the 2-core machine the project is tested on. torch reads the
# variable at its first allocation, so it is set here, before torch is imported; set it to 0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"


def _one_line_if_uncaught(previous=sys.excepthook):
    """An excepthook for a Ctrl-C during this import (torch takes seconds to load; the Ctrl-C is
    raised once the imports end): if nothing catches it, say "emomoe: interrupted" and exit 130, as
    the CLI does, instead of a traceback."""

    def hook(kind, value, traceback):
        sys.excepthook = previous
        if not issubclass(kind, KeyboardInterrupt):
            return previous(kind, value, traceback)
        print("emomoe: interrupted", file=sys.stderr, flush=True)
        os._exit(130)

    return hook


from emomoe.interrupts import held_interrupt  # noqa: E402 (after the environment variable above)

try:
    with held_interrupt():
        from emomoe.hf.auto import register_when_transformers_loads
        from emomoe.hf.formats import register_hf_formats
        from emomoe.model import ModelConfig, build_model
except KeyboardInterrupt:
    sys.excepthook = _one_line_if_uncaught()
    raise

# Hugging Face directories read as checkpoints everywhere; our EMO classes in transformers' Auto
# classes once the program imports transformers (see emomoe.hf.auto).
register_hf_formats()
register_when_transformers_loads()

__all__ = ["ModelConfig", "build_model", "__version__"]
