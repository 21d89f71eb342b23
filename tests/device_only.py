"""Run the edgeship CLI as on a device-only install (``pip install edgeship[runtime]``): the
build side's frameworks cannot be imported, so any code path that needs them fails loudly.

Usage: python tests/device_only.py serve BUNDLE ... (the arguments of ``edgeship``), or
       python tests/device_only.py --code "python code";
       ``--block a,b`` first blocks more (a device with one engine: ``--block onnxruntime,openvino``).
"""

from __future__ import annotations

import sys

#: what edgeship[runtime] does not install
BLOCKED = {"torch", "transformers", "onnx", "onnxscript", "sklearn", "scipy", "matplotlib", "ray", "torch_pruning",
           "safetensors", "yaml", "skl2onnx", "nncf", "keras", "h5py",
           "jax", "jaxlib", "litert_torch", "ai_edge_quantizer", "litert_converter", "torchao"}


class _NotOnDevice:
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed on a device (edgeship[runtime])")
        return None


if __name__ == "__main__":
    if sys.argv[1:2] == ["--block"]:
        BLOCKED |= set(sys.argv[2].split(","))
        del sys.argv[1:3]
    sys.meta_path.insert(0, _NotOnDevice())
    if sys.argv[1:2] == ["--code"]:  # python tests/device_only.py --code "..." runs Python code instead
        exec(compile(sys.argv[2], "<device code>", "exec"), {"__name__": "__device__"})
        sys.exit(0)
    from edgeship.cli import main

    sys.argv[0] = "edgeship"
    main()
