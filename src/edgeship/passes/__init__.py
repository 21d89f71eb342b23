"""Compression and optimization passes. Importing this package registers every pass, the engines'
conversion passes included (each engine names its pass module)."""

from edgeship.passes.base import PASSES, PassConfig, PassContext, pass_from_dict, register_pass
from edgeship.passes.cluster import Cluster
from edgeship.passes.compact import Compact
from edgeship.passes.distill import Distill
from edgeship.passes.graph import OptimizeGraph
from edgeship.passes.prune import PruneStructured, PruneUnstructured
from edgeship.passes.quantize import ConvertFp16, QuantizeDynamic, QuantizeInt4, QuantizeStatic

__all__ = [
    "PASSES",
    "PassConfig",
    "PassContext",
    "pass_from_dict",
    "register_pass",
    "Cluster",
    "Compact",
    "Distill",
    "PruneStructured",
    "PruneUnstructured",
    "ConvertFp16",
    "OptimizeGraph",
    "QuantizeDynamic",
    "QuantizeInt4",
    "QuantizeStatic",
    "load_engine_passes",
]


def load_engine_passes() -> None:
    """Register each engine's conversion pass (OpenVINO's ``openvino``, LiteRT's ``litert``, ...)."""
    from importlib import import_module

    from edgeship.engines import ENGINES

    for engine in ENGINES.values():
        if engine.passes:
            import_module(engine.passes)


load_engine_passes()
