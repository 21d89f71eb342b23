"""TensorFlow Lite for Microcontrollers: full-integer LiteRT models for MCUs. The model is a .tflite
made by the LiteRT converter with full int8 quantization (the ``tflm`` pass); on the host it runs on
TFLM's own interpreter (``session``), which also finds the exact tensor arena; ``firmware`` writes it
out as C for a firmware build."""

from __future__ import annotations

from edgeship.engines.base import Engine, register_engine

__all__ = ["ENGINE"]

ENGINE = register_engine(Engine(
    name="tflm", label="TFLite Micro", package="tflite_micro", extra="tflm", suffix=".tflm",
    member="model.tflm", opener="edgeship.engines.tflm.session:open_model",
    build_packages=("litert_torch", "ai_edge_quantizer", "ai_edge_litert", "torch"), option_keys=("arena_bytes",),
    passes="edgeship.engines.tflm.passes",
))
