"""A text classifier's bundle carries its tokenizer and labels: text in, labels out, on the device
(tokenizers library only), through the runtime, `edgeship run --text` and the server."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import edgeship
from conftest import SENTIMENT
from edgeship.bundle import generate_keys
from edgeship.bundle.pack import pack
from test_server import DEVICE_EDGESHIP, _request, running_server

TEXTS = ["the battery lasts all day", "it broke after a week of use", "fine"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_keys(tmp_path_factory.mktemp("text-keys"), content_key=True)


@pytest.fixture(scope="module")
def classifier(tiny_classifier_dir):
    return edgeship.load(tiny_classifier_dir)


@pytest.fixture(scope="module")
def text_bundle(classifier, tiny_classifier_dir, keys, tmp_path_factory):
    out = tmp_path_factory.mktemp("text-bundle") / "sentiment.edgeship"
    return pack(classifier.path, "sentiment", 1, keys["private"], out, encrypt_key=keys["content"],
                labels=list(classifier.labels), tokenizer=tiny_classifier_dir, max_length=32)


def _torch_labels(model_dir, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    net = AutoModelForSequenceClassification.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    with torch.no_grad():
        logits = net(**tok(texts, padding="max_length", max_length=32, return_tensors="pt")).logits.numpy()
    return [SENTIMENT[i] for i in logits.argmax(1)], logits


def test_runtime_tokenizes_on_the_device_and_answers_with_labels(text_bundle, keys, tiny_classifier_dir):
    runtime = edgeship.Runtime.open(text_bundle, keys["public"], keys["content"], threads=1)
    assert runtime.manifest["task"] == "text-classification"
    assert runtime.manifest["labels"] == ["negative", "neutral", "positive"]
    assert runtime.manifest["text"]["max_length"] == 32 and "tokenizer.json" in runtime.manifest["members"]
    ranked = runtime.classify(TEXTS, top=2)
    want, logits = _torch_labels(tiny_classifier_dir, TEXTS)
    assert [r[0][0] for r in ranked] == want
    assert len(ranked[0]) == 2 and ranked[0][0][1] >= ranked[0][1][1]
    scores = runtime.predict({"text": TEXTS})["logits"]
    assert np.allclose(scores, logits, atol=1e-4)


def test_optimize_folder_packs_its_tokenizer_and_labels(classifier, tiny_classifier_dir, keys, tmp_path,
                                                        sentences_file):
    result = edgeship.optimize(classifier, data=sentences_file, recipes="dynamic-int8-pc",
                               settings=edgeship.EvalSettings(runs=20, rounds=5, warmup=2, text_max_length=24),
                               budget=edgeship.Budget(max_accuracy_drop=1.0, min_speedup=0.01))
    out = result.report(tmp_path / "report")
    info = json.loads((out / "report.json").read_text())["model_info"]
    assert info["task"] == "text-classification" and info["labels"] == ["negative", "neutral", "positive"]
    bundle = pack(out, "sentiment", 2, keys["private"], tmp_path / "s2.edgeship")
    runtime = edgeship.Runtime.open(bundle, keys["public"])
    assert runtime.manifest["text"]["max_length"] == 24  # the length it was evaluated at
    assert runtime.classify(["works well"])[0][0][0] in SENTIMENT.values()


def test_a_bundle_without_tokenizer_refuses_text(classifier, keys, tmp_path):
    bundle = pack(classifier.path, "ids-only", 1, keys["private"], tmp_path / "ids.edgeship")
    runtime = edgeship.Runtime.open(bundle, keys["public"])
    with pytest.raises(edgeship.EdgeshipError, match="takes tensors, not text: it was packed without a tokenizer"):
        runtime.encode_text(["hello"])


def test_cli_run_text_on_a_device_only_install(text_bundle, keys, tiny_classifier_dir):
    proc = subprocess.run([*DEVICE_EDGESHIP, "run", str(text_bundle), "--trust", str(keys["public"]),
                           "--decrypt-key", str(keys["content"]), "--text", TEXTS[0], "--text", TEXTS[1]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    want, _ = _torch_labels(tiny_classifier_dir, TEXTS[:2])
    lines = proc.stdout.strip().splitlines()
    assert [line.split(": ", 1)[1].split(" (")[0] for line in lines] == want


def test_server_answers_text_with_labels_on_a_device_only_install(text_bundle, keys, tiny_classifier_dir):
    import tritonclient.http as httpclient

    want, logits = _torch_labels(tiny_classifier_dir, TEXTS)
    with running_server([text_bundle], keys, "--max-batch-size", "8", cli=DEVICE_EDGESHIP) as (port, proc):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        meta = client.get_model_metadata("sentiment")
        assert meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
        text = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
        result = client.infer("sentiment", [text], outputs=[httpclient.InferRequestedOutput("logits", class_count=1)])
        answers = [a.decode().split(":") for a in result.as_numpy("logits").reshape(-1)]
        assert [a[2] for a in answers] == want
        assert np.allclose([float(a[0]) for a in answers], logits.max(1), atol=1e-3)
        # plain JSON, the raw scores
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXTS[2]]}]})
        status, _, raw = _request(port, "POST", "/v2/models/sentiment/infer", body.encode())
        assert status == 200
        out = json.loads(raw)["outputs"][0]
        assert out["shape"] == [1, 3] and np.allclose(out["data"], logits[2], atol=1e-3)
        for bad in ([{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["only one"]}],
                    [{"name": "text", "shape": [1], "datatype": "INT64", "data": [1]}]):
            status, _, raw = _request(port, "POST", "/v2/models/sentiment/infer", json.dumps({"inputs": bad}).encode())
            assert status == 400, raw
        maps = open(f"/proc/{proc.pid}/maps").read()
        assert "libtorch" not in maps
