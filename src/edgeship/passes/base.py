"""The pass protocol and registry.

A pass is a small frozen dataclass (its config) with ``check`` (does it apply to this
model?) and ``apply`` (do the work, return a new Model). Registering is one decorator;
tests that loop over :data:`PASSES` cover every new pass automatically.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from edgeship.errors import ConfigError, UnknownRecipeError
from edgeship.model import Model

__all__ = ["PassConfig", "PassContext", "PASSES", "register_pass", "pass_from_dict", "ops_in"]

PASSES: dict[str, type["PassConfig"]] = {}


@dataclass
class PassContext:
    """What a pass may use besides the model: calibration data and a folder for outputs."""

    workdir: Path
    calibration: Any = None  # edgeship.dataset.Dataset | None
    train: Any = None  # edgeship.dataset.Dataset | None, for PyTorch passes that train
    progress: Any = None  # callable(text) for long passes (training), or None
    step: int = 0

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def samples(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` calibration samples, one feed dict each (batch 1)."""
        out: list[dict[str, Any]] = []
        for feeds in self.calibration.batches(1) if self.calibration is not None else ():
            if len(out) >= limit:
                break
            out.append(feeds)
        return out

    def output_path(self, name: str) -> Path:
        self.step += 1
        return self.workdir / f"{self.step:02d}_{name}.onnx"


@dataclass(frozen=True)
class PassConfig:
    """Base class of every pass config. Subclasses set ``name`` and implement ``apply``."""

    name: ClassVar[str] = ""
    #: False for passes that change the architecture (pruning): params/MACs are recounted.
    keeps_architecture: ClassVar[bool] = True
    #: a sentence for the report about what this pass does and does not buy
    note: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            allowed = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is typing.Literal else ()
            if allowed and value not in allowed:
                raise ConfigError(
                    f"{self.name}: {f.name}={value!r} is not allowed; choose one of {list(allowed)}."
                )
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for out-of-range values."""

    def check(self, model: Model, ctx: PassContext) -> None:
        """Raise PassNotApplicableError when the pass cannot apply to ``model``."""

    def for_cpu(self, flags: frozenset[str]) -> "PassConfig":
        """This config with the choices left to the target CPU made (``flags`` as in /proc/cpuinfo;
        empty for non-x86 targets). Most passes have none and return themselves."""
        return self

    def apply(self, model: Model, ctx: PassContext) -> Model:
        raise NotImplementedError

    def run(self, model: Model, ctx: PassContext) -> Model:
        """Check, apply, and record the step in the new model's lineage."""
        self.check(model, ctx)
        result = self.apply(model, ctx)
        if isinstance(result, Model):  # PyTorch passes re-export and build the Model themselves
            return result
        return model.derive(result, self.name, self.config_dict(), self.keeps_architecture)

    def config_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.name, **self.config_dict()}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def register_pass(cls: type[PassConfig]) -> type[PassConfig]:
    if not cls.name or cls.name in PASSES:
        raise ValueError(f"pass {cls.__name__} needs a unique name, got {cls.name!r}")
    PASSES[cls.name] = cls
    return cls


def pass_from_dict(data: dict[str, Any]) -> PassConfig:
    """Build a pass config from ``{"pass": name, **fields}``; unknown names/fields are errors."""
    data = dict(data)
    name = data.pop("pass", None)
    if name not in PASSES:
        raise UnknownRecipeError(f"unknown pass {name!r}; known passes: {sorted(PASSES)}.")
    cls = PASSES[name]
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"pass {name!r} has no option(s) {unknown}; its options are {sorted(known)}.")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if typing.get_origin(hints[key]) is tuple and isinstance(value, list):
            data[key] = tuple(value)
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"pass {name!r}: {exc}") from None


def ops_in(model: Model) -> set[str]:
    import onnx

    proto = onnx.load(str(model.path), load_external_data=False)
    return {n.op_type for n in proto.graph.node}


def constant_weight_ops(model: Model, op_types: set[str], weight_index: int = 1) -> int:
    """How many nodes of ``op_types`` take an initializer as input ``weight_index``."""
    import onnx

    proto = onnx.load(str(model.path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return sum(
        1
        for n in proto.graph.node
        if n.op_type in op_types and len(n.input) > weight_index and n.input[weight_index] in inits
    )


