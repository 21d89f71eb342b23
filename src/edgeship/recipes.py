"""Recipes: named, ordered lists of pass configs that save to and load from JSON or YAML."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from edgeship.errors import ConfigError, UnknownRecipeError
from edgeship.model import Model
from edgeship.passes import PassConfig, PassContext, pass_from_dict

__all__ = ["Recipe", "presets", "resolve_recipes", "auto_recipes", "load_recipe_file", "RECIPE_TYPE"]

RECIPE_TYPE = "edgeship.recipe"
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[PassConfig, ...]
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": RECIPE_TYPE,
            "version": RECIPE_VERSION,
            "name": self.name,
            "description": self.description,
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        if not isinstance(data, dict):
            raise ConfigError(f"a recipe must be a mapping, got {type(data).__name__}.")
        if data.get("type", RECIPE_TYPE) != RECIPE_TYPE:
            raise ConfigError(f"not an edgeship recipe: type is {data.get('type')!r}, expected {RECIPE_TYPE!r}.")
        if int(data.get("version", RECIPE_VERSION)) > RECIPE_VERSION:
            raise ConfigError(
                f"recipe version {data['version']} is newer than this edgeship understands ({RECIPE_VERSION}); upgrade edgeship."
            )
        steps = data.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ConfigError("a recipe needs a non-empty 'steps' list of {pass: NAME, ...options}.")
        name = str(data.get("name") or "custom")
        return cls(name, tuple(pass_from_dict(s) for s in steps), str(data.get("description", "")))

    def apply(self, model: Model, ctx: PassContext) -> Model:
        for step in self.steps:
            model = step.run(model, ctx)
        return model

    def for_cpu(self, flags: frozenset[str]) -> "Recipe":
        """This recipe with every choice left to the target CPU made (see PassConfig.for_cpu)."""
        return replace(self, steps=tuple(step.for_cpu(flags) for step in self.steps))

    def check(self, model: Model, ctx: PassContext) -> None:
        """Whether the first step applies; later steps are checked as they run."""
        self.steps[0].check(model, ctx)


def _preset_data() -> dict[str, Any]:
    text = resources.files("edgeship").joinpath("data/recipes.json").read_text(encoding="utf-8")
    return json.loads(text)


def presets() -> dict[str, Recipe]:
    """The built-in recipes, by name."""
    return {r["name"]: Recipe.from_dict(r) for r in _preset_data()["recipes"]}


def model_family(model: Model) -> str:
    from edgeship.passes.base import ops_in

    ops = ops_in(model)
    if {"MatMul", "Softmax"} <= ops or "Attention" in ops:
        return "transformer"
    if "Conv" in ops:
        return "cnn"
    return "other"


def auto_recipes(model: Model, with_training: bool = False, cpu_flags: frozenset[str] = frozenset(),
                 microcontroller: bool = False) -> list[Recipe]:
    """The presets worth trying for this kind of model; with training data and a PyTorch
    module, also the pruning and distillation chains; every installed engine's candidates, and those
    that only a CPU with ``cpu_flags`` can run fast (OpenVINO's bf16 precision where the CPU has bf16).
    For a microcontroller, only what its runtime runs: TFLite Micro's full int8."""
    table = presets()
    data = _preset_data()
    if microcontroller:
        return [table[n] for n in data["auto_microcontroller"]]
    family = model_family(model)
    names = list(data["auto"][family])
    if with_training and model.torch_module is not None:
        names += data["auto_train"][family]
    from edgeship.engines import ENGINES

    for engine, by_family in data["auto_engines"].items():  # every installed engine enters the same search
        if engine in ENGINES and ENGINES[engine].buildable():
            names += by_family.get(family, [])
            for flag, extra in data["auto_cpu"].get(engine, {}).items():
                names += [n for n in extra if flag in cpu_flags and n not in names]
    return [table[n] for n in names]


def load_recipe_file(path: Path) -> list[Recipe]:
    """A recipe file holds one recipe, or ``{"recipes": [...]}``, as JSON or YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read recipe file {str(path)!r}: {exc.strerror}.") from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise ConfigError(f"recipe file {str(path)!r} does not parse: {exc}".splitlines()[0]) from None
    items = data.get("recipes") if isinstance(data, dict) and "recipes" in data else [data]
    return [Recipe.from_dict(item) for item in items]


def save_recipe_file(recipes: list[Recipe], path: Path) -> None:
    payload: Any = recipes[0].to_dict() if len(recipes) == 1 else {"recipes": [r.to_dict() for r in recipes]}
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        path.write_text(yaml.safe_dump(payload, sort_keys=False), encoding="utf-8")
    else:
        path.write_text(json.dumps(payload, indent=2), encoding="utf-8")


def resolve_recipes(spec: Any, model: Model, with_training: bool = False,
                    cpu_flags: frozenset[str] = frozenset(), microcontroller: bool = False) -> list[Recipe]:
    """``"auto"``, ``"name1,name2"``, a recipe file path, a Recipe, or a list of those."""
    if isinstance(spec, Recipe):
        return [spec]
    if isinstance(spec, (list, tuple)):
        return [r for item in spec for r in resolve_recipes(item, model, with_training, cpu_flags, microcontroller)]
    text = str(spec or "auto").strip()
    if text == "auto":
        return auto_recipes(model, with_training, cpu_flags, microcontroller)
    path = Path(text)
    if path.suffix.lower() in {".json", ".yaml", ".yml"}:
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {text!r}.")
        return load_recipe_file(path)
    table = presets()
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UnknownRecipeError(
            f"unknown recipe {unknown[0]!r}; choose from {sorted(table)}, 'auto', or a recipe .yaml/.json file."
        )
    return [table[n] for n in names]
