"""The part of ``report.json`` that other commands read (``pack`` reads an optimize folder).

``OptimizeResult.to_dict`` writes the report with these names and :meth:`ReportHead.from_file`
reads it back, so the writer and the reader cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeship.core.errors import InvalidModelError

__all__ = ["REPORT_TYPE", "REPORT_VERSION", "ModelInfo", "ReportHead"]

REPORT_TYPE = "edgeship.report"
REPORT_VERSION = 2


@dataclass(frozen=True)
class ModelInfo:
    """What a bundle needs to know about the optimized model beyond its graph."""

    task: str | None = None
    labels: tuple[str, ...] = ()
    tokenizer_dir: str | None = None  # a Hugging Face directory whose tokenizer the model was evaluated with
    text_max_length: int | None = None  # tokens per text in the evaluation

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelInfo":
        return cls(data.get("task"), tuple(str(x) for x in data.get("labels") or ()), data.get("tokenizer_dir"),
                   data.get("text_max_length"))


@dataclass(frozen=True)
class ReportHead:
    """The source model, the chosen candidate's recipe, lineage and metrics, and the model's info."""

    model: str
    best: str | None
    lineage: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    model_info: ModelInfo = ModelInfo()

    @classmethod
    def from_file(cls, path: Path) -> "ReportHead":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidModelError(f"cannot read the report {str(path)!r}: {exc}.") from None
        if not isinstance(data, dict) or data.get("type") != REPORT_TYPE:
            raise InvalidModelError(f"{str(path)!r} is not an edgeship report.")
        if int(data.get("version", 0)) != REPORT_VERSION:
            raise InvalidModelError(f"{str(path)!r} is report version {data.get('version')}; this edgeship reads "
                                    f"version {REPORT_VERSION}: run optimize again.")
        chosen = next((c for c in data.get("candidates", []) if c.get("recipe") == data.get("best")), {})
        return cls(str(data.get("model")), data.get("best"), chosen.get("lineage", []), chosen.get("metrics", {}),
                   ModelInfo.from_dict(data.get("model_info") or {}))
