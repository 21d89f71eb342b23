"""Shared by the PyTorch-side passes: the module, re-export, and one training loop.

PyTorch passes need the module the ONNX file came from: models imported with
``from_torch``, ``MODULE:FUNCTION`` or a Hugging Face directory, before any ONNX pass.
They never modify the teacher: they work on a deep copy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgeship.errors import DataMismatchError, PassNotApplicableError
from edgeship.model import Model
from edgeship.passes.base import PassContext

__all__ = ["require_module", "require_train", "check_fine_tune", "student_copy", "export_like", "fit", "FitConfig", "PRUNABLE"]


def require_module(model: Model, pass_name: str) -> Any:
    if model.torch_module is None:
        why = (
            "it was loaded from a bare ONNX file, which has no PyTorch module to prune or train"
            if model.teacher_module is None
            else "an ONNX pass (quantization, fusion) ran before it; put PyTorch passes first in the recipe"
        )
        raise PassNotApplicableError(
            f"{pass_name} needs the PyTorch module, but {why}. Import the model with "
            "edgeship.from_torch, MODULE:FUNCTION, or a Hugging Face directory."
        )
    return model.torch_module


def check_fine_tune(model: Model, ctx: PassContext, pass_name: str, epochs: int) -> None:
    """For passes with an optional fine-tune: the module is needed, and data when epochs > 0."""
    require_module(model, pass_name)
    if epochs:
        require_train(ctx, pass_name)


def require_train(ctx: PassContext, pass_name: str) -> Any:
    if ctx.train is None or len(ctx.train) == 0:
        raise PassNotApplicableError(
            f"{pass_name} trains the model and needs training data; pass --train DATA (an .npz with the "
            "model inputs and 'labels') or train_data= in the API."
        )
    return ctx.train


def student_copy(model: Model) -> Any:
    """A deep copy of the model's module, in eval mode, that a pass may change freely."""
    return copy.deepcopy(model.torch_module).eval()


def PRUNABLE() -> tuple[type, ...]:  # noqa: N802 - a lazily built constant
    import torch

    return (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)


def export_like(model: Model, module: Any, ctx: PassContext, pass_name: str, config: dict[str, Any]) -> Model:
    """Export ``module`` with ``model``'s input/output names and dynamic axes; a new Model."""
    from edgeship.importers.torch_module import check_parity, export_onnx

    names_in = [s.name for s in model.inputs]
    names_out = [s.name for s in model.outputs]
    axes = {
        s.name: {i: str(d) for i, d in enumerate(s.shape) if not isinstance(d, int)}
        for s in [*model.inputs, *model.outputs]
    }
    path = ctx.output_path(pass_name)
    args = model.export_inputs
    export_onnx(module, args, path, names_in, names_out, {k: v for k, v in axes.items() if v})
    check_parity(module, args, path, names_in)
    return model.derive_from_module(module, path, pass_name, config)


def _tensors(model: Model, arrays: dict[str, np.ndarray]) -> list[Any]:
    import torch

    return [torch.from_numpy(np.ascontiguousarray(arrays[s.name])) for s in model.inputs]


def check_train_labels(model: Model, data: Any) -> None:
    """Labels must be class ids below the model's number of outputs."""
    if data.labels is None:
        return
    classes = model.outputs[0].shape[-1]
    if isinstance(classes, int) and (data.labels.min() < 0 or data.labels.max() >= classes):
        raise DataMismatchError(
            f"training labels range over [{data.labels.min()}, {data.labels.max()}], but the model has "
            f"{classes} outputs; labels must be class ids 0..{classes - 1}."
        )


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    alpha: float = 0.7
    temperature: float = 4.0
    loss: str = "auto"  # auto | kd | ce | mse | cosine
    patience: int = 3
    val_fraction: float = 0.1
    seed: int = 0


def _first(out: Any) -> Any:
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, "last_hidden_state", out)


def fit(
    model: Model,
    student: Any,
    data: Any,
    cfg: FitConfig,
    ctx: PassContext,
    after_step: Callable[[], None] | None = None,
    label: str = "training",
) -> dict[str, float]:
    """Train ``student`` against ``model.teacher_module`` (and labels, when given).

    Loss with labels: (1 - alpha) * CE(y, p_s) + alpha * T^2 * KL(p_t^T || p_s^T).
    Without labels: MSE or 1 - cosine against the teacher's outputs. Early stopping on a
    held-out ``val_fraction`` of the training data (accuracy, or cosine to the teacher);
    the best epoch's weights are kept. Deterministic for a seed and thread count.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    teacher = model.teacher_module.eval()
    loss_kind = cfg.loss if cfg.loss != "auto" else ("kd" if data.labels is not None else "mse")
    if loss_kind in ("kd", "ce") and data.labels is None:
        raise DataMismatchError(f"loss {loss_kind!r} needs 'labels' in the training data; use loss 'mse' or 'cosine'.")
    order = np.random.default_rng(cfg.seed).permutation(len(data))
    n_val = max(1, int(len(data) * cfg.val_fraction)) if len(data) >= 10 else 0
    val, train = data.take(np.sort(order[:n_val])), data.take(np.sort(order[n_val:]))
    x_train, x_val = _tensors(model, train.inputs), _tensors(model, val.inputs)
    y_train = None if train.labels is None else torch.from_numpy(train.labels)
    with torch.no_grad():
        t_train = torch.cat([_first(teacher(*[x[i : i + 256] for x in x_train])) for i in range(0, len(train), 256)])
        t_val = _first(teacher(*x_val)) if n_val else None

    def val_score() -> tuple[float, float]:
        """(metric, -loss) on the held-out slice: accuracy or cosine first, loss breaks ties."""
        if not n_val:
            return (0.0, 0.0)
        with torch.no_grad():
            out = _first(student.eval()(*x_val))
            if val.labels is not None:
                labels = torch.from_numpy(val.labels)
                return (float((out.argmax(-1) == labels).float().mean()), -float(F.cross_entropy(out, labels)))
            cos = float(F.cosine_similarity(out.flatten(1), t_val.flatten(1)).mean())
            return (cos, -float(F.mse_loss(out, t_val)))

    def loss_fn(out: Any, idx: Any) -> Any:
        target = t_train[idx]
        if loss_kind == "mse":
            return F.mse_loss(out, target)
        if loss_kind == "cosine":
            return (1 - F.cosine_similarity(out.flatten(1), target.flatten(1))).mean()
        ce = F.cross_entropy(out, y_train[idx])
        if loss_kind == "ce":
            return ce
        t = cfg.temperature
        kd = F.kl_div(F.log_softmax(out / t, -1), F.log_softmax(target / t, -1), log_target=True,
                      reduction="batchmean") * t * t
        return (1 - cfg.alpha) * ce + cfg.alpha * kd

    # sparsity-preserving: weights that are exactly zero (pruned) stay zero while training
    masks = [
        (m.weight, (m.weight != 0).to(m.weight.dtype))
        for m in student.modules()
        if isinstance(m, PRUNABLE()) and float((m.weight == 0).float().mean()) > 0.01
    ]

    def keep_zeros_then(user_hook: Callable[[], None] | None) -> None:
        for weight, mask in masks:
            weight.mul_(mask)
        if user_hook is not None:
            user_hook()

    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    steps_per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(cfg.seed)
    best_score, best_state, stale, last_loss = val_score(), copy.deepcopy(student.state_dict()), 0, float("nan")
    epochs_run = 0
    for epoch in range(cfg.epochs):
        student.train()
        for idx in torch.randperm(len(train), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss = loss_fn(_first(student(*[x[idx] for x in x_train])), idx)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                keep_zeros_then(after_step)
            last_loss = float(loss.detach())
        epochs_run = epoch + 1
        score = val_score()
        ctx.say(f"{label}: epoch {epoch + 1}/{cfg.epochs}, loss {last_loss:.4f}, val {score[0]:.4f}")
        if score > best_score:
            best_score, best_state, stale = score, copy.deepcopy(student.state_dict()), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    student.load_state_dict(best_state)
    student.eval()
    return {"epochs_run": epochs_run, "val_score": best_score[0], "last_loss": last_loss}
