"""The engine registry: every registered engine is complete, and has its own device extra.
A new engine (one folder plus one registration) is covered here without editing this file."""

from __future__ import annotations

import tomllib
from importlib import import_module
from pathlib import Path

import pytest

import edgeship
from edgeship.engines import ENGINES, get_engine
from edgeship.passes import PASSES

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def _expand(extra: str) -> set[str]:
    """The extras that ``extra`` brings, itself included (``edgeship[a,b]`` inside an extra)."""
    found = {extra}
    for item in EXTRAS[extra]:
        if item.startswith("edgeship["):
            for inner in item[len("edgeship["):-1].split(","):
                found |= _expand(inner)
    return found


def _load(ref: str):
    module, _, attribute = ref.partition(":")
    return getattr(import_module(module), attribute)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_engine_is_complete_and_installed_by_all(name):
    engine = ENGINES[name]
    assert callable(_load(engine.opener)) and (engine.container is None or callable(_load(engine.container)))
    if engine.passes:  # its conversion pass goes by the engine's name, so lineage says which engine made a model
        assert name in PASSES
    assert engine.extra in EXTRAS, f"{name}: no extra {engine.extra!r} in pyproject.toml"
    assert engine.extra in _expand("all")
    assert engine.installed() and engine.buildable()  # edgeship[all] installs every engine's build side


def test_engines_do_not_share_a_member_or_a_suffix():
    members = [e.member for e in ENGINES.values()]
    suffixes = [e.suffix for e in ENGINES.values()]
    assert len(set(members)) == len(members) and len(set(suffixes)) == len(suffixes)


def test_the_core_install_has_no_engine_and_each_engine_extra_has_its_package():
    assert not any("onnxruntime" in d or "openvino" in d or "litert" in d for d in PYPROJECT["project"]["dependencies"])
    wanted = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai-edge-litert"}
    for name, dist in wanted.items():
        assert any(d.startswith(dist) for d in EXTRAS[ENGINES[name].extra])


def test_an_unknown_engine_names_the_known_ones():
    with pytest.raises(edgeship.EdgeshipError, match="litert.*openvino|onnxruntime"):
        get_engine("tensorrt-llm")
