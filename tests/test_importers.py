from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import edgeship
from edgeship.errors import InvalidModelError


def _matmul_onnx(path: Path, external: str | None = None) -> Path:
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:  # point the weight at an external file, as a hostile model might
        init = model.graph.initializer[0]
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        entry = init.external_data.add()
        entry.key, entry.value = "location", external
    onnx.save(model, str(path))
    return path


def test_onnx_file_loads_with_signature(tmp_path):
    model = edgeship.load(_matmul_onnx(tmp_path / "m.onnx"))
    assert [(s.name, s.dtype) for s in model.inputs] == [("x", "float32")]
    assert model.outputs[0].shape == ("batch", 3)
    y = model.run({"x": np.ones((2, 4), np.float32)})[0]
    np.testing.assert_allclose(y, np.full((2, 3), 4.0))


def test_missing_and_non_model_files_are_refused(tmp_path):
    with pytest.raises(InvalidModelError, match="not found"):
        edgeship.load(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not protobuf \x00\xff" * 10)
    with pytest.raises(InvalidModelError, match="not an ONNX model|no graph nodes|checker"):
        edgeship.load(junk)


def test_external_data_outside_model_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.ones(12, np.float32).tobytes())
    sub = tmp_path / "model"
    sub.mkdir()
    path = _matmul_onnx(sub / "m.onnx", external="../secret.bin")
    with pytest.raises(InvalidModelError, match="outside the model's folder"):
        edgeship.load(path)
    absolute = _matmul_onnx(sub / "abs.onnx", external=str(tmp_path / "secret.bin"))
    with pytest.raises(InvalidModelError, match="outside"):
        edgeship.load(absolute)


def test_from_torch_exports_dynamic_batch(trained_cnn, digits8):
    model = edgeship.from_torch(trained_cnn, torch.from_numpy(digits8["x_train"][:1]))
    assert model.has_batch_axis
    x = digits8["x_test"][:5]
    ours = model.run({"input": x})[0]
    with torch.no_grad():
        ref = trained_cnn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_untraceable_module_is_a_clear_error():
    class ReturnsText(torch.nn.Module):
        def forward(self, x):
            return {"label": "cat"}

    with pytest.raises(InvalidModelError, match="cannot be traced"):
        edgeship.from_torch(ReturnsText(), torch.randn(1, 4))


def test_export_that_froze_data_dependent_values_is_refused():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * x.sum().item()  # .item() is frozen into a constant by tracing

    with pytest.raises(InvalidModelError, match="does not reproduce the module"):
        edgeship.from_torch(DataDependent(), torch.randn(1, 4))


def test_module_function_spec(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.randn(1, 4)\n"
    )
    monkeypatch.chdir(tmp_path)
    model = edgeship.load("mynet:build")
    assert model.kind == "torch" and model.outputs[0].shape[-1] == 2
    with pytest.raises(InvalidModelError, match="has no function"):
        edgeship.load("mynet:missing")


def test_sentence_transformers_dir_exports_pooled_embedding(tiny_bert_dir, tiny_bert):
    from transformers import AutoTokenizer, BertModel

    assert [o.name for o in tiny_bert.outputs] == ["sentence_embedding"]
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    enc = tok(["a small test", "edge devices are small"], padding="max_length", max_length=16, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    ours = tiny_bert.run(feeds)[0]
    bert = BertModel.from_pretrained(str(tiny_bert_dir)).eval()
    with torch.no_grad():
        hidden = bert(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state
    mask = torch.from_numpy(feeds["attention_mask"]).unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_pickled_checkpoint_is_never_unpickled(tiny_bert_dir, tmp_path):
    """A pytorch_model.bin holding an arbitrary object is refused by weights_only loading."""
    d = tmp_path / "evil"
    shutil.copytree(tiny_bert_dir, d)
    (d / "model.safetensors").unlink()
    torch.save({"x": Path("/etc/passwd")}, d / "pytorch_model.bin")  # a non-tensor object
    with pytest.raises(InvalidModelError, match="not a plain tensor checkpoint"):
        edgeship.load(d)
