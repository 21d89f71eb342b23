"""Will a full-integer model fit a microcontroller? RAM, flash and latency of a TFLite Micro model
on an MCU profile, with a yes or no, by how much, and which layer holds the memory peak.

- RAM = the tensor arena, **measured**: the smallest arena with which TFLM's interpreter allocates
  and runs the model (:func:`edgeship.engines.tflm.session.exact_arena`), plus the profile's
  runtime allowance (stack and the interpreter object, outside the arena).
- 32-bit: the arena is measured on a 64-bit host. Its *head* (the activation buffers) carries
  over byte for byte: the same shapes, the same 16-byte alignment, the same planner. Its *tail*
  (TFLM's persistent structs: tensors, nodes, quantization parameters) holds pointers and
  ``size_t``, 4 bytes on a Cortex-M instead of 8, so on the device it is at most the host's and at
  least half of it. The fit is checked with the host's figure, which is safe.
- Flash = the model's bytes + an op-resolver estimate: TFLM's core (16 KiB, the figure TFLM's
  README gives for a Cortex-M3) and a per-kernel allowance (:data:`KERNEL_FLASH_BYTES`). The
  linker map of a real build is the exact figure; these are rough.
- Latency = the model's MACs x the profile's CMSIS-NN cycles per MAC / clock: a lower bound, as
  element-wise ops, requantization and the interpreter's dispatch are not counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeship.errors import ConfigError

__all__ = ["mcu_fit", "device_fit", "mcu_profiles", "KERNEL_FLASH_BYTES", "CORE_FLASH_BYTES"]

#: TFLM's README: "The core runtime just fits in 16 KB on an Arm Cortex M3"
CORE_FLASH_BYTES = 16 << 10
#: code per registered kernel (an allowance, not a measurement): CMSIS-NN's convolution and
#: fully-connected kernels come with several variants each; reshapes and activations are small
KERNEL_FLASH_BYTES = {"heavy": 8 << 10, "light": 2 << 10}
_HEAVY = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL", "SOFTMAX",
          "LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "SVDF", "AVERAGE_POOL_2D", "MAX_POOL_2D"}


def mcu_profiles() -> list[Any]:
    """The built-in microcontroller profiles."""
    from edgeship.targets.profiles import list_profiles, load_profile

    return [p for p in (load_profile(i) for i in list_profiles() if i != "host") if p.microcontroller]


def _arena_split(report: str) -> tuple[int | None, int | None]:
    """(head, tail) bytes from TFLM's allocation report: head = non-persistent buffers, tail = persistent."""
    found: dict[str, int] = {}
    for line in report.splitlines():
        words = line.split()
        for part in ("head", "tail"):
            if f"Arena allocation {part}" in line and words[-1] == "bytes" and words[-2].isdigit():
                found[part] = int(words[-2])
    return found.get("head"), found.get("tail")


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def device_fit(profile: Any, ram: dict[str, int], flash: dict[str, int], cycles: float, ram_note: str = "",
               request_rate_hz: float = 1.0, max_latency_ms: float | None = None) -> dict[str, Any]:
    """What every microcontroller fit report says, whatever made the model: RAM and flash (each a sum
    of named parts) against the profile's SRAM and flash, with the shortfall; latency and energy of
    ``cycles`` per inference in each clock state."""
    from edgeship.targets.estimate import dvfs_states

    if not profile.microcontroller:
        raise ConfigError(f"{profile.id} is not a microcontroller profile; choose one of "
                          f"{[p.id for p in mcu_profiles()]}.")
    need_ram, need_flash = sum(ram.values()), sum(flash.values())
    sram, flash_size = int(profile.ram_mb * 2**20), int(profile.storage_mb * 2**20)
    reasons = []
    if need_ram > sram:
        parts = " + ".join(f"{k} {_kib(v)}" for k, v in ram.items())
        reasons.append(f"RAM {_kib(need_ram)} ({parts}) exceeds SRAM {_kib(sram)} by {_kib(need_ram - sram)}"
                       + (f"; {ram_note}" if ram_note else ""))
    if need_flash > flash_size:
        parts = " + ".join(f"{k} {_kib(v)}" for k, v in flash.items())
        reasons.append(f"flash {_kib(need_flash)} ({parts}) exceeds {_kib(flash_size)} by "
                       f"{_kib(need_flash - flash_size)}")
    states, recommended, fastest = dvfs_states(profile, lambda state: cycles / (state.freq_ghz * 1e9),
                                               request_rate_hz, max_latency_ms)
    return {
        "target": profile.id, "is_estimate": True, "fits": not reasons, "reasons": reasons,
        "ram_bytes": int(need_ram), "ram_parts_bytes": ram, "sram_bytes": sram, "ram_headroom_bytes": sram - need_ram,
        "flash_bytes": int(need_flash), "flash_parts_bytes": flash, "flash_size_bytes": flash_size,
        "flash_headroom_bytes": flash_size - need_flash,
        "latency_ms": fastest["latency_ms"], "energy_mj": recommended["energy_mj"],
        "recommended_state": recommended["state"], "request_rate_hz": request_rate_hz, "dvfs": states,
        "sources": {k: profile.sources[k] for k in ("ram_mb", "storage_mb", "int8_macs_per_cycle",
                                                    "fp32_macs_per_cycle", "dvfs")},
    }


def mcu_fit(model_file: Path | str, profile: Any, arena_bytes: int | None = None, arena_report: str | None = None,
            request_rate_hz: float = 1.0, max_latency_ms: float | None = None) -> dict[str, Any]:
    """The fit report of a full-integer .tflite on a microcontroller profile.

    ``arena_bytes``: the exact arena if it was measured already (a TFLM candidate carries it), with
    ``arena_report``, TFLM's allocation report at it, for the 32-bit range; otherwise both are measured here."""
    from edgeship.engines.tflm.firmware import float_ops
    from edgeship.engines.tflm.graph import read_graph

    path = Path(model_file)
    data = path.read_bytes()
    graph = read_graph(data)
    floating = float_ops(graph)
    if arena_bytes is None:
        from edgeship.engines.tflm.session import exact_arena

        measured = exact_arena(path)
        arena_bytes, arena_report = measured.exact_bytes, measured.report
    head, tail = _arena_split(arena_report or "")
    ops = sorted({op.op for op in graph.ops})
    resolver = CORE_FLASH_BYTES + sum(KERNEL_FLASH_BYTES["heavy" if op in _HEAVY else "light"] for op in ops)
    peak = graph.peak()
    where = (f"the peak is at op {peak['op_index']} {peak['op']}, with {_kib(peak['live_bytes'])} of activations "
             "live (" + ", ".join("x".join(map(str, t["shape"])) for t in peak["tensors"]) + ")")
    cycles_per_mac = 1.0 / profile.int8_macs_per_cycle
    fit = device_fit(profile, {"arena": int(arena_bytes), "runtime": int((profile.runtime_overhead_kb or 0) * 1024)},
                     {"model": len(data), "kernels": resolver}, graph.macs * cycles_per_mac, where,
                     request_rate_hz, max_latency_ms)
    if floating:
        fit["reasons"].insert(0, f"not full int8: {', '.join(floating)} compute in float; use recipe tflm-int8")
        fit["fits"] = False
    fit.update({
        "runs": "tflite-micro" in profile.runtimes and not floating,
        "arena_bytes": int(arena_bytes),  # measured: latency and flash are the estimates
        "arena_measured": True,
        "arena_head_bytes": head,
        "arena_tail_bytes": tail,
        "arena_32bit_bytes": ([head + -(-tail // 2), int(arena_bytes)] if head is not None and tail is not None
                              else [None, int(arena_bytes)]),
        "model_bytes": len(data),
        "resolver_bytes": resolver,
        "ops": ops,
        "peak": peak,
        "macs": graph.macs,
        "cycles_per_mac": cycles_per_mac,
    })
    return fit
