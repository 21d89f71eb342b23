"""Hybrid split: every cut of a real ONNX model runs as head then tail and gives the full model's
answer; the plan's cost curve is the sum of its parts, and the chosen cut moves with the link."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeship
from edgeship.hybrid.split import Link, cuts, extract, plan_split
from edgeship.core.wire import decode, encode, wire_inputs

CNN_SHAPE = {"image": (1, 1, 8, 8)}


def _run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_every_cut_runs_as_head_then_tail_and_gives_the_full_answer(cnn_onnx, digits8, tmp_path):
    x = digits8["x_test"][:1]
    full = _run(cnn_onnx, {"image": x})[0]
    table = cuts(onnx.load(str(cnn_onnx)), CNN_SHAPE)
    assert table[0].tensors == ("image",) and table[-1].tensors == ()
    for cut in table[1:-1]:
        head, tail = extract(cnn_onnx, cut.position, tmp_path / str(cut.position), CNN_SHAPE)
        crossing = _run(head, {"image": x})
        names = [i.name for i in ort.InferenceSession(str(tail), providers=["CPUExecutionProvider"]).get_inputs()]
        assert sorted(names) == sorted(cut.tensors)
        answer = _run(tail, dict(zip(cut.tensors, crossing)))[0]
        np.testing.assert_allclose(answer, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wire", ["fp16", "int8"])
def test_a_tail_takes_the_cut_tensor_as_it_travels(cnn_onnx, digits8, tmp_path, wire):
    """fp16 or int8 (with its scale) on the wire; the tail casts back: the answer keeps its floor."""
    x = digits8["x_test"][:64]
    table = cuts(onnx.load(str(cnn_onnx)), CNN_SHAPE)
    middle = table[len(table) // 2]
    head, tail = extract(cnn_onnx, middle.position, tmp_path, CNN_SHAPE, wire)
    full = _run(cnn_onnx, {"image": x})[0]
    sent = wire_inputs(dict(zip(middle.tensors, _run(head, {"image": x}))), wire)
    assert {v.dtype for k, v in sent.items() if k.endswith(".wire")} == {np.dtype(np.float16 if wire == "fp16" else np.int8)}
    answer = _run(tail, sent)[0]
    cos = float((answer * full).sum() / (np.linalg.norm(answer) * np.linalg.norm(full)))
    assert cos >= 0.99 and (answer.argmax(1) == full.argmax(1)).mean() >= 0.95
    assert np.allclose(decode(*encode(full, "int8")), full, atol=float(np.abs(full).max()) / 127)


def _early_reduce_model(path):
    """A 64x64 RGB input (48 KiB of fp32) that one strided conv shrinks to 4 KiB, then heavy convs:
    the shape for which a split beats both device-only and cloud-only on a slow device."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], strides=[4, 4], kernel_shape=[4, 4]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w3"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "early_reduce", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              [weight("w0", 4, 3, 4, 4), weight("w1", 64, 4, 3, 3), weight("w2", 64, 64, 3, 3),
                               weight("w3", 10, 64)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_chosen_cut_moves_with_the_link(tmp_path):
    model = _early_reduce_model(tmp_path / "m.onnx")
    slow = plan_split(model, "rp2040", "host", "5kbit,100ms")
    fast = plan_split(model, "rp2040", "host", "1gbit,1ms")
    middle = plan_split(model, "rp2040", "host", "5mbit,20ms")
    assert slow.chosen["where"] == "device" and fast.chosen["where"] == "upstream"
    # at the crossover the split beats both ends
    assert middle.chosen["where"] == "split"
    assert middle.chosen["total_ms"] < min(middle.device_only["total_ms"], middle.cloud_only["total_ms"])
    for plan in (slow, fast, middle):
        assert plan.chosen["total_ms"] == min(r["total_ms"] for r in plan.curve)
        for row in plan.curve:
            assert row["total_ms"] == pytest.approx(row["head_ms"] + row["transfer_ms"] + row["tail_ms"])


def test_device_only_costs_what_the_fit_estimate_says(tmp_path):
    from edgeship.targets import load_profile
    from edgeship.targets.estimate import estimate

    model = _early_reduce_model(tmp_path / "m.onnx")
    plan = plan_split(model, "raspberry-pi-4", "host", "10mbit,40ms")
    assert plan.device_only["total_ms"] == pytest.approx(estimate(model, load_profile("raspberry-pi-4"))["latency_ms"])
    # the wire encoding sets the bytes of what crosses
    int8 = plan_split(model, "raspberry-pi-4", "host", "10mbit,40ms", wire="int8")
    assert int8.curve[1]["wire_bytes"] * 4 == plan.curve[1]["wire_bytes"] == 4 * 16 * 16 * 4


def test_energy_within_a_latency_budget(tmp_path):
    model = _early_reduce_model(tmp_path / "m.onnx")
    plan = plan_split(model, "cortex-m7", "host", "5mbit,20ms,0.5w", objective="energy", max_latency_ms=500)
    within = [r for r in plan.curve if r["total_ms"] <= 500]
    assert plan.chosen["device_energy_mj"] == min(r["device_energy_mj"] for r in within)
    with pytest.raises(edgeship.EdgeshipError, match="no cut meets the latency budget of 0.001 ms"):
        plan_split(model, "cortex-m7", "host", "5mbit,20ms", max_latency_ms=0.001)


def test_a_link_is_parsed_or_refused():
    link = Link.parse("2mbit,80ms,0.8w")
    assert (link.bandwidth_bps, link.rtt_s, link.tx_power_w) == (2e6, 0.08, 0.8)
    with pytest.raises(edgeship.EdgeshipError, match="not BANDWIDTH,RTT"):
        Link.parse("fast")


def test_split_cli_writes_the_halves_the_plan_and_the_plot(tmp_path):
    model = _early_reduce_model(tmp_path / "m.onnx")
    done = subprocess.run([sys.executable, "-m", "edgeship.cli", "split", str(model), "--target", "rp2040",
                           "--link", "5mbit,20ms", "--out", str(tmp_path / "out"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(done.stdout)
    assert plan["chosen"]["where"] == "split"
    names = {p.rsplit("/", 1)[-1] for p in plan["files"]}
    assert names == {"head.onnx", "tail.onnx", "split.json", "split.png"}
    assert (tmp_path / "out" / "split.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, "-m", "edgeship.cli", "split", str(model), "--target", "cortex-m7",
                          "--link", "fast", "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--link 'fast'" in bad.stderr and not (tmp_path / "bad").exists()
