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
from edgeship.hybrid.emulator import LinkEmulator
from edgeship.runtime.hybrid import CircuitBreaker, HybridRunner, RoutePolicy, Upstream
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


# -- where each request runs: the route policy, then the whole request offloaded for real ---------------


def test_the_policy_starts_from_the_plan_and_follows_measurements():
    now = [0.0]
    policy = RoutePolicy({"device": 0.200, "split": 0.050, "upstream": 0.080}, alpha=0.5, probe_s=10,
                         clock=lambda: now[0])
    assert policy.choose() == "split"  # the plan's estimate
    for _ in range(3):  # the link got slow: split measured at 0.5 s
        policy.observe("split", 0.5)
    assert policy.choose() == "upstream"
    policy.observe("upstream", 0.6)
    assert policy.choose() == "device"
    assert policy.choose(allowed=lambda route: False) == "device"


def test_a_deep_queue_sends_whole_requests_upstream():
    """The device's part of each route waits behind the queue: all of device-only, the split's head."""
    policy = RoutePolicy({"device": 0.010, "split": 0.012, "upstream": 0.025}, {"split": 0.004}, probe_s=1e9,
                         clock=lambda: 0.0)
    assert policy.choose(waiting=0) == "device"  # 10 ms
    assert policy.choose(waiting=1) == "split"  # 20 ms vs 12 + 4
    assert policy.choose(waiting=4) == "upstream"  # 50 ms vs 12 + 16 = 28 ms vs 25 ms
    policy.observe("split", 0.012, 0.001)  # a faster head than thought
    assert policy.device_s["split"] < 0.004 and policy.choose(waiting=4) == "split"


def test_a_route_left_unmeasured_is_probed_once_then_judged():
    now = [0.0]
    policy = RoutePolicy({"device": 0.010, "split": 0.030, "upstream": 0.040}, probe_s=10, clock=lambda: now[0])
    assert [policy.choose() for _ in range(3)] == ["device"] * 3
    now[0] = 10.0
    assert policy.choose() == "split"  # stale: probed
    assert policy.choose() == "upstream"  # the other stale one
    assert policy.choose() == "device"  # each probed once, until probe_s passes again
    for _ in range(10):  # the probe found a fast link, and it stays fast
        policy.observe("split", 0.001)
    assert policy.choose() == "split"
    policy.drop("split")
    assert "split" not in policy.routes and policy.choose() == "device"


def _runner(hybrid, url, offload=True, estimates=None):
    from edgeship.runtime import Runtime

    keys = hybrid["keys"]
    runtime = Runtime.open(hybrid["device"], [keys["public"]], keys["content"], threads=1)
    runner = HybridRunner(runtime, Upstream(url, runtime.hybrid["tail_model"], timeout_s=30), offload=offload)
    if estimates is not None:
        runner.policy = RoutePolicy(estimates, probe_s=1e9)
    return runner


def test_whole_requests_go_to_the_upstreams_copy_of_the_model(hybrid):
    """The upstream serves the tail and the device's own bundle (as a plain model); a deep queue on
    the device sends whole requests there, and the answer is the model's."""
    keys = hybrid["keys"]
    with running_server([hybrid["tail"], hybrid["device"]], keys) as (up, _):
        runner = _runner(hybrid, f"http://127.0.0.1:{up}")
        x = _x(3)
        answer = runner.predict({"x": x}, waiting=1000)
        assert answer.executed_on == "upstream" and answer.fallback_reason == ""
        np.testing.assert_allclose(answer.outputs["y"], _full(hybrid["model"], x), rtol=1e-4, atol=1e-4)
        assert runner.predict({"x": x}).executed_on == "split"


def test_an_upstream_without_the_whole_model_turns_offload_off(hybrid):
    keys = hybrid["keys"]
    with running_server([hybrid["tail"]], keys) as (up, _):
        runner = _runner(hybrid, f"http://127.0.0.1:{up}")
        first = runner.predict({"x": _x()}, waiting=1000)
        assert (first.executed_on, first.fallback_reason) == ("device", "http_404")
        assert "upstream" not in runner.policy.routes and runner.breaker.state == "closed"
        assert runner.predict({"x": _x()}).executed_on == "split"
        no_offload = _runner(hybrid, f"http://127.0.0.1:{up}", offload=False)
        assert no_offload.policy.routes == ["device", "split"]


def test_a_slow_link_moves_requests_to_the_device_and_a_dead_one_falls_back(hybrid):
    """Through the link emulator: 300 ms of round trip make the split slower than the device's
    50 ms estimate once measured; a blackholed link is a timeout, answered on the device."""
    keys = hybrid["keys"]
    with running_server([hybrid["tail"]], keys) as (up, _):
        with LinkEmulator(("127.0.0.1", up), "100mbit,300ms") as emu:
            runner = _runner(hybrid, emu.url, offload=False, estimates={"device": 0.050, "split": 0.010})
            where = [runner.predict({"x": _x(seed)}).executed_on for seed in range(3)]
            assert where[0] == "split" and where[1:] == ["device", "device"]
            assert runner.policy.expected_s["split"] >= 0.010 + 0.3 * (0.300 - 0.010)
            emu.set(link="100mbit,0ms", outage="blackhole")
            runner.upstream.timeout_s = 0.3
            runner.upstream._drop()
            runner.policy = RoutePolicy({"device": 0.050, "split": 0.010}, probe_s=1e9)
            answer = runner.predict({"x": _x()})
            assert (answer.executed_on, answer.fallback_reason) == ("device", "timeout")
