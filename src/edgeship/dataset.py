"""User data: one array per model input (first axis = samples) and optional ``labels``.

Files are ``.npz`` (loaded with ``allow_pickle=False``) or, for Hugging Face text models,
``.txt`` with one sentence per line, tokenized with the model's own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgeship.core.signature import missing_and_extra, shape_fits
from edgeship.errors import DataMismatchError
from edgeship.model import Model

__all__ = ["Dataset", "load_data", "split"]


@dataclass(frozen=True)
class Dataset:
    """Arrays keyed by model input name, all with the same number of samples on axis 0."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        counts = {name: len(a) for name, a in self.inputs.items()}
        if self.labels is not None:
            counts["labels"] = len(self.labels)
        if not counts:
            raise DataMismatchError("the data holds no arrays; save one array per model input name.")
        if len(set(counts.values())) != 1:
            raise DataMismatchError(
                f"arrays disagree on the number of samples (axis 0): {counts}; give every array the same length."
            )

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, index: np.ndarray | slice) -> "Dataset":
        labels = None if self.labels is None else self.labels[index]
        return Dataset({k: v[index] for k, v in self.inputs.items()}, labels)

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), size):
            yield {k: v[start : start + size] for k, v in self.inputs.items()}

    def validate_for(self, model: Model) -> None:
        """Raise DataMismatchError unless names, dtypes and shapes fit the model's inputs."""
        expected = {s.name: s for s in model.inputs}
        missing, extra = missing_and_extra(expected, self.inputs)
        if missing:
            raise DataMismatchError(
                f"the data has no array for model input(s) {missing} (it has {sorted(self.inputs)}); "
                f"name the arrays after the model inputs {sorted(expected)}."
            )
        if extra:
            raise DataMismatchError(
                f"the data has array(s) {extra} that the model does not take; the model's inputs are "
                f"{sorted(expected)} (and an optional 'labels')."
            )
        for name, spec in expected.items():
            array = self.inputs[name]
            if str(array.dtype) != spec.dtype:
                raise DataMismatchError(
                    f"input {name!r} has dtype {array.dtype}, the model wants {spec.dtype}; "
                    f"cast it, e.g. array.astype(np.{spec.dtype})."
                )
            want = tuple(spec.shape)
            got = tuple(array.shape)
            if not shape_fits(want, got, free_first=True):
                raise DataMismatchError(
                    f"input {name!r} has shape {got}, the model wants {want} (axis 0 counts samples); "
                    "reshape the data to match."
                )
        if self.labels is not None:
            if self.labels.ndim != 1 or not np.issubdtype(self.labels.dtype, np.integer):
                raise DataMismatchError(
                    f"'labels' must be a 1-D integer array of class ids, got dtype {self.labels.dtype} "
                    f"and shape {self.labels.shape}."
                )


def _load_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except ValueError as exc:
        raise DataMismatchError(f"{str(path)!r} holds pickled objects, which edgeship never loads: {exc}") from None
    except Exception as exc:
        raise DataMismatchError(f"{str(path)!r} is not a readable .npz file ({type(exc).__name__}).") from None
    labels = arrays.pop("labels", None)
    return Dataset(arrays, labels)


def _load_text(path: Path, model: Model, max_length: int) -> Dataset:
    if model.tokenizer_dir is None:
        raise DataMismatchError(
            f"{str(path)!r} is text, but the model has no tokenizer; text data needs a model imported "
            "from a Hugging Face directory. Otherwise give an .npz."
        )
    from transformers import AutoTokenizer

    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise DataMismatchError(f"{str(path)!r} has no sentences; write one sentence per line.")
    tokenizer = AutoTokenizer.from_pretrained(str(model.tokenizer_dir), local_files_only=True)
    encoded = tokenizer(lines, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    wanted = {s.name: s.dtype for s in model.inputs}
    return Dataset({k: encoded[k].astype(wanted[k]) for k in wanted if k in encoded})


def load_data(source: Any, model: Model, max_length: int = 64) -> Dataset:
    """A Dataset from an .npz/.txt path, a dict of arrays, or a Dataset; checked against ``model``."""
    if isinstance(source, Dataset):
        data = source
    elif isinstance(source, dict):
        arrays = {k: np.asarray(v) for k, v in source.items()}
        labels = arrays.pop("labels", None)
        data = Dataset(arrays, labels)
    else:
        path = Path(source)
        if not path.is_file():
            raise DataMismatchError(f"data file not found: {str(path)!r}; check the path.")
        if path.suffix.lower() == ".npz":
            data = _load_npz(path)
        elif path.suffix.lower() == ".txt":
            data = _load_text(path, model, max_length)
        else:
            raise DataMismatchError(
                f"data file {str(path)!r} must be .npz (arrays named after the model inputs) or .txt (one sentence per line)."
            )
    data.validate_for(model)
    return data


def split(data: Dataset, calibration_share: float = 0.5, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Disjoint (calibration, evaluation) sets from one Dataset, shuffled with ``seed``."""
    if len(data) < 2:
        raise DataMismatchError("need at least 2 samples to split into calibration and evaluation sets.")
    order = np.random.default_rng(seed).permutation(len(data))
    cut = min(max(1, int(len(data) * calibration_share)), len(data) - 1)
    return data.take(np.sort(order[:cut])), data.take(np.sort(order[cut:]))
