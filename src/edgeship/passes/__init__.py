"""Compression and optimization passes. Importing this package registers every pass."""

from edgeship.passes.base import PASSES, PassConfig, PassContext, pass_from_dict, register_pass
from edgeship.passes.compact import Compact
from edgeship.passes.graph import OptimizeGraph
from edgeship.passes.quantize import ConvertFp16, QuantizeDynamic, QuantizeInt4, QuantizeStatic

__all__ = [
    "PASSES",
    "PassConfig",
    "PassContext",
    "pass_from_dict",
    "register_pass",
    "Compact",
    "ConvertFp16",
    "OptimizeGraph",
    "QuantizeDynamic",
    "QuantizeInt4",
    "QuantizeStatic",
]
