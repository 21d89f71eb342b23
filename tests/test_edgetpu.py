"""The Edge TPU check: Coral's documented rules applied op by op to a real .tflite (the compiler
cannot be installed here), and the compiler's one partition: from the first op it cannot map, the
rest runs on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

from edgeship.engines.tflm.graph import Graph, OpInfo, TensorInfo, read_graph
from edgeship.targets import edgetpu
from edgeship.targets.edgetpu import edgetpu_check


def test_a_full_int8_cnn_maps_every_op_to_the_edge_tpu(int8_cnn):
    check = edgetpu_check(int8_cnn["int8"])
    ops = [op.op for op in read_graph(int8_cnn["int8"].read_bytes()).ops]
    assert [r["op"] for r in check["ops"]] == ops
    assert check["fully_mapped"] and check["on_cpu"] == 0 and check["macs_on_edgetpu_share"] == 1.0
    assert "not installed" in check["compiler"] and check["source"].startswith("https://coral.ai/")


def test_a_float_model_runs_on_the_cpu_and_says_which_tensor_is_float(int8_cnn):
    check = edgetpu_check(int8_cnn["float"])
    assert check["on_edgetpu"] == 0 and check["first_cpu_op"] == 0
    assert "float32, not 8-bit" in check["ops"][0]["why"]


def _tensor(i: int, shape: tuple[int, ...], dtype: str = "INT8", constant: bool = False) -> TensorInfo:
    return TensorInfo(i, f"t{i}", dtype, shape, constant)


def test_everything_after_the_first_unmapped_op_falls_back_to_the_cpu():
    """ADD, EXP (not an Edge TPU op), then a supported ADD: the compiler partitions once, so the
    last ADD runs on the CPU too."""
    graph = Graph(tensors=tuple(_tensor(i, (1, 4, 4, 8)) for i in range(4)),
                  ops=(OpInfo(0, "ADD", (0, 0), (1,), 0), OpInfo(1, "EXP", (1,), (2,), 0),
                       OpInfo(2, "ADD", (2, 2), (3,), 0)),
                  inputs=(0,), outputs=(3,))
    check = edgetpu_check(graph)
    assert [r["device"] for r in check["ops"]] == ["edgetpu", "cpu", "cpu"]
    assert "EXP is not an Edge TPU op" in check["ops"][1]["why"] and "after op 1" in check["ops"][2]["why"]


def test_the_documented_limits_are_checked():
    five_d = Graph(tensors=(_tensor(0, (2, 3, 4, 4, 8)), _tensor(1, (2, 3, 4, 4, 8))),
                   ops=(OpInfo(0, "RELU", (0,), (1,), 0),), inputs=(0,), outputs=(1,))
    assert "outside the innermost 3" in edgetpu._op_problem(five_d, five_d.ops[0])
    fused = Graph(tensors=(_tensor(0, (1, 4, 4, 8)), _tensor(1, (1, 2, 2, 8))),
                  ops=(OpInfo(0, "MAX_POOL_2D", (0,), (1,), 0, "RELU"),), inputs=(0,), outputs=(1,))
    assert "fused RELU" in edgetpu._op_problem(fused, fused.ops[0])
    softmax = Graph(tensors=(_tensor(0, (1, 20_000)), _tensor(1, (1, 20_000))),
                    ops=(OpInfo(0, "SOFTMAX", (0,), (1,), 0),), inputs=(0,), outputs=(1,))
    assert "16,000" in edgetpu._op_problem(softmax, softmax.ops[0])
    dynamic = Graph(tensors=(TensorInfo(0, "x", "INT8", (1, 8), False, True), _tensor(1, (1, 8))),
                    ops=(OpInfo(0, "RELU", (0,), (1,), 0),), inputs=(0,), outputs=(1,))
    assert "dynamic shape" in edgetpu._op_problem(dynamic, dynamic.ops[0])


def test_inspect_target_edgetpu_prints_the_split_and_refuses_an_onnx_model(int8_cnn, cnn_onnx):
    done = subprocess.run([sys.executable, "-m", "edgeship.cli", "inspect", str(int8_cnn["int8"]), "--target",
                           "edgetpu", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["edgetpu"]["fully_mapped"]
    bad = subprocess.run([sys.executable, "-m", "edgeship.cli", "inspect", str(cnn_onnx), "--target", "edgetpu"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "checks a .tflite/.tflm model" in bad.stderr
