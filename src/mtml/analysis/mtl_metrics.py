"""Summary metrics of multi-task learning papers."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def delta_mtl(multi: Mapping[str, float], single: Mapping[str, float],
              higher_is_better: Mapping[str, bool]) -> float:
    """Delta-MTL (Maninis et al. 2019), in %: the mean over tasks of the relative change of
    the multi-task model's metric against the single-task baseline's,
    100 / T sum_t (-1)^{l_t} (M_mt,t - M_st,t) / M_st,t, with l_t = 1 when lower is better.
    One metric per task; every task of `higher_is_better` must be in both results. Arrays of
    metrics (bootstrap replicates) give an array of Delta-MTLs."""
    missing = sorted(t for t in higher_is_better if t not in multi or t not in single)
    if missing:
        raise ValueError(f"Delta-MTL needs every task in both results; missing: {', '.join(missing)}")
    changes = [(1 if up else -1) * (multi[t] - single[t]) / single[t] for t, up in higher_is_better.items()]
    return 100 * sum(changes) / len(changes)


def delta_mtl_interval(multi: Mapping[str, np.ndarray], single: Mapping[str, np.ndarray],
                       higher_is_better: Mapping[str, bool], rng: np.random.Generator, resamples: int = 2000,
                       alpha: float = 0.05, interval: str = "expanded") -> dict | None:
    """Delta-MTL of the grand means with a 95% CI over training seeds and test subtasks.

    multi[t], single[t]: task t's per-subtask metric [seeds, subtasks] of the two methods, rows
    the same training seeds and columns the same subtasks (the methods are paired). The
    hierarchical bootstrap of `mtml.analysis.compare` resamples seeds (one draw for every task
    and both methods: the same trained models), then per task its subtasks (one draw for both
    methods), and recomputes Delta-MTL from the resampled per-task means of both methods. The
    seed rescaling and the t-expansion of `compare.combined_interval` use the variance
    components of Delta-MTL's linearisation, per task and cell
    z_t = 100 (-1)^{l_t} / T (x_mt,t / M_st,t - M_mt,t x_st,t / M_st,t^2).

    Returns None when a baseline mean is 0 (no relative change); ci_low, ci_high and p are
    None when a resample's baseline mean is 0 (the ratio has no finite interval)."""
    from mtml.analysis.compare import (
        interval_from_replicates,
        joint_hierarchical_bootstrap,
        variance_components_of_sum,
    )

    tasks = list(higher_is_better)
    xm = {t: np.asarray(multi[t], dtype=np.float64) for t in tasks}
    xs = {t: np.asarray(single[t], dtype=np.float64) for t in tasks}
    S = xm[tasks[0]].shape[0]
    for t in tasks:
        if xm[t].shape != xs[t].shape or xm[t].shape[0] != S or xm[t].shape[1] < 2:
            raise ValueError(f"task {t}: both methods need [seeds, >= 2 subtasks] matrices on the same "
                             f"seeds and subtasks; got {xm[t].shape} and {xs[t].shape}")
    mm = {t: float(xm[t].mean()) for t in tasks}
    ms = {t: float(xs[t].mean()) for t in tasks}
    if any(ms[t] == 0 for t in tasks):
        return None
    estimate = float(delta_mtl(mm, ms, higher_is_better))
    z = [100 * (1 if higher_is_better[t] else -1) / len(tasks) * (xm[t] / ms[t] - mm[t] * xs[t] / ms[t] ** 2)
         for t in tasks]
    v_seed, _, df = variance_components_of_sum(z)
    k = None
    if S > 1:
        seed_sums = sum(x.mean(axis=1) for x in z)
        raw = float(((seed_sums - seed_sums.mean()) ** 2).sum()) / S ** 2  # raw seed part of the bootstrap
        k = math.sqrt(v_seed / raw) if raw > 0 else 0.0
    reps = joint_hierarchical_bootstrap([np.stack([xm[t], xs[t]]) for t in tasks], rng, resamples, k)
    out = {"estimate": estimate, "ci_low": None, "ci_high": None, "p": None, "se": None, "df": df,
           "seeds": S, "subtasks": {t: int(xm[t].shape[1]) for t in tasks}}
    if any((r[1] == 0).any() for r in reps):
        return out
    d = delta_mtl({t: r[0] for t, r in zip(tasks, reps)}, {t: r[1] for t, r in zip(tasks, reps)}, higher_is_better)
    ci = interval_from_replicates(estimate, d, df, alpha, interval)
    return {**out, **{k: ci[k] for k in ("ci_low", "ci_high", "p", "se")}}
