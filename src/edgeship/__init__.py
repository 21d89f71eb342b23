"""edgeship: put AI models on edge devices.

The public API loads lazily, so ``import edgeship`` stays light (no torch, no onnx)::

    import edgeship
    model = edgeship.load("model.onnx")            # or a HF directory, or module:function
    result = edgeship.optimize(model, data="calib.npz", eval_data="eval.npz")
    result.best, result.candidates
    result.report("edgeship-out")
    bundle = edgeship.pack("edgeship-out", "my-model", 1, "keys/signing.key", "my-model-1.edgeship")
    runtime = edgeship.Runtime.open(bundle, trusted_keys="keys/signing.pub")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "load",
    "from_torch",
    "inspect",
    "optimize",
    "Budget",
    "EvalSettings",
    "Recipe",
    "Model",
    "EdgeshipError",
    "generate_keys",
    "pack",
    "verify",
    "Runtime",
]

_LAZY = {
    "load": ("edgeship.importers", "load"),
    "from_torch": ("edgeship.importers", "from_torch"),
    "inspect": ("edgeship.inspection", "inspect_model"),
    "optimize": ("edgeship.search.pipeline", "optimize"),
    "Budget": ("edgeship.search.pipeline", "Budget"),
    "EvalSettings": ("edgeship.search.pipeline", "EvalSettings"),
    "Recipe": ("edgeship.recipes", "Recipe"),
    "Model": ("edgeship.model", "Model"),
    "EdgeshipError": ("edgeship.errors", "EdgeshipError"),
    "generate_keys": ("edgeship.bundle.keys", "generate_keys"),
    "pack": ("edgeship.bundle.pack", "pack"),
    "verify": ("edgeship.bundle.format", "verify_bundle"),
    "Runtime": ("edgeship.runtime", "Runtime"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgeship' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
