"""The engine interface: what every engine tells edgeship, and the registry of engines.

An engine runs a model on the device. It turns an ONNX :class:`~edgeship.model.Model` into its own
format and compresses it its own way (a pass, so its candidates enter the same search and Pareto
front as every other), and opens a session on the result with ONNX Runtime's interface (``run``,
``get_inputs``, ``get_outputs``), so that timing, scoring and the memory probe treat every engine
alike. A bundle records the engine; the device opens it with that engine's package alone.

A new engine is one folder under ``engines/`` whose ``__init__.py`` calls :func:`register_engine`,
plus its name in ``edgeship.engines._BUILTIN``. Everything named here as ``"module:attribute"`` is
imported only when used, so the registry itself costs nothing to import.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship.core.errors import ConfigError, PassNotApplicableError

__all__ = ["Engine", "register_engine", "ENGINES", "SessionSpec"]


@dataclass(frozen=True)
class SessionSpec:
    """One input or output as every engine's session describes it: what ONNX Runtime's NodeArg
    offers (name, shape with symbolic dims as strings or None, ``tensor(float)``-style type)."""

    name: str
    shape: list[Any]
    type: str


def _load(ref: str) -> Any:
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Engine:
    """One engine's facts and entry points.

    Attributes:
        name: the value of ``Model.engine`` and of a bundle manifest's ``engine``; also the name of
            the pass that converts to it (a Model's lineage holds that pass and its settings).
        label: how reports and tables name it.
        package: the module the device imports to run it; ``extra``: the pip extra that installs it.
        build_packages: the modules that convert and compress for it (build side).
        suffix: the file suffix of its model, ``sidecars``: suffixes of files that go with it
            (an OpenVINO IR's ``.bin``).
        member: the bundle member that holds the model (``.enc`` appended when encrypted).
        opener: ``"module:function"``: ``function(model, threads, options, providers)`` opens a
            session on a path or on bytes (a decrypted bundle's model); ``options`` are the compile
            settings the search measured (``option_keys`` of the pass's settings).
        container: ``"module:function"``: ``function(path) -> bytes``, the model as one bundle member;
            None: the file's own bytes.
    """

    name: str
    label: str
    package: str
    extra: str
    suffix: str
    member: str
    opener: str
    build_packages: tuple[str, ...] = ()
    sidecars: tuple[str, ...] = ()
    container: str | None = None
    option_keys: tuple[str, ...] = ()
    passes: str | None = None  # the module that registers its conversion pass

    def installed(self) -> bool:
        """The device side: can this process run the engine's models?"""
        return importlib.util.find_spec(self.package) is not None

    def buildable(self) -> bool:
        """The build side: can this process convert and compress for the engine?"""
        return self.installed() and all(importlib.util.find_spec(p) is not None for p in self.build_packages)

    def require(self) -> None:
        if not self.installed():
            raise ConfigError(f"this model runs on {self.label}: pip install 'edgeship[{self.extra}]'.")

    def open(self, model: Path | str | bytes | memoryview, threads: int = 2,
             options: dict[str, str] | None = None, providers: list[str] | None = None) -> Any:
        self.require()
        wanted = {k: str(v) for k, v in (options or {}).items() if k in self.option_keys}
        return _load(self.opener)(model, threads, wanted, providers)

    def files(self, model_file: Path) -> list[Path]:
        return [model_file, *(model_file.with_suffix(s) for s in self.sidecars)]

    def model_bytes(self, model_file: Path) -> bytes:
        return _load(self.container)(model_file) if self.container else Path(model_file).read_bytes()

    def check_convertible(self, model: Any) -> None:
        """What every engine's conversion pass checks first: its build side is here, and the model still
        runs on ONNX Runtime (engines do not chain)."""
        if not self.buildable():
            missing = [p for p in (self.package, *self.build_packages) if importlib.util.find_spec(p) is None]
            raise PassNotApplicableError(f"{self.label} candidates need {missing}: pip install 'edgeship[all]'.")
        if model.engine != "onnxruntime":  # the default engine (edgeship.engines.DEFAULT_ENGINE)
            raise PassNotApplicableError(f"the model already runs on {model.engine}.")

    def options_from(self, lineage: list[dict[str, Any]]) -> dict[str, str]:
        """The compile settings the search measured: the last conversion step's ``option_keys``."""
        steps = [s for s in lineage if s.get("pass") == self.name]
        return {k: str(steps[-1][k]) for k in self.option_keys if k in steps[-1]} if steps else {}


ENGINES: dict[str, Engine] = {}


def register_engine(engine: Engine) -> Engine:
    if engine.name in ENGINES:
        raise ValueError(f"engine {engine.name!r} is registered twice")
    ENGINES[engine.name] = engine
    return engine
