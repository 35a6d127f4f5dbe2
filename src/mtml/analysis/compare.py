"""Seeds, paired comparisons and published numbers: the statistics behind a results table.

Every function takes what aggregation has: the concatenation of each run's `episodes.csv`
(columns split, dataset, [mode,] [task,] episode, accuracy, [nil_accuracy]) with experiment,
method and seed columns added. A run's results form a matrix of accuracies [seeds x episodes];
the test episodes are the same for every seed and method, so seeds and episodes are crossed,
not nested, and two methods are paired episode by episode. Formulas and how to read the
tables: docs/statistics.md.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from mtml.errors import UserError
from mtml.utils import atomic_path, write_text

ALL_SEEDS = "all"
ALL_MODES = "all"
VERDICTS = ("better", "worse", "no detectable difference")
STATUSES = ("reproduced", "below", "above", "not measured")

# The `published:` block of a params file: experiment -> method -> split -> entry. Kept here,
# next to the code that reads it; the params schema (src/mtml/params.schema.yaml) holds the
# same fragment (a test checks that they are equal).
PUBLISHED_SCHEMA = {
    "type": "object",
    "description": ("published results to set next to ours (docs/statistics.md): experiment -> "
                    "method -> split (test | cross-domain) -> {accuracy, ci95, source: {paper, table}}"),
    "additionalProperties": {
        "type": "object",
        "description": "method name -> split -> published result",
        "additionalProperties": {
            "type": "object",
            "propertyNames": {"enum": ["test", "cross-domain"]},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["accuracy", "source"],
                "properties": {
                    "accuracy": {"type": "number", "minimum": 0, "maximum": 100,
                                 "description": "published mean test accuracy (%)"},
                    "ci95": {"type": "number", "minimum": 0,
                             "description": "published 95% CI half-width (accuracy points), if given"},
                    "nil_accuracy": {"type": "number", "minimum": 0, "maximum": 100,
                                     "description": "published no-head (NIL) accuracy (%), if given"},
                    "dataset": {"type": "string",
                                "description": "the evaluated dataset when the split has several "
                                               "(multimodal: `all` = test tasks of every mode)"},
                    "source": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["paper", "table"],
                        "properties": {"paper": {"type": "string"}, "table": {"type": "string"}},
                    },
                    "note": {"type": "string", "description": "how the published setting differs from ours"},
                },
            },
        },
    },
}


# ---------------------------------------------------------------- schemas

class SeedSummaryRows(pa.DataFrameModel):
    """One row per (experiment, method, split, dataset[, task]) and seed, plus one row with
    seed = "all" aggregating the seeds. Accuracies in %, CIs at 95%.

    - experiment, method, split, dataset: the run and the evaluated split; task (multi-task
      runs only): the high-level task.
    - seed: the training seed ("0", "1", ...) or "all" for the aggregated row.
    - seeds: seeds behind the row (1 on a per-seed row).
    - episodes: test episodes behind the row (per seed).
    - accuracy: mean accuracy; on the "all" row the mean of the seed means.
    - ci95: half-width of the normal-approximation CI over episodes (`mean_ci95`, as eval.json);
      on the "all" row over the per-episode accuracies averaged across seeds: it covers the
      choice of test episodes, not training variance.
    - seed_std: between-seed standard deviation of the seed means ("all" row with >= 2 seeds).
    - seed_ci95: half-width of the t-based CI over seed means, t(0.975, seeds-1) * std / sqrt(seeds)
      ("all" row with >= 2 seeds): training variance only.
    - ci_low, ci_high: the combined CI. Per-seed rows: accuracy -+ ci95. "all" row: the
      hierarchical bootstrap interval over seeds and episodes (docs/statistics.md).
    - df: degrees of freedom of the combined CI (Welch-Satterthwaite; "all" row only).
    - nil_accuracy, nil_ci95: the same mean and episode CI for no-head (NIL) accuracy, when the
      runs report it.
    """

    experiment: str
    method: str
    split: str
    dataset: str
    seed: str
    seeds: int = pa.Field(ge=1)
    episodes: int = pa.Field(ge=1)
    accuracy: float = pa.Field(ge=0, le=100)
    ci95: float = pa.Field(ge=0, nullable=True)
    seed_std: float = pa.Field(ge=0, nullable=True)
    seed_ci95: float = pa.Field(ge=0, nullable=True)
    ci_low: float = pa.Field(nullable=True)
    ci_high: float = pa.Field(nullable=True)
    df: float = pa.Field(gt=0, nullable=True)
    nil_accuracy: float | None = pa.Field(ge=0, le=100, nullable=True)
    nil_ci95: float | None = pa.Field(ge=0, nullable=True)

    class Config:
        coerce = True

    @pa.dataframe_check
    def ci_brackets_mean(cls, df: pd.DataFrame) -> pd.Series:
        ok = (df["ci_low"] <= df["accuracy"] + 1e-9) & (df["accuracy"] <= df["ci_high"] + 1e-9)
        return ok | df["ci_low"].isna()


class CompareRows(pa.DataFrameModel):
    """One row per compared pair in an experiment/split/dataset[/task]: `method` minus `versus`.

    - seeds, episodes: the seeds (paired by seed id) and test episodes both methods share.
    - difference: mean per-episode accuracy difference, method - versus (accuracy points).
    - ci_low, ci_high: 95% CI of the difference from the hierarchical bootstrap over seeds and
      episodes; df its Welch-Satterthwaite degrees of freedom.
    - p_combined: two-sided p of difference / bootstrap standard error against t(df): the test
      that accounts for training and episode variance. It drives the verdict.
    - p_t_episodes, p_wilcoxon: paired t-test and Wilcoxon signed-rank test over the per-episode
      differences averaged across seeds (they ignore training variance: docs/statistics.md).
    - p_t_seeds: paired t-test over seed-level means (>= 2 shared seeds, else empty).
    - *_holm: each p-value Holm-adjusted across all rows of the table.
    - verdict: better / worse (method vs versus) when p_combined_holm < alpha, else
      "no detectable difference".
    """

    experiment: str
    split: str
    dataset: str
    method: str
    versus: str
    seeds: int = pa.Field(ge=1)
    episodes: int = pa.Field(ge=2)
    difference: float = pa.Field(ge=-100, le=100)
    ci_low: float
    ci_high: float
    df: float = pa.Field(gt=0)
    p_combined: float = pa.Field(ge=0, le=1)
    p_t_episodes: float = pa.Field(ge=0, le=1)
    p_wilcoxon: float = pa.Field(ge=0, le=1)
    p_t_seeds: float = pa.Field(ge=0, le=1, nullable=True)
    p_combined_holm: float = pa.Field(ge=0, le=1)
    p_t_episodes_holm: float = pa.Field(ge=0, le=1)
    p_wilcoxon_holm: float = pa.Field(ge=0, le=1)
    p_t_seeds_holm: float = pa.Field(ge=0, le=1, nullable=True)
    verdict: str = pa.Field(isin=list(VERDICTS))

    class Config:
        coerce = True

    @pa.dataframe_check
    def ci_brackets_difference(cls, df: pd.DataFrame) -> pd.Series:
        return (df["ci_low"] <= df["difference"] + 1e-9) & (df["difference"] <= df["ci_high"] + 1e-9)


def _validate(model, frame: pd.DataFrame, what: str) -> pd.DataFrame:
    try:
        return model.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise UserError(f"{what} do not fit their schema ({model.__name__}): "
                        f"{err.failure_cases.head(5).to_dict('records')}") from None


# ---------------------------------------------------------------- core statistics

def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment; NaN entries are left out of the family and stay NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    order = np.argsort(p[ok], kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[ok][order]))
    res = np.empty(m)
    res[order] = adjusted
    out[ok] = res
    return out


def variance_components(x: np.ndarray) -> tuple[float, float, float]:
    """(v_seed, v_episode, df) for the grand mean of x [seeds S, episodes E], seeds and episodes
    crossed (two-way random effects, one value per cell). With the mean squares MS_S (seeds),
    MS_E (episodes) and MS_R (residual), the seed variance component is
    max(0, (MS_S - MS_R) / E): v_seed = that / S, v_episode = MS_E / (S E), and
    var(grand mean) = v_seed + v_episode; df is their Welch-Satterthwaite degrees of freedom.
    (Adding var(seed means)/S and var(episode means)/E instead counts the cell noise twice.)"""
    S, E = x.shape
    g = x.mean()
    m, c = x.mean(axis=1), x.mean(axis=0)
    ms_e = S * float(((c - g) ** 2).sum()) / (E - 1)
    v_ep = ms_e / (S * E)
    if S == 1:
        return 0.0, v_ep, float(E - 1)
    ms_s = E * float(((m - g) ** 2).sum()) / (S - 1)
    ms_r = float(((x - m[:, None] - c[None, :] + g) ** 2).sum()) / ((S - 1) * (E - 1))
    if ms_s <= ms_r:  # no detectable seed variance: the component is truncated at 0
        return 0.0, v_ep, float(E - 1)
    v_seed = (ms_s - ms_r) / (S * E)
    denom = ((ms_s / (S * E)) ** 2 / (S - 1) + (ms_r / (S * E)) ** 2 / ((S - 1) * (E - 1))
             + v_ep ** 2 / (E - 1))
    df = (v_seed + v_ep) ** 2 / denom if denom > 0 else math.inf
    return v_seed, v_ep, df


def draw_counts(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """How often each of n units is drawn [resamples, n] when n are drawn with replacement
    (multinomial counts)."""
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n)


def bootstrap_counts(rng: np.random.Generator, seeds: int, episodes: int, resamples: int):
    """How often each seed [resamples, seeds] and each episode [resamples, episodes] is drawn
    in each resample (drawing with replacement = multinomial counts)."""
    return draw_counts(rng, seeds, resamples), draw_counts(rng, episodes, resamples)


def hierarchical_bootstrap(x: np.ndarray, rng: np.random.Generator, resamples: int = 2000) -> np.ndarray:
    """Replicates of the grand mean of x [seeds, episodes]: resample seeds with replacement,
    then episodes with replacement, one episode draw for all chosen seeds (the test episodes are
    shared by every seed, so the two factors are crossed). Seed deviations from the grand mean
    are first rescaled so that the seed part of the bootstrap variance equals v_seed of
    `variance_components` (the adjustment of two-stage resampling in Davison & Hinkley 1997,
    sec. 3.8): resampled raw seed means would give (S-1)/S of var(seed means)/S, which also
    holds the cell noise that the episode draw adds again.

    A replicate is mean over the S x E drawn cells = c^T x w / (S E) with c, w the draw counts,
    one matrix product for all replicates (reference loop: tests/test_compare.py)."""
    x = np.asarray(x, dtype=np.float64)
    S, E = x.shape
    k = None
    if S > 1:
        m = x.mean(axis=1, keepdims=True)
        g = x.mean()
        raw = float(((m - g) ** 2).sum()) / S ** 2  # bootstrap variance of the raw seed part
        k = math.sqrt(variance_components(x)[0] / raw) if raw > 0 else 0.0
    return joint_hierarchical_bootstrap([x[None]], rng, resamples, k)[0][0]


def joint_hierarchical_bootstrap(blocks: list[np.ndarray], rng: np.random.Generator, resamples: int,
                                 seed_scale: float | None) -> list[np.ndarray]:
    """`hierarchical_bootstrap` of several matrices at once, for a statistic of their grand means
    (mtml.analysis.mtl_metrics.delta_mtl_interval). A block [K, seeds, episodes] holds K
    matrices on the same episodes (two methods on one task's subtasks): one episode draw per
    block, shared by its K matrices, so they stay paired; one seed draw shared by every block
    (the same trained models). Blocks may have different numbers of episodes, drawn
    independently. Each matrix's seed deviations from its grand mean are multiplied by
    `seed_scale` (None: left as they are), the caller's rescaling to the seed variance component
    of the statistic. Returns per block its replicates [K, resamples]."""
    blocks = [np.asarray(b, dtype=np.float64) for b in blocks]
    S = blocks[0].shape[1]
    if any(b.ndim != 3 or b.shape[1] != S for b in blocks):
        raise ValueError("every block must be [matrices, seeds, episodes] with the same seeds")
    if seed_scale is not None and S > 1:
        scaled = []
        for b in blocks:
            out = np.empty_like(b)
            for i, x in enumerate(b):
                m = x.mean(axis=1, keepdims=True)
                g = x.mean()
                out[i] = x - m + g + seed_scale * (m - g)
            scaled.append(out)
        blocks = scaled
    reps = [np.empty((len(b), resamples)) for b in blocks]
    E_all = sum(b.shape[2] for b in blocks)
    chunk = max(1, 2_000_000 // (S * E_all + E_all))  # caps the memory of one chunk of draws
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        c = draw_counts(rng, S, n)
        for b, out in zip(blocks, reps):
            E = b.shape[2]
            w = draw_counts(rng, E, n)
            for i, x in enumerate(b):
                out[i, start:start + n] = ((c @ x) * w).sum(axis=1) / (S * E)
    return reps


def variance_components_of_sum(mats: list[np.ndarray]) -> tuple[float, float, float]:
    """`variance_components` of the sum of the grand means of several matrices [seeds, E_t]
    with the same seeds (one trained model per seed) and independent episode sets (one per
    high-level task): with M_s = sum_t m_t,s the summed seed means,
    A = sum_s (M_s - mean M)^2 / (S - 1) and B = sum_t MS_R,t / E_t (the cell noise in A),
    v_seed = max(0, A - B) / S and v_episode = sum_t MS_E,t / (S E_t); df by
    Welch-Satterthwaite over A, every MS_R,t and every MS_E,t. With one matrix this is
    `variance_components` (kept as it is, so stored tables do not move; tests check the two
    agree)."""
    mats = [np.asarray(x, dtype=np.float64) for x in mats]
    S = mats[0].shape[0]
    v_ep, denom_ep, B, denom_r = 0.0, 0.0, 0.0, 0.0
    for x in mats:
        E = x.shape[1]
        g, m, c = x.mean(), x.mean(axis=1), x.mean(axis=0)
        v = S * float(((c - g) ** 2).sum()) / (E - 1) / (S * E)
        v_ep += v
        denom_ep += v ** 2 / (E - 1)
        if S > 1:
            ms_r = float(((x - m[:, None] - c[None, :] + g) ** 2).sum()) / ((S - 1) * (E - 1))
            B += ms_r / E
            denom_r += (ms_r / (S * E)) ** 2 / ((S - 1) * (E - 1))
    fallback = (0.0, v_ep, v_ep ** 2 / denom_ep if denom_ep > 0 else math.inf)
    if S == 1:
        return fallback
    M = sum(x.mean(axis=1) for x in mats)
    A = float(((M - M.mean()) ** 2).sum()) / (S - 1)
    if A <= B:  # no detectable seed variance: the component is truncated at 0
        return fallback
    v_seed = (A - B) / S
    denom = (A / S) ** 2 / (S - 1) + denom_r + denom_ep
    return v_seed, v_ep, (v_seed + v_ep) ** 2 / denom if denom > 0 else math.inf


def combined_interval(x: np.ndarray, rng: np.random.Generator, resamples: int = 2000,
                      alpha: float = 0.05, interval: str = "expanded", bounds=(0.0, 100.0)) -> dict:
    """Mean of x [seeds, episodes] with a CI covering training (seed) and episode variance.

    interval="percentile": the hierarchical bootstrap's percentile interval. "expanded"
    (default): that interval stretched about the mean by t(1-alpha/2, df) / z(1-alpha/2), df
    from `variance_components`: with 3 seeds the seed part has 2 degrees of freedom and a
    percentile interval covers less than 95% (tests/test_compare.py, docs/statistics.md); with
    one seed or many, df is large and the two agree. The interval is clipped to `bounds`, the
    range the mean can take (accuracy 0-100; -100-100 for differences): with 2 seeds df is near
    1 and t(0.975, 1) = 12.7 would reach far outside it."""
    g = float(np.mean(x))
    reps = hierarchical_bootstrap(x, rng, resamples)
    _, _, df = variance_components(np.asarray(x, dtype=np.float64))
    return interval_from_replicates(g, reps, df, alpha, interval, bounds)


def interval_from_replicates(g: float, reps: np.ndarray, df: float, alpha: float = 0.05,
                             interval: str = "expanded", bounds=(-math.inf, math.inf)) -> dict:
    """`combined_interval`'s CI and p from a point estimate g, its bootstrap replicates and the
    degrees of freedom of its variance."""
    from scipy import stats  # here, not at the top: every stage imports this module (params checks)
    if interval not in ("expanded", "percentile"):
        raise UserError(f"interval {interval!r} is unknown; allowed: expanded, percentile")
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    if interval == "expanded":
        k = stats.t.ppf(1 - alpha / 2, df) / stats.norm.ppf(1 - alpha / 2)
        lo, hi = g - k * (g - lo), g + k * (hi - g)
    se = float(reps.std(ddof=1))
    if se > 0:
        p = float(2 * stats.t.sf(abs(g) / se, df))
    else:
        p = 1.0 if g == 0 else 0.0
    lo, hi = max(min(lo, g), bounds[0]), min(max(hi, g), bounds[1])
    return {"mean": g, "ci_low": float(lo), "ci_high": float(hi), "se": se, "df": df, "p": p}


def _rng(seed: int, *key) -> np.random.Generator:
    """A generator per table row: results do not depend on the order rows are computed in."""
    return np.random.default_rng([seed, zlib.crc32("/".join(map(str, key)).encode())])


def _paired_p(a: np.ndarray, b: np.ndarray, test) -> float:
    d = a - b
    if np.ptp(d) <= 1e-9 * max(1.0, float(np.abs(d).max())):  # all-equal differences: zero variance,
        return 1.0 if abs(d[0]) <= 1e-9 else 0.0              # scipy's tests are undefined
    return float(test(a, b).pvalue)


def compare_pair(xa: np.ndarray, xb: np.ndarray, rng: np.random.Generator, resamples: int = 2000,
                 alpha: float = 0.05, interval: str = "expanded") -> dict:
    """The statistics of one comparison row (before Holm) from two [seeds x episodes] matrices
    whose rows are the same seeds and whose columns are the same episodes."""
    from scipy import stats  # here, not at the top: every stage imports this module (params checks)
    comb = combined_interval(xa - xb, rng, resamples, alpha, interval, bounds=(-100.0, 100.0))
    ea, eb = xa.mean(axis=0), xb.mean(axis=0)
    S, E = xa.shape
    return {"seeds": S, "episodes": E, "difference": comb["mean"], "ci_low": comb["ci_low"],
            "ci_high": comb["ci_high"], "df": comb["df"], "p_combined": comb["p"],
            "p_t_episodes": _paired_p(ea, eb, stats.ttest_rel),
            "p_wilcoxon": _paired_p(ea, eb, lambda u, v: stats.wilcoxon(u - v)),
            "p_t_seeds": _paired_p(xa.mean(axis=1), xb.mean(axis=1), stats.ttest_rel) if S > 1 else math.nan}


def verdicts(difference: np.ndarray, p_adjusted: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """better / worse where the adjusted p is below alpha (by the sign of the difference)."""
    significant = np.asarray(p_adjusted) < alpha
    d = np.asarray(difference)
    return np.where(significant & (d > 0), VERDICTS[0], np.where(significant & (d < 0), VERDICTS[1], VERDICTS[2]))


# ---------------------------------------------------------------- frames

BASE = ["experiment", "method", "split", "dataset"]


def _strata(frame: pd.DataFrame) -> list[str]:
    """Group columns besides the method: a multi-task run also splits by high-level task."""
    return ["experiment", "split", "dataset"] + (["task"] if "task" in frame else [])


def _prepare(per_episode: pd.DataFrame) -> pd.DataFrame:
    need = set(BASE) | {"seed", "episode", "accuracy"}
    missing = sorted(need - set(per_episode.columns))
    if missing:
        raise UserError(f"per-episode results lack column(s) {', '.join(missing)}; expected each run's "
                        "episodes.csv with experiment, method and seed columns added")
    df = per_episode.copy()
    df["seed"] = df["seed"].astype(str)
    for col in ("mode", "task"):
        if col in df:
            df[col] = df[col].fillna(-1 if col == "mode" else "")
    if df.duplicated(_strata(df) + ["method", "seed"] + _episode_key(df)).any():
        raise UserError("per-episode results hold an episode twice for one run and seed; "
                        "concatenate each run's episodes.csv once")
    return df


def _episode_key(frame: pd.DataFrame) -> list[str]:
    return ["episode"] + (["mode"] if "mode" in frame else [])


def pool_modes(per_episode: pd.DataFrame) -> pd.DataFrame:
    """Add dataset = "all" rows for multimodal runs (rows with a `mode`): the test episodes of
    every mode together, as eval.json's "all" row and the papers' tables report them."""
    if "mode" not in per_episode:
        return per_episode
    multi = per_episode[per_episode["mode"].notna() & (per_episode["dataset"] != ALL_MODES)]
    return pd.concat([per_episode, multi.assign(dataset=ALL_MODES)], ignore_index=True)


def _matrix(group: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """[seeds x episodes] for one method; only episodes every seed has."""
    key = _episode_key(group)
    return group.pivot(index="seed", columns=key, values=value).dropna(axis=1)


def seed_summary(per_episode: pd.DataFrame, resamples: int = 2000, seed: int = 0,
                 interval: str = "expanded") -> pd.DataFrame:
    """Per-seed rows and one aggregated row (seed = "all") per experiment/method/split/dataset.
    Columns: `SeedSummaryRows`."""
    from scipy import stats  # here, not at the top: every stage imports this module (params checks)
    df = _prepare(per_episode)
    has_nil = "nil_accuracy" in df and df["nil_accuracy"].notna().any()
    keys = _strata(df) + ["method"]
    rows = []
    for key, g in df.groupby(keys, sort=False):
        ident = dict(zip(keys, key))
        for s, gs in sorted(g.groupby("seed"), key=lambda sg: _seed_order(sg[0])):
            acc = gs["accuracy"].to_numpy(np.float64)
            mean, ci = _mean_ci95(acc)
            row = {**ident, "seed": s, "seeds": 1, "episodes": len(acc), "accuracy": mean, "ci95": ci,
                   "ci_low": mean - ci, "ci_high": mean + ci}
            nil = gs["nil_accuracy"].dropna().to_numpy(np.float64) if has_nil else []
            if len(nil):
                row["nil_accuracy"], row["nil_ci95"] = _mean_ci95(nil)
            rows.append(row)
        x = _matrix(g)
        S = len(x)
        if x.shape[1] < 2:
            raise UserError(f"run {'/'.join(map(str, key))} has fewer than 2 episodes shared by all its seeds")
        comb = combined_interval(x.to_numpy(), _rng(seed, *key), resamples, interval=interval)
        sm = x.to_numpy().mean(axis=1)  # seed means over the shared episodes (the CI's matrix)
        sd = float(sm.std(ddof=1)) if S > 1 else math.nan
        row = {**ident, "seed": ALL_SEEDS, "seeds": S, "episodes": x.shape[1], "accuracy": float(sm.mean()),
               "ci95": _mean_ci95(x.to_numpy().mean(axis=0))[1],
               "seed_std": sd,
               "seed_ci95": float(stats.t.ppf(0.975, S - 1) * sd / math.sqrt(S)) if S > 1 else math.nan,
               "ci_low": comb["ci_low"], "ci_high": comb["ci_high"], "df": comb["df"]}
        nil = _matrix(g, "nil_accuracy").to_numpy() if has_nil else np.empty((0, 0))
        if nil.size:  # (multi-task runs: dense tasks have no NIL accuracy)
            row["nil_accuracy"], row["nil_ci95"] = float(nil.mean(axis=1).mean()), _mean_ci95(nil.mean(axis=0))[1]
        rows.append(row)
    out = pd.DataFrame(rows)
    cols = BASE + [c for c in out.columns if c not in BASE]
    return _validate(SeedSummaryRows, out[cols], "seed-summary rows")


def _seed_order(seed: str):
    return (0, int(seed), "") if seed.isdigit() else (1, 0, seed)


def _mean_ci95(values: np.ndarray) -> tuple[float, float]:
    from mtml.evaluation.stats import mean_ci95  # torch-heavy module: imported when used

    return mean_ci95(values)


def paired_comparisons(per_episode: pd.DataFrame, reference: str | None = None, alpha: float = 0.05,
                       resamples: int = 2000, seed: int = 0, interval: str = "expanded",
                       pairs: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Paired comparisons on shared episodes and seeds: every pair of methods (in order of
    appearance, difference = earlier - later), every method against `reference`
    (difference = method - reference) or the planned `pairs` (method, versus), within each
    experiment/split/dataset[/task]. Columns: `CompareRows`; the verdict follows the
    Holm-adjusted p_combined (Holm over the pairs compared, so planned pairs lose less power)."""
    df = _prepare(per_episode)
    if reference is not None and reference not in set(df["method"]):
        raise UserError(f"params key 'reference' names method {reference!r}, which has no results; "
                        f"methods: {', '.join(dict.fromkeys(df['method']))}")
    if reference is not None and pairs:
        raise UserError("give either a reference method or planned comparison pairs, not both")
    if pairs:
        missing = sorted({m for p in pairs for m in p} - set(df["method"]))
        if missing:
            raise UserError(f"params key 'comparisons' names method(s) {', '.join(missing)} with no results; "
                            f"methods: {', '.join(dict.fromkeys(df['method']))}")
    strata = _strata(df)
    rows = []
    for key, g in df.groupby(strata, sort=False):
        methods = list(dict.fromkeys(g["method"]))
        mats = {m: _matrix(gm) for m, gm in g.groupby("method", sort=False)}
        if pairs:  # planned pairs; a stratum may lack some methods (e.g. one experiment's)
            chosen = [(a, b) for a, b in pairs if a in mats and b in mats]
        elif reference is None:
            chosen = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
        elif reference in mats:
            chosen = [(m, reference) for m in methods if m != reference]
        else:
            continue
        for a, b in chosen:
            seeds = mats[a].index.intersection(mats[b].index)
            eps = mats[a].columns.intersection(mats[b].columns)
            where = "/".join(map(str, key)) + f" {a} vs {b}"
            if len(seeds) == 0:
                raise UserError(f"{where}: the two methods share no training seed; run them with the same `seeds`")
            if len(eps) < 2:
                raise UserError(f"{where}: fewer than 2 shared test episodes; evaluate both on the same manifests")
            xa = mats[a].loc[seeds, eps].to_numpy(np.float64)
            xb = mats[b].loc[seeds, eps].to_numpy(np.float64)
            rows.append({**dict(zip(strata, key)), "method": a, "versus": b,
                         **compare_pair(xa, xb, _rng(seed, *key, a, b), resamples, alpha, interval)})
    cols = list(CompareRows.to_schema().columns)
    if "task" in strata:
        cols.insert(3, "task")
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows)
    for p in ("p_combined", "p_t_episodes", "p_wilcoxon", "p_t_seeds"):
        out[f"{p}_holm"] = holm(out[p].to_numpy())
    out["verdict"] = verdicts(out["difference"].to_numpy(), out["p_combined_holm"].to_numpy(), alpha)
    return _validate(CompareRows, out[cols], "comparison rows")


# ---------------------------------------------------------------- published numbers

def check_published(params: dict) -> None:
    """Every experiment and method named in `published:` must exist in params."""
    for exp, methods in (params.get("published") or {}).items():
        if exp not in params["experiments"]:
            raise UserError(f"params key 'published.{exp}' names no experiment; defined: "
                            f"{', '.join(params['experiments'])}")
        for meth in methods:
            if meth not in params["methods"]:
                raise UserError(f"params key 'published.{exp}.{meth}' names no method; defined: "
                                f"{', '.join(params['methods'])}")


def published_comparison(aggregated_rows: pd.DataFrame, published: dict) -> pd.DataFrame:
    """Measured (the seed = "all" rows of `seed_summary`) next to published numbers.

    status: "reproduced" when the published accuracy lies inside our combined CI, "below" /
    "above" when it lies below / above it (so "below" = we measure more than the paper),
    "not measured" when no run matches the entry."""
    agg = aggregated_rows[aggregated_rows["seed"].astype(str) == ALL_SEEDS] if "seed" in aggregated_rows \
        else aggregated_rows
    rows = []
    for exp, methods in (published or {}).items():
        for meth, splits in methods.items():
            for split, entry in splits.items():
                here = agg[(agg["experiment"] == exp) & (agg["method"] == meth) & (agg["split"] == split)]
                if "task" in here:
                    here = here[here["task"].isin(["", "classification"])]
                if "dataset" in entry:
                    here = here[here["dataset"] == entry["dataset"]]
                elif here["dataset"].nunique() > 1:
                    raise UserError(f"params key 'published.{exp}.{meth}.{split}' matches datasets "
                                    f"{', '.join(here['dataset'].unique())}; add `dataset:` to say which")
                pub = float(entry["accuracy"])
                row = {"experiment": exp, "method": meth, "split": split,
                       "dataset": entry.get("dataset", here["dataset"].iloc[0] if len(here) else ""),
                       "measured": math.nan, "ci_low": math.nan, "ci_high": math.nan, "seeds": 0,
                       "published": pub, "published_ci95": entry.get("ci95", math.nan),
                       "difference": math.nan, "status": "not measured",
                       "published_nil_accuracy": entry.get("nil_accuracy", math.nan),
                       "measured_nil_accuracy": math.nan,
                       "paper": entry["source"]["paper"], "table": entry["source"]["table"],
                       "note": entry.get("note", "")}
                if len(here):
                    r = here.iloc[0]
                    status = "below" if pub < r["ci_low"] else "above" if pub > r["ci_high"] else "reproduced"
                    row.update(measured=float(r["accuracy"]), ci_low=float(r["ci_low"]),
                               ci_high=float(r["ci_high"]), seeds=int(r["seeds"]),
                               difference=float(r["accuracy"]) - pub, status=status,
                               measured_nil_accuracy=float(r.get("nil_accuracy", math.nan)))
                rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- writers

def _fmt(v, digits=2) -> str:
    return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _p(v) -> str:
    if v is None or not np.isfinite(v):
        return ""
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _group_title(key: dict) -> str:
    task = f" [{key['task']}]" if key.get("task") else ""
    return f"### {key['experiment']} — {key['split']} ({key['dataset']}){task}"


def markdown_summary(summary: pd.DataFrame, published: pd.DataFrame | None = None) -> str:
    """The aggregated table: one line per method, mean with the combined CI, the between-seed
    spread and each seed's mean; with `published` (from `published_comparison`) also the
    published value, the difference and the status."""
    agg = summary[summary["seed"] == ALL_SEEDS]
    per_seed = summary[summary["seed"] != ALL_SEEDS]
    strata = _strata(summary)
    lines = []
    for key, g in agg.groupby(strata, sort=False):
        ident = dict(zip(strata, key))
        pub = None
        if published is not None and len(published):
            pub = published[(published["experiment"] == ident["experiment"]) & (published["split"] == ident["split"])
                            & (published["dataset"] == ident["dataset"])].set_index("method")
        head = "| method | accuracy (%), mean [combined 95% CI] | seeds | between-seed sd | per seed (± episode CI) |"
        rule = "|---|---|---|---|---|"
        if pub is not None and len(pub):
            head += " published | measured − published | status | source |"
            rule += "---|---|---|---|"
        lines += [_group_title(ident), "", head, rule]
        for _, r in g.sort_values("accuracy", ascending=False).iterrows():
            seeds = per_seed[(per_seed[strata] == r[strata]).all(axis=1) & (per_seed["method"] == r["method"])]
            each = ", ".join(f"{s['accuracy']:.2f} ± {s['ci95']:.2f}" for _, s in seeds.iterrows())
            line = (f"| {r['method']} | {r['accuracy']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] | "
                    f"{r['seeds']} | {_fmt(r['seed_std'])} | {each} |")
            if pub is not None and len(pub):
                if r["method"] in pub.index:
                    p = pub.loc[r["method"]]
                    ci = f" ± {p['published_ci95']:.2f}" if np.isfinite(p["published_ci95"]) else ""
                    line += (f" {p['published']:.2f}{ci} | {p['difference']:+.2f} | {p['status']} | "
                             f"{p['paper']}, {p['table']} |")
                else:
                    line += " | | | |"
            lines.append(line)
        lines.append("")
    if published is not None and len(published):
        lines.append("status: the published accuracy lies inside our combined CI (reproduced), below it "
                     "(we measure more) or above it (we measure less).")
    return "\n".join(lines) + "\n"


def markdown_compare(table: pd.DataFrame, alpha: float = 0.05) -> str:
    strata = _strata(table)
    lines = ["# Paired comparisons", "",
             f"Difference = method − versus in accuracy points on the same test episodes and seeds, with its "
             f"95% CI (hierarchical bootstrap over seeds and episodes). Verdict at alpha {alpha}: Holm-adjusted "
             "p of the combined test (training + episode variance); the episode-level t and Wilcoxon "
             "p-values ignore training variance and are shown for reference (docs/statistics.md).", ""]
    if (table["seeds"] == 1).any():
        lines += ["Rows with 1 seed cannot see training variance: their CI and verdict cover the choice of "
                  "test episodes only.", ""]
    for key, g in table.groupby(strata, sort=False):
        lines += [_group_title(dict(zip(strata, key))), "",
                  "| method | versus | difference [95% CI] | seeds | episodes | p (Holm) | "
                  "p t episodes (Holm) | p Wilcoxon (Holm) | p t seeds (Holm) | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in g.iterrows():
            lines.append(f"| {r['method']} | {r['versus']} | {r['difference']:+.2f} [{r['ci_low']:+.2f}, "
                         f"{r['ci_high']:+.2f}] | {r['seeds']} | {r['episodes']} | {_p(r['p_combined_holm'])} | "
                         f"{_p(r['p_t_episodes_holm'])} | {_p(r['p_wilcoxon_holm'])} | "
                         f"{_p(r['p_t_seeds_holm'])} | {r['verdict']} |")
        lines.append("")
    return "\n".join(lines)


def _records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: NaN becomes null, numpy scalars plain Python."""
    return json.loads(frame.to_json(orient="records", double_precision=6))


def write_compare(out_dir, table: pd.DataFrame, alpha: float = 0.05) -> None:
    """compare.md (readable) and compare.json (keyed rows, so `dvc metrics diff` can read them)."""
    out_dir = Path(out_dir)
    strata = _strata(table)
    keyed = {"/".join(str(r[c]) for c in strata if r[c] != "") + f"/{r['method']}-vs-{r['versus']}": r
             for r in _records(table)}
    with atomic_path(out_dir / "compare.json") as tmp:
        tmp.write_text(json.dumps(keyed, indent=2) + "\n")
    write_text(out_dir / "compare.md", markdown_compare(table, alpha))


_COLOURS = {"better": "#2a9d4b", "worse": "#c0392b", VERDICTS[2]: "#4c72b0"}


def forest_plot(table: pd.DataFrame, path) -> None:
    """One row per comparison: the difference with its 95% CI, coloured by verdict, and a zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strata = _strata(table)
    labels = [" ".join(str(r[c]) for c in strata if r[c] != "") + f": {r['method']} − {r['versus']}"
              for _, r in table.iterrows()]
    n = len(table)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * max(n, 1)))
    y = np.arange(n)[::-1]
    for yi, (_, r) in zip(y, table.iterrows()):
        colour = _COLOURS[r["verdict"]]
        ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=colour, lw=2)
        ax.plot(r["difference"], yi, "o", color=colour, ms=5)
    ax.axvline(0, color="gray", ls="--", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("accuracy difference (points), 95% CI over seeds and episodes")
    for verdict, colour in _COLOURS.items():
        ax.plot([], [], "o-", color=colour, label=verdict)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
