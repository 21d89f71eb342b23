"""MACs are counted for recurrent cells and tree ensembles, and are 'unknown', never 0, where they cannot be."""

from __future__ import annotations

import numpy as np
import pytest

import edgeship
from edgeship.evaluate.graph import graph_stats


def _rnn(tmp_path, op: str, gates: int, seq: int = 5, inputs: int = 8, hidden: int = 16, dynamic_seq: bool = False):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((1, gates * hidden, inputs)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.standard_normal((1, gates * hidden, hidden)).astype(np.float32), "R")
    node = helper.make_node(op, ["X", "W", "R"], ["Y", "Y_h"], hidden_size=hidden)
    # ONNX's recurrent layout: [sequence, batch, features]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["seq" if dynamic_seq else seq, 1, inputs])
    y = helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, 1, hidden])
    graph = helper.make_graph([node], op.lower(), [x], [y], [w, r])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / f"{op}.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("op, gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_recurrent_cells_count_their_gate_gemms(tmp_path, op, gates):
    stats = graph_stats(_rnn(tmp_path, op, gates))
    assert stats["macs"] == 5 * gates * 16 * (8 + 16)  # steps x gate rows x (input + hidden), batch 1
    assert stats["macs_unknown"] == []


def test_a_dynamic_dim_without_a_size_is_unknown_not_one(tmp_path):
    path = _rnn(tmp_path, "LSTM", 4, dynamic_seq=True)  # axis 0 is read as the batch: sized 1 per sample
    assert graph_stats(path)["macs"] == 1 * 4 * 16 * 24
    info = edgeship.inspect(path, {"X": (7, 1, 8)})  # --shape sizes every axis it names, the first too
    assert info["macs"] == 7 * 4 * 16 * 24 and info["shapes"]["from"] == "--shape"
    gru = _rnn(tmp_path, "GRU", 3)
    import onnx

    proto = onnx.load(gru)
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "features"  # a dynamic non-batch axis
    onnx.save(proto, gru)
    stats = graph_stats(gru)
    assert stats["macs"] is None and stats["macs_unknown"] == ["dynamic dim X[2] has no size (give --shape, or data)"]


def test_transformer_sequence_length_comes_from_shape_or_is_unknown(tiny_bert):
    info = edgeship.inspect(tiny_bert)
    assert info["macs"] is None
    assert any("input_ids[1]" in why for why in info["macs_unknown"])
    sized = edgeship.inspect(tiny_bert, {n: (1, 32) for n in ("input_ids", "attention_mask", "token_type_ids")})
    longer = edgeship.inspect(tiny_bert, {n: (1, 64) for n in ("input_ids", "attention_mask", "token_type_ids")})
    assert 0 < sized["macs"] < longer["macs"]


def test_estimate_refuses_an_unsized_dynamic_dim(tiny_bert):
    from edgeship.inspection import fit_report

    with pytest.raises(edgeship.EdgeshipError, match=r"dynamic dim\(s\) input_ids\[1\].*--shape"):
        fit_report(tiny_bert, "raspberry-pi-5", measure=False)


def test_tree_ensembles_count_one_comparison_per_level(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, y)
    path = tmp_path / "forest.onnx"
    path.write_bytes(to_onnx(forest, x[:1].astype(np.float32), options={"zipmap": False}).SerializeToString())
    stats = graph_stats(path)
    assert stats["macs"] == sum(tree.get_depth() for tree in forest.estimators_)


def test_an_op_that_cannot_be_counted_makes_the_total_unknown(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Einsum", ["A", "B"], ["C"], equation="ij,jk->ik")
    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, 3])
    b = helper.make_tensor_value_info("B", TensorProto.FLOAT, [3, 4])
    c = helper.make_tensor_value_info("C", TensorProto.FLOAT, [2, 4])
    path = tmp_path / "einsum.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "e", [a, b], [c]),
                                opset_imports=[helper.make_opsetid("", 17)]), path)
    stats = graph_stats(path)
    assert stats["macs"] is None and stats["macs_unknown"] == ["1 Einsum node(s) whose cost cannot be counted"]
