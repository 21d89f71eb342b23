"""Where to cut a model between a device and a server (after Neurosurgeon, ASPLOS 2017).

A cut at position ``k`` runs the graph's first ``k`` nodes (in ONNX's topological order) on the
device and the rest on the server; the tensors that cross are those made before ``k`` and read at
or after it (constants are rebuilt on the server, not sent). Position 0 is cloud-only (the input
crosses), position N is device-only (nothing crosses). The cost of a cut is:

- the device's head latency, estimated per node from its profile
  (:func:`edgeship.targets.estimate.node_latencies_s`);
- the transfer: one round trip, the crossing tensors' bytes in the wire encoding
  (:mod:`edgeship.core.wire`) up, and the outputs (float32) down, over the link's bandwidth;
- the server's tail latency, estimated the same way on the server's profile (``host``: this
  machine, measured).

Device energy is the head's active energy plus the radio's transmit power over the upload. The
plan is the cut with the lowest latency, or the lowest device energy within a latency budget.
Every figure here is an estimate; the measured run is ``benchmarks/``' job.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.errors import ConfigError
from edgeship.core.wire import WIRE_BYTES, check_wire

__all__ = ["Link", "Cut", "SplitPlan", "cuts", "plan_split", "extract", "plot_split"]

_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_LINK = re.compile(r"^\s*([0-9.]+)\s*(gbit|mbit|kbit|bit)\s*,\s*([0-9.]+)\s*ms\s*(?:,\s*([0-9.]+)\s*w)?\s*$", re.I)


@dataclass(frozen=True)
class Link:
    """The network between device and server."""

    bandwidth_bps: float
    rtt_s: float
    tx_power_w: float = 0.0  # the device radio's power while sending (for device energy)

    @classmethod
    def parse(cls, text: str) -> "Link":
        """``BANDWIDTH,RTT[,TX_POWER]``, e.g. ``10mbit,40ms`` or ``2mbit,80ms,0.8w``."""
        match = _LINK.match(str(text))
        if not match:
            raise ConfigError(f"--link {text!r} is not BANDWIDTH,RTT[,TX_POWER]; e.g. 10mbit,40ms or 2mbit,80ms,0.8w.")
        bandwidth = float(match.group(1)) * _UNITS[match.group(2).lower()]
        rtt = float(match.group(3)) / 1000
        if not 1e3 <= bandwidth <= 1e12 or rtt > 60:
            raise ConfigError(f"--link {text!r}: bandwidth must be 1kbit..1000gbit and the round trip under 60 s.")
        return cls(bandwidth, rtt, float(match.group(4) or 0.0))

    def seconds(self, up_bytes: int, down_bytes: int) -> float:
        return self.rtt_s + 8 * (up_bytes + down_bytes) / self.bandwidth_bps


@dataclass(frozen=True)
class Cut:
    position: int  # nodes [0, position) run on the device
    tensors: tuple[str, ...]  # what crosses the link
    values: int  # elements crossing (the wire encoding sets their bytes)
    after: str  # the last node on the device ("" for cloud-only)


def cuts(proto: Any, shapes: dict[str, tuple[int, ...]] | None = None) -> list[Cut]:
    """Every position in topological order, with the tensors that cross there (``proto``: a model,
    or a :class:`~edgeship.evaluate.graph.SizedGraph` already sized)."""
    from edgeship.evaluate.graph import SizedGraph, sized_graph

    sized = proto if isinstance(proto, SizedGraph) else sized_graph(proto, shapes, "a split")
    graph, value_shapes = sized.proto.graph, sized.shapes
    inits = {i.name for i in graph.initializer}
    constant = set(inits)
    for node in graph.node:  # outputs of nodes fed only by constants: rebuilt on either side
        if all(not i or i in constant for i in node.input):
            constant.update(node.output)
    produced_at = {i.name: -1 for i in graph.input if i.name not in inits}
    for k, node in enumerate(graph.node):
        for out in node.output:
            produced_at[out] = k
    last_use: dict[str, int] = {}
    for k, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in constant:
                last_use[name] = k
    n = len(graph.node)
    for out in graph.output:
        last_use[out.name] = n
    result = []
    for position in range(n + 1):
        crossing = tuple(t for t, made in produced_at.items() if made < position and last_use.get(t, -1) >= position
                         and t not in constant)
        if position == n:
            crossing = ()
        values = sum(int(np.prod(value_shapes.get(t) or (0,), dtype=np.int64)) for t in crossing)
        after = "" if position == 0 else (graph.node[position - 1].name or graph.node[position - 1].op_type)
        result.append(Cut(position, crossing, values, after))
    return result


@dataclass(frozen=True)
class SplitPlan:
    curve: list[dict[str, Any]]  # one row per cut: position, tensors, bytes, head/transfer/tail/total ms, energy
    chosen: dict[str, Any]
    device: str
    server: str
    link: Link
    wire: str
    objective: str

    @property
    def device_only(self) -> dict[str, Any]:
        return self.curve[-1]

    @property
    def cloud_only(self) -> dict[str, Any]:
        return self.curve[0]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "server": self.server, "link": asdict(self.link), "wire": self.wire,
                "objective": self.objective, "chosen": self.chosen, "device_only": self.device_only,
                "cloud_only": self.cloud_only, "curve": self.curve, "is_estimate": True}


def plan_split(model: Path | str, device: Any, server: Any = "host", link: Link | str = "10mbit,40ms",
               wire: str = "fp32", objective: str = "latency", max_latency_ms: float | None = None,
               shapes: dict[str, tuple[int, ...]] | None = None, threads: int = 2) -> SplitPlan:
    """The estimated cost of every cut, and the one to use."""
    import onnx

    from edgeship.evaluate.graph import sized_graph
    from edgeship.targets import load_profile
    from edgeship.targets.estimate import graph_cost, node_latencies_s

    check_wire(wire)
    if objective not in ("latency", "energy"):
        raise ConfigError(f"objective {objective!r}: choose latency or energy.")
    link = link if isinstance(link, Link) else Link.parse(link)
    device, server = load_profile(device), load_profile(server)
    sized = sized_graph(onnx.load(str(model)), shapes, "a split")
    cost = graph_cost(sized)
    on_device = dict(node_latencies_s(cost, device, threads=threads))
    on_server = dict(node_latencies_s(cost, server, threads=threads))
    graph = sized.proto.graph
    down = sum(int(np.prod(sized.shapes.get(o.name) or (0,), dtype=np.int64)) * 4 for o in graph.output)
    n = len(graph.node)
    power = device.max_state.power_w
    curve = []
    for cut in cuts(sized):
        head = sum(t for k, t in on_device.items() if k < cut.position)
        tail = sum(t for k, t in on_server.items() if k >= cut.position)
        up = cut.values * WIRE_BYTES[wire]
        transfer = 0.0 if cut.position == n else link.seconds(up, down)
        upload = 0.0 if cut.position == n else 8 * up / link.bandwidth_bps
        where = "device" if cut.position == n else "upstream" if cut.position == 0 else "split"
        curve.append({"position": cut.position, "after": cut.after, "where": where, "tensors": list(cut.tensors),
                      "wire_bytes": up, "head_ms": head * 1000, "transfer_ms": transfer * 1000, "tail_ms": tail * 1000,
                      "total_ms": (head + transfer + tail) * 1000,
                      "device_energy_mj": (power * head + link.tx_power_w * upload) * 1000})
    key = "total_ms" if objective == "latency" else "device_energy_mj"
    eligible = [r for r in curve if max_latency_ms is None or r["total_ms"] <= max_latency_ms]
    if not eligible:
        best = min(r["total_ms"] for r in curve)
        raise ConfigError(f"no cut meets the latency budget of {max_latency_ms:g} ms (the fastest is {best:.3g} ms); "
                          "raise --max-latency-ms or give a faster link.")
    chosen = min(eligible, key=lambda r: (r[key], r["total_ms"]))
    return SplitPlan(curve, chosen, device.id, server.id, link, wire, objective)


def extract(model: Path | str, position: int, out_dir: Path | str,
            shapes: dict[str, tuple[int, ...]] | None = None, wire: str = "fp32") -> tuple[Path | None, Path | None]:
    """Write ``head.onnx`` (device) and ``tail.onnx`` (server) for the cut at ``position``; device-only
    has no tail and cloud-only no head (None). The tail takes the cut tensors as ``wire`` sends them
    (:func:`edgeship.hybrid.wire.adapt_tail`)."""
    from edgeship.hybrid.wire import adapt_tail

    import onnx
    from onnx.utils import Extractor

    from edgeship.core.files import atomic_write_bytes

    proto = onnx.load(str(model))
    table = cuts(proto, shapes)
    if not 0 <= position < len(table):
        raise ConfigError(f"cut position {position} is outside 0..{len(table) - 1}.")
    cut = table[position]
    inputs = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    outputs = [o.name for o in proto.graph.output]
    inferred = onnx.shape_inference.infer_shapes(proto)
    extractor = Extractor(inferred)
    out = Path(out_dir)
    head = tail = None
    if cut.position > 0:
        head = out / "head.onnx"
        atomic_write_bytes(head, extractor.extract_model(inputs, list(cut.tensors) if cut.tensors else outputs)
                           .SerializeToString())
    if cut.position < len(proto.graph.node):
        tail = out / "tail.onnx"
        sent = list(cut.tensors) if cut.position > 0 else inputs
        atomic_write_bytes(tail, adapt_tail(extractor.extract_model(sent, outputs), wire).SerializeToString())
    return head, tail


def plot_split(plan: SplitPlan, path: Path | str) -> Path:
    """Latency (head, transfer, tail, stacked) against the cut, with the chosen cut marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["position"] for r in plan.curve]
    head = np.array([r["head_ms"] for r in plan.curve])
    transfer = np.array([r["transfer_ms"] for r in plan.curve])
    tail = np.array([r["tail_ms"] for r in plan.curve])
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.stackplot(x, head, transfer, tail, labels=[f"head on {plan.device}", "link", f"tail on {plan.server}"],
                 alpha=0.8)
    ax.axvline(plan.chosen["position"], color="black", linestyle="--", label=f"chosen: {plan.chosen['where']}")
    ax.set_xlabel("cut position (nodes on the device; 0 = cloud-only, right end = device-only)")
    ax.set_ylabel("latency, ms (estimate)")
    bandwidth = plan.link.bandwidth_bps / 1e6
    ax.set_title(f"split over {bandwidth:g} Mbit/s, {plan.link.rtt_s * 1000:g} ms RTT, {plan.wire} on the wire")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
