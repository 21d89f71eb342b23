"""Facts about a CPU that decide how a model should be quantized for it.

x86 CPUs without VNNI run ONNX Runtime's U8S8 int8 kernels on VPMADDUBSW, which adds pairs of
u8 x s8 products into a *saturating* int16: 2 x 255 x 127 = 64,770 does not fit in 32,767.
The ONNX Runtime quantization docs and OpenVINO's "saturation issue" page name the same remedy:
7-bit weights (``reduce_range``), so that a pair's sum stays below 2 x 255 x 63 = 32,130.
CPUs with AVX-512 VNNI or AVX-VNNI (VPDPBUSD accumulates in int32) and Arm's dot-product
instructions do not saturate.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["cpu_flags", "u8s8_saturates", "machine", "VNNI_FLAGS"]

#: /proc/cpuinfo flags of the x86 instructions that accumulate u8 x s8 products in int32
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags(cpuinfo: Path | str = "/proc/cpuinfo") -> frozenset[str]:
    """The flags line of ``/proc/cpuinfo`` (empty where there is none, e.g. not Linux on x86)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def u8s8_saturates(flags: frozenset[str] | set[str] | list[str]) -> bool:
    """True for x86 CPUs whose int8 GEMM saturates (AVX2 or AVX-512 without VNNI)."""
    flags = set(flags)
    x86_int8 = bool(flags & {"avx2", "avx512bw", "sse4_1"})
    return x86_int8 and not (flags & VNNI_FLAGS)


#: the flags that decide which int8 / bf16 kernels run
KERNEL_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
                          "amx_bf16", "asimddp", "i8mm"})


def machine(threads: int | None = None) -> dict:
    """The CPU a measurement was made on: model, the ISA flags that decide int8/bf16 kernels, threads."""
    import os
    import platform

    info = Path("/proc/cpuinfo")
    lines = info.read_text(encoding="utf-8", errors="replace").splitlines() if info.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor())
    flags = cpu_flags()
    return {"platform": platform.platform(), "cpu": model, "cpu_flags": sorted(flags & KERNEL_FLAGS),
            "int8_u8s8_saturates": u8s8_saturates(flags), "cores": os.cpu_count(), "threads": threads}
