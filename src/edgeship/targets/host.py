"""The ``host`` profile: this machine, measured on first use and cached.

Throughput is what ONNX Runtime reaches on one thread for a large MatMul (fp32) and
MatMulInteger (U8S8), so it is an *effective* figure, not a datasheet peak. Bandwidth is a
numpy copy. The runtime overhead is the peak memory of a session running a tiny model.
There is no power sensor here: the power figures are labelled as assumptions.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.cpu import cpu_flags
from edgeship.targets.profiles import Profile, profile_from_dict

__all__ = ["host_profile", "host_peak_macs_per_cycle", "cache_path"]

CACHE_VERSION = 5
# Assumed power of one busy x86 server core and the idle share, for energy on `host` only.
ASSUMED_CORE_POWER_W = 6.0
ASSUMED_IDLE_POWER_W = 5.0


def cache_path() -> Path:
    root = Path(os.environ.get("EDGESHIP_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeship")
    return root / "host-profile.json"


def _freq_ghz() -> float:
    for path in ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"):
        try:
            return int(Path(path).read_text()) / 1e6
        except (OSError, ValueError):
            continue
    try:
        mhz = [float(l.split(":")[1]) for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("cpu MHz")]
        if mhz:
            return max(mhz) / 1000.0
    except (OSError, ValueError):
        pass
    return 2.0


def host_peak_macs_per_cycle() -> tuple[float, float]:
    """Datasheet-style peak (fp32, int8) MACs per cycle per core from the ISA flags."""
    flags = cpu_flags()
    if "avx512f" in flags:
        return 32.0, (128.0 if "avx512_vnni" in flags else 64.0)
    if "avx2" in flags and "fma" in flags:
        return 16.0, (64.0 if "avx_vnni" in flags else 32.0)
    return 8.0, 16.0


def _time_session(model: Any, feeds: dict[str, np.ndarray], seconds: float = 0.5) -> float:
    from edgeship.core.session import open_session

    sess = open_session(model.SerializeToString(), threads=1)
    for _ in range(3):
        sess.run(None, feeds)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sess.run(None, feeds)
        runs += 1
    return (time.perf_counter() - start) / runs


def _measure_macs_per_cycle(freq_ghz: float, m: int = 256, k: int = 512, n: int = 512) -> tuple[float, float]:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    macs = m * k * n

    def model(op: str, a_type: int, b: np.ndarray, out_type: int) -> Any:
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "b"], ["y"])], "g",
            [helper.make_tensor_value_info("a", a_type, [m, k])],
            [helper.make_tensor_value_info("y", out_type, [m, n])], [numpy_helper.from_array(b, "b")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    fp32 = model("MatMul", TensorProto.FLOAT, rng.standard_normal((k, n)).astype(np.float32), TensorProto.FLOAT)
    t32 = _time_session(fp32, {"a": rng.standard_normal((m, k)).astype(np.float32)})
    int8 = model("MatMulInteger", TensorProto.UINT8, rng.integers(-127, 127, (k, n)).astype(np.int8), TensorProto.INT32)
    t8 = _time_session(int8, {"a": rng.integers(0, 255, (m, k)).astype(np.uint8)})
    per_cycle = freq_ghz * 1e9
    return macs / t32 / per_cycle, macs / t8 / per_cycle


def _measure_dispatch_cycles(freq_ghz: float, nodes: int = 200) -> float:
    """Cycles ONNX Runtime spends per node on a chain of tiny ops (no compute to speak of)."""
    from onnx import TensorProto, helper

    chain = [helper.make_node("Relu" if i % 2 else "Neg", [f"t{i}"], [f"t{i + 1}"]) for i in range(nodes)]
    graph = helper.make_graph(chain, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, [1, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    seconds = _time_session(model, {"t0": np.ones((1, 16), np.float32)})
    return seconds / nodes * freq_ghz * 1e9


def _conv_models(c: int, hw: int) -> tuple[Any, Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """An fp32 Conv and an int8 QLinearConv, c -> c channels, 3x3, on an hw x hw map."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shape = [1, c, hw, hw]
    wf = numpy_helper.from_array(rng.standard_normal((c, c, 3, 3)).astype(np.float32), "w")
    conv = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [wf]),
        opset_imports=[helper.make_opsetid("", 17)])
    w8 = numpy_helper.from_array(rng.integers(-127, 127, (c, c, 3, 3)).astype(np.int8), "w")
    q = [numpy_helper.from_array(np.array(v, dtype=d), n) for n, v, d in [
        ("xs", 0.02, np.float32), ("xz", 128, np.uint8), ("ws", [0.01] * c, np.float32),
        ("wz", [0] * c, np.int8), ("ys", 0.05, np.float32), ("yz", 128, np.uint8)]]
    qconv = helper.make_model(helper.make_graph(
        [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, shape)], [w8, *q]),
        opset_imports=[helper.make_opsetid("", 17)])
    return conv, qconv, {"x": rng.standard_normal(shape).astype(np.float32)}, {
        "x": rng.integers(0, 255, shape).astype(np.uint8)}


def _measure_conv_overheads(freq_ghz: float) -> dict[str, float]:
    """Fixed cycles per call of Conv and QLinearConv, from a tiny layer (8 channels, 4x4)."""
    conv, qconv, f32, f8 = _conv_models(8, 4)
    hz = freq_ghz * 1e9
    return {"Conv": _time_session(conv, f32, 0.3) * hz, "QLinearConv": _time_session(qconv, f8, 0.3) * hz}


def _measure_slow_kernels(freq_ghz: float) -> dict[str, float]:
    """MACs per cycle of kernels that do not run at the GEMM rates: convolutions (fp32, int8
    QLinearConv, ConvInteger) on a mid-size layer and MatMulNBits (int4), each on one thread."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    # ConvInteger: 64 -> 64 channels, 3x3, 32x32
    w = numpy_helper.from_array(rng.integers(-127, 127, (64, 64, 3, 3)).astype(np.int8), "w")
    graph = helper.make_graph([helper.make_node("ConvInteger", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 64, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 64, 32, 32])], [w])
    conv = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    t = _time_session(conv, {"x": rng.integers(0, 255, (1, 64, 32, 32)).astype(np.uint8)})
    conv_macs = 64 * 32 * 32 * 64 * 9
    out["ConvInteger"] = conv_macs / t / (freq_ghz * 1e9)
    # fp32 Conv and int8 QLinearConv on the same layer
    wf = numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 32, 32])], [wf])
    t = _time_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                      {"x": rng.standard_normal((1, 64, 32, 32)).astype(np.float32)})
    out["Conv"] = conv_macs / t / (freq_ghz * 1e9)
    q = [numpy_helper.from_array(np.array(v, dtype=d), n) for n, v, d in [
        ("xs", 0.02, np.float32), ("xz", 128, np.uint8), ("ws", [0.01] * 64, np.float32),
        ("wz", [0] * 64, np.int8), ("ys", 0.05, np.float32), ("yz", 128, np.uint8)]]
    graph = helper.make_graph(
        [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 64, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 64, 32, 32])], [w, *q])
    t = _time_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                      {"x": rng.integers(0, 255, (1, 64, 32, 32)).astype(np.uint8)})
    out["QLinearConv"] = conv_macs / t / (freq_ghz * 1e9)
    # MatMulNBits: 64 x 512 x 512, block 32, as the int4 pass makes it
    m, k, n = 64, 512, 512
    b = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [b])
    quantizer = MatMulNBitsQuantizer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                                     block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    proto = onnx.ModelProto()
    proto.CopyFrom(quantizer.model.model)
    t = _time_session(proto, {"a": rng.standard_normal((m, k)).astype(np.float32)})
    out["MatMulNBits"] = m * k * n / t / (freq_ghz * 1e9)
    return out


def _measure_bandwidth_gbs(megabytes: int = 128) -> float:
    src = np.ones(megabytes * (1 << 20) // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9  # read + write


def _measure_runtime_overhead_kb() -> float:
    """Peak memory of an ONNX Runtime session running a model with no weights."""
    import tempfile

    import onnx
    from onnx import TensorProto, helper

    from edgeship.evaluate.memory import measure_peak_memory

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return measure_peak_memory(path, {"x": np.ones((1, 8), np.float32)}, threads=2) / 1024


def measure_host() -> dict[str, Any]:
    freq = _freq_ghz()
    fp32, int8 = _measure_macs_per_cycle(freq)
    cores = os.cpu_count() or 1
    with open("/proc/meminfo") as f:
        ram_kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
    peak32, peak8 = host_peak_macs_per_cycle()
    slow = {k: round(v, 3) for k, v in _measure_slow_kernels(freq).items()}
    return {
        "id": "host", "name": f"this machine ({cores} cores, measured)", "cores": cores,
        "fp32_macs_per_cycle": round(fp32, 3), "int8_macs_per_cycle": round(int8, 3),
        "mem_bandwidth_gbs": round(_measure_bandwidth_gbs(), 2), "ram_mb": ram_kb / 1024,
        "storage_mb": shutil.disk_usage(Path.home()).total / 2**20,
        "idle_power_w": ASSUMED_IDLE_POWER_W, "runtimes": ["onnxruntime"],
        "dvfs": [{"name": "current", "freq_ghz": freq, "power_w": ASSUMED_CORE_POWER_W * cores}],
        "runtime_overhead_kb": round(_measure_runtime_overhead_kb(), 1),
        "measured": True, "host_peak_fp32_macs_per_cycle": peak32, "host_peak_int8_macs_per_cycle": peak8,
        "op_macs_per_cycle": slow,
        "dispatch_cycles": round(_measure_dispatch_cycles(freq), 1),
        "op_overhead_cycles": {k: round(v, 1) for k, v in _measure_conv_overheads(freq).items()},
        "sources": {
            "cores": "os.cpu_count()",
            "fp32_macs_per_cycle": "measured: ONNX Runtime MatMul 256x512x512, 1 thread",
            "int8_macs_per_cycle": "measured: ONNX Runtime MatMulInteger (U8S8) 256x512x512, 1 thread",
            "mem_bandwidth_gbs": "measured: numpy copy of 128 MiB (read + write)",
            "ram_mb": "/proc/meminfo MemTotal", "storage_mb": "disk size of the home folder",
            "idle_power_w": f"assumption: no power sensor readable here ({ASSUMED_IDLE_POWER_W} W)",
            "dvfs": f"cpufreq maximum or /proc/cpuinfo; power is an assumption of {ASSUMED_CORE_POWER_W} W per busy core",
        },
        "cache_version": CACHE_VERSION,
    }


def host_profile(refresh: bool = False) -> Profile:
    path = cache_path()
    data = None
    if path.is_file() and not refresh:
        try:
            data = json.loads(path.read_text())
            if data.get("cache_version") != CACHE_VERSION:
                data = None
        except (OSError, ValueError):
            data = None
    if data is None:
        data = measure_host()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    data = {k: v for k, v in data.items() if k != "cache_version"}
    # read live, not from the cache: the flags decide the int8 format for this very CPU
    data["cpu_flags"] = sorted(cpu_flags())
    data["sources"] = {**data["sources"], "cpu_flags": "/proc/cpuinfo of this machine"}
    return profile_from_dict(data, "host")
