"""`multimodal-table`: results of multimodal experiments in the papers' layout.

One row per method (in params order: MAML, Multi-MAML, MMAML, MMAML+KML, then the ProtoNet
family in the presets), one column per mode and one over all modes, each cell the test
accuracy with its 95% CI over the fixed episodes (the runs' eval.json rows, as in
metrics/summary.json). Every method is evaluated on the same episodes, so each modulated or
per-mode method is also compared with its base method (`mmaml`, `mmaml-kml`, `multi-maml`
against `maml`; `mprotonet`, `mprotonet-kml`, `multi-protonet` against `protonet`) by the
mean per-episode difference and its 95% CI: a paired comparison, tighter than comparing
the two methods' CIs.

With several training seeds (params `seeds`) every cell is the mean over seeds and its CI
the combined one of metrics/summary.json (training and episode variance, docs/statistics.md),
shown as [low, high]; each difference is paired on seeds and episodes and its CI is
`compare.compare_pair`'s (the hierarchical bootstrap of compare.md). One seed: mean ± the
episode CI, as eval.json.

Writes `table.md`, `table.csv` (one row per experiment, method and mode) and
`differences.csv` under metrics/analysis/multimodal-table/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtml.analysis.aggregate import collect
from mtml.analysis.compare import _rng, compare_pair
from mtml.analysis.seed_rows import seed_episodes
from mtml.errors import UserError
from mtml.evaluation.stats import mean_ci95
from mtml.kinds.multimodal import ALL
from mtml.utils import atomic_path, write_text

# algorithm -> the algorithm it modulates or splits per mode
BASES = {"multi-maml": "maml", "mmaml": "maml", "mmaml-kml": "maml",
         "multi-protonet": "protonet", "mprotonet": "protonet", "mprotonet-kml": "protonet"}


def _multimodal_experiments(study) -> list[str]:
    exps = [e for e in study.experiments if study.experiment(e).kind.name == "multimodal"]
    if not exps:
        raise UserError("analysis 'multimodal-table' needs an experiment of kind multimodal in params 'experiments'")
    return exps


def paired_difference(a: pd.DataFrame, b: pd.DataFrame) -> tuple[float, float, int]:
    """Mean and 95% CI half-width of accuracy(a) - accuracy(b) over the same episodes, keyed by
    (dataset, episode), and the number of pairs. The two must hold exactly the same episodes."""
    key = ["dataset", "episode"]
    merged = a[[*key, "accuracy"]].merge(b[[*key, "accuracy"]], on=key, suffixes=("_a", "_b"))
    if len(merged) != len(a) or len(merged) != len(b):
        raise UserError(f"a paired comparison needs the same test episodes in both runs; "
                        f"{len(a)} and {len(b)} episodes, {len(merged)} in common")
    mean, ci = mean_ci95(merged["accuracy_a"] - merged["accuracy_b"])
    return mean, ci, len(merged)


def seed_difference(a: pd.DataFrame, b: pd.DataFrame, where: str) -> dict:
    """accuracy(a) - accuracy(b) paired on seeds and (dataset, episode): the combined CI of
    compare.md over the [seeds x episodes] matrix of differences."""
    mats = [x.pivot(index="seed", columns=["dataset", "episode"], values="accuracy") for x in (a, b)]
    if not mats[0].index.equals(mats[1].index) or not mats[0].columns.equals(mats[1].columns) \
            or mats[0].isna().any().any() or mats[1].isna().any().any():
        raise UserError(f"{where}: a paired comparison needs the same seeds and test episodes in both runs; "
                        f"rerun the evaluate stages of both methods")
    xa, xb = (m.to_numpy(np.float64) for m in mats)
    pair = compare_pair(xa, xb, _rng(0, where), resamples=2000)
    ci95 = float(mean_ci95(xa.mean(axis=0) - xb.mean(axis=0))[1])  # episode-only, for reference
    return {"seeds": pair["seeds"], "episodes": pair["episodes"], "difference": pair["difference"],
            "ci95": ci95, "ci_low": pair["ci_low"], "ci_high": pair["ci_high"]}


def differences(layout, frame: pd.DataFrame, study) -> pd.DataFrame:
    """Paired differences of each method with a base (BASES) against the first method of
    that base algorithm in params, per mode and over all modes, over every training seed of
    `study` (module docstring)."""
    several = len(study.seeds) > 1
    rows = []
    for exp, g in frame.groupby("experiment", sort=False):
        algorithms = dict(zip(g["method"], g["algorithm"]))
        for meth, alg in algorithms.items():
            base = next((m for m, a in algorithms.items() if a == BASES.get(alg)), None)
            if base is None:
                continue
            mine, theirs = (seed_episodes(study, layout, exp, m) for m in (meth, base))
            for dataset in [*dict.fromkeys(mine["dataset"]), ALL]:
                if dataset == ALL:
                    a, b = mine, theirs
                else:
                    a, b = mine[mine["dataset"] == dataset], theirs[theirs["dataset"] == dataset]
                row = {"experiment": exp, "method": meth, "base": base, "dataset": dataset}
                if several:
                    d = seed_difference(a, b, f"{exp}/{meth} vs {base} ({dataset})")
                    rows.append({**row, **{k: round(v, 4) for k, v in d.items()}})
                else:
                    mean, ci, n = paired_difference(a, b)
                    rows.append({**row, "seeds": 1, "episodes": n, "difference": round(mean, 4), "ci95": round(ci, 4),
                                 "ci_low": round(mean - ci, 4), "ci_high": round(mean + ci, 4)})
    return pd.DataFrame(rows, columns=["experiment", "method", "base", "dataset", "seeds", "episodes", "difference",
                                       "ci95", "ci_low", "ci_high"])


def markdown(study, frame: pd.DataFrame, diffs: pd.DataFrame) -> str:
    several = len(study.seeds) > 1
    if several:
        intro = (f"Test accuracy (%), mean over {len(study.seeds)} training seeds [combined 95% CI: seeds and "
                 "episodes], on the fixed episodes of each mode (the same episodes for every method and "
                 "seed), and over all modes together.")
    else:
        intro = ("Test accuracy (%) ± 95% CI over the fixed episodes of each mode (the same episodes for every "
                 "method), and over all modes together (one training seed: the CI covers episodes only).")
    def cell(r, value="accuracy", sign="") -> str:
        """mean [combined CI] with several seeds, mean ± episode CI with one."""
        if several:
            return f"{r[value]:{sign}.2f} [{r['ci_low']:{sign}.2f}, {r['ci_high']:{sign}.2f}]"
        return f"{r[value]:{sign}.2f} ± {r['ci95']:.2f}"

    lines = ["# Multimodal results", "", intro, ""]
    for exp, g in frame.groupby("experiment", sort=False):
        e = study.experiment(exp)
        modes = [d for d in dict.fromkeys(g["dataset"]) if d != ALL]
        total = int(g.loc[g["dataset"] == ALL, "episodes"].iloc[0])
        lines += [f"## {exp}: {e.ways}-way {e.shots}-shot", "",
                  "| method | algorithm | " + " | ".join(modes) + f" | all modes ({total} episodes) |",
                  "|---" * (len(modes) + 3) + "|"]
        for meth, m in g.groupby("method", sort=False):
            cells = {r["dataset"]: cell(r) for _, r in m.iterrows()}
            lines.append(f"| {meth} | {m['algorithm'].iloc[0]} | "
                         + " | ".join(cells.get(d, "-") for d in [*modes, ALL]) + " |")
        d = diffs[diffs["experiment"] == exp]
        if len(d):
            how = ("mean over the same seeds and episodes [combined 95% CI]" if several
                   else "mean over the same episodes ± 95% CI")
            lines += ["", f"Paired differences with the base method (accuracy points, {how}; positive: the "
                      "method is better):", "",
                      "| method | base | " + " | ".join(modes) + " | all modes |",
                      "|---" * (len(modes) + 3) + "|"]
            for (meth, base), m in d.groupby(["method", "base"], sort=False):
                cells = {r["dataset"]: cell(r, "difference", "+") for _, r in m.iterrows()}
                lines.append(f"| {meth} | {base} | " + " | ".join(cells.get(x, "-") for x in [*modes, ALL]) + " |")
        lines.append("")
    return "\n".join(lines)


def multimodal_table(study, layout, out_dir: Path) -> None:
    exps = _multimodal_experiments(study)
    frame = collect(study, layout)
    frame = frame[frame["experiment"].isin(exps)].reset_index(drop=True)
    diffs = differences(layout, frame, study)
    out_dir = Path(out_dir)
    columns = ["experiment", "method", "algorithm", "dataset", "seeds", "episodes", "accuracy", "ci95",
               "ci_low", "ci_high", "nil_accuracy", "nil_ci95"]
    with atomic_path(out_dir / "table.csv") as tmp:
        frame[columns].to_csv(tmp, index=False)
    with atomic_path(out_dir / "differences.csv") as tmp:
        diffs.to_csv(tmp, index=False)
    write_text(out_dir / "table.md", markdown(study, frame, diffs))
