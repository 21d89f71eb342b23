"""One loader for user code named on the command line: ``MODULE:FUNCTION`` or ``path/file.py:FUNCTION``.

Models (``edgeship optimize mypkg.nets:build``), metrics (``--metric mymetrics:f1``) and
distillation students (``student: mypkg.nets:small``) all go through :func:`load_callable`, so
they resolve the same way: a ``.py`` path is loaded from that file, anything else is imported
with the current folder on ``sys.path`` (as ``python -m`` would).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from edgeship.core.errors import ConfigError

__all__ = ["load_callable", "is_user_code_spec"]


def is_user_code_spec(text: str) -> bool:
    """Whether ``text`` reads as MODULE:FUNCTION or file.py:FUNCTION (and not as a path that exists)."""
    module, sep, func = text.rpartition(":")
    return bool(sep and module and func.isidentifier() and not Path(text).exists())


def load_callable(spec: str, what: str, error: type[Exception] = ConfigError) -> Callable[..., Any]:
    """The function named by ``spec``; ``what`` names its role in error messages (e.g. "metric")."""
    module_name, _, func_name = str(spec).rpartition(":")
    if not module_name or not func_name:
        raise error(f"{what} {spec!r} is not MODULE:FUNCTION or path/file.py:FUNCTION.")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise FileNotFoundError(f"no file {module_name!r}")
            import_spec = importlib.util.spec_from_file_location(file.stem, file)
            if import_spec is None or import_spec.loader is None:
                raise ImportError(f"cannot load {module_name!r} as Python")
            module = importlib.util.module_from_spec(import_spec)
            import_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except Exception as exc:  # user code may raise anything while importing; report it in one line
        raise error(f"cannot import the {what} {module_name!r} ({type(exc).__name__}: {exc}); check the module "
                    "path and run from the folder that contains it.") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise error(f"the {what} module {module_name!r} has no function {func_name!r}.")
    return func
