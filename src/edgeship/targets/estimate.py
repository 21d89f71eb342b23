"""Offline fit estimates: peak memory, latency, storage and energy of a model on a device.

- Peak memory: ONNX Runtime's own footprint + weights + the packed copies ORT makes of
  MatMul/Gemm/Conv weights at load (prepacking) + the peak of live activations from a static
  memory plan (inferred shapes, each tensor alive from its producer to its last consumer).
- Latency: a per-op roofline. Each op takes the longer of its MACs at the device's fp32 or
  int8 throughput and its bytes at the memory bandwidth, plus a fixed dispatch cost.
  Throughput comes from the profile; for datasheet profiles the peak is scaled by the
  efficiency ONNX Runtime reaches on the host (measured), where that is measurable.
- Energy per inference in each DVFS state: active power x latency, plus the idle power for
  the rest of the period at a given request rate. The recommended state is the one with the
  lowest energy that still meets the latency budget.
Everything here is labelled an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeship.errors import ConfigError
from edgeship.model import Model
from edgeship.targets.profiles import DvfsState, Profile

__all__ = ["GraphCost", "graph_cost", "estimate", "node_latencies_s", "dvfs_states", "FALLBACK_EFFICIENCY"]

#: share of datasheet peak that ONNX Runtime's kernels are assumed to reach when the host's
#: own efficiency cannot be measured (e.g. a VM that reports a nominal clock)
FALLBACK_EFFICIENCY = 0.7
#: CPU cycles ONNX Runtime spends dispatching one node when the host has not measured it
DISPATCH_CYCLES = 4000
_ELEM_SIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2, 21: 1, 22: 1}
_INT8_OPS = {"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul"}
# ORT fuses QDQ pairs into quantized kernels at load: they cost no dispatch or traffic of their own
_FUSED_AWAY = {"QuantizeLinear", "DequantizeLinear", "Constant", "Identity"}
_PREPACKED = {"MatMul", "Gemm", "Conv", "FusedConv", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
              "QLinearConv", "QLinearMatMul", "MatMulNBits", "Attention", "ConvInteger"}


#: share of the second thread's throughput that small ops gain (measured on the host:
#: 2 threads make a 12 M-MAC CNN about 1.5x faster, not 2x)
PARALLEL_EFFICIENCY = 0.5


@dataclass(frozen=True)
class NodeCost:
    op: str
    macs: int | None  # None: a cost that cannot be counted (see edgeship.evaluate.graph.node_macs)
    int8: bool
    bytes_moved: int
    index: int = -1  # the node's position in the graph


@dataclass(frozen=True)
class GraphCost:
    """What the estimators need to know about one model at one input shape."""

    nodes: tuple[NodeCost, ...]
    weight_bytes: int
    prepacked_bytes: int
    activation_peak_bytes: int
    io_bytes: int

    @property
    def uncounted(self) -> list[str]:
        """Ops whose compute the estimate leaves out, because it cannot be counted."""
        return sorted({n.op for n in self.nodes if n.macs is None})

    @property
    def macs(self) -> int | None:
        return None if self.uncounted else sum(n.macs or 0 for n in self.nodes)


def _nbytes(shape: tuple[int, ...] | None, elem_type: int | None) -> int:
    if shape is None:
        return 0
    return int(np.prod(shape, dtype=np.int64)) * _ELEM_SIZE.get(elem_type or 1, 4)


def graph_cost(model: Path | str | Any, shapes: dict[str, tuple[int, ...]] | None = None) -> GraphCost:
    """Per-node compute and traffic, weights, packed copies and the activation peak, at ``shapes``
    (``model``: a path, or a :class:`~edgeship.evaluate.graph.SizedGraph` already sized)."""
    import onnx

    from edgeship.evaluate.graph import SizedGraph, sized_graph

    sized = model if isinstance(model, SizedGraph) else sized_graph(onnx.load(str(model)), shapes, "an estimate")
    graph = sized.proto.graph
    weight_bytes = sum(_nbytes(tuple(i.dims), i.data_type) for i in graph.initializer)
    nodes, prepacked = _node_costs(graph, sized.shapes, sized.types)
    activation_peak, io_bytes = _activation_plan(graph, sized.shapes, sized.types)
    return GraphCost(tuple(nodes), weight_bytes, prepacked, activation_peak, io_bytes)


def _node_costs(graph: Any, value_shapes: dict[str, Any], types: dict[str, int]) -> tuple[list[NodeCost], int]:
    """(the cost of each node that runs, bytes of the weight copies ONNX Runtime packs at load)."""
    from edgeship.evaluate.graph import node_macs

    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}

    def source_init(name: str) -> Any:
        """The initializer behind ``name``, through DequantizeLinear/Cast/Transpose."""
        if name in inits:
            return inits[name]
        node = producers.get(name)
        if node is not None and node.op_type in {"DequantizeLinear", "Cast", "Transpose", "Identity"}:
            return source_init(node.input[0])
        return None

    graph_io = {v.name for v in [*graph.input, *graph.output]}
    nodes, prepacked = [], 0
    for index, node in enumerate(graph.node):
        at_boundary = any(n in graph_io for n in [*node.input, *node.output])
        if node.op_type in _FUSED_AWAY and not (node.op_type != "Identity" and at_boundary and
                                                 not all(i in inits for i in node.input if i)):
            continue  # fused into the quantized kernels; the input Quantize and output Dequantize do run
        weight = source_init(node.input[1]) if len(node.input) > 1 else None
        dequantized = len(node.input) > 1 and node.input[1] not in inits and weight is not None
        is_int8 = node.op_type in _INT8_OPS or (dequantized and weight.data_type in (2, 3))
        if node.op_type in _PREPACKED and weight is not None:
            packed = _nbytes(tuple(weight.dims), weight.data_type)
            # CPU kernels compute fp16 models in fp32: the packed copy is fp32, twice the size
            prepacked += 2 * packed if weight.data_type == 10 else packed
        if node.op_type in {"Gather", "GatherBlockQuantized"}:  # reads only the gathered rows
            moved = 2 * sum(_nbytes(value_shapes.get(n), types.get(n)) for n in node.output)
        else:
            moved = sum(_nbytes(value_shapes.get(n), types.get(n)) for n in [*node.input, *node.output] if n)
        op = "QLinearConv" if node.op_type == "Conv" and is_int8 else node.op_type  # a QDQ Conv runs as QLinearConv
        nodes.append(NodeCost(op, node_macs(node, value_shapes, producers), is_int8, moved, index))
    return nodes, prepacked


def _activation_plan(graph: Any, value_shapes: dict[str, Any], types: dict[str, int]) -> tuple[int, int]:
    """(peak bytes of a static memory plan over activations, bytes of the graph's inputs and outputs).

    Each activation lives from its producer to its last consumer; initializers are weights, and outputs
    of nodes fed only by initializers (DequantizeLinear of a weight) are folded at load."""
    inits = {i.name for i in graph.initializer}
    folded = {o for n in graph.node if n.input and all(i in inits or not i for i in n.input) for o in n.output}
    index = {o: i for i, n in enumerate(graph.node) for o in n.output}
    last_use: dict[str, int] = {}
    for i, n in enumerate(graph.node):
        for name in n.input:
            if name and name not in inits and name not in folded:
                last_use[name] = i
    end = len(graph.node)
    for out in graph.output:
        last_use[out.name] = end
    delta = np.zeros(end + 2, dtype=np.int64)
    io_bytes = 0
    for name, last in last_use.items():
        size = _nbytes(value_shapes.get(name), types.get(name))
        if name not in index:
            io_bytes += size
        delta[index.get(name, 0)] += size
        delta[last + 1] -= size
    return (int(np.max(np.cumsum(delta))) if end else 0), io_bytes


def efficiency(profile: Profile) -> tuple[float, float, str]:
    """(fp32, int8) share of the profile's figures that ONNX Runtime reaches, and why."""
    if profile.measured:
        return 1.0, 1.0, "host figures are measured ONNX Runtime throughput"
    from edgeship.targets.host import host_profile

    host = host_profile()
    peak32 = host.extra.get("host_peak_fp32_macs_per_cycle", 16.0)
    peak8 = host.extra.get("host_peak_int8_macs_per_cycle", 32.0)
    e32, e8 = host.fp32_macs_per_cycle / peak32, host.int8_macs_per_cycle / peak8
    if 0 < e32 <= 1 and 0 < e8 <= 1:
        return e32, e8, "peak scaled by the efficiency ONNX Runtime reaches on the host"
    return FALLBACK_EFFICIENCY, FALLBACK_EFFICIENCY, (
        f"the host's clock is not readable (measured above its peak), so {FALLBACK_EFFICIENCY:.0%} of peak is assumed"
    )


def _op_rates(profile: Profile) -> dict[str, float]:
    """Kernels that do not run at the GEMM rates, as a share of the fp32 GEMM rate, measured on the host."""
    from edgeship.targets.host import host_profile

    host = profile if profile.measured else host_profile()
    measured = host.extra.get("op_macs_per_cycle", {})
    return {op: rate / host.fp32_macs_per_cycle for op, rate in measured.items()}


def _dispatch_cycles(profile: Profile) -> tuple[float, dict[str, float]]:
    """Per-node cost, and per-call cost of ops with more set-up, measured on the host; the same
    runtime spends about the same cycles elsewhere."""
    from edgeship.targets.host import host_profile

    host = profile if profile.measured else host_profile()
    return float(host.extra.get("dispatch_cycles", DISPATCH_CYCLES)), host.extra.get("op_overhead_cycles", {})


def node_latencies_s(cost: GraphCost, profile: Profile, state: DvfsState | None = None, threads: int = 2,
                     eff: tuple[float, float] | None = None) -> list[tuple[int, float]]:
    """(graph node index, estimated seconds) for each node that runs, in graph order."""
    state = state or profile.max_state
    eff = eff or efficiency(profile)[:2]
    used = max(1, min(threads, profile.cores))
    cores = 1 + PARALLEL_EFFICIENCY * (used - 1)
    hz = state.freq_ghz * 1e9
    # memory bandwidth is shared; it does not scale with the CPU clock
    bandwidth = profile.mem_bandwidth_gbs * 1e9
    slow = _op_rates(profile)
    dispatch, op_overhead = _dispatch_cycles(profile)
    out = []
    for n in cost.nodes:
        per_cycle = (profile.int8_macs_per_cycle * eff[1]) if n.int8 else (profile.fp32_macs_per_cycle * eff[0])
        if n.op in slow:
            per_cycle = profile.fp32_macs_per_cycle * eff[0] * slow[n.op]
        compute = n.macs / (per_cycle * hz * cores) if n.macs else 0.0  # uncounted ops: memory traffic only
        out.append((n.index, max(compute, n.bytes_moved / bandwidth) + max(dispatch, op_overhead.get(n.op, 0.0)) / hz))
    return out


def _latency_s(cost: GraphCost, profile: Profile, state: DvfsState, threads: int, eff: tuple[float, float]) -> float:
    return sum(t for _, t in node_latencies_s(cost, profile, state, threads, eff))


def dvfs_states(profile: Profile, latency_s: Callable[[DvfsState], float], request_rate_hz: float,
                max_latency_ms: float | None) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Latency and energy in each DVFS state (active power x latency, plus idle power for the rest
    of the request period); (all states, the lowest-energy one within the latency budget, the fastest)."""
    states = []
    for state in profile.dvfs:
        latency = latency_s(state)
        period = 1.0 / request_rate_hz
        active_mj = state.power_w * latency * 1000
        idle_mj = profile.idle_power_w * max(0.0, period - latency) * 1000
        states.append({"state": state.name, "freq_ghz": state.freq_ghz, "latency_ms": latency * 1000,
                       "active_energy_mj": active_mj, "energy_mj": active_mj + idle_mj,
                       "meets_latency": max_latency_ms is None or latency * 1000 <= max_latency_ms})
    eligible = [s for s in states if s["meets_latency"]] or states
    recommended = min(eligible, key=lambda s: (s["energy_mj"], s["latency_ms"]))
    return states, recommended, min(states, key=lambda s: s["latency_ms"])


def _tflm_estimate(model: Model, profile: Profile, request_rate_hz: float,
                   max_latency_ms: float | None) -> dict[str, Any]:
    """A TFLite Micro candidate on a microcontroller: its measured arena and flash, through mcu_fit."""
    from edgeship.targets.mcu_fit import mcu_fit

    arena = dict(model.engine_options).get("arena_bytes")
    fit = mcu_fit(model.artifact, profile, int(arena) if arena else None, None, request_rate_hz, max_latency_ms)
    return {
        "target": profile.id, "is_estimate": True, "latency_ms": fit["latency_ms"],
        "peak_memory_bytes": fit["ram_bytes"], "storage_bytes": fit["flash_bytes"],
        "energy_mj": fit["energy_mj"], "fits": fit["fits"], "runs": fit["runs"], "reasons": fit["reasons"],
        "runtime_note": ("RAM is TFLM's arena, measured on its interpreter (exact), plus the runtime's allowance; "
                         "flash is the model plus an op-resolver estimate; latency counts MACs at CMSIS-NN's rate."),
        "recommended_state": fit["recommended_state"], "request_rate_hz": request_rate_hz, "threads": 1,
        "dvfs": fit["dvfs"], "memory_breakdown_bytes": {"runtime": fit["ram_bytes"] - fit["arena_bytes"],
                                                   "arena": fit["arena_bytes"]},
        "macs": fit["macs"], "uncounted_ops": [], "efficiency": {"why": "CMSIS-NN cycles per MAC from the profile"},
        "mcu": fit,
    }


def estimate(
    model: Model | Path | str,
    profile: Profile,
    shapes: dict[str, tuple[int, ...]] | None = None,
    threads: int = 2,
    request_rate_hz: float = 1.0,
    max_latency_ms: float | None = None,
    cost: GraphCost | None = None,
) -> dict[str, Any]:
    """The fit report of one model on one device; every figure is an estimate."""
    if isinstance(model, Model) and model.engine in ("tflm", "litert"):
        if profile.microcontroller:
            return _tflm_estimate(model, profile, request_rate_hz, max_latency_ms)
        raise ConfigError(f"a fit estimate on {profile.id} reads an ONNX graph, and this is a LiteRT model: give "
                          "the ONNX model it was made from, or a microcontroller target (see `edgeship targets`).")
    path = model.path if isinstance(model, Model) else Path(model)
    files = model.files if isinstance(model, Model) else [path]
    cost = cost or graph_cost(path, shapes)
    eff32, eff8, eff_note = efficiency(profile)
    if profile.runtime_overhead_kb is not None:
        overhead = int(profile.runtime_overhead_kb * 1024)
    else:
        from edgeship.targets.host import host_profile

        overhead = int((host_profile().runtime_overhead_kb or 0) * 1024)
    if profile.microcontroller:
        # TFLite-Micro style: weights stay in flash, RAM holds the activation arena
        peak_memory = overhead + cost.activation_peak_bytes
    else:
        peak_memory = overhead + cost.weight_bytes + cost.prepacked_bytes + cost.activation_peak_bytes
    storage = sum(Path(f).stat().st_size for f in files)

    states, recommended, fastest = dvfs_states(
        profile, lambda state: _latency_s(cost, profile, state, threads, (eff32, eff8)), request_rate_hz, max_latency_ms)

    reasons = []
    if peak_memory > profile.ram_mb * 2**20:
        reasons.append(f"peak memory {peak_memory / 2**20:.1f} MiB exceeds RAM {profile.ram_mb:g} MiB")
    if storage > profile.storage_mb * 2**20:
        reasons.append(f"model {storage / 2**20:.1f} MiB exceeds storage {profile.storage_mb:g} MiB")
    runtime_note = ""
    if not profile.runs_onnxruntime:
        runtime_note = (
            f"ONNX Runtime does not run on {profile.id} (runtimes: {', '.join(profile.runtimes)}); convert the "
            "model to one of those" + (" (recipe tflm-int8 makes a TFLite Micro model, whose arena is measured)"
                                       if profile.microcontroller else "")
            + ". Memory and storage assume weights in flash and an activation arena in RAM."
        )
    return {
        "target": profile.id,
        "is_estimate": True,
        "latency_ms": fastest["latency_ms"],
        "peak_memory_bytes": int(peak_memory),
        "storage_bytes": int(storage),
        "energy_mj": recommended["energy_mj"],
        "fits": not reasons,
        "runs": profile.runs_onnxruntime,
        "reasons": reasons,
        "runtime_note": runtime_note,
        "recommended_state": recommended["state"],
        "request_rate_hz": request_rate_hz,
        "threads": min(threads, profile.cores),
        "dvfs": states,
        "memory_breakdown_bytes": {"runtime": overhead, "weights": 0 if profile.microcontroller else cost.weight_bytes,
                                   "prepacked_weights": 0 if profile.microcontroller else cost.prepacked_bytes,
                                   "activations": cost.activation_peak_bytes},
        "macs": cost.macs,
        "uncounted_ops": cost.uncounted,  # their compute is missing from the latency and energy figures
        "efficiency": {"fp32": eff32, "int8": eff8, "why": eff_note},
    }
