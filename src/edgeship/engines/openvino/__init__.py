"""OpenVINO beside ONNX Runtime: IR conversion and NNCF compression (``convert``, the ``openvino``
pass in ``passes``), and a session with ONNX Runtime's interface (``session``)."""

from __future__ import annotations

from edgeship.engines.base import Engine, register_engine

__all__ = ["ENGINE"]

ENGINE = register_engine(Engine(
    name="openvino", label="OpenVINO", package="openvino", extra="openvino", suffix=".xml", sidecars=(".bin",),
    member="model.ovir",  # the .xml and .bin in one container (session.ir_container)
    opener="edgeship.engines.openvino.session:open_model",
    container="edgeship.engines.openvino.session:ir_container",
    build_packages=("nncf", "onnx"), option_keys=("hint", "precision"),
    passes="edgeship.engines.openvino.passes",
))
