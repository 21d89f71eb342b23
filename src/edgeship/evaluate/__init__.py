"""Measure a model: task metric, latency, peak memory, size, params and MACs."""

from edgeship.evaluate.latency import measure_latencies, measure_latency
from edgeship.evaluate.memory import measure_peak_memory
from edgeship.evaluate.metrics import METRICS, Metric, get_metric, run_outputs

__all__ = ["METRICS", "Metric", "get_metric", "run_outputs", "measure_latency", "measure_latencies", "measure_peak_memory"]
