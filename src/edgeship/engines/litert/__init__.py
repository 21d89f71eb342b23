"""LiteRT (TensorFlow Lite) beside ONNX Runtime: conversion from PyTorch with litert-torch and
compression with ai-edge-quantizer (``convert``, the ``litert`` pass in ``passes``), and a session
on LiteRT's interpreter with ONNX Runtime's interface (``session``)."""

from __future__ import annotations

from edgeship.engines.base import Engine, register_engine

__all__ = ["ENGINE"]

ENGINE = register_engine(Engine(
    name="litert", label="LiteRT", package="ai_edge_litert", extra="litert", suffix=".tflite", member="model.tflite",
    opener="edgeship.engines.litert.session:open_model",
    build_packages=("litert_torch", "ai_edge_quantizer", "torch"),
    passes="edgeship.engines.litert.passes",
))
