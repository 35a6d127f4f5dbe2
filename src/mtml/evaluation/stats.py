"""Confidence intervals and the NIL metric."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mtml.methods.metric import prototypes


def mean_ci95(values) -> tuple[float, float]:
    """Mean and the half-width of the normal-approximation 95% CI over episodes."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan"), float("nan")
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(len(v)))


def nil_logits(support: Tensor, support_y: Tensor, query: Tensor, ways: int) -> Tensor:
    """No-head classification (Raghu et al.): cosine similarity of each query embedding to
    the mean support embedding of each class."""
    protos = prototypes(support, support_y, ways)
    return torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(protos, dim=-1).T
