"""GPU and NPU execution providers: a device profile lists them in order, the bundle carries the list,
and the runtime uses what this ONNX Runtime build has, falling back to the CPU with a log line.
Only CPU builds exist here, so the selection logic is what is tested (see the README)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import edgeship
from edgeship.core.session import choose_providers, open_session

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def test_the_order_is_kept_and_the_cpu_comes_last():
    assert choose_providers([TRT, CUDA, CPU], [CUDA, CPU]) == ([CUDA, CPU], [TRT])
    assert choose_providers([TRT, CUDA, CPU], [TRT, CUDA, CPU]) == ([TRT, CUDA, CPU], [])
    assert choose_providers([CUDA], [CPU]) == ([CPU], [CUDA])
    assert choose_providers(None, [CUDA, CPU]) == ([CPU], [])
    assert choose_providers([CPU, CUDA], [CUDA, CPU]) == ([CUDA, CPU], [])  # the CPU is the last resort


def test_a_missing_provider_falls_back_to_the_cpu_with_a_log_line(cnn_onnx, caplog):
    with caplog.at_level(logging.WARNING, logger="edgeship"):
        session = open_session(cnn_onnx, 1, providers=[TRT, CUDA])
    assert session.get_providers() == [CPU]
    assert any("TensorrtExecutionProvider is not in this ONNX Runtime build" in r.message for r in caplog.records)
    assert any("CUDAExecutionProvider is not in this ONNX Runtime build" in r.message for r in caplog.records)


def test_a_bundle_for_a_jetson_carries_its_providers_and_runs_here_on_the_cpu(cnn_onnx, digits8, tmp_path, caplog):
    from edgeship.bundle import generate_keys
    from edgeship.bundle.pack import pack
    from edgeship.runtime import Runtime

    keys = generate_keys(tmp_path / "keys")
    bundle = pack(cnn_onnx, "digits", 1, keys["private"], tmp_path / "d.edgeship", target="jetson-orin-nano")
    with caplog.at_level(logging.WARNING, logger="edgeship"):
        runtime = Runtime.open(bundle, [str(keys["public"])])
    assert runtime.manifest["providers"] == [TRT, CUDA, CPU]
    assert any("falling back to CPUExecutionProvider" in r.message for r in caplog.records)
    x = digits8["x_test"][:4]
    want = edgeship.load(cnn_onnx).session(1).run(None, {"image": x})[0]
    got = runtime.predict({"image": x})
    assert np.allclose(next(iter(got.values())), want, atol=1e-5)


def test_profiles_validate_their_providers(tmp_path):
    from edgeship.targets import load_profile

    from importlib import resources

    assert load_profile("raspberry-pi-4").providers == ()
    good = load_profile("jetson-orin-nano")
    assert good.providers[0] == TRT and "TensorRT" in good.sources["providers"]
    base = tmp_path / "p.toml"
    toml = (resources.files("edgeship.targets") / "profile_data" / "raspberry-pi-4.toml").read_text()
    base.write_text(toml.replace('runtimes =', 'providers = ["CUDAExecutionProvider"]\nruntimes =', 1))
    with pytest.raises(edgeship.EdgeshipError, match="providers has no source"):
        load_profile(base)
    base.write_text(toml.replace('runtimes =', 'providers = ["cuda"]\nruntimes =', 1))
    with pytest.raises(edgeship.EdgeshipError, match="provider names"):
        load_profile(base)
