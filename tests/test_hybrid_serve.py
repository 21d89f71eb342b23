"""A hybrid bundle served for real: the device server runs the head and calls an upstream
`edgeship serve` of the tail (real processes on 127.0.0.1, a bearer token, binary tensors); when the
upstream is down, slow, refuses the token or answers the wrong shape, the device answers with the
whole model and says why."""

from __future__ import annotations

import json
import socket

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeship.bundle import generate_keys
from edgeship.bundle.pack import pack, tail_bundle_path
from edgeship.hybrid.split import extract, plan_split
from edgeship.runtime.hybrid import CircuitBreaker
from test_hybrid import _early_reduce_model
from test_server import _metric, _request, running_server

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid")
    keys = generate_keys(root / "keys", content_key=True)
    model = _early_reduce_model(root / "er.onnx")
    plan = plan_split(model, "rp2040", "host", "5mbit,20ms")
    assert plan.chosen["where"] == "split"
    extract(model, plan.chosen["position"], root / "split")
    (root / "split" / "split.json").write_text(json.dumps(plan.to_dict()))
    device = pack(model, "er", 1, keys["private"], root / "er.edgeship", encrypt_key=keys["content"],
                  split=root / "split")
    (root / "token").write_text(TOKEN + "\n")
    (root / "wrong").write_text("not-the-token\n")
    return {"root": root, "keys": keys, "model": model, "device": device, "tail": tail_bundle_path(device),
            "cut": plan.chosen["tensors"]}


def _x(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 3, 64, 64)).astype(np.float32)


def _infer(port, x):
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    status, _, payload = _request(port, "POST", "/v2/models/er/infer", body, {"Content-Type": "application/json"})
    assert status == 200, payload
    answer = json.loads(payload)
    return np.asarray(answer["outputs"][0]["data"], np.float32).reshape(answer["outputs"][0]["shape"]), answer


def _full(model, x):
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_bundle_carries_the_head_and_the_plan_signed(hybrid):
    from edgeship.bundle.format import verify_bundle
    from edgeship.bundle.keys import load_content_key, load_public_keys

    bundle = verify_bundle(hybrid["device"], load_public_keys([hybrid["keys"]["public"]]),
                           load_content_key(hybrid["keys"]["content"]))
    assert bundle.head_bytes and bundle.manifest["hybrid"]["cut"] == hybrid["cut"]
    assert "head.onnx.enc" in bundle.manifest["members"] and bundle.manifest["hybrid"]["tail_model"] == "er-tail"


def test_split_answers_through_the_upstream_and_says_so(hybrid):
    keys = hybrid["keys"]
    with running_server([hybrid["tail"]], keys, "--token-file", str(hybrid["root"] / "token")) as (up, _):
        # the upstream refuses a request without the token
        assert _request(up, "POST", "/v2/models/er-tail/infer", b"{}")[0] == 401
        with running_server([hybrid["device"]], keys, "--upstream", f"http://127.0.0.1:{up}",
                            "--upstream-token-file", str(hybrid["root"] / "token")) as (port, _):
            for seed in range(3):
                x = _x(seed)
                y, answer = _infer(port, x)
                assert answer["parameters"]["executed_on"] == "split"
                np.testing.assert_allclose(y, _full(hybrid["model"], x), rtol=1e-4, atol=1e-4)
            assert _metric(port, "edgeship_hybrid_requests_total", executed_on="split") == 3
            assert _metric(up, "edgeship_inference_requests_total", status="200") == 3


@pytest.mark.parametrize("fault", ["down", "wrong_token", "silent"])
def test_the_device_answers_locally_when_the_upstream_fails(hybrid, fault):
    keys, root = hybrid["keys"], hybrid["root"]
    silent = None
    if fault == "silent":  # accepts connections and never answers: the timeout decides
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        up = silent.getsockname()[1]
    reason = {"down": "unreachable", "wrong_token": "auth", "silent": "timeout"}[fault]
    try:
        if fault == "wrong_token":
            ctx = running_server([hybrid["tail"]], keys, "--token-file", str(root / "token"))
            up = ctx.__enter__()[0]
        elif fault == "down":
            up = _free_port()
        token = root / ("wrong" if fault == "wrong_token" else "token")
        with running_server([hybrid["device"]], keys, "--upstream", f"http://127.0.0.1:{up}", "--upstream-token-file",
                            str(token), "--upstream-timeout", "0.5", "--breaker-failures", "2") as (port, _):
            reasons = []
            for seed in range(3):
                x = _x(seed)
                y, answer = _infer(port, x)
                assert answer["parameters"]["executed_on"] == "device"
                np.testing.assert_allclose(y, _full(hybrid["model"], x), rtol=1e-4, atol=1e-4)
            for r in (reason, "circuit_open"):
                reasons.append(_metric(port, "edgeship_hybrid_requests_total", executed_on="device", reason=r))
            # two failures open the breaker: the third request does not wait for the upstream
            assert reasons == [2, 1]
    finally:
        if fault == "wrong_token":
            ctx.__exit__(None, None, None)
        if silent is not None:
            silent.close()


def test_a_wrong_shape_from_upstream_falls_back(hybrid, tmp_path):
    """An upstream model of the right name and inputs that answers [1, 5] instead of [1, 10]."""
    cut = hybrid["cut"][0]
    w = numpy_helper.from_array(np.ones((4, 5), np.float32), "w")
    graph = helper.make_graph([helper.make_node("ReduceMean", [cut], ["m"], axes=[2, 3], keepdims=0),
                               helper.make_node("MatMul", ["m", "w"], ["y"])], "wrong",
                              [helper.make_tensor_value_info(cut, TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], [w])
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "wrong.onnx"))
    wrong = pack(tmp_path / "wrong.onnx", "er-tail", 1, hybrid["keys"]["private"], tmp_path / "wrong.edgeship")
    keys = hybrid["keys"]
    with running_server([wrong], keys) as (up, _):
        with running_server([hybrid["device"]], keys, "--upstream", f"http://127.0.0.1:{up}") as (port, _):
            y, answer = _infer(port, _x())
            assert answer["parameters"]["executed_on"] == "device" and y.shape == (1, 10)
            assert _metric(port, "edgeship_hybrid_requests_total", reason="bad_answer") == 1


def test_with_the_upstream_killed_every_request_is_answered(hybrid):
    keys = hybrid["keys"]
    with running_server([hybrid["tail"]], keys) as (up, upstream):
        with running_server([hybrid["device"]], keys, "--upstream", f"http://127.0.0.1:{up}") as (port, _):
            assert _infer(port, _x())[1]["parameters"]["executed_on"] == "split"
            upstream.kill()
            upstream.wait(30)
            where = [_infer(port, _x(seed))[1]["parameters"]["executed_on"] for seed in range(10)]
            assert where == ["device"] * 10


def test_the_breaker_opens_waits_and_tries_once():
    now = [0.0]
    breaker = CircuitBreaker(failures=2, cooldown_s=10, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow() and breaker.state == "closed"
    breaker.failure()
    assert not breaker.allow() and breaker.state == "open"
    now[0] = 10.0
    assert breaker.allow() and not breaker.allow()  # half-open: one trial at a time
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()
