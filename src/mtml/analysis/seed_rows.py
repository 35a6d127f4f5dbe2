"""A multi-task run's per-task results over every training seed (multitask-table, mtl-table).

One seed: the run's details.json rows as the evaluate stage wrote them (mean and 95% CI over
the test subtasks). Several seeds: each number (accuracy, the paper's Acc, MSE) is the mean
over seeds x subtasks (every seed is evaluated on the same manifests), and its `_ci95` is the
half-width of `compare.combined_interval` on the [seeds x subtasks] matrix of the seeds'
episodes.csv, so the CI covers training variance as the summary's does, not subtasks only.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from mtml.analysis.compare import _rng, combined_interval
from mtml.errors import UserError

# details.json key -> the range its mean can take (the CI is clipped to it)
METRICS = {"accuracy": (0.0, 100.0), "paper_acc": (0.0, 100.0), "mse": (0.0, math.inf)}


def seed_csv(study, layout, exp: str, meth: str, name: str, stage: str) -> pd.DataFrame:
    """Every training seed's run file `name` (written by `stage`) in one frame, with a `seed`
    column (str)."""
    frames = []
    for seed in study.seeds:
        path = layout.run_dir(exp, meth, seed) / name
        if not path.exists():
            raise UserError(f"{path} is missing; run the {stage} stage of {exp}/{meth} seed {seed} first")
        frames.append(pd.read_csv(path).assign(seed=str(seed)))
    return pd.concat(frames, ignore_index=True)


def seed_episodes(study, layout, exp: str, meth: str) -> pd.DataFrame:
    """Every training seed's episodes.csv in one frame, with a `seed` column (str)."""
    return seed_csv(study, layout, exp, meth, "episodes.csv", "evaluate")


def details_rows(layout, exp: str, meth: str, seed) -> list[dict]:
    """The `environment: all` rows of one seed's details.json."""
    path = layout.run_dir(exp, meth, seed) / "details.json"
    if not path.exists():
        raise UserError(f"{path} is missing; run the train and evaluate stages of {exp}/{meth} first")
    return [r for r in json.loads(path.read_text())["rows"] if r["environment"] == "all"]


def seed_rows(study, layout, exp: str, meth: str) -> list[dict]:
    """details.json's `environment: all` rows with the seeds folded in (module docstring);
    each row gains `seeds`, the number of training seeds behind it."""
    seeds = list(study.seeds)
    rows = [{**r, "seeds": 1} for r in details_rows(layout, exp, meth, seeds[0])]
    if len(seeds) == 1:
        return rows
    episodes = seed_episodes(study, layout, exp, meth)
    for r in rows:
        mine = episodes[(episodes["split"] == r["split"]) & (episodes["dataset"] == r["dataset"])
                        & (episodes["task"] == r["task"])]
        for key, bounds in METRICS.items():
            if r.get(key) is None:
                continue
            x = mine.pivot(index="seed", columns="episode", values=key).dropna(axis=1)
            if len(x) != len(seeds) or x.shape[1] < 2:
                raise UserError(f"{exp}/{meth} {r['split']} {r['dataset']} {r['task']}: {len(x)} of "
                                f"{len(seeds)} seeds and {x.shape[1]} subtasks shared in episodes.csv; "
                                "evaluate every seed on the same manifests")
            ci = combined_interval(x.to_numpy(dtype=float), _rng(0, exp, meth, r["split"], r["dataset"],
                                                                 r["task"], key), bounds=bounds)
            r[key], r[f"{key}_ci95"] = ci["mean"], (ci["ci_high"] - ci["ci_low"]) / 2
            r["subtasks"] = x.shape[1]
        r["seeds"] = len(seeds)
    return rows
