"""PyTorch-side passes: pruning, distillation, clustering, and chains of them with ONNX passes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgeship
from edgeship.evaluate.graph import weight_sparsity
from edgeship.dataset import Dataset
from edgeship.errors import ConfigError, DataMismatchError, PassNotApplicableError
from edgeship.passes import PASSES, PassContext
from edgeship.passes.base import pass_from_dict
from edgeship.recipes import Recipe, auto_recipes

FAST = edgeship.EvalSettings(runs=20, rounds=5, warmup=3, measure_memory=False)  # 5 rounds: a real speed interval


@pytest.fixture()
def train(digits8):
    return Dataset({"image": digits8["x_train"]}, digits8["y_train"])


@pytest.fixture()
def ctx(tmp_path, train, digits8):
    return PassContext(tmp_path, calibration=Dataset({"image": digits8["x_train"][:128]}), train=train)


def accuracy(model, digits8) -> float:
    return float(np.mean(model.run({"image": digits8["x_test"]})[0].argmax(1) == digits8["y_test"]))


def conv_weight_shapes(model) -> list[tuple[int, ...]]:
    import onnx

    proto = onnx.load(str(model.path))
    inits = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    return [inits[n.input[1]] for n in proto.graph.node if n.op_type == "Conv"]


def test_unstructured_global_pruning_reaches_sparsity_and_compresses(cnn_model, ctx, digits8):
    from edgeship.search.pipeline import compressed_size

    out = PASSES["prune_unstructured"](amount=0.6).run(cnn_model, ctx)
    assert weight_sparsity(out.path) >= 0.59
    assert compressed_size(cnn_model) / compressed_size(out) > 1.5
    assert accuracy(out, digits8) > 0.7  # the smallest weights went; pruning the largest gives ~0.1
    assert out.teacher_module is cnn_model.teacher_module  # the teacher is never modified
    assert float((cnn_model.teacher_module[0].weight == 0).float().mean()) < 0.01


def test_unstructured_per_layer_prunes_every_layer(cnn_model, ctx):
    out = PASSES["prune_unstructured"](amount=0.5, scope="layer").run(cnn_model, ctx)
    for m in out.torch_module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            assert abs(float((m.weight == 0).float().mean()) - 0.5) < 0.02


def test_unstructured_fine_tune_keeps_zeros_and_recovers(cnn_model, ctx, digits8):
    pruned = PASSES["prune_unstructured"](amount=0.85).run(cnn_model, ctx)
    tuned = PASSES["prune_unstructured"](amount=0.85, fine_tune_epochs=3).run(cnn_model, ctx)
    assert weight_sparsity(tuned.path) >= 0.84
    assert accuracy(tuned, digits8) >= accuracy(pruned, digits8)


def test_structured_pruning_really_removes_channels(cnn_model, ctx, digits8):
    out = PASSES["prune_structured"](amount=0.5).run(cnn_model, ctx)
    before, after = conv_weight_shapes(cnn_model), conv_weight_shapes(out)
    assert [a[0] for a in after] == [b[0] // 2 for b in before]  # output channels halved
    assert out.stats()["macs"] < 0.35 * cnn_model.stats()["macs"]
    assert out.stats()["params"] < 0.4 * cnn_model.stats()["params"]
    assert out.outputs[0].shape[-1] == 10 and out.has_batch_axis
    assert out.size_bytes < 0.45 * cnn_model.size_bytes


def test_structured_pruning_to_a_macs_target(cnn_model, ctx):
    target = int(cnn_model.stats({"image": (1, 1, 8, 8)})["macs"] * 0.6)
    out = PASSES["prune_structured"](target_macs=target).run(cnn_model, ctx)
    assert out.stats({"image": (1, 1, 8, 8)})["macs"] <= target * 1.02  # ONNX vs Torch-Pruning counting


def test_bad_amounts_and_targets_are_config_errors(cnn_model, ctx):
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ConfigError, match=r"in \(0, 1\)"):
            pass_from_dict({"pass": "prune_unstructured", "amount": bad})
    with pytest.raises(ConfigError, match="at or above the model's"):
        PASSES["prune_structured"](target_macs=10**12).run(cnn_model, ctx)
    with pytest.raises(ConfigError, match="exactly one of"):
        pass_from_dict({"pass": "prune_structured", "amount": 0.3, "target_macs": 1000})


def test_distillation_recovers_a_pruned_model(cnn_model, ctx, digits8):
    pruned = PASSES["prune_structured"](amount=0.5).run(cnn_model, ctx)
    distilled = PASSES["distill"](epochs=6, patience=6).run(pruned, ctx)
    assert accuracy(distilled, digits8) >= accuracy(pruned, digits8) + 0.05
    assert accuracy(distilled, digits8) >= accuracy(cnn_model, digits8) - 0.08
    assert conv_weight_shapes(distilled) == conv_weight_shapes(pruned)  # training keeps the shape


def test_distillation_is_deterministic_for_a_seed(cnn_model, ctx, digits8):
    pruned = PASSES["prune_structured"](amount=0.5).run(cnn_model, ctx)
    a = PASSES["distill"](epochs=2, seed=3).run(pruned, ctx)
    b = PASSES["distill"](epochs=2, seed=3).run(pruned, ctx)
    x = digits8["x_test"][:50]
    np.testing.assert_array_equal(a.run({"image": x})[0], b.run({"image": x})[0])


def test_distillation_into_a_users_smaller_student(cnn_model, ctx, digits8, tmp_path, monkeypatch):
    (tmp_path / "students.py").write_text(
        "import torch.nn as nn\n"
        "def tiny():\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),\n"
        "                         nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = PASSES["distill"](student="students:tiny", epochs=12, patience=12, lr=1e-2).run(cnn_model, ctx)
    assert out.stats()["params"] < 0.15 * cnn_model.stats()["params"]
    assert accuracy(out, digits8) > 0.6  # a 2k-parameter student learns; an untrained one scores ~0.1


def test_embedding_model_distils_without_labels(tiny_bert, tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 5000, size=(256, 16)).astype(np.int64)
    data = Dataset({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    ctx = PassContext(tmp_path, train=data)
    pruned = PASSES["prune_unstructured"](amount=0.9).run(tiny_bert, ctx)
    # a small step: BERT's dropout noise in training mode is larger than the gap to close
    distilled = PASSES["distill"](loss="mse", epochs=6, patience=6, lr=1e-4).run(pruned, ctx)
    feeds = {k: v[:32] for k, v in data.inputs.items()}
    ref = tiny_bert.run(feeds)[0]

    def mse(m):  # random-BERT embeddings are alike, so cosine barely moves; MSE shows the gap
        return float(np.mean((m.run(feeds)[0] - ref) ** 2))

    assert mse(distilled) < 0.8 * mse(pruned)
    for layer in distilled.torch_module.modules():  # distillation kept the pruned zeros
        if isinstance(layer, torch.nn.Linear):
            assert float((layer.weight == 0).float().mean()) >= 0.85


def test_distillation_keeps_unstructured_sparsity(cnn_model, ctx):
    pruned = PASSES["prune_unstructured"](amount=0.8).run(cnn_model, ctx)
    distilled = PASSES["distill"](epochs=2).run(pruned, ctx)
    assert weight_sparsity(distilled.path) >= 0.79


def test_clustering_leaves_k_values_per_layer_and_keeps_zeros(cnn_model, ctx, digits8):
    pruned = PASSES["prune_unstructured"](amount=0.7).run(cnn_model, ctx)
    clustered = PASSES["cluster"](k=8, fine_tune_epochs=1).run(pruned, ctx)
    for m in clustered.torch_module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            nonzero = m.weight[m.weight != 0]
            assert len(torch.unique(nonzero)) <= 8
    assert weight_sparsity(clustered.path) >= 0.69
    assert accuracy(cnn_model, digits8) - accuracy(clustered, digits8) <= 0.10


def test_pytorch_passes_refuse_a_bare_onnx_file(cnn_onnx, tmp_path, train):
    model = edgeship.load(cnn_onnx)
    for name in ("prune_unstructured", "prune_structured", "distill", "cluster"):
        config = PASSES[name](amount=0.5) if name.startswith("prune") else PASSES[name]()
        with pytest.raises(PassNotApplicableError, match="bare ONNX file"):
            config.run(model, PassContext(tmp_path, train=train))


def test_pytorch_pass_after_an_onnx_pass_says_to_reorder(cnn_model, ctx):
    quantized = PASSES["quantize_static"]().run(cnn_model, ctx)
    with pytest.raises(PassNotApplicableError, match="put PyTorch passes first"):
        PASSES["prune_unstructured"](amount=0.5).run(quantized, ctx)


def test_training_data_is_checked(cnn_model, cnn_data, digits8):
    bad_labels = {"image": digits8["x_train"][:50], "labels": np.full(50, 12, np.int64)}
    with pytest.raises(DataMismatchError, match="class ids 0..9"):
        edgeship.optimize(cnn_model, data=cnn_data["calib"], train_data=bad_labels, recipes="distill-int8",
                          settings=FAST)
    bad_dtype = {"image": digits8["x_train"][:50].astype(np.float64), "labels": digits8["y_train"][:50]}
    with pytest.raises(DataMismatchError, match="dtype float64"):
        edgeship.optimize(cnn_model, data=cnn_data["calib"], train_data=bad_dtype, settings=FAST)
    float_labels = {"image": digits8["x_train"][:50], "labels": digits8["y_train"][:50].astype(np.float32)}
    with pytest.raises(DataMismatchError, match="integer array"):
        edgeship.optimize(cnn_model, data=cnn_data["calib"], train_data=float_labels, settings=FAST)


def test_auto_adds_pruning_chains_only_with_training_data(cnn_model, cnn_onnx):
    names = [r.name for r in auto_recipes(cnn_model, with_training=True)]
    assert "structured-50-distill-int8" in names and "sparse80-cluster16-int8" in names
    assert "structured-50-distill-int8" not in [r.name for r in auto_recipes(cnn_model)]
    assert "structured-50-distill-int8" not in [r.name for r in auto_recipes(edgeship.load(cnn_onnx), True)]


def test_chained_recipe_logs_steps_lineage_and_metrics(cnn_model, cnn_data, digits8, tmp_path):
    chain = Recipe.from_dict({"name": "prune-distill-int8", "steps": [
        {"pass": "prune_structured", "amount": 0.3},
        {"pass": "distill", "epochs": 3},
        {"pass": "quantize_static"},
        {"pass": "compact"},
    ]})
    result = edgeship.optimize(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"], recipes=[chain],
                               train_data={"image": digits8["x_train"], "labels": digits8["y_train"]},
                               budget=edgeship.Budget(max_accuracy_drop=0.05, min_speedup=0.01), settings=FAST)
    report = json.loads((result.report(tmp_path / "out") / "report.json").read_text())
    (cand,) = report["candidates"]
    assert cand["status"] != "failed", cand["reason"]
    assert [s["pass"] for s in cand["steps"]] == ["prune_structured", "distill", "quantize_static", "compact"]
    assert [s["pass"] for s in cand["lineage"]] == ["prune_structured", "distill", "quantize_static", "compact"]
    assert all(len(s["input_sha256"]) == 64 for s in cand["lineage"])
    assert cand["lineage"][1]["epochs"] == 3
    for key in ("macs", "params", "sparsity", "compressed_size_bytes"):
        assert key in cand["metrics"]
    assert cand["metrics"]["macs"] < report["baseline"]["metrics"]["macs"]
    assert cand["metrics"]["size_ratio"] > 4.0


def test_structured_preset_rounds_channels_for_simd_kernels(cnn_model, ctx):
    """Odd channel counts (22, 45, 91) leave int8 kernel blocks half empty: no speedup."""
    from edgeship.recipes import presets

    (prune,) = [s for s in presets()["structured-50-distill-int8"].steps if s.name == "prune_structured"]
    assert prune.round_to == 8
    out = prune.run(cnn_model, ctx)
    assert all(shape[0] % 8 == 0 for shape in conv_weight_shapes(out))


def test_structured_pruning_removes_attention_heads_and_ffn_neurons(tiny_bert, tmp_path):
    out = PASSES["prune_structured"](amount=0.5).run(tiny_bert, PassContext(tmp_path))
    attention = [m for m in out.torch_module.modules() if hasattr(m, "query") and hasattr(m, "num_attention_heads")]
    assert [m.num_attention_heads for m in attention] == [2, 2]  # 4 heads each before
    assert all(m.query.out_features == 2 * m.attention_head_size for m in attention)
    ffn = [m.intermediate.dense for m in out.torch_module.modules() if hasattr(m, "intermediate")]
    assert [f.out_features for f in ffn] == [64, 64]  # 128 before
    assert out.outputs[0].shape == tiny_bert.outputs[0].shape  # the embedding keeps its size
    shapes = {n: (1, 16) for n in ("input_ids", "attention_mask", "token_type_ids")}
    assert out.stats(shapes)["macs"] < 0.6 * tiny_bert.stats(shapes)["macs"]
