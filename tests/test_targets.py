"""Device profiles, fit estimates, and the estimators checked against measurements on this host."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgeship.errors import ConfigError
from edgeship.evaluate import measure_peak_memory
from edgeship.passes import PASSES, PassContext
from edgeship.targets import list_profiles, load_profile
from edgeship.targets.estimate import estimate
from edgeship.targets.profiles import FIGURES

REQUIRED = ["raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "phone-cortex-a78", "x86-gateway",
            "esp32-s3", "cortex-m7", "host"]


pytestmark = pytest.mark.usefixtures("private_cache")  # host measurements cached per module, not in ~/.cache


@pytest.mark.parametrize("target", REQUIRED)
def test_every_profile_loads_with_a_source_for_each_figure(target):
    assert target in list_profiles()
    profile = load_profile(target)
    assert all(profile.sources.get(f) for f in FIGURES)
    assert profile.dvfs and all(s.freq_ghz > 0 and s.power_w > 0 for s in profile.dvfs)


def test_host_is_measured_once_and_cached():
    from edgeship.targets.host import cache_path

    profile = load_profile("host")
    assert profile.measured and cache_path().is_file()
    assert profile.fp32_macs_per_cycle > 0.5 and profile.mem_bandwidth_gbs > 0.5
    assert json.loads(cache_path().read_text())["fp32_macs_per_cycle"] == profile.fp32_macs_per_cycle


def test_user_profile_is_validated(tmp_path):
    text = (load_profile.__globals__["resources"].files("edgeship.targets")
            .joinpath("profile_data/raspberry-pi-4.toml").read_text())
    good = tmp_path / "mine.toml"
    good.write_text(text.replace('id = "raspberry-pi-4"', 'id = "my-board"'))
    assert load_profile(good).id == "my-board"
    no_source = tmp_path / "nosource.toml"
    no_source.write_text(text.replace("cores = \"Raspberry", "# cores = \"Raspberry"))
    with pytest.raises(ConfigError, match=r"\['cores'\] have no source"):
        load_profile(no_source)
    negative = tmp_path / "neg.toml"
    negative.write_text(text.replace("cores = 4", "cores = -4"))
    with pytest.raises(ConfigError, match="cores must be a positive number"):
        load_profile(negative)
    broken = tmp_path / "broken.toml"
    broken.write_text("id = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile(broken)
    with pytest.raises(ConfigError, match="unknown target 'pi9'"):
        load_profile("pi9")


def _feeds_cnn(digits8):
    return {"image": digits8["x_test"][:1]}


def _feeds_bert(seq=32):
    ids = np.random.default_rng(0).integers(1000, 5000, (1, seq)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _models(cnn_model, tiny_bert, tmp_path, digits8):
    from edgeship.dataset import Dataset

    ctx = PassContext(tmp_path, calibration=Dataset({"image": digits8["x_train"][:64]}))
    return [
        (cnn_model, _feeds_cnn(digits8)),
        (PASSES["quantize_static"]().run(cnn_model, ctx), _feeds_cnn(digits8)),
        (tiny_bert, _feeds_bert()),
        (PASSES["quantize_dynamic"]().run(tiny_bert, ctx), _feeds_bert()),
        (PASSES["fp16"]().run(tiny_bert, ctx), _feeds_bert()),
    ]


def test_memory_estimate_is_within_35_percent_of_measured(cnn_model, tiny_bert, tmp_path, digits8):
    host = load_profile("host")
    for model, feeds in _models(cnn_model, tiny_bert, tmp_path, digits8):
        est = estimate(model, host, {k: v.shape for k, v in feeds.items()})["peak_memory_bytes"]
        measured = measure_peak_memory(model.path, feeds, threads=2)
        assert 0.65 <= est / measured <= 1.35, (model.lineage, est, measured)


def test_energy_and_dvfs_choice(cnn_model, digits8):
    pi = load_profile("raspberry-pi-4")
    shapes = {"image": (1, 1, 8, 8)}
    report = estimate(cnn_model, pi, shapes, request_rate_hz=100.0)
    states = {s["state"]: s for s in report["dvfs"]}
    assert states["powersave"]["latency_ms"] > states["performance"]["latency_ms"]
    for s in report["dvfs"]:  # energy = active power x latency + idle power x rest of the period
        state = next(d for d in pi.dvfs if d.name == s["state"])
        expected = state.power_w * s["latency_ms"] + pi.idle_power_w * (10.0 - s["latency_ms"])
        assert s["energy_mj"] == pytest.approx(expected, rel=1e-6)
    assert report["recommended_state"] == min(report["dvfs"], key=lambda s: s["energy_mj"])["state"]
    tight = estimate(cnn_model, pi, shapes, max_latency_ms=states["performance"]["latency_ms"] * 1.01)
    assert tight["recommended_state"] == "performance"


def test_microcontroller_says_onnxruntime_cannot_run_but_gives_memory(cnn_model):
    report = estimate(cnn_model, load_profile("cortex-m7"), {"image": (1, 1, 8, 8)})
    assert not report["runs"] and "does not run on cortex-m7" in report["runtime_note"]
    assert report["peak_memory_bytes"] > 0 and report["storage_bytes"] == cnn_model.size_bytes
    assert report["memory_breakdown_bytes"]["weights"] == 0  # weights stay in flash


def test_too_big_for_the_device_does_not_fit(tiny_bert):
    report = estimate(tiny_bert, load_profile("cortex-m7"), {n: (1, 32) for n in ("input_ids", "attention_mask", "token_type_ids")})
    assert not report["fits"] and any("exceeds storage" in r for r in report["reasons"])


def test_cli_targets_and_inspect_with_target(cnn_onnx):
    env = {**os.environ}
    run = lambda *a: subprocess.run([sys.executable, "-m", "edgeship.cli", *map(str, a)], capture_output=True,
                                    text=True, env=env, timeout=300)
    listing = run("targets")
    assert listing.returncode == 0 and all(t in listing.stdout for t in REQUIRED)
    proc = run("inspect", cnn_onnx, "--target", "raspberry-pi-5", "--json")
    assert proc.returncode == 0, proc.stderr
    est = json.loads(proc.stdout)["estimate"]
    for key in ("latency_ms", "peak_memory_bytes", "storage_bytes", "energy_mj", "fits", "dvfs", "is_estimate"):
        assert key in est
    assert est["measured_on_host"]["latency_ms_p50"] > 0 and len(est["dvfs"]) == 2
    bad = run("inspect", cnn_onnx, "--target", "pi9")
    assert bad.returncode == 2 and "unknown target 'pi9'" in bad.stderr and "Traceback" not in bad.stderr
