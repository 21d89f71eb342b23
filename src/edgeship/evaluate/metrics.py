"""Task metrics. Each compares a candidate's outputs against labels or the float model's outputs.

A model may have several outputs (a scikit-learn classifier converted by skl2onnx returns
``label`` and then ``probabilities``), so a metric reads a chosen output, never blindly the
first. ``accuracy`` reads the output named by ``output=`` (``--output``), or the one output
that is unambiguous: the only output, else the only integer label output, else the only float
output whose last axis is the class count. ``cosine`` and ``mse`` compare every float output
(each sample's outputs joined), or the named one. Otherwise the metric refuses with the list
of outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from edgeship.errors import ConfigError, DataMismatchError

__all__ = ["Metric", "METRICS", "get_metric", "run_outputs", "Outputs"]

Outputs = dict[str, np.ndarray]
MetricFn = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], float]


def _accuracy(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> float:
    if labels is None:
        raise DataMismatchError("metric 'accuracy' needs a 'labels' array in the evaluation data.")
    flat = outputs.reshape(len(outputs), -1)
    if np.issubdtype(flat.dtype, np.integer) or flat.dtype == np.bool_:
        if flat.shape[1] != 1:
            raise DataMismatchError(f"an integer output read as labels must hold one label per sample, "
                                    f"got {flat.shape[1]} values per sample.")
        predictions = flat[:, 0]
    else:
        predictions = flat.argmax(axis=1)
    return float(np.mean(predictions == labels))


def _cosine(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> float:
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)))


def _mse(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> float:
    return float(np.mean((outputs.astype(np.float64) - reference.astype(np.float64)) ** 2))


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def _describe(outputs: Outputs) -> str:
    return ", ".join(f"{k} ({v.dtype}, shape {list(v.shape)})" for k, v in outputs.items())


@dataclass(frozen=True)
class Metric:
    """``fn(outputs, reference_outputs, labels) -> float`` on the output(s) it reads.

    ``output`` is the output read; None with ``every_output`` joins every float output per
    sample (cosine, mse); None otherwise means "not chosen yet" (see :meth:`resolve`).
    ``drop`` is measured in the metric's units.
    """

    name: str
    fn: MetricFn
    higher_is_better: bool = True
    needs_labels: bool = False
    output: str | None = None
    every_output: bool = False

    def drop(self, baseline: float, candidate: float) -> float:
        """How much worse the candidate is (positive = worse)."""
        return baseline - candidate if self.higher_is_better else candidate - baseline

    def resolve(self, outputs: Outputs, labels: np.ndarray | None, skipped: list[str] | None = None) -> "Metric":
        """This metric with its output chosen, from the float model's outputs on a few samples.

        ``skipped`` names outputs that are not tensors (such as skl2onnx's zipmap), which no metric reads.
        """
        listing = _describe(outputs) + (f"; not tensors: {', '.join(skipped)}" if skipped else "")
        if self.output is not None:
            if self.output not in outputs:
                raise ConfigError(f"--output {self.output!r} is not a tensor output of the model; its outputs are: "
                                  f"{listing}.")
            return self
        if self.every_output:
            if not any(_is_float(v) for v in outputs.values()):
                raise ConfigError(f"metric {self.name!r} compares float outputs, and the model has none: {listing}; "
                                  "choose another metric.")
            return self
        return replace(self, output=self._auto_output(outputs, labels, listing))

    def _auto_output(self, outputs: Outputs, labels: np.ndarray | None, listing: str) -> str:
        if len(outputs) == 1:
            return next(iter(outputs))
        if self.needs_labels and labels is not None:
            label_outputs = [k for k, v in outputs.items()
                             if (np.issubdtype(v.dtype, np.integer)) and v.reshape(len(v), -1).shape[1] == 1]
            if len(label_outputs) == 1:
                return label_outputs[0]
            classes = int(labels.max()) + 1 if len(labels) else 0
            scores = [k for k, v in outputs.items() if _is_float(v) and v.ndim >= 2 and v.shape[-1] == classes]
            if not label_outputs and len(scores) == 1:
                return scores[0]
        raise ConfigError(f"metric {self.name!r} cannot tell which output to read: the model has {listing}; "
                          "name one with --output NAME (output= in the API).")

    def select(self, outputs: Outputs) -> np.ndarray:
        """The array this metric reads: the chosen output, or every float output joined per sample."""
        if self.output is not None:
            return outputs[self.output]
        if not self.every_output:
            raise ConfigError(f"metric {self.name!r} has no output chosen; call resolve() first.")
        parts = [v.reshape(len(v), -1) for v in outputs.values() if _is_float(v)]
        return np.concatenate(parts, axis=1)

    def score(self, outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        return float(self.fn(self.select(outputs), self.select(reference), labels))


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", _accuracy, needs_labels=True),
    "cosine": Metric("cosine", _cosine, every_output=True),
    "mse": Metric("mse", _mse, higher_is_better=False, every_output=True),
}


def get_metric(spec: Any, has_labels: bool, output: str | None = None) -> Metric:
    """A Metric from a name, ``module:function`` (higher is better), a callable, or None (auto),
    reading ``output`` (None: see the module docstring)."""
    if isinstance(spec, Metric):
        metric = spec
    elif spec is None:
        metric = METRICS["accuracy" if has_labels else "cosine"]
    elif callable(spec):
        metric = Metric(getattr(spec, "__name__", "custom"), spec)
    elif str(spec) in METRICS:
        metric = METRICS[str(spec)]
        if metric.needs_labels and not has_labels:
            raise DataMismatchError(
                "metric 'accuracy' needs a 'labels' array in the evaluation data; add labels or use --metric cosine."
            )
    elif ":" in str(spec):
        from edgeship.core.usercode import load_callable

        metric = Metric(str(spec).rpartition(":")[2], load_callable(str(spec), "metric"))
    else:
        raise ConfigError(
            f"unknown metric {spec!r}; choose from {sorted(METRICS)} or give MODULE:FUNCTION "
            "taking (outputs, reference_outputs, labels) and returning a float, higher is better."
        )
    return replace(metric, output=output, every_output=metric.every_output and output is None) if output else metric


def run_outputs(session: Any, batches: Any) -> Outputs:
    """Every tensor output of ``session`` over all batches, concatenated on axis 0, by name.

    Outputs that are not tensors (sequences of maps) are left out: see :func:`non_tensor_outputs`.
    """
    names = [o.name for o in session.get_outputs() if o.type.startswith("tensor(")]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feeds in batches:
        for name, value in zip(names, session.run(names, feeds)):
            parts[name].append(np.asarray(value).reshape(-1, 1) if np.ndim(value) == 0 else value)
    return {n: np.concatenate(p, axis=0) for n, p in parts.items()}


def non_tensor_outputs(session: Any) -> list[str]:
    """Outputs that are not tensors, with their types (e.g. ``output_probability (seq(map(int64,tensor(float))))``)."""
    return [f"{o.name} ({o.type})" for o in session.get_outputs() if not o.type.startswith("tensor(")]
