"""Load and validate device profiles: the TOML files in ``profile_data/``, a user's file, or ``host``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgeship.errors import ConfigError

__all__ = ["Profile", "DvfsState", "load_profile", "list_profiles", "FIGURES"]

#: figures every profile must give, each with a source in [sources]
FIGURES = ("cores", "fp32_macs_per_cycle", "int8_macs_per_cycle", "mem_bandwidth_gbs", "ram_mb",
           "storage_mb", "idle_power_w", "dvfs")


@dataclass(frozen=True)
class DvfsState:
    name: str
    freq_ghz: float
    power_w: float


@dataclass(frozen=True)
class Profile:
    """A device: compute, memory, storage, power. Figures are per core unless named otherwise."""

    id: str
    name: str
    cores: int
    fp32_macs_per_cycle: float
    int8_macs_per_cycle: float
    mem_bandwidth_gbs: float
    ram_mb: float
    storage_mb: float
    idle_power_w: float
    runtimes: tuple[str, ...]
    dvfs: tuple[DvfsState, ...]
    sources: dict[str, str]
    microcontroller: bool = False
    runtime_overhead_kb: float | None = None  # None: ONNX Runtime's, measured on the host
    gpu: str = ""
    measured: bool = False  # True for `host`: figures measured on this machine
    #: x86 /proc/cpuinfo-style ISA flags (avx2, avx512_vnni, ...); empty for other architectures
    cpu_flags: tuple[str, ...] = ()
    #: ONNX Runtime execution providers to try, in order (the CPU is always the last resort)
    providers: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def int8_saturates(self) -> bool:
        """Whether int8 U8S8 kernels saturate on this CPU (x86 without VNNI): see edgeship.core.cpu."""
        from edgeship.core.cpu import u8s8_saturates

        return u8s8_saturates(self.cpu_flags)

    @property
    def runs_onnxruntime(self) -> bool:
        return "onnxruntime" in self.runtimes

    @property
    def max_state(self) -> DvfsState:
        return max(self.dvfs, key=lambda s: s.freq_ghz)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "cores": self.cores,
            "fp32_macs_per_cycle": self.fp32_macs_per_cycle, "int8_macs_per_cycle": self.int8_macs_per_cycle,
            "mem_bandwidth_gbs": self.mem_bandwidth_gbs, "ram_mb": self.ram_mb, "storage_mb": self.storage_mb,
            "idle_power_w": self.idle_power_w, "runtimes": list(self.runtimes),
            "dvfs": [s.__dict__ for s in self.dvfs], "microcontroller": self.microcontroller,
            "gpu": self.gpu, "measured": self.measured, "cpu_flags": list(self.cpu_flags),
            "int8_saturates": self.int8_saturates, "providers": list(self.providers), "sources": self.sources,
            **self.extra,
        }


def _number(data: dict[str, Any], key: str, where: str, integer: bool = False) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{where}: {key} must be a positive number, got {value!r}.")
    if integer and int(value) != value:
        raise ConfigError(f"{where}: {key} must be a whole number, got {value!r}.")
    return int(value) if integer else float(value)


def profile_from_dict(data: dict[str, Any], where: str) -> Profile:
    """Validate a parsed profile; every problem is a ConfigError naming the field and the fix."""
    for key in ("id", "name"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ConfigError(f"{where}: '{key}' must be a non-empty string.")
    sources = data.get("sources")
    if not isinstance(sources, dict):
        raise ConfigError(f"{where}: needs a [sources] table naming where each figure comes from.")
    missing = [f for f in FIGURES if not str(sources.get(f, "")).strip()]
    if missing:
        raise ConfigError(f"{where}: figure(s) {missing} have no source in [sources]; cite a datasheet or benchmark.")
    states = data.get("dvfs")
    if not isinstance(states, list) or not states:
        raise ConfigError(f"{where}: dvfs must be a non-empty list of {{name, freq_ghz, power_w}}.")
    dvfs = []
    for i, s in enumerate(states):
        if not isinstance(s, dict):
            raise ConfigError(f"{where}: dvfs[{i}] must be a table {{name, freq_ghz, power_w}}.")
        dvfs.append(DvfsState(str(s.get("name", f"state{i}")), _number(s, "freq_ghz", f"{where} dvfs[{i}]"),
                              _number(s, "power_w", f"{where} dvfs[{i}]")))
    runtimes = data.get("runtimes")
    if not isinstance(runtimes, list) or not runtimes or not all(isinstance(r, str) for r in runtimes):
        raise ConfigError(f"{where}: runtimes must be a non-empty list of names, e.g. [\"onnxruntime\"].")
    known = {"id", "name", "cores", "fp32_macs_per_cycle", "int8_macs_per_cycle", "mem_bandwidth_gbs", "ram_mb",
             "storage_mb", "idle_power_w", "runtimes", "dvfs", "sources", "microcontroller",
             "runtime_overhead_kb", "gpu", "measured", "cpu_flags", "providers"}
    providers = data.get("providers", [])
    if not isinstance(providers, list) or not all(isinstance(p, str) and p.endswith("ExecutionProvider")
                                                  for p in providers):
        raise ConfigError(f"{where}: providers must be a list of ONNX Runtime provider names, e.g. "
                          "[\"CUDAExecutionProvider\", \"CPUExecutionProvider\"].")
    if providers and not str(sources.get("providers", "")).strip():
        raise ConfigError(f"{where}: providers has no source in [sources]; cite the ONNX Runtime build the device has.")
    flags = data.get("cpu_flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ConfigError(f"{where}: cpu_flags must be a list of ISA flag names, e.g. [\"avx2\", \"fma\"].")
    if flags and not str(sources.get("cpu_flags", "")).strip():
        raise ConfigError(f"{where}: cpu_flags has no source in [sources]; cite the CPU's specification.")
    return Profile(
        id=data["id"], name=data["name"],
        cores=int(_number(data, "cores", where, integer=True)),
        fp32_macs_per_cycle=_number(data, "fp32_macs_per_cycle", where),
        int8_macs_per_cycle=_number(data, "int8_macs_per_cycle", where),
        mem_bandwidth_gbs=_number(data, "mem_bandwidth_gbs", where),
        ram_mb=_number(data, "ram_mb", where), storage_mb=_number(data, "storage_mb", where),
        idle_power_w=_number(data, "idle_power_w", where),
        runtimes=tuple(runtimes), dvfs=tuple(sorted(dvfs, key=lambda s: s.freq_ghz)),
        sources={str(k): str(v) for k, v in sources.items()},
        microcontroller=bool(data.get("microcontroller", False)),
        runtime_overhead_kb=(None if data.get("runtime_overhead_kb") is None
                             else _number(data, "runtime_overhead_kb", where)),
        gpu=str(data.get("gpu", "")), measured=bool(data.get("measured", False)),
        cpu_flags=tuple(sorted(flags)), providers=tuple(providers),
        extra={k: v for k, v in data.items() if k not in known},
    )


def _builtin_files() -> dict[str, Any]:
    root = resources.files("edgeship.targets").joinpath("profile_data")
    return {p.name.removesuffix(".toml"): p for p in root.iterdir() if p.name.endswith(".toml")}


def list_profiles() -> list[str]:
    """Ids of the built-in profiles, plus ``host``."""
    return sorted(_builtin_files()) + ["host"]


def load_profile(spec: Any) -> Profile:
    """A built-in id, ``host`` (measured here on first use, then cached), or a .toml path."""
    if isinstance(spec, Profile):
        return spec
    text = str(spec)
    if text == "host":
        from edgeship.targets.host import host_profile

        return host_profile()
    builtin = _builtin_files()
    if text in builtin:
        return profile_from_dict(tomllib.loads(builtin[text].read_text(encoding="utf-8")), text)
    path = Path(text)
    if path.suffix.lower() == ".toml":
        if not path.is_file():
            raise ConfigError(f"target profile file not found: {text!r}.")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"target profile {text!r} is not valid TOML: {exc}.") from None
        return profile_from_dict(data, text)
    raise ConfigError(f"unknown target {text!r}; choose from {list_profiles()} or give a profile .toml file.")
