"""Benchmark: microcontroller models, measured on the interpreters and C code a device runs.

- The digits CNN at 8x8 (edgeship.demo's CNN, width 16), full int8 through tflm-int8: its accuracy on
  TFLite Micro's interpreter against the float model; the exact tensor arena against TFLM's own
  allocation report (what a user reads off ``print_allocations``) and against the largest set of
  live activations; flash; a yes or no per MCU profile.
- TFLM's ``sine_float`` example: exact arena against the report (the report undercounts it).
- The peers for sensor-sized models: emlearn's C for a scikit-learn MLP and random forest on the
  same 8x8 digits (64 features), compiled with gcc: accuracy, flash and RAM.

Writes benchmarks/results/mcu.json and prints a markdown table for the README.

    python benchmarks/bench_mcu.py
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "mcu.json"


def tflm_digits(root: Path) -> dict:
    import torch

    from edgeship.demo import digits_data, train_digits_cnn
    from edgeship.engines.litert.convert import to_litert
    from edgeship.engines.tflm.graph import read_graph
    from edgeship.engines.tflm.session import TFLMSession, exact_arena
    from edgeship.targets.mcu_fit import mcu_fit, mcu_profiles

    data = digits_data(size=8)
    net = train_digits_cnn(data)
    with torch.no_grad():
        float_acc = float((net(torch.from_numpy(data["x_test"])).numpy().argmax(1) == data["y_test"]).mean())
    samples = [{"image": data["x_train"][i:i + 1]} for i in range(200)]
    path = to_litert(net, ["image"], ["logits"], samples, root / "digits_int8.tflite", "int8")
    tflm_acc = float((TFLMSession(path).run(None, {"image": data["x_test"]})[0].argmax(1) == data["y_test"]).mean())
    arena = exact_arena(path)
    fits = [mcu_fit(path, p, arena.exact_bytes, arena.report) for p in mcu_profiles()]
    m4 = next(f for f in fits if f["target"] == "cortex-m4")
    return {
        "model": "digits CNN 8x8 (tflm-int8)", "float_accuracy": float_acc, "tflm_accuracy": tflm_acc,
        "accuracy_drop_pp": 100 * (float_acc - tflm_acc), "macs": read_graph(path.read_bytes()).macs,
        "arena_exact_bytes": arena.exact_bytes, "arena_reported_bytes": arena.reported_bytes,
        "arena_live_peak_bytes": m4["peak"]["live_bytes"], "arena_32bit_bytes": m4["arena_32bit_bytes"],
        "model_bytes": m4["model_bytes"], "flash_bytes": m4["flash_bytes"],
        "fits": {f["target"]: f["fits"] for f in fits},
        "latency_bound_ms": {f["target"]: f["latency_ms"] for f in fits},
    }


def sine_float() -> dict:
    import tflite_micro

    from edgeship.engines.tflm.session import exact_arena

    sine = next(Path(p) for p in tflite_micro.__path__ for p in Path(p).rglob("sine_float.tflite"))
    arena = exact_arena(sine)
    return {"model": "TFLM sine_float", "arena_exact_bytes": arena.exact_bytes,
            "arena_reported_bytes": arena.reported_bytes}


def emlearn_models() -> list[dict]:
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier

    from edgeship.engines.emlearn.convert import HostBuild, c_footprint, classic_fit, to_c
    from edgeship.targets.profiles import load_profile

    d = load_digits()
    x, y = (d.data / 16).astype(np.float32), d.target
    order = np.random.default_rng(0).permutation(len(x))  # the same split as edgeship.demo.digits_data
    x, y = x[order], y[order]
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimators = {"emlearn MLP (64-32-10)": MLPClassifier(hidden_layer_sizes=(32,), max_iter=500, random_state=0),
                      "emlearn random forest (10 trees, depth 8)": RandomForestClassifier(10, max_depth=8, random_state=0)}
        for label, est in estimators.items():
            est.fit(x[:a], y[:a])
            model = to_c(est)
            size = c_footprint(model)
            fit = classic_fit(model, load_profile("cortex-m4"), size)
            rows.append({"model": label, "sklearn_accuracy": float((est.predict(x[b:]) == y[b:]).mean()),
                         "c_accuracy": float((HostBuild(model).predict(x[b:]) == y[b:]).mean()),
                         "flash_bytes": fit["flash_bytes"], "ram_bytes": fit["ram_bytes"],
                         "latency_estimate_ms_cortex_m4": fit["latency_ms"]})
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgeship-bench-mcu-") as tmp:
        cnn = tflm_digits(Path(tmp))
    sine = sine_float()
    classic = emlearn_models()
    results = [cnn, sine, *classic]
    write_results(RESULTS, "mcu", 1, results)
    print("| model | accuracy on the device's code | RAM (arena) | flash | arena exact / TFLM's report |")
    print("|---|---|---|---|---|")
    print(f"| {cnn['model']} | {cnn['tflm_accuracy']:.4f} (float {cnn['float_accuracy']:.4f}) | "
          f"{cnn['arena_exact_bytes']:,} B | {cnn['flash_bytes']:,} B | "
          f"{cnn['arena_exact_bytes'] / cnn['arena_reported_bytes']:.3f} |")
    print(f"| {sine['model']} | - | {sine['arena_exact_bytes']:,} B | - | "
          f"{sine['arena_exact_bytes'] / sine['arena_reported_bytes']:.3f} |")
    for row in classic:
        print(f"| {row['model']} | {row['c_accuracy']:.4f} (scikit-learn {row['sklearn_accuracy']:.4f}) | "
              f"{row['ram_bytes']:,} B | {row['flash_bytes']:,} B | - |")
    print("fits:", ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cnn["fits"].items()))


if __name__ == "__main__":
    main()
