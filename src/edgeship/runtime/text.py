"""Text in, labels out, on the device: the bundle's tokenizer run by the ``tokenizers`` library
(no transformers, no torch), and the classification answer of the Open Inference Protocol.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeship.core.errors import DataMismatchError, EdgeshipError

__all__ = ["TextEncoder", "classify", "top_classes", "MAX_TEXTS", "MAX_TEXT_CHARS"]

#: bounds on one request's text: rows and characters per text
MAX_TEXTS = 1024
MAX_TEXT_CHARS = 100_000


class TextEncoder:
    """Tokenizes texts into the model's inputs, padded and truncated to the bundle's ``max_length``."""

    def __init__(self, tokenizer_json: bytes | None, settings: dict[str, Any]) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise EdgeshipError("this bundle takes text, and its tokenizer needs the tokenizers library: "
                                "pip install 'edgeship[text]'.") from None
        if tokenizer_json is None:
            raise EdgeshipError("the bundle's manifest asks for text input but it holds no tokenizer.json.")
        try:
            self.tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as exc:  # tokenizers raises its own exception type for a malformed file
            raise EdgeshipError(f"the bundle's tokenizer.json does not load: {exc}.") from None
        self.max_length = int(settings["max_length"])
        self.fields = dict(settings["inputs"])  # model input -> Encoding attribute
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(pad_id=int(settings["pad_id"]), pad_token=str(settings["pad_token"]),
                                      length=self.max_length)
        self.selftest = settings.get("selftest")

    def check(self) -> None:
        """Refuse a tokenizer that does not reproduce the ids recorded when the bundle was packed."""
        if self.selftest is None:
            return
        got = self.encode([self.selftest["text"]])["input_ids"][0].tolist()
        if got != list(self.selftest["input_ids"]):
            raise EdgeshipError("this device's tokenizers library tokenizes the bundle's self-test text differently "
                                "from the build; install the tokenizers version the bundle was packed with.")

    def encode(self, texts: Sequence[str | bytes]) -> dict[str, np.ndarray]:
        if not 0 < len(texts) <= MAX_TEXTS:
            raise DataMismatchError(f"send 1 to {MAX_TEXTS} texts at a time, got {len(texts)}.")
        decoded = []
        for i, text in enumerate(texts):
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataMismatchError(f"text {i} is not UTF-8.") from None
            if not isinstance(text, str):
                raise DataMismatchError(f"text {i} is a {type(text).__name__}, not a string.")
            if len(text) > MAX_TEXT_CHARS:
                raise DataMismatchError(f"text {i} has {len(text)} characters; at most {MAX_TEXT_CHARS} are taken.")
            decoded.append(text)
        encodings = self.tokenizer.encode_batch(decoded)
        return {name: np.asarray([getattr(e, attr) for e in encodings], dtype=np.int64)
                for name, attr in self.fields.items()}


def top_classes(scores: np.ndarray, top: int) -> np.ndarray:
    """For each row of [batch, classes] scores, the indices of the ``top`` best classes, best first."""
    if scores.ndim != 2:
        raise DataMismatchError(f"classification needs [batch, classes] scores, got shape {list(scores.shape)}.")
    return np.argsort(-scores, axis=1, kind="stable")[:, :max(1, min(int(top), scores.shape[1]))]


def classify(scores: np.ndarray, labels: Sequence[str], top: int) -> np.ndarray:
    """The Open Inference Protocol's classification answer: for each row, the ``top`` classes as
    ``"score:index:label"`` strings (label omitted when the bundle has none), best first."""
    rows = [[f"{row[i]:g}:{i}" + (f":{labels[i]}" if i < len(labels) else "") for i in indices]
            for row, indices in zip(scores, top_classes(scores, top))]
    return np.array(rows, dtype=object)
