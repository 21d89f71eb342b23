"""Pruning: unstructured L1 magnitude (zeros in place) and structured (channels really removed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgeship.errors import ConfigError, PassNotApplicableError
from edgeship.model import Model
from edgeship.passes._torch import PRUNABLE, FitConfig, check_fine_tune, export_like, fit, require_module, student_copy
from edgeship.passes.base import PassConfig, PassContext, register_pass

__all__ = ["PruneUnstructured", "PruneStructured", "weight_sparsity"]


def _check_amount(name: str, amount: float) -> None:
    if not 0.0 < amount < 1.0:
        raise ConfigError(f"{name}: amount must be in (0, 1), got {amount}; e.g. 0.5 prunes half.")


def _attention_modules(module: Any) -> list[Any]:
    """BERT-style self-attention modules (query/key/value projections and a head count)."""
    return [
        m for m in module.modules()
        if all(hasattr(m, a) for a in ("query", "key", "value", "num_attention_heads", "attention_head_size"))
    ]


def _sum_outputs(out: Any) -> Any:
    out = out[0] if isinstance(out, (tuple, list)) else out
    return getattr(out, "last_hidden_state", out).sum()


def weight_sparsity(module: Any) -> float:
    """Fraction of exactly-zero weights over all Conv/Linear weight tensors."""
    zeros = total = 0
    for m in module.modules():
        if isinstance(m, PRUNABLE()):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros / total if total else 0.0


@register_pass
@dataclass(frozen=True)
class PruneUnstructured(PassConfig):
    """Zero the smallest-magnitude (L1) weights of Conv/Linear layers, globally or per layer.

    Optionally fine-tunes against the teacher with the zeros held in place. The zeros are
    made permanent. The file compresses well (see ``compressed_size_bytes``), but dense
    kernels do the same work: no speedup without a sparse runtime.
    """

    name = "prune_unstructured"
    keeps_architecture = False
    note = "unstructured sparsity: zeros in dense tensors compress well in transit, but dense kernels give no speedup"
    amount: float = 0.5
    scope: Literal["global", "layer"] = "global"
    fine_tune_epochs: int = 0
    lr: float = 1e-3
    seed: int = 0

    def validate(self) -> None:
        _check_amount(self.name, self.amount)
        if self.fine_tune_epochs < 0:
            raise ConfigError(f"{self.name}: fine_tune_epochs must be >= 0, got {self.fine_tune_epochs}.")

    def check(self, model: Model, ctx: PassContext) -> None:
        check_fine_tune(model, ctx, self.name, self.fine_tune_epochs)

    def apply(self, model: Model, ctx: PassContext) -> Model:
        import torch
        import torch.nn.utils.prune as prune

        student = student_copy(model)
        layers = [(m, "weight") for m in student.modules() if isinstance(m, PRUNABLE())]
        if not layers:
            raise PassNotApplicableError(f"{self.name}: the module has no Conv or Linear layers to prune.")
        if self.scope == "global":
            prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=self.amount)
        else:
            for m, attr in layers:
                prune.l1_unstructured(m, attr, amount=self.amount)
        for m, attr in layers:  # make permanent: weight = weight_orig * mask, no reparametrization
            prune.remove(m, attr)
        if self.fine_tune_epochs:  # fit() keeps the pruned zeros in place
            fit(model, student, ctx.train, FitConfig(epochs=self.fine_tune_epochs, lr=self.lr, seed=self.seed),
                ctx, label=self.name)
        with torch.no_grad():
            sparsity = weight_sparsity(student)
        ctx.say(f"{self.name}: sparsity {sparsity:.3f}")
        return export_like(model, student, ctx, self.name, self.config_dict())


@register_pass
@dataclass(frozen=True)
class PruneStructured(PassConfig):
    """Remove whole channels and neurons with Torch-Pruning, so tensors really shrink.

    Torch-Pruning's dependency graph keeps coupled layers (a conv, its BatchNorm, the next
    layer's inputs, residual adds) consistent. Give at most one of: ``amount`` (the share of
    channels removed per layer; 0.5 when none is given), ``target_macs`` (an absolute MACs
    budget per sample), or ``target_macs_ratio`` (a fraction of the current MACs). The final
    classifier keeps its outputs. Follow it with ``distill`` to recover accuracy.
    """

    name = "prune_structured"
    keeps_architecture = False
    amount: float | None = None
    target_macs: int = 0
    target_macs_ratio: float = 0.0
    importance: Literal["l1", "l2"] = "l2"
    global_pruning: bool = False
    round_to: int = 0

    DEFAULT_AMOUNT = 0.5

    def validate(self) -> None:
        given = [self.amount is not None, bool(self.target_macs), bool(self.target_macs_ratio)]
        if sum(given) > 1:
            raise ConfigError(
                f"{self.name}: give exactly one of amount (share of channels), target_macs or target_macs_ratio."
            )
        if self.amount is not None:
            _check_amount(self.name, self.amount)
        if self.target_macs_ratio and not 0.0 < self.target_macs_ratio < 1.0:
            raise ConfigError(f"{self.name}: target_macs_ratio must be in (0, 1), got {self.target_macs_ratio}.")
        if self.target_macs < 0:
            raise ConfigError(f"{self.name}: target_macs must be > 0, got {self.target_macs}.")

    def _macs(self, module: Any, args: tuple[Any, ...]) -> int:
        import torch_pruning as tp

        macs, _ = tp.utils.count_ops_and_params(module, args)
        return int(macs)

    def _example(self, model: Model) -> tuple[Any, ...]:
        return tuple(t[:1] for t in model.export_inputs)

    def check(self, model: Model, ctx: PassContext) -> None:
        module = require_module(model, self.name)
        if self.target_macs:
            current = self._macs(module, self._example(model))
            if self.target_macs >= current:
                raise ConfigError(
                    f"{self.name}: target_macs {self.target_macs:,} is at or above the model's {current:,} MACs; "
                    "give a smaller target."
                )

    def _pruner(self, student: Any, example: tuple[Any, ...], ratio: float, steps: int) -> Any:
        import torch
        import torch_pruning as tp

        attention = _attention_modules(student)
        extra: dict[str, Any] = {}
        if attention:
            # Transformers: remove whole attention heads and FFN neurons, keep the hidden size
            # (so embeddings, residuals and the output keep their shape).
            heads = {}
            for m in attention:
                for proj in (m.query, m.key, m.value):
                    heads[proj] = m.num_attention_heads
            prunable = set(heads) | {
                mod.intermediate.dense for mod in student.modules() if hasattr(mod, "intermediate")
            }
            ignored = [m for m in student.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
                       and m not in prunable]
            extra = dict(num_heads=heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio)
        else:
            ignored = [m for m in student.modules() if isinstance(m, torch.nn.Linear)][-1:]  # the classifier head
        return tp.pruner.MetaPruner(
            student,
            example[0] if len(example) == 1 else example,
            importance=tp.importance.MagnitudeImportance(p=1 if self.importance == "l1" else 2),
            pruning_ratio=ratio,
            iterative_steps=steps,
            ignored_layers=ignored,
            global_pruning=self.global_pruning,
            round_to=self.round_to or None,
            output_transform=_sum_outputs,
            **extra,
        )

    def apply(self, model: Model, ctx: PassContext) -> Model:
        student = student_copy(model)
        example = self._example(model)
        before = self._macs(student, example)
        try:
            if not (self.target_macs or self.target_macs_ratio):
                self._pruner(student, example, self.amount or self.DEFAULT_AMOUNT, 1).step()
            else:
                target = self.target_macs or int(before * self.target_macs_ratio)
                steps = 40
                pruner = self._pruner(student, example, 0.95, steps)
                for _ in range(steps):  # prune in small steps until the MACs budget is met
                    pruner.step()
                    if self._macs(student, example) <= target:
                        break
                else:
                    raise PassNotApplicableError(
                        f"{self.name}: could not reach {target:,} MACs (stopped at {self._macs(student, example):,})."
                    )
        except PassNotApplicableError:
            raise
        except Exception as exc:
            raise PassNotApplicableError(
                f"{self.name}: Torch-Pruning could not trace or prune this module ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})."
            ) from None
        for m in _attention_modules(student):  # heads were removed: tell the attention modules
            m.num_attention_heads = m.query.out_features // m.attention_head_size
            m.all_head_size = m.query.out_features
            if hasattr(m, "config"):
                m.config.num_attention_heads = m.num_attention_heads
        after = self._macs(student, example)
        ctx.say(f"{self.name}: MACs {before:,} -> {after:,} ({after / before:.2f})")
        return export_like(model, student.eval(), ctx, self.name, self.config_dict())
