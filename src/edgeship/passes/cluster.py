"""Weight clustering: each layer's weights share k values (k-means), zeros kept as zeros."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.errors import ConfigError, PassNotApplicableError
from edgeship.model import Model
from edgeship.passes._torch import PRUNABLE, FitConfig, check_fine_tune, export_like, fit, student_copy
from edgeship.passes.base import PassConfig, PassContext, register_pass

__all__ = ["Cluster"]


@register_pass
@dataclass(frozen=True)
class Cluster(PassConfig):
    """Merge similar weights: per layer, k-means with ``k`` centroids (scikit-learn).

    Exact zeros (from pruning) stay zero and are not clustered. An optional fine-tune keeps
    every weight tied to its cluster: after each step a cluster's members are set to their
    mean, which is the centroid update with the members' summed gradients. The file
    compresses to about log2(k) bits a weight in transit (``compressed_size_bytes``).
    """

    name = "cluster"
    keeps_architecture = False
    note = "clustered weights are stored dense: the saving is in the compressed (transfer) size"
    k: int = 16
    fine_tune_epochs: int = 0
    lr: float = 5e-4
    seed: int = 0

    def validate(self) -> None:
        if not 2 <= self.k <= 256:
            raise ConfigError(f"cluster: k must be in [2, 256], got {self.k}.")
        if self.fine_tune_epochs < 0:
            raise ConfigError(f"cluster: fine_tune_epochs must be >= 0, got {self.fine_tune_epochs}.")

    def check(self, model: Model, ctx: PassContext) -> None:
        check_fine_tune(model, ctx, self.name, self.fine_tune_epochs)

    def apply(self, model: Model, ctx: PassContext) -> Model:
        import torch
        from sklearn.cluster import KMeans

        student = student_copy(model)
        layers = [m for m in student.modules() if isinstance(m, PRUNABLE())]
        if not layers:
            raise PassNotApplicableError("cluster: the module has no Conv or Linear layers.")
        groups: list[tuple[Any, list[Any]]] = []  # (weight, [member masks])
        with torch.no_grad():
            for layer in layers:
                w = layer.weight
                flat = w.detach().numpy().reshape(-1)
                nonzero = np.flatnonzero(flat)
                k = min(self.k, len(np.unique(flat[nonzero]))) if len(nonzero) else 0
                if k < 2:
                    continue
                km = KMeans(n_clusters=k, n_init=1, random_state=self.seed).fit(flat[nonzero].reshape(-1, 1))
                clustered = np.zeros_like(flat)
                clustered[nonzero] = km.cluster_centers_[km.labels_, 0]
                w.copy_(torch.from_numpy(clustered.reshape(w.shape)))
                members = []
                for c in range(k):
                    mask = np.zeros(flat.shape, dtype=bool)
                    mask[nonzero[km.labels_ == c]] = True
                    members.append(torch.from_numpy(mask.reshape(w.shape)))
                groups.append((w, members))
        if self.fine_tune_epochs:

            def tie_to_clusters() -> None:
                for weight, members in groups:
                    shared = torch.zeros_like(weight)
                    for mask in members:
                        shared[mask] = weight[mask].mean()
                    weight.copy_(shared)

            fit(model, student, ctx.train, FitConfig(epochs=self.fine_tune_epochs, lr=self.lr, seed=self.seed),
                ctx, after_step=tie_to_clusters, label=self.name)
        return export_like(model, student, ctx, self.name, self.config_dict())
