"""`edgeship serve`: a real server process on 127.0.0.1, driven by the real tritonclient and raw HTTP."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from edgeship.bundle import generate_keys  # noqa: E402
from edgeship.bundle.pack import pack  # noqa: E402


EDGESHIP = [sys.executable, "-m", "edgeship.cli"]
#: the CLI as on a device-only install: torch, transformers, onnx, ... cannot be imported
DEVICE_EDGESHIP = [sys.executable, str(Path(__file__).with_name("device_only.py"))]


@contextlib.contextmanager
def running_server(bundles: list[Path], keys: dict[str, Path], *extra: str, cli: list[str] = EDGESHIP):
    """Start `edgeship serve ... --port 0`, wait for its address, stop it at the end."""
    cmd = [*cli, "serve", *map(str, bundles), "--trust", str(keys["public"]),
           "--decrypt-key", str(keys["content"]), "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"server exited: {''.join(lines)} {proc.stderr.read()}")
            lines.append(line)
            found = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
            if found:
                break
        else:
            raise AssertionError("server did not start in time")
        port = int(found.group(1))
        _wait_ready(port)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_ready(port: int) -> None:
    """The server listens before it prints its address, so one request (queued in the backlog
    until the app accepts) is enough: no polling."""
    status = _request(port, "GET", "/v2/health/ready")[0]
    assert status == 200, f"server not ready: {status}"


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _metric(port: int, name: str, **labels: str) -> float:
    text = _request(port, "GET", "/metrics")[2].decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _await_metric(port: int, name: str, done, **labels: str) -> None:  # type: ignore[no-untyped-def]
    """Read the metric until ``done(value)``: each read is a real request, so the reads pace themselves
    (no sleep); the bound only turns a server that never gets there into a failure."""
    for _ in range(100000):
        if done(_metric(port, name, **labels)):
            return
    raise AssertionError(f"{name} {labels} never reached the awaited value")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_keys(tmp_path_factory.mktemp("server-keys"), content_key=True)


@pytest.fixture(scope="module")
def digits_bundles(keys, cnn_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("server-bundles")
    return [pack(cnn_onnx, "digits", 2, keys["private"], root / "d2.edgeship"),
            pack(cnn_onnx, "digits", 3, keys["private"], root / "d3.edgeship", encrypt_key=keys["content"])]


@pytest.fixture(scope="module")
def reference(cnn_onnx):
    import onnxruntime as ort

    session = ort.InferenceSession(str(cnn_onnx), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]


@pytest.fixture(scope="module")
def server(digits_bundles, keys):
    with running_server(digits_bundles, keys, "--max-request-mb", "0.25") as (port, proc):
        yield port, proc


@pytest.fixture(scope="module")
def slow_bundle(keys, tmp_path_factory):
    """A model that takes tens of milliseconds per request: 40 chained 1024x1024 MatMuls on [N, 64, 1024]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, _ = np.linalg.qr(rng.standard_normal((1024, 1024)))  # orthogonal: values stay in range
    nodes, prev = [], "x"
    for i in range(40):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64, 1024])],
        [numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    root = tmp_path_factory.mktemp("slow")
    onnx.save(model, root / "slow.onnx")
    return pack(root / "slow.onnx", "slow", 1, keys["private"], root / "slow.edgeship")


def _client(port: int):
    return tritonhttp.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=60, network_timeout=60)


def _infer_input(x: np.ndarray, binary: bool = True, name: str = "image", datatype: str = "FP32"):
    item = tritonhttp.InferInput(name, list(x.shape), datatype)
    item.set_data_from_numpy(x, binary_data=binary)
    return item


def test_health_and_metadata_with_tritonclient(server):
    port, proc = server
    client = _client(port)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "edgeship" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("digits")
    assert model["versions"] == ["2", "3"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert model["outputs"][0]["datatype"] == "FP32" and model["outputs"][0]["shape"] == [-1, 10]
    assert client.get_model_metadata("digits", "2")["versions"] == ["2"]
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "3")
    assert not client.is_model_ready("digits", "7")
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="no version '9'"):
        client.get_model_metadata("digits", "9")


def test_inference_binary_and_json_match_onnxruntime(server, digits8, reference):
    port, proc = server
    client = _client(port)
    x = digits8["x_test"][:5]
    result = client.infer("digits", [_infer_input(x)])  # tritonclient's default: binary tensors
    assert result.get_response()["model_version"] == "3"
    np.testing.assert_allclose(result.as_numpy("output"), reference(x), rtol=1e-5, atol=1e-5)
    out = tritonhttp.InferRequestedOutput("output", binary_data=False)
    result = client.infer("digits", [_infer_input(x, binary=False)], model_version="2", outputs=[out],
                          request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == "2"
    assert "data" in response["outputs"][0]  # answered as JSON, as asked
    np.testing.assert_allclose(result.as_numpy("output"), reference(x), rtol=1e-5, atol=1e-5)


def test_errors_through_tritonclient(server):
    port, proc = server
    client = _client(port)
    cases = [
        (_infer_input(np.zeros((2, 1, 8, 9), np.float32)), r"\[400\].*shape \[2, 1, 8, 9\].*wants \[-1, 1, 8, 8\]"),
        (_infer_input(np.zeros((2, 1, 8, 8), np.float64), datatype="FP64"), r"\[400\].*datatype 'FP64'.*FP32"),
        (_infer_input(np.zeros((2, 1, 8, 8), np.float32), name="pixels"), r"\[400\].*unknown input 'pixels'"),
    ]
    for item, message in cases:
        with pytest.raises(InferenceServerException, match=message):
            client.infer("digits", [item])


def _post(port: int, body: bytes, path: str = "/v2/models/digits/infer", **headers: str):
    status, response_headers, data = _request(port, "POST", path, body, {"Content-Type": "application/json", **headers})
    return status, json.loads(data) if data else None


def _valid_json_request(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}


def _image_request(value: str, shape: str = "[1, 1, 8, 8]", rows: int = 1) -> bytes:
    """A JSON request whose 64 x rows values are all the literal ``value`` (JSON text, not a Python value)."""
    if rows != 1:
        shape = f"[{rows}, 1, 8, 8]"
    data = ", ".join([value] * 64 * rows)
    return f'{{"inputs": [{{"name": "image", "shape": {shape}, "datatype": "FP32", "data": [{data}]}}]}}'.encode()


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"{}", 400, "\"inputs\" list"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 63}]}).encode(),
     400, "holds 63 values but shape \\[1, 1, 8, 8\\] needs 64"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": ["a"] * 64}]}).encode(),
     400, "not FP32"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, -1, 8, 8], "datatype": "FP32", "data": []}]}).encode(),
     400, "non-negative integers"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32",
                             "parameters": {"binary_data_size": 256}}]}).encode(), 400, "body ends before"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
                 "outputs": [{"name": "logits"}]}).encode(), 400, "unknown output 'logits'"),
    # odd numbers: JSON's missing constants, overflow to infinity, huge integers, integers past int's digits
    (_image_request("NaN"), 400, "not valid JSON"), (_image_request("-Infinity"), 400, "not valid JSON"),
    (_image_request("1e400"), 400, "finite range of FP32"), (_image_request("3.5e38"), 400, "finite range"),
    (_image_request(str(10**30)), 400, "not FP32"), (_image_request("0").replace(b"[0,", b"[" + b"1" * 5000 + b",", 1), 400, "not valid JSON"),
    (_image_request("0", shape="[10000000000000000000000000000, 1, 8, 8]"), 413, "elements"),
    (_image_request("0", shape="[1, 0, 8, 8]"), 400, "size 0"),
    (_image_request("0", shape="[" + "1, " * 40 + "1]"), 400, "at most 32"),
    (_image_request("0", rows=17), 413, "at most 16 per request"),
    # deep JSON, around the request and inside its data
    (b"[" * 100000 + b"]" * 100000, 400, "nested too deeply"),
    (_image_request("0").replace(b"[0,", b"[" + b"[" * 5000 + b"0" + b"]" * 5000 + b",", 1), 400, "nested too deeply"),
    (b'{"inputs": 5, "id": ' + b"9" * 5000 + b"}", 400, "not valid JSON"),
    (b"\xff\xfe{}", 400, "not valid JSON"),
])
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(server, body, status, message, digits8, reference):
    port, proc = server
    got, payload = _post(port, body)
    assert got == status and re.search(message, payload["error"]), payload
    x = digits8["x_test"][:1]
    got, payload = _post(port, json.dumps(_valid_json_request(x)).encode())
    assert got == 200
    np.testing.assert_allclose(np.array(payload["outputs"][0]["data"]).reshape(1, 10), reference(x), atol=1e-5)


@pytest.mark.parametrize("path, headers, status", [
    ("/v2/models/digits/versions/%C2%B2/infer", {}, 404),  # "²": a digit to Python's isdigit, not a version
    ("/v2/models/digits/versions/%D9%A1/infer", {}, 404),  # "١" (Arabic-Indic one): int() would take it
    ("/v2/models/digits/versions/" + "9" * 30 + "/infer", {}, 404),
    ("/v2/models/digits/versions/-1/infer", {}, 404),
    ("/v2/models/digits/infer", {"Inference-Header-Content-Length": "\u00b2"}, 400),
    ("/v2/models/digits/infer", {"Inference-Header-Content-Length": "9" * 40}, 400),
    ("/v2/models/digits/infer", {"Inference-Header-Content-Length": "-5"}, 400),
])
def test_odd_numbers_in_paths_and_headers_get_4xx(server, path, headers, status, digits8):
    port, proc = server
    body = json.dumps(_valid_json_request(digits8["x_test"][:1])).encode()
    got, payload = _post(port, body, path=path, **headers)
    assert got == status and payload["error"], payload
    assert _post(port, body)[0] == 200


def test_nan_and_inf_outputs_are_still_valid_json(keys, tmp_path):
    """A model whose answer holds NaN and infinities (log of -1, 0, 1): strict JSON parsers read the answer."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "log",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "log.onnx")
    bundle = pack(tmp_path / "log.onnx", "log", 1, keys["private"], tmp_path / "log.edgeship")
    with running_server([bundle], keys) as (port, _):
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [-1.0, 0.0, 1.0]}]})
        status, _, raw = _request(port, "POST", "/v2/models/log/infer", body.encode(),
                                  {"Content-Type": "application/json"})

        def strict(name: str) -> None:
            raise AssertionError(f"{name} is not JSON")

        answer = json.loads(raw, parse_constant=strict)
    assert status == 200 and answer["outputs"][0]["data"] == ["nan", "-inf", 0.0]


def test_binary_size_mismatch_and_unknown_routes(server):
    port, proc = server
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 200}}]}).encode()
    got, payload = _post(port, header + bytes(200), **{"Inference-Header-Content-Length": str(len(header))})
    assert got == 400 and "needs 256" in payload["error"]
    got, payload = _post(port, b"{}", path="/v2/models/nope/infer")
    assert got == 404 and "unknown model" in payload["error"]
    status, _, data = _request(port, "GET", "/v2/nothing-here")
    assert status == 404 and "error" in json.loads(data)


def test_oversize_bodies_get_413_announced_or_streamed(server, digits8):
    port, proc = server
    big = json.dumps(_valid_json_request(np.zeros((1000, 1, 8, 8), np.float32))).encode()  # 0.32 MB > 0.25 MB
    got, payload = _post(port, big)
    assert got == 413 and "limit" in payload["error"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # chunked: no Content-Length to trust
    conn.request("POST", "/v2/models/digits/infer", body=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    conn.close()
    assert _post(port, json.dumps(_valid_json_request(digits8["x_test"][:2])).encode())[0] == 200


def test_openapi_schema_and_metrics(server):
    port, proc = server
    status, _, data = _request(port, "GET", "/openapi.json")
    schema = json.loads(data)
    assert status == 200 and "/v2/models/{name}/infer" in schema["paths"] and "/v2/health/ready" in schema["paths"]
    # this test's own requests, one good and one bad, so it does not depend on which tests ran before
    good = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
    assert _request(port, "POST", "/v2/models/digits/infer", json.dumps(good).encode())[0] == 200
    assert _request(port, "POST", "/v2/models/digits/infer", b"{not json")[0] == 400
    assert _metric(port, "edgeship_inference_requests_total", model="digits", status="200") >= 1
    assert _metric(port, "edgeship_inference_requests_total", model="digits", status="400") >= 1
    assert _metric(port, "edgeship_inference_request_duration_seconds_count", model="digits") >= 2
    assert _metric(port, "edgeship_batch_size_count", model="digits") >= 1


def test_server_process_never_loads_torch(server):
    port, proc = server
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    assert "onnxruntime" in maps and "libtorch" not in maps and "transformers" not in maps


def test_dynamic_batching_combines_concurrent_requests(digits_bundles, keys, digits8, reference):
    xs = [digits8["x_test"][i:i + 1] for i in range(32)]
    with running_server(digits_bundles, keys, "--max-queue-delay-ms", "100", "--max-batch-size", "16") as (port, _):
        def one(x: np.ndarray) -> np.ndarray:
            return _client(port).infer("digits", [_infer_input(x)]).as_numpy("output")

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outputs = list(pool.map(one, xs))
        for x, y in zip(xs, outputs):  # each request gets its own rows back
            np.testing.assert_allclose(y, reference(x), rtol=1e-5, atol=1e-5)
        batches = _metric(port, "edgeship_batch_size_count", model="digits")
        rows = _metric(port, "edgeship_batch_size_sum", model="digits")
        assert rows == 32 and batches < 32 / 2, (batches, rows)  # on average more than two requests per batch


def test_cache_answers_repeats_without_running_the_model(digits_bundles, keys, digits8):
    x = digits8["x_test"][:3]
    with running_server(digits_bundles, keys, "--cache-size", "8") as (port, _):
        client = _client(port)
        first = client.infer("digits", [_infer_input(x)]).as_numpy("output")
        second = client.infer("digits", [_infer_input(x)]).as_numpy("output")
        np.testing.assert_array_equal(first, second)
        assert _metric(port, "edgeship_cache_lookups_total", result="hit") == 1
        assert _metric(port, "edgeship_batch_size_count", model="digits", version="3") == 1


def test_full_queue_answers_503_and_shutdown_finishes_requests_in_flight(slow_bundle, keys):
    x = np.ones((1, 64, 1024), np.float32)
    with running_server([slow_bundle], keys, "--max-queue", "1", "--max-batch-size", "1") as (port, proc):
        body = json.dumps(_valid_json_request(x)).encode().replace(b'"image"', b'"x"')

        def post() -> int:
            return _post(port, body, path="/v2/models/slow/infer")[0]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = sorted(pool.map(lambda _: post(), range(8)))
        assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
        assert _metric(port, "edgeship_inference_requests_total", status="503") == statuses.count(503)

        # graceful shutdown: a request in flight when SIGTERM arrives still gets its answer
        result: dict[str, int] = {}
        worker = threading.Thread(target=lambda: result.update(status=post()))
        worker.start()
        _await_metric(port, "edgeship_inference_requests_in_flight", lambda v: v >= 1, model="slow")
        proc.send_signal(signal.SIGTERM)
        worker.join(60)
        assert result.get("status") == 200
        assert proc.wait(60) == 0


def test_idle_unload_then_transparent_reload_reverifies_the_file(keys, cnn_onnx, digits8, reference, tmp_path):
    bundle = pack(cnn_onnx, "digits", 5, keys["private"], tmp_path / "d5.edgeship")
    x = digits8["x_test"][:2]
    with running_server([bundle], keys, "--idle-unload", "0.4") as (port, _):
        client = _client(port)
        _await_metric(port, "edgeship_model_loaded", lambda v: v == 0, model="digits")
        np.testing.assert_allclose(client.infer("digits", [_infer_input(x)]).as_numpy("output"), reference(x),
                                   atol=1e-5)
        assert _metric(port, "edgeship_model_loads_total", model="digits") == 2
        # while unloaded, the file is swapped for a tampered one: the reload refuses it
        _await_metric(port, "edgeship_model_loaded", lambda v: v == 0, model="digits")
        with zipfile.ZipFile(bundle) as archive:
            members = {i.filename: archive.read(i) for i in archive.infolist()}
        model = bytearray(members["model.onnx"])
        model[len(model) // 2] ^= 1
        members["model.onnx"] = bytes(model)
        tampered = tmp_path / "tampered.edgeship"
        with zipfile.ZipFile(tampered, "w") as out:
            for name, data in members.items():
                out.writestr(name, data)
        os.replace(tampered, bundle)
        got, payload = _post(port, json.dumps(_valid_json_request(x)).encode())
        assert got == 503 and "could not be reloaded" in payload["error"] and "signed digest" in payload["error"]


def test_serve_refuses_to_start_on_a_bad_bundle(digits_bundles, keys, tmp_path):
    other = generate_keys(tmp_path / "other")
    cmd = [sys.executable, "-m", "edgeship.cli", "serve", str(digits_bundles[0]), "--trust", str(other["public"]),
           "--port", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "does not match any trusted key" in done.stderr
    assert "serving on" not in done.stdout and len(done.stderr.strip().splitlines()) == 1
    cmd = [sys.executable, "-m", "edgeship.cli", "serve", str(digits_bundles[1]), "--trust", str(keys["public"]),
           "--port", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "encrypted; pass --decrypt-key" in done.stderr


def test_readme_client_snippet_runs_against_the_server(keys, tmp_path, capsys):
    import torch

    import edgeship

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "InferenceServerClient" in b]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 32 * 32, 10)).eval()
    model = edgeship.from_torch(net, torch.zeros(1, 1, 32, 32), input_names=["image"], output_names=["logits"])
    bundle = pack(model.path, "digits", 1, keys["private"], tmp_path / "digits.edgeship")
    with running_server([bundle], keys) as (port, _):
        exec(compile(snippet.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    expected = net(torch.zeros(1, 1, 32, 32)).detach().numpy()
    values = [float(v) for v in printed.replace("[", " ").replace("]", " ").split()]
    np.testing.assert_allclose(values, expected.reshape(-1), rtol=1e-4, atol=1e-5)


def test_request_limits_bound_the_work_before_it_starts():
    """The protocol's limits on their own: JSON bytes before parsing, elements per input, rows, output bytes."""
    from edgeship.runtime.protocol import ProtocolError, RequestLimits, parse_infer_request

    specs = [{"name": "x", "dtype": "float32", "shape": ["batch", "n"]}]
    limits = RequestLimits(max_json_bytes=4096, max_rows=4, max_elements=1000, max_output_bytes=100)

    def request(rows: int, n: int) -> bytes:
        return json.dumps({"inputs": [{"name": "x", "shape": [rows, n], "datatype": "FP32",
                                       "data": [0.5] * (rows * n)}]}).encode()

    assert parse_infer_request(request(4, 10), None, specs, ["y"], limits=limits).rows == 4
    for body, status, message in ((request(5, 10), 413, "at most 4 per request"),
                                  (request(1, 1001), 413, "over this server's 4096-byte limit for JSON"),
                                  (json.dumps({"inputs": [{"name": "x", "shape": [1, 2000], "datatype": "FP32",
                                                           "parameters": {"binary_data_size": 8000}}]}).encode(),
                                   413, "2000 elements")):
        header = None if b"binary" not in body else str(len(body))
        with pytest.raises(ProtocolError, match=message) as caught:
            parse_infer_request(body + (b"\0" * 8000 if header else b""), header, specs, ["y"], limits=limits)
        assert caught.value.status == status
    with pytest.raises(ProtocolError, match="answer would hold 400 bytes") as caught:
        limits.check_output({"y": np.zeros(100, np.float32)})
    assert caught.value.status == 413


def test_an_id_past_the_models_table_is_a_400_and_spoils_no_batch(keys, tmp_path):
    """Out-of-range ids are found by ONNX Runtime, not by the protocol: its INVALID_ARGUMENT is the
    client's fault (400), and in a dynamic batch only the request that carried it fails."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["vectors"])], "embed",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
                              [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["batch", 3, 4])], [table])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "embed.onnx")
    bundle = pack(tmp_path / "embed.onnx", "embed", 1, keys["private"], tmp_path / "embed.edgeship")

    def body(ids: list[int]) -> bytes:
        return json.dumps({"inputs": [{"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": ids}]}).encode()

    with running_server([bundle], keys, "--max-queue-delay-ms", "200") as (port, _):
        path = "/v2/models/embed/infer"
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # queued together within the 200 ms window
            answers = list(pool.map(lambda ids: _post(port, body(ids), path=path),
                                    [[1, 2, 3], [1, 2, 10**6], [4, 5, 6], [-100, 0, 0]]))
    assert [a[0] for a in answers] == [200, 400, 200, 400], answers
    assert "the model refused this input" in answers[1][1]["error"]
    assert answers[0][1]["outputs"][0]["data"][:4] == [4.0, 5.0, 6.0, 7.0]
