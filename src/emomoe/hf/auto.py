"""Our `EmoConfig` / `EmoForCausalLM` in transformers' Auto classes, inside any program that
imports emomoe: `AutoModelForCausalLM.from_pretrained(export)` then works without
`trust_remote_code`, and `AutoConfig.for_model("emo")` knows the type.

`import emomoe` must stay fast and must not import transformers, whose model classes take seconds
to import. So registration happens when the program itself imports transformers: at once if it
already has, otherwise through a one-shot import hook that runs right after the `transformers`
package finishes loading (a safe point: no transformers module is half-initialised then).
Programs that never import transformers pay nothing; those that do pay the import of
transformers' model base classes, which they are about to need anyway.

transformers prefers registered classes (its "explicit local code") over a checkpoint's own
`configuration_*.py` / `modeling_*.py`, even with `trust_remote_code=True`: in such a program every
"emo" checkpoint, the released ones included, runs on our `EmoConfig` / `EmoForCausalLM`
(tests/hf/test_auto.py checks both ways). They read the official layout with the official
semantics, train on the official loss, and refuse (ValueError) the official options they do not
implement (`always_active_experts`, `ghost_extend_eval`, more than one shared expert): such a
checkpoint loads with its own class only in a program that does not import emomoe.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

PACKAGE = "transformers"


def register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from emomoe.hf.remote.configuration_emo import EmoConfig
    from emomoe.hf.remote.modeling_emo import EmoForCausalLM

    AutoConfig.register(EmoConfig.model_type, EmoConfig, exist_ok=True)
    AutoModelForCausalLM.register(EmoConfig, EmoForCausalLM, exist_ok=True)


def _register_or_warn() -> None:
    try:
        register_auto_classes()
    except Exception as e:  # a transformers we cannot work with must not break the program's import
        warnings.warn(f"emomoe: EmoForCausalLM not registered with transformers' Auto classes ({e})", stacklevel=2)


class _ThenRegister(importlib.abc.Loader):
    """transformers' own loader, followed by our registration."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _register_or_warn()


class _AfterTransformersImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != PACKAGE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


def register_when_transformers_loads() -> None:
    module = sys.modules.get(PACKAGE)
    if module is None:
        if not any(isinstance(f, _AfterTransformersImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterTransformersImport())
    elif not getattr(module.__spec__, "_initializing", False):
        _register_or_warn()
