"""Task metrics. Each compares a candidate's outputs against labels or the float model's outputs."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgeship.errors import ConfigError, DataMismatchError

__all__ = ["Metric", "METRICS", "get_metric", "run_outputs"]

MetricFn = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], float]


@dataclass(frozen=True)
class Metric:
    """``fn(outputs, reference_outputs, labels) -> float``; ``drop`` is measured in its units."""

    name: str
    fn: MetricFn
    higher_is_better: bool = True
    needs_labels: bool = False

    def drop(self, baseline: float, candidate: float) -> float:
        """How much worse the candidate is (positive = worse)."""
        return baseline - candidate if self.higher_is_better else candidate - baseline


def _accuracy(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> float:
    if labels is None:
        raise DataMismatchError("metric 'accuracy' needs a 'labels' array in the evaluation data.")
    predictions = outputs.reshape(len(outputs), -1).argmax(axis=1)
    return float(np.mean(predictions == labels))


def _cosine(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> float:
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)))


def _mse(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> float:
    return float(np.mean((outputs.astype(np.float64) - reference.astype(np.float64)) ** 2))


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", _accuracy, needs_labels=True),
    "cosine": Metric("cosine", _cosine),
    "mse": Metric("mse", _mse, higher_is_better=False),
}


def get_metric(spec: Any, has_labels: bool) -> Metric:
    """A Metric from a name, ``module:function`` (higher is better), a callable, or None (auto)."""
    if isinstance(spec, Metric):
        return spec
    if spec is None:
        return METRICS["accuracy" if has_labels else "cosine"]
    if callable(spec):
        return Metric(getattr(spec, "__name__", "custom"), spec)
    text = str(spec)
    if text in METRICS:
        metric = METRICS[text]
        if metric.needs_labels and not has_labels:
            raise DataMismatchError(
                "metric 'accuracy' needs a 'labels' array in the evaluation data; add labels or use --metric cosine."
            )
        return metric
    if ":" in text:
        module_name, _, func_name = text.rpartition(":")
        try:
            fn = getattr(importlib.import_module(module_name), func_name)
        except Exception as exc:
            raise ConfigError(f"cannot load metric {text!r}: {type(exc).__name__}: {exc}.") from None
        return Metric(func_name, fn)
    raise ConfigError(
        f"unknown metric {text!r}; choose from {sorted(METRICS)} or give MODULE:FUNCTION "
        "taking (outputs, reference_outputs, labels) and returning a float, higher is better."
    )


def run_outputs(session: Any, batches: Any) -> np.ndarray:
    """The first output of ``session`` over all batches, concatenated on axis 0."""
    return np.concatenate([session.run(None, feeds)[0] for feeds in batches], axis=0)
