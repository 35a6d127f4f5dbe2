"""High-level tasks of multi-task meta-learning: what a head predicts, its loss and metrics.

A *high-level task* (classification, depth, surface normals, vanishing points) is split into
*subtasks*: N-way K-shot scene classification problems (disjoint classes at meta-test), and
per-environment regression problems for the pixel and vector tasks (disjoint environments
at meta-test: domain adaptation from a few labelled images of the new environment).

Metrics per subtask (query set): classification accuracy; for the other tasks the MSE in the
label's own units, the paper's "Acc" (`paper_acc`: the share of outputs within
PAPER_ACC_TOLERANCE = 1e-3 of the label, every output number on its own: a depth pixel, a
normal's component, a vanishing point's homogeneous coordinate, in the label's units) and
ours (`accuracy`), the share of outputs within a threshold:
- depth: a pixel counts when max(pred/true, true/pred) < threshold (delta, default 1.25),
- normals: a pixel counts when the angle to the true normal is < threshold degrees (22.5),
- vanishing_point: a point counts when the angle between predicted and true homogeneous
  vectors (sign-free: a vanishing point is a line direction) is < threshold degrees (5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from mtml.errors import UserError

PAPER_ACC_TOLERANCE = 1e-3  # Lekkala & Itti's "Acc": |output - label| within this, label units


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str           # classification | dense (per-pixel map) | vector
    channels: int       # output maps (dense) or numbers (vector); classification: 0 (= ways)
    extra: str | None   # prepared-dataset extras array holding the target
    scale: float        # loss units = stored value * scale (keeps every loss near 1)
    inner_lr: float     # default inner-loop learning rate of its head
    threshold: float    # default "Acc" threshold (see module docstring)
    unit: str           # unit of the reported MSE

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.kind == "classification":
            return F.cross_entropy(pred, target)
        return F.mse_loss(pred, target)

    def metrics(self, pred: Tensor, target: Tensor, threshold: float) -> dict[str, float]:
        """Per-subtask metrics of query predictions (loss units in, label units out)."""
        if self.kind == "classification":
            return {"accuracy": 100 * float((pred.argmax(-1) == target).float().mean())}
        pred, target = pred / self.scale, target / self.scale
        mse = float(F.mse_loss(pred, target))
        if self.name == "depth":
            ratio = torch.maximum(pred.clamp_min(1e-3) / target, target / pred.clamp_min(1e-3))
            within = ratio < threshold
        elif self.name == "normals":
            cos = (F.normalize(pred, dim=1) * target).sum(1)
            within = torch.rad2deg(torch.acos(cos.clamp(-1, 1))) < threshold
        else:  # vanishing points: 3 unit homogeneous vectors per image, sign-free
            p, t = F.normalize(pred.view(-1, 3, 3), dim=-1), target.view(-1, 3, 3)
            within = torch.rad2deg(torch.acos((p * t).sum(-1).abs().clamp(max=1))) < threshold
        paper_acc = 100 * float(((pred - target).abs() < PAPER_ACC_TOLERANCE).float().mean())
        return {"mse": mse, "accuracy": 100 * float(within.float().mean()), "paper_acc": paper_acc}

    def threshold_label(self, threshold: float) -> str:
        """What `accuracy` counts, as a column name (classification: query accuracy)."""
        if self.kind == "classification":
            return "accuracy"
        return f"delta<{threshold:g}" if self.name == "depth" else f"<{threshold:g}deg"


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    # Inner learning rates suit the default 32x32 images (128-dim embeddings at 32 filters);
    # tiny embeddings (e.g. 16x16 images, 8 filters) take larger ones, such as 0.4.
    TaskSpec("classification", "classification", 0, None, 1.0, 0.05, 0.0, ""),
    TaskSpec("depth", "dense", 1, "depth", 0.25, 0.1, 1.25, "m^2"),
    TaskSpec("normals", "dense", 3, "normals", 1.0, 0.1, 22.5, "(unit normal)^2"),
    TaskSpec("vanishing_point", "vector", 9, "vp", 1.0, 0.02, 5.0, "(unit homogeneous vector)^2"),
)}


def task_specs(names, where: str) -> list[TaskSpec]:
    """TaskSpecs for names from params; `where` is the params key for the error message."""
    if not isinstance(names, list | tuple) or not names:
        raise UserError(f"params key '{where}' must be a non-empty list of tasks; allowed: {', '.join(TASKS)}")
    for name in names:
        if name not in TASKS:
            raise UserError(f"params key '{where}' names task {name!r}; allowed: {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise UserError(f"params key '{where}' lists a task twice: {names}")
    return [TASKS[n] for n in names]
