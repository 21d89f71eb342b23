"""TensorFlow Lite Micro: full-int8 models scored on TFLM's own interpreter, the exact tensor arena,
the int8 check, and C sources for a firmware build that compile."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeship
from edgeship.engines.tflm.firmware import check_full_int8, export_c, model_ops
from edgeship.engines.tflm.session import TFLMSession, arena_fits, exact_arena


def test_accuracy_on_the_microcontroller_interpreter_is_within_one_point_of_float(int8_cnn, trained_cnn, digits8):
    import torch

    x, y = digits8["x_test"], digits8["y_test"]
    with torch.no_grad():
        float_acc = float((trained_cnn(torch.from_numpy(x)).numpy().argmax(1) == y).mean())
    session = TFLMSession(int8_cnn["int8"])
    assert [s.name for s in session.get_inputs()] == ["image"] and [s.name for s in session.get_outputs()] == ["logits"]
    tflm_acc = float((session.run(None, {"image": x})[0].argmax(1) == y).mean())
    assert tflm_acc >= float_acc - 0.01


def test_the_reported_arena_is_the_smallest_that_runs(int8_cnn):
    """Exact: the interpreter runs with it and not with one byte less (each tried in a child process)."""
    report = exact_arena(int8_cnn["int8"])
    assert arena_fits(int8_cnn["int8"], report.exact_bytes)[0]
    assert not arena_fits(int8_cnn["int8"], report.exact_bytes - 1)[0]
    x = np.zeros((1, 1, 8, 8), np.float32)
    TFLMSession(int8_cnn["int8"], arena_size=report.exact_bytes).run(None, {"image": x})
    assert report.reported_bytes is not None and "Arena allocation total" in report.report


def test_a_float_model_is_refused_with_its_float_ops(int8_cnn):
    with pytest.raises(edgeship.EdgeshipError, match="not full int8: .*CONV_2D"):
        check_full_int8(int8_cnn["float"].read_bytes())
    check_full_int8(int8_cnn["int8"].read_bytes())  # the int8 one passes


def test_the_c_export_compiles_and_registers_exactly_the_models_ops(int8_cnn, tmp_path):
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to compile the exported model"
    arena = exact_arena(int8_cnn["int8"]).exact_bytes
    files = export_c(int8_cnn["int8"], tmp_path / "fw", arena)
    assert {f.name for f in files} == {"model_data.h", "model_data.c", "op_resolver.h", "main.cc"}
    header = (tmp_path / "fw" / "model_data.h").read_text()
    assert f"EDGESHIP_TENSOR_ARENA_BYTES {arena}" in header
    resolver = (tmp_path / "fw" / "op_resolver.h").read_text()
    ops = model_ops(int8_cnn["int8"].read_bytes())
    assert f"MicroMutableOpResolver<{len(ops)}>" in resolver and resolver.count("resolver.Add") == len(ops)
    # the array and header compile, and the array is the model, byte for byte
    probe = tmp_path / "fw" / "probe.c"
    probe.write_text('#include <stdio.h>\n#include "model_data.h"\nint main(void){fwrite(g_model_data,1,g_model_data_len,stdout);'
                     'return ((unsigned long)g_model_data % 16) != 0;}\n')
    exe = tmp_path / "fw" / "probe"
    subprocess.run([gcc, "-std=c99", "-Wall", "-Werror", "-o", str(exe), str(probe), str(tmp_path / "fw" / "model_data.c")],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], capture_output=True, check=True)
    assert out.stdout == int8_cnn["int8"].read_bytes()


def test_export_cli_writes_the_sources_and_refuses_a_float_model(int8_cnn, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "edgeship.cli", "export", str(int8_cnn["int8"]), "--format", "c",
                         "--out", str(tmp_path / "fw")], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "tensor arena" in ok.stdout and (tmp_path / "fw" / "model_data.c").is_file()
    bad = subprocess.run([sys.executable, "-m", "edgeship.cli", "export", str(int8_cnn["float"]), "--out",
                          str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not full int8" in bad.stderr and not (tmp_path / "bad").exists()


def test_tflm_candidates_are_scored_on_the_mcu_interpreter(cnn_model, cnn_data):
    from edgeship.search.pipeline import plan_optimization

    result = plan_optimization(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"], recipes="tflm-int8").run()
    cand = result.candidates[0]
    assert cand.model.engine == "tflm" and cand.status in ("ok", "rejected")
    assert int(dict(cand.model.engine_options)["arena_bytes"]) > 0
    assert cand.metrics["accuracy"] >= result.baseline.metrics["accuracy"] - 0.01


def test_auto_on_a_microcontroller_target_builds_tflm_and_fits_it_by_its_measured_arena(cnn_model, cnn_data):
    """On an MCU profile, `auto` means the one runtime the MCU has; the candidate's RAM is its own
    measured arena (not an ONNX activation plan), and the float baseline does not run there."""
    from edgeship.search.pipeline import plan_optimization

    plan = plan_optimization(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"], target="cortex-m4")
    assert [r.name for r in plan.recipes] == ["tflm-int8"]
    result = plan.run()
    cand = result.candidates[0]
    arena = int(dict(cand.model.engine_options)["arena_bytes"])
    est = cand.fit["estimate"]
    assert est["mcu"]["arena_bytes"] == arena and est["memory_breakdown_bytes"]["arena"] == arena
    assert est["runs"] and est["fits"] and est["peak_memory_bytes"] == arena + 4 * 1024
    assert not result.baseline.fit["estimate"]["runs"]
    assert "tflm-int8" in result.baseline.fit["estimate"]["runtime_note"]


MCUS = {"cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "esp32-s3", "rp2040", "nrf52840"}


def test_the_fit_report_says_yes_or_no_for_every_microcontroller(int8_cnn):
    """The digits CNN on each MCU profile: RAM is the exact arena (+ the profile's runtime allowance),
    flash the model + its op resolver; every profile cites a source for flash, SRAM, clock and cycles/MAC."""
    import json

    done = subprocess.run([sys.executable, "-m", "edgeship.cli", "inspect", str(int8_cnn["int8"]), "--target", "mcu",
                           "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    fits = {f["target"]: f for f in json.loads(done.stdout)["mcu_fits"]}
    assert set(fits) == MCUS
    exact = exact_arena(int8_cnn["int8"]).exact_bytes
    for fit in fits.values():
        assert fit["arena_bytes"] == exact and fit["arena_measured"]
        assert fit["flash_bytes"] == int8_cnn["int8"].stat().st_size + fit["resolver_bytes"]
        assert fit["ops"] == model_ops(int8_cnn["int8"].read_bytes())
        assert all(fit["sources"][k].strip() for k in ("ram_mb", "storage_mb", "int8_macs_per_cycle", "dvfs"))
        assert fit["fits"] is (not fit["reasons"])
    assert fits["cortex-m4"]["fits"] and fits["cortex-m4"]["runs"]
    # the arena measured on the 64-bit host: its activations carry over exactly, its structs shrink
    m4 = fits["cortex-m4"]
    assert m4["arena_head_bytes"] + m4["arena_tail_bytes"] == exact
    assert m4["arena_32bit_bytes"] == [m4["arena_head_bytes"] + -(-m4["arena_tail_bytes"] // 2), exact]
    # the layer holding the peak: its live activations are all in the arena's head
    assert 0 < m4["peak"]["live_bytes"] <= m4["arena_head_bytes"]


def test_a_model_that_does_not_fit_says_by_how_much_and_which_layer_holds_the_peak(int8_cnn, tmp_path):
    from edgeship.engines.tflm.graph import read_graph
    from edgeship.targets.mcu_fit import mcu_fit
    from edgeship.targets.profiles import load_profile

    text = (Path(edgeship.__file__).parent / "targets" / "profile_data" / "cortex-m4.toml").read_text()
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(text.replace('id = "cortex-m4"', 'id = "tiny"').replace("ram_mb = 0.125", "ram_mb = 0.00390625")
                    .replace("storage_mb = 0.5", "storage_mb = 0.03125"))
    fit = mcu_fit(int8_cnn["int8"], load_profile(str(tiny)))
    assert not fit["fits"] and fit["ram_headroom_bytes"] < 0 and fit["flash_headroom_bytes"] < 0
    graph = read_graph(int8_cnn["int8"].read_bytes())
    live = [size for size, _ in graph.live_bytes()]
    peak = max(range(len(live)), key=live.__getitem__)
    ram, flash = fit["reasons"][0], fit["reasons"][1]
    short = (fit["ram_bytes"] - 4096) / 1024
    assert f"exceeds SRAM 4.0 KiB by {short:,.1f} KiB" in ram and f"op {peak} {graph.ops[peak].op}" in ram
    assert f"by {(fit['flash_bytes'] - 32768) / 1024:,.1f} KiB" in flash


def test_the_graph_counts_the_macs_of_each_layer(int8_cnn):
    """From the flatbuffer alone: the conv layers' MACs follow from their shapes (NHWC)."""
    from edgeship.engines.tflm.graph import read_graph

    graph = read_graph(int8_cnn["int8"].read_bytes())
    for op in graph.ops:
        out = graph.tensors[op.outputs[0]].shape
        if op.op == "CONV_2D":
            _, kh, kw, cin = graph.tensors[op.inputs[1]].shape
            assert op.macs == int(np.prod(out)) * kh * kw * cin > 0
        elif op.op == "FULLY_CONNECTED":
            assert op.macs == int(np.prod(out)) * graph.tensors[op.inputs[1]].shape[1] > 0
    assert graph.macs == sum(op.macs for op in graph.ops)


def test_a_float_model_does_not_fit_a_microcontroller_and_says_which_ops_are_float(int8_cnn):
    from edgeship.targets.mcu_fit import mcu_fit
    from edgeship.targets.profiles import load_profile

    fit = mcu_fit(int8_cnn["float"], load_profile("cortex-m4"))
    assert not fit["fits"] and not fit["runs"] and "not full int8: " in fit["reasons"][0]
    assert "CONV_2D" in fit["reasons"][0]


def test_a_damaged_flatbuffer_is_refused_in_one_line(tmp_path):
    from edgeship.engines.tflm.graph import read_graph

    with pytest.raises(edgeship.EdgeshipError, match="not a readable .tflite flatbuffer"):
        read_graph(b"\x10\x00\x00\x00TFL3" + b"\xff" * 64)


def test_tflms_own_allocation_report_undercounts_sine_float_and_the_search_does_not():
    """TFLM's sine_float example (it ships in tflite-micro): the recorder reports less than the
    interpreter needs; the arena edgeship reports is the one that runs."""
    from pathlib import Path

    import tflite_micro

    sine = next(Path(p) for p in tflite_micro.__path__ for p in Path(p).rglob("sine_float.tflite"))
    report = exact_arena(sine)
    assert report.reported_bytes is not None and report.reported_bytes < report.exact_bytes
    assert arena_fits(sine, report.exact_bytes)[0] and not arena_fits(sine, report.reported_bytes)[0]
