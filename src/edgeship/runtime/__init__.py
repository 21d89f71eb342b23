"""The on-device runtime: verify a bundle, load it from memory, self-test, predict.

Imports only numpy, onnxruntime and cryptography (a test proves it never imports torch,
transformers or matplotlib).
"""

from edgeship.runtime.session import Runtime, RuntimeInputError

__all__ = ["Runtime", "RuntimeInputError"]
