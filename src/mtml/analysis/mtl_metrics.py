"""Summary metrics of multi-task learning papers."""

from __future__ import annotations

from collections.abc import Mapping


def delta_mtl(multi: Mapping[str, float], single: Mapping[str, float],
              higher_is_better: Mapping[str, bool]) -> float:
    """Delta-MTL (Maninis et al. 2019), in %: the mean over tasks of the relative change of
    the multi-task model's metric against the single-task baseline's,
    100 / T sum_t (-1)^{l_t} (M_mt,t - M_st,t) / M_st,t, with l_t = 1 when lower is better.
    One metric per task; every task of `higher_is_better` must be in both results."""
    missing = sorted(t for t in higher_is_better if t not in multi or t not in single)
    if missing:
        raise ValueError(f"Delta-MTL needs every task in both results; missing: {', '.join(missing)}")
    changes = [(1 if up else -1) * (multi[t] - single[t]) / single[t] for t, up in higher_is_better.items()]
    return 100 * sum(changes) / len(changes)
