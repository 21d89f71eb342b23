"""Peak memory measures the model's session, not the import of ONNX Runtime itself."""

from __future__ import annotations

import numpy as np


def test_a_tiny_models_peak_excludes_the_runtime_import(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeship.evaluate import measure_peak_memory

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    peak = measure_peak_memory(path, {"x": np.ones((1, 4), np.float32)}, 2)
    # a 64-byte weight: what remains is the session's own arenas and threads (about 6 MiB here);
    # importing onnxruntime costs about 30 MiB more, and must not be counted
    assert 0 < peak < 16 * 2**20
