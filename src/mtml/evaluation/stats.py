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


NIL_MODES = ("means", "samples")


def nil_logits(support: Tensor, support_y: Tensor, query: Tensor, ways: int, mode: str = "means") -> Tensor:
    """No-head classification (Raghu et al., ICLR 2020, section 5.2). `means` (our default,
    params `evaluation.nil`): cosine similarity of each query embedding to the mean support
    embedding of each class. `samples` (the paper's): the query is compared with each support
    sample by cosine; the similarities, softmaxed over the support set, vote for their labels
    (Matching Networks' kernel; log-probabilities returned). Both rank classes alike at one
    shot: each class has one sample, its own mean."""
    if mode == "samples":
        from mtml.methods.matching import cosine_attention

        probs = cosine_attention(query, support, support_y, ways)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
    if mode != "means":
        raise ValueError(f"NIL mode {mode!r}; allowed: {', '.join(NIL_MODES)}")
    protos = prototypes(support, support_y, ways)
    return torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(protos, dim=-1).T
