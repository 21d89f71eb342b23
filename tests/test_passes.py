"""Every pass is checked against a floor that would fail if the pass were broken."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from conftest import cosine
from edgeship.dataset import load_data
from edgeship.errors import ConfigError, PassNotApplicableError, UnknownRecipeError
from edgeship.passes import PASSES, PassContext, pass_from_dict
from edgeship.passes.base import ops_in
from edgeship.recipes import Recipe, load_recipe_file, presets, resolve_recipes, save_recipe_file


@pytest.fixture()
def ctx(tmp_path, cnn_model, cnn_data):
    return PassContext(tmp_path, calibration=load_data(cnn_data["calib"], cnn_model))


def _accuracy(model, digits8) -> float:
    logits = model.run({"image": digits8["x_test"]})[0]
    return float(np.mean(logits.argmax(1) == digits8["y_test"]))


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_pass_config_round_trips(name):
    config = PASSES[name]()
    data = json.loads(json.dumps(config.to_dict()))
    assert data["pass"] == name
    assert pass_from_dict(data) == config


def test_unknown_pass_and_option_are_errors():
    with pytest.raises(UnknownRecipeError, match="unknown pass 'quantise'"):
        pass_from_dict({"pass": "quantise"})
    with pytest.raises(ConfigError, match="has no option"):
        pass_from_dict({"pass": "quantize_dynamic", "bits": 3})
    with pytest.raises(ConfigError, match="not allowed"):
        pass_from_dict({"pass": "quantize_static", "method": "magic"})
    with pytest.raises(ConfigError, match="power of two"):
        pass_from_dict({"pass": "quantize_int4", "block_size": 24})


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_recipes_round_trip_through_files(tmp_path, suffix):
    recipes = list(presets().values())
    path = tmp_path / f"recipes{suffix}"
    save_recipe_file(recipes, path)
    assert load_recipe_file(path) == recipes


def test_recipe_names_resolve_and_unknown_names_fail(cnn_model):
    assert [r.name for r in resolve_recipes("fp16,dynamic-int8-pc", cnn_model)] == ["fp16", "dynamic-int8-pc"]
    with pytest.raises(UnknownRecipeError, match="unknown recipe 'int3'"):
        resolve_recipes("int3", cnn_model)
    assert all(isinstance(r, Recipe) for r in resolve_recipes("auto", cnn_model))


def test_fp16_halves_size_and_keeps_outputs(cnn_model, ctx, digits8):
    out = PASSES["fp16"]().run(cnn_model, ctx)
    assert cnn_model.size_bytes / out.size_bytes > 1.8
    x = digits8["x_test"][:64]
    assert cosine(out.run({"image": x})[0], cnn_model.run({"image": x})[0]) > 0.999
    assert out.lineage[-1].pass_name == "fp16" and out.lineage[-1].input_sha256 == cnn_model.sha256


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_int8_quarters_weights(tiny_bert, tmp_path, per_channel):
    ctx = PassContext(tmp_path)
    out = PASSES["quantize_dynamic"](per_channel=per_channel).run(tiny_bert, ctx)
    assert tiny_bert.size_bytes / out.size_bytes > 3.0
    assert "MatMulInteger" in ops_in(out) or "DynamicQuantizeMatMul" in ops_in(out)
    feeds = _bert_feeds(tiny_bert)
    assert cosine(out.run(feeds)[0], tiny_bert.run(feeds)[0]) > 0.97


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_int8_keeps_accuracy(cnn_model, ctx, digits8, method):
    out = PASSES["quantize_static"](method=method).run(cnn_model, ctx)
    assert "QuantizeLinear" in ops_in(out)
    # on a 14k-parameter model, QDQ names are a large share of the file; compact removes them
    assert cnn_model.size_bytes / out.size_bytes > 2.3
    assert cnn_model.size_bytes / PASSES["compact"]().run(out, ctx).size_bytes > 3.0
    assert _accuracy(cnn_model, digits8) - _accuracy(out, digits8) <= 0.03


def test_static_int8_needs_calibration(cnn_model, tmp_path):
    with pytest.raises(PassNotApplicableError, match="calibration data"):
        PASSES["quantize_static"]().run(cnn_model, PassContext(tmp_path))


def test_compact_shrinks_without_changing_outputs(cnn_model, ctx, digits8):
    quantized = PASSES["quantize_static"]().run(cnn_model, ctx)
    compacted = PASSES["compact"]().run(quantized, ctx)
    assert compacted.size_bytes < quantized.size_bytes
    x = digits8["x_test"][:32]
    np.testing.assert_array_equal(compacted.run({"image": x})[0], quantized.run({"image": x})[0])
    assert [s.name for s in compacted.inputs] == ["image"]


def _bert_feeds(model, n: int = 4, seq: int = 16):
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 5000, size=(n, seq)).astype(np.int64)
    mask = np.ones((n, seq), np.int64)
    mask[:, seq - 4 :] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((n, seq), np.int64)}


def test_int4_uses_matmulnbits_and_stays_close(tiny_bert, tmp_path):
    out = PASSES["quantize_int4"](block_size=32).run(tiny_bert, PassContext(tmp_path))
    assert "MatMulNBits" in ops_in(out) and "GatherBlockQuantized" in ops_in(out)
    assert tiny_bert.size_bytes / out.size_bytes > 4.0
    feeds = _bert_feeds(tiny_bert)
    assert cosine(out.run(feeds)[0], tiny_bert.run(feeds)[0]) > 0.9


def test_int4_does_not_apply_to_a_cnn(cnn_model, tmp_path):
    with pytest.raises(PassNotApplicableError, match="no MatMul"):
        PASSES["quantize_int4"]().run(cnn_model, PassContext(tmp_path))


def test_transformer_fusion_fuses_attention_exactly(tiny_bert, tmp_path):
    out = PASSES["optimize_graph"](mode="transformer").run(tiny_bert, PassContext(tmp_path))
    ops = ops_in(out)
    assert {"Attention", "SkipLayerNormalization"} <= ops and "Softmax" not in ops
    feeds = _bert_feeds(tiny_bert)
    np.testing.assert_allclose(out.run(feeds)[0], tiny_bert.run(feeds)[0], atol=1e-4)


def test_basic_optimization_folds_batchnorm(cnn_model, ctx, digits8):
    assert "BatchNormalization" in ops_in(cnn_model) or "Conv" in ops_in(cnn_model)
    out = PASSES["optimize_graph"](mode="basic").run(cnn_model, ctx)
    assert "BatchNormalization" not in ops_in(out)
    x = digits8["x_test"][:16]
    np.testing.assert_allclose(out.run({"image": x})[0], cnn_model.run({"image": x})[0], atol=1e-4)


def test_transformer_fusion_refuses_a_cnn(cnn_model, tmp_path):
    with pytest.raises(PassNotApplicableError, match="BERT-style"):
        PASSES["optimize_graph"](mode="transformer").run(cnn_model, PassContext(tmp_path))


def test_quantization_keeps_parent_params_and_macs(cnn_model, ctx):
    out = PASSES["quantize_static"]().run(cnn_model, ctx)
    assert out.float_parent == cnn_model.path
    assert out.stats() == cnn_model.stats()
    # counted on the quantized graph itself, the MACs agree with the float graph
    assert dataclasses.replace(out, float_parent=None).stats()["macs"] == cnn_model.stats()["macs"]


def test_text_model_macs_follow_the_sequence_length(tiny_bert, tmp_path):
    out = PASSES["quantize_dynamic"]().run(tiny_bert, PassContext(tmp_path))
    short = out.stats({"input_ids": (1, 8), "attention_mask": (1, 8), "token_type_ids": (1, 8)})
    long = out.stats({"input_ids": (1, 64), "attention_mask": (1, 64), "token_type_ids": (1, 64)})
    assert long["macs"] > 7 * short["macs"]
    assert long == tiny_bert.stats({"input_ids": (1, 64), "attention_mask": (1, 64), "token_type_ids": (1, 64)})


@pytest.mark.parametrize("recipe", ["fp16", "dynamic-int8-pc", "static-int8-minmax", "static-int8-entropy"])
def test_cnn_preset_outputs_pass_the_onnx_checker(recipe, cnn_model, ctx):
    """What edgeship writes, edgeship (and the ONNX checker) must accept as input."""
    from edgeship.importers.onnx_file import load_onnx

    out = presets()[recipe].apply(cnn_model, ctx)
    assert load_onnx(out.path).inputs[0].name == "image"


@pytest.mark.parametrize("recipe", ["fp16", "dynamic-int8", "fused-dynamic-int8-pc", "int4-weight-only"])
def test_transformer_preset_outputs_pass_the_onnx_checker(recipe, tiny_bert, tmp_path):
    from edgeship.importers.onnx_file import load_onnx

    out = presets()[recipe].apply(tiny_bert, PassContext(tmp_path))
    assert load_onnx(out.path).outputs[0].name == "sentence_embedding"
