"""Benchmark: device-only, cloud-only and every split of one CNN, measured across link speeds.

The device and the server share this machine, so:

- **the server** is a real ``edgeship serve`` (1 thread) of a tail bundle per cut, reached through
  edgeship's OIP client (binary tensors, kept-alive connection) and the link emulator
  (``edgeship.hybrid.emulator``: a TCP proxy that adds the round trip and the bandwidth);
- **the device** is ONNX Runtime on 1 thread in this process, slowed to the device profile: each
  head (and device-only) is run, timed, and then held for ``(F - 1)`` times as long again, with
  ``F`` = the estimator's device-only latency on the profile / its latency on this machine. So the
  emulated device keeps this CPU's per-layer proportions at the profile's overall speed.

For each link, the plan that ``edgeship split`` chooses from its estimates is compared with the
best of every cut, device-only and cloud-only, all measured in the same run (goal: within 10%);
at the crossover links the chosen split should beat both device-only and cloud-only. The estimate
of every cut is set beside its measurement.

Writes benchmarks/results/hybrid.json and benchmarks/results/hybrid.png; prints a markdown table.

    python benchmarks/bench_hybrid.py [--device raspberry-pi-4] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results  # noqa: E402
from bench_server import Server  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "hybrid.json"
PLOT = Path(__file__).parent / "results" / "hybrid.png"
LINKS = ["1mbit,20ms", "3mbit,20ms", "10mbit,20ms", "30mbit,20ms", "100mbit,20ms", "1000mbit,20ms"]
SHAPE = {"x": (1, 3, 128, 128)}


def cnn(path: Path) -> Path:
    """A camera-sized CNN whose first strided conv shrinks the 192 KiB input six-fold, then heavier
    convs: the shape for which Neurosurgeon-style splits pay off on a mid-speed link."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * (2 / np.prod(shape[1:])) ** 0.5)
                                       .astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], strides=[4, 4], kernel_shape=[4, 4]),
             helper.make_node("Relu", ["c0"], ["r0"])]
    widths, weights, last = [(8, 64), (64, 64), "pool", (64, 128), (128, 256), (256, 256), (256, 256)], [], "r0"
    for i, step in enumerate(widths, start=1):
        if step == "pool":
            nodes.append(helper.make_node("MaxPool", [last], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            last = f"p{i}"
            continue
        nodes += [helper.make_node("Conv", [last, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        weights.append(weight(f"w{i}", step[1], step[0], 3, 3))
        last = f"r{i}"
    nodes += [helper.make_node("GlobalAveragePool", [last], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "wy"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "camera_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 128, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              [weight("w0", 8, 3, 4, 4), *weights, weight("wy", 10, 256)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class Device:
    """The model's heads on ONNX Runtime (1 thread), each held to ``factor`` times its own time."""

    def __init__(self, heads: dict[int, Path | None], full: Path, factor: float) -> None:
        from edgeship.core.session import open_session

        self.factor = factor
        self.sessions = {k: open_session(p.read_bytes(), 1) for k, p in heads.items() if p is not None}
        self.sessions[-1] = open_session(full.read_bytes(), 1)

    def run(self, key: int, x: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        session = self.sessions[key]
        started = time.perf_counter()
        outputs = session.run(None, {"x": x})
        took = time.perf_counter() - started
        time.sleep((self.factor - 1) * took)  # the emulated device is this much slower
        return dict(zip([o.name for o in session.get_outputs()], outputs)), took * self.factor


def measure(device: Device, upstream_url: str, table: list, n: int, repeats: int, x: np.ndarray) -> list[dict]:
    """Median end-to-end latency of every cut (device-only is position n)."""
    from edgeship.core.wire import wire_inputs
    from edgeship.runtime.hybrid import Upstream

    rows = []
    for cut in table:
        k = cut.position
        times, head_times = [], []
        client = None if k == n else Upstream(upstream_url, f"cut{k}", timeout_s=120)
        for i in range(repeats + 1):  # the first request opens the connection and warms up
            started = time.perf_counter()
            if k == n:
                _, head = device.run(-1, x)
            elif k == 0:
                head = 0.0
                client.infer(wire_inputs({"x": x}, "fp32"), ["y"])
            else:
                cut_tensors, head = device.run(k, x)
                client.infer(wire_inputs(cut_tensors, "fp32"), ["y"])
            if i:
                times.append(time.perf_counter() - started)
                head_times.append(head)
        rows.append({"position": k, "measured_ms": 1000 * statistics.median(times),
                     "head_measured_ms": 1000 * statistics.median(head_times)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="raspberry-pi-4")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--links", nargs="+", default=LINKS, help="BANDWIDTH,RTT links to measure")
    args = parser.parse_args()
    links = args.links

    import onnx

    from edgeship.bundle import generate_keys
    from edgeship.bundle.pack import pack
    from edgeship.evaluate.graph import graph_stats
    from edgeship.cli._common import progress_runner
    from edgeship.hybrid.emulator import LinkEmulator
    from edgeship.hybrid.split import cuts, extract, plan_split

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = cnn(root / "camera_cnn.onnx")
        table = cuts(onnx.load(str(model)))
        n = len(table) - 1
        keys = generate_keys(root / "keys", content_key=True)
        heads, tails = {}, []
        for cut in table[:-1]:
            folder = root / f"cut{cut.position}"
            folder.mkdir()
            head, tail = extract(model, cut.position, folder)
            heads[cut.position] = head
            tails.append(pack(tail, f"cut{cut.position}", 1, keys["private"], root / f"cut{cut.position}.edgeship"))
        macs = graph_stats(model)["macs"]
        plans = {link: plan_split(model, args.device, "host", link, threads=1) for link in links}
        some = next(iter(plans.values()))
        factor = some.device_only["head_ms"] / plan_split(model, "host", "host", links[0], threads=1).device_only["head_ms"]
        device = Device(heads, model, factor)
        x = np.random.default_rng(1).standard_normal(SHAPE["x"]).astype(np.float32)
        server = Server(tails, keys, "--threads", "1", "--max-batch-size", "1")
        results = []
        bar, update = progress_runner("hybrid")
        try:
            with bar, LinkEmulator(("127.0.0.1", server.port), links[0]) as emu:
                for i, link in enumerate(links):
                    update(i, len(links), link)
                    emu.set(link=link)
                    measured = measure(device, emu.url, table, n, args.repeats, x)
                    plan = plans[link]
                    for row, est in zip(measured, plan.curve):
                        row.update({"where": est["where"], "after": est["after"], "wire_bytes": est["wire_bytes"],
                                    "estimate_ms": est["total_ms"], "estimate_ratio": est["total_ms"] / row["measured_ms"]})
                    best = min(measured, key=lambda r: r["measured_ms"])
                    chosen = measured[plan.chosen["position"]]
                    device_only, cloud_only = measured[n], measured[0]
                    results.append({
                        "link": link, "chosen_position": chosen["position"], "chosen_where": chosen["where"],
                        "chosen_ms": chosen["measured_ms"], "best_position": best["position"], "best_ms": best["measured_ms"],
                        "device_only_ms": device_only["measured_ms"], "cloud_only_ms": cloud_only["measured_ms"],
                        "chosen_over_best": chosen["measured_ms"] / best["measured_ms"],
                        "chosen_over_better_endpoint": chosen["measured_ms"] / min(device_only["measured_ms"],
                                                                                   cloud_only["measured_ms"]),
                        "cuts": measured,
                    })
                update(len(links), len(links), "done")
        finally:
            server.stop()

    ratios = [r["estimate_ratio"] for res in results for r in res["cuts"]]
    summary = {"device_profile": args.device, "device_slowdown_factor": factor, "repeats": args.repeats,
               "model": f"camera CNN 3x128x128 ({n} nodes, {macs / 1e6:.0f} M MACs)", "wire": "fp32",
               "estimate_over_measured_median": statistics.median(ratios),
               "estimate_over_measured_range": [min(ratios), max(ratios)],
               "goal_within_10pct": all(r["chosen_over_best"] <= 1.10 for r in results),
               "crossovers": [r["link"] for r in results if r["chosen_where"] == "split"
                              and r["chosen_over_better_endpoint"] < 1.0]}
    write_results(RESULTS, "hybrid", 1, [{"summary": summary}, *results])
    _plot(results, PLOT)
    print(f"device: {args.device}, emulated as this CPU x {factor:.1f}; 20 ms RTT; fp32 on the wire\n")
    print("| link | device-only ms | cloud-only ms | best (cut) ms | chosen (cut) ms | chosen / best | chosen / better end |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['link'].split(',')[0]} | {r['device_only_ms']:.1f} | {r['cloud_only_ms']:.1f} | "
              f"{r['best_ms']:.1f} ({r['best_position']}) | {r['chosen_ms']:.1f} ({r['chosen_position']}, {r['chosen_where']}) | "
              f"{r['chosen_over_best']:.2f} | {r['chosen_over_better_endpoint']:.2f} |")
    print(f"\nestimate / measured per cut: median {summary['estimate_over_measured_median']:.2f}, "
          f"range {summary['estimate_over_measured_range'][0]:.2f}..{summary['estimate_over_measured_range'][1]:.2f}")
    print(f"chosen within 10% of the best on every link: {summary['goal_within_10pct']}; "
          f"split beats both ends at: {', '.join(summary['crossovers']) or 'no link'}")


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mbit = [float(r["link"].split("mbit")[0]) for r in results]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("device_only_ms", "device-only"), ("cloud_only_ms", "cloud-only"), ("chosen_ms", "chosen plan"),
                       ("best_ms", "best measured cut")):
        ax.plot(mbit, [r[key] for r in results], marker="o", label=label, linestyle="--" if key == "best_ms" else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("link bandwidth, Mbit/s (20 ms round trip)")
    ax.set_ylabel("latency per request, ms (measured)")
    ax.set_title("hybrid split, measured")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
