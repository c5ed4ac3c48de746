"""emomoe: pretrain Mixture-of-Experts language models whose modules emerge (EMO).

Importing a module of emomoe imports only what that module needs: `import emomoe.io` loads
neither torch nor the model. `emomoe.ModelConfig` and `emomoe.build_model` load on first use.
"""

import os

# Back large CPU tensors with transparent huge pages: page faults are expensive in VMs, and this
# gave +18% training tokens/s on the 2-core machine the project is tested on. torch reads the
# variable at its first allocation, so it is set here, before torch is imported; set it to 0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from emomoe.hf.auto import register_when_transformers_loads  # noqa: E402 (after the variable above)

__version__ = "0.1.0"

# Our EMO classes in transformers' Auto classes once the program imports transformers (see
# emomoe.hf.auto, which imports neither torch nor transformers).
register_when_transformers_loads()

_LAZY = {"ModelConfig": "emomoe.model", "build_model": "emomoe.model"}


def __getattr__(name: str):
    """PEP 562: the names in _LAZY, imported on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'emomoe' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["ModelConfig", "build_model", "__version__"]
