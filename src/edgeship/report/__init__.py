"""Reports: report.json, a self-contained report.html with the Pareto plot, and the models."""

from edgeship.report.writer import write_report

__all__ = ["write_report"]
