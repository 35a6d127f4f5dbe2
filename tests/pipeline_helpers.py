"""Shared test helpers: a tiny params dict and an in-process run of the stages."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from mtml.params import validate

TINY = {
    "seed": 0,
    "device": "cpu",
    "threads": 1,
    "datasets": {
        "glyphs": {"source": "glyphs", "options": {"alphabets": 12, "characters_per_alphabet": 8,
                                                   "drawers": 12, "split": [8, 2, 2]}},
        "glyphs-shifted": {"source": "glyphs", "options": {"style": "shifted", "alphabets": 4,
                                                           "characters_per_alphabet": 8, "drawers": 12,
                                                           "split": [2, 1, 1]}},
    },
    "experiments": {"tiny": {"dataset": "glyphs", "cross_domain": ["glyphs-shifted"], "ways": 5,
                             "shots": 1, "queries": 5}},
    "methods": {"protonet": {"filters": 16}, "maml": {"filters": 16}},
    "training": {"iterations": 30, "meta_batch": 2, "meta_lr": 0.003, "val_interval": 15, "val_episodes": 10},
    "evaluation": {"episodes": 30},
}


def tiny_params(**overrides) -> dict:
    """TINY with top-level keys replaced (e.g. methods={...}), validated."""
    p = copy.deepcopy(TINY)
    p.update(copy.deepcopy(overrides))
    return validate(p)


def run_pipeline(params: dict, root: Path, methods=None, device="cpu", evaluate_on=None) -> dict:
    """prepare -> episodes -> train (on `device`) -> evaluate (on `evaluate_on`, default the
    same device) for every (experiment, method) under `root`, whatever the experiments' kind.

    Returns {(experiment, method): eval rows}. Datasets are prepared once per root.
    """
    from mtml.data.sources import prepare_dataset
    from mtml.kinds import KINDS

    root = Path(root)
    processed, episodes = root / "data/processed", root / "data/episodes"
    for name, cfg in params["datasets"].items():
        if not (processed / name).exists():
            prepare_dataset(name, cfg, root / "data/raw", processed, params["seed"])
    results = {}
    train_dev = torch.device(device)
    eval_dev = torch.device(evaluate_on) if evaluate_on is not None else train_dev
    for exp, exp_cfg in params["experiments"].items():
        kind = KINDS[exp_cfg["kind"]]
        if not (episodes / exp).exists():
            kind.episodes(params, exp, processed, episodes)
        for meth in methods or params["methods"]:
            model_dir, metrics_dir = root / "models" / exp / meth, root / "metrics/runs" / exp / meth
            kind.train(params, exp, meth, processed, episodes, model_dir, metrics_dir, train_dev)
            results[(exp, meth)] = kind.evaluate(params, exp, meth, model_dir / "model.pt", processed,
                                                 episodes, metrics_dir, eval_dev)
    return results
