"""Knowledge distillation: the student learns from the float teacher (and labels, when given)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgeship.errors import ConfigError, InvalidModelError, PassNotApplicableError
from edgeship.model import Model
from edgeship.passes._torch import FitConfig, check_train_labels, export_like, fit, require_module, require_train, student_copy
from edgeship.passes.base import PassConfig, PassContext, register_pass

__all__ = ["Distill"]


def _load_student(spec: str) -> Any:
    """``MODULE:FUNCTION`` returning a torch module, or (module, example inputs)."""
    import torch

    from edgeship.core.usercode import load_callable

    func = load_callable(spec, "student", InvalidModelError)
    try:
        built = func()
    except Exception as exc:  # the user's builder failed; say so in one line
        raise InvalidModelError(f"cannot build the student {spec!r}: {type(exc).__name__}: {exc}.") from None
    student = built[0] if isinstance(built, tuple) else built
    if not isinstance(student, torch.nn.Module):
        raise InvalidModelError(f"student {spec!r} must return a torch.nn.Module, got {type(student).__name__}.")
    return student


@register_pass
@dataclass(frozen=True)
class Distill(PassConfig):
    """Train the student against the float teacher.

    With labels: loss = (1 - alpha) * CE(y, p_s) + alpha * T^2 * KL(p_t^T || p_s^T), where
    the temperature T softens both distributions. Without labels (embedding models): MSE or
    cosine loss against the teacher's outputs. The student is the incoming model (e.g. just
    pruned) or, with ``student="MODULE:FUNCTION"``, a smaller architecture of your own.
    Early stopping on a held-out slice of the training data; deterministic for a seed.
    """

    name = "distill"
    keeps_architecture = False
    epochs: int = 10
    alpha: float = 0.7
    temperature: float = 4.0
    lr: float = 1e-3
    batch_size: int = 64
    loss: Literal["auto", "kd", "ce", "mse", "cosine"] = "auto"
    patience: int = 3
    val_fraction: float = 0.1
    seed: int = 0
    student: str = ""

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"distill: epochs must be >= 1, got {self.epochs}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill: alpha must be in [0, 1], got {self.alpha}.")
        if self.temperature <= 0:
            raise ConfigError(f"distill: temperature must be > 0, got {self.temperature}.")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ConfigError(f"distill: val_fraction must be in [0, 0.5), got {self.val_fraction}.")

    def check(self, model: Model, ctx: PassContext) -> None:
        if model.teacher_module is None:
            require_module(model, self.name)
        if not self.student:
            require_module(model, self.name)
        data = require_train(ctx, self.name)
        check_train_labels(model, data)

    def apply(self, model: Model, ctx: PassContext) -> Model:
        import torch

        student = _load_student(self.student) if self.student else student_copy(model)
        if self.student:
            with torch.no_grad():
                probe = student.eval()(*model.export_inputs)
                teacher_out = model.teacher_module.eval()(*model.export_inputs)
            shape_s = getattr(probe, "shape", None)
            shape_t = getattr(teacher_out, "shape", None)
            if shape_s != shape_t:
                raise PassNotApplicableError(
                    f"distill: the student's output shape {tuple(shape_s or ())} differs from the teacher's "
                    f"{tuple(shape_t or ())}; the student must produce the same outputs."
                )
        cfg = FitConfig(self.epochs, self.lr, self.batch_size, self.alpha, self.temperature, self.loss,
                        self.patience, self.val_fraction, self.seed)
        stats = fit(model, student, ctx.train, cfg, ctx, label=self.name)
        ctx.say(f"{self.name}: {stats['epochs_run']} epochs, validation {stats['val_score']:.4f}")
        return export_like(model, student, ctx, self.name, self.config_dict())
