"""The int8 format is chosen for the CPU the model is for (U8S8 saturates on x86 without VNNI)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeship.core.cpu import cpu_flags, u8s8_saturates
from edgeship.passes.quantize import QuantizeStatic
from edgeship.recipes import presets

AVX2 = frozenset({"sse4_1", "avx", "avx2", "fma"})
AVX512_NO_VNNI = AVX2 | {"avx512f", "avx512bw"}
AVX512_VNNI = AVX512_NO_VNNI | {"avx512_vnni"}
AVX_VNNI = AVX2 | {"avx_vnni"}


@pytest.mark.parametrize("flags, saturates", [(AVX2, True), (AVX512_NO_VNNI, True), (AVX512_VNNI, False),
                                               (AVX_VNNI, False), (frozenset(), False)])
def test_saturation_follows_the_isa(flags, saturates):
    assert u8s8_saturates(flags) is saturates


def test_cpuinfo_flags_are_read(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_1 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse4_1", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_static_recipes_take_reduce_range_from_the_cpu_unless_the_recipe_says():
    recipe = presets()["static-int8-minmax"]
    step = lambda r: next(s for s in r.steps if isinstance(s, QuantizeStatic))
    assert step(recipe).reduce_range is None
    assert step(recipe.for_cpu(AVX2)).reduce_range is True
    assert step(recipe.for_cpu(AVX512_VNNI)).reduce_range is False
    assert step(recipe.for_cpu(frozenset())).reduce_range is False  # Arm: no saturation
    pinned = QuantizeStatic(reduce_range=False)
    assert pinned.for_cpu(AVX2).reduce_range is False


@pytest.mark.parametrize("target, expected", [("x86-gateway", True), ("raspberry-pi-5", False)])
def test_the_plan_quantizes_for_the_target_cpu(cnn_onnx, cnn_data, target, expected):
    from edgeship.search.pipeline import plan_optimization

    plan = plan_optimization(cnn_onnx, cnn_data["calib"], cnn_data["eval"], recipes="static-int8-minmax",
                             target=target, executor="local")
    (recipe,) = plan.recipes
    assert next(s for s in recipe.steps if isinstance(s, QuantizeStatic)).reduce_range is expected


def test_host_plan_follows_this_machines_flags(cnn_onnx, cnn_data):
    from edgeship.search.pipeline import plan_optimization

    plan = plan_optimization(cnn_onnx, cnn_data["calib"], cnn_data["eval"], recipes="static-int8-minmax",
                             executor="local")
    step = next(s for s in plan.recipes[0].steps if isinstance(s, QuantizeStatic))
    assert step.reduce_range is u8s8_saturates(cpu_flags())


def test_seven_bit_weights_keep_the_cnn_accurate(cnn_model, cnn_data, tmp_path):
    """The remedy chosen for AVX2 machines must itself be accurate (here, on whatever CPU runs it)."""
    from edgeship.dataset import load_data
    from edgeship.passes import PassContext

    data = load_data(cnn_data["calib"], cnn_model)
    evaluation = load_data(cnn_data["eval"], cnn_model)
    out = QuantizeStatic(reduce_range=True).run(cnn_model, PassContext(tmp_path, data))
    labels = evaluation.labels
    ref = np.concatenate([cnn_model.run(b)[0] for b in evaluation.batches(64)]).argmax(1)
    got = np.concatenate([out.run(b)[0] for b in evaluation.batches(64)]).argmax(1)
    assert np.mean(got == labels) >= np.mean(ref == labels) - 0.01
