"""`multimodal-table`: results of multimodal experiments in the papers' layout.

One row per method (in params order: MAML, Multi-MAML, MMAML, MMAML+KML, then the ProtoNet
family in the presets), one column per mode and one over all modes, each cell the test
accuracy with its 95% CI over the fixed episodes (the runs' eval.json rows, as in
metrics/summary.json). Every method is evaluated on the same episodes, so each modulated or
per-mode method is also compared with its base method (`mmaml`, `mmaml-kml`, `multi-maml`
against `maml`; `mprotonet`, `mprotonet-kml`, `multi-protonet` against `protonet`) by the
mean per-episode difference and its 95% CI: a paired comparison, tighter than comparing
the two methods' CIs.

Writes `table.md`, `table.csv` (one row per experiment, method and mode) and
`differences.csv` under metrics/analysis/multimodal-table/.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtml.analysis.aggregate import collect
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


def _episodes(layout, exp: str, meth: str) -> pd.DataFrame:
    path = layout.run_dir(exp, meth) / "episodes.csv"
    if not path.exists():
        raise UserError(f"{path} is missing; run the evaluate stage of {exp}/{meth} first")
    return pd.read_csv(path)


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


def differences(layout, frame: pd.DataFrame) -> pd.DataFrame:
    """Paired differences of each method with a base (BASES) against the first method of
    that base algorithm in params, per mode and over all modes."""
    rows = []
    for exp, g in frame.groupby("experiment", sort=False):
        algorithms = dict(zip(g["method"], g["algorithm"]))
        for meth, alg in algorithms.items():
            base = next((m for m, a in algorithms.items() if a == BASES.get(alg)), None)
            if base is None:
                continue
            mine, theirs = _episodes(layout, exp, meth), _episodes(layout, exp, base)
            for dataset in [*dict.fromkeys(mine["dataset"]), ALL]:
                if dataset == ALL:
                    a, b = mine, theirs
                else:
                    a, b = mine[mine["dataset"] == dataset], theirs[theirs["dataset"] == dataset]
                mean, ci, n = paired_difference(a, b)
                rows.append({"experiment": exp, "method": meth, "base": base, "dataset": dataset,
                             "episodes": n, "difference": round(mean, 4), "ci95": round(ci, 4)})
    return pd.DataFrame(rows, columns=["experiment", "method", "base", "dataset", "episodes", "difference", "ci95"])


def markdown(study, frame: pd.DataFrame, diffs: pd.DataFrame) -> str:
    lines = ["# Multimodal results", "",
             "Test accuracy (%) ± 95% CI over the fixed episodes of each mode (the same episodes for every "
             "method), and over all modes together.", ""]
    for exp, g in frame.groupby("experiment", sort=False):
        e = study.experiment(exp)
        modes = [d for d in dict.fromkeys(g["dataset"]) if d != ALL]
        total = int(g.loc[g["dataset"] == ALL, "episodes"].iloc[0])
        lines += [f"## {exp}: {e.ways}-way {e.shots}-shot", "",
                  "| method | algorithm | " + " | ".join(modes) + f" | all modes ({total} episodes) |",
                  "|---" * (len(modes) + 3) + "|"]
        for meth, m in g.groupby("method", sort=False):
            cells = {r["dataset"]: f"{r['accuracy']:.2f} ± {r['ci95']:.2f}" for _, r in m.iterrows()}
            lines.append(f"| {meth} | {m['algorithm'].iloc[0]} | "
                         + " | ".join(cells.get(d, "-") for d in [*modes, ALL]) + " |")
        d = diffs[diffs["experiment"] == exp]
        if len(d):
            lines += ["", "Paired differences with the base method (accuracy points, mean over the same "
                      "episodes ± 95% CI; positive: the method is better):", "",
                      "| method | base | " + " | ".join(modes) + " | all modes |",
                      "|---" * (len(modes) + 3) + "|"]
            for (meth, base), m in d.groupby(["method", "base"], sort=False):
                cells = {r["dataset"]: f"{r['difference']:+.2f} ± {r['ci95']:.2f}" for _, r in m.iterrows()}
                lines.append(f"| {meth} | {base} | " + " | ".join(cells.get(x, "-") for x in [*modes, ALL]) + " |")
        lines.append("")
    return "\n".join(lines)


def multimodal_table(study, layout, out_dir: Path) -> None:
    exps = _multimodal_experiments(study)
    frame = collect(study, layout)
    frame = frame[frame["experiment"].isin(exps)].reset_index(drop=True)
    diffs = differences(layout, frame)
    out_dir = Path(out_dir)
    columns = ["experiment", "method", "algorithm", "dataset", "episodes", "accuracy", "ci95",
               "nil_accuracy", "nil_ci95"]
    with atomic_path(out_dir / "table.csv") as tmp:
        frame[columns].to_csv(tmp, index=False)
    with atomic_path(out_dir / "differences.csv") as tmp:
        diffs.to_csv(tmp, index=False)
    write_text(out_dir / "table.md", markdown(study, frame, diffs))
