"""The episodes stage of a multitask experiment: fixed val, test and cross-domain subtask
manifests for every high-level task (`<split>-<task>.parquet`) and `sources.json`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mtml.data.storage import load_prepared
from mtml.multitask.config import multitask_config
from mtml.multitask.data import SceneBank, build_manifest
from mtml.params import experiment, training_config
from mtml.utils import atomic_path, derive_seed


def manifest_plan(params: dict, exp: str) -> list[tuple[str, str, str, int]]:
    """(file prefix, dataset, dataset split, subtasks per task) of every manifest."""
    cfg = experiment(params, exp)
    n_val, n_test = training_config(params, exp)["val_episodes"], params["evaluation"]["episodes"]
    plan = [("val", cfg["dataset"], "val", n_val), ("test", cfg["dataset"], "test", n_test)]
    return plan + [(f"cross-{ds}", ds, "test", n_test) for ds in cfg["cross_domain"]]


def manifest_path(episodes_root: Path, exp: str, prefix: str, task: str) -> Path:
    return Path(episodes_root) / exp / f"{prefix}-{task}.parquet"


def build_multitask_episodes(params: dict, exp: str, processed_root: Path, out_root: Path) -> Path:
    mt = multitask_config(params, exp)
    out = Path(out_root) / exp
    banks: dict[str, SceneBank] = {}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        files = {}
        for prefix, ds, split, n in manifest_plan(params, exp):
            if ds not in banks:
                banks[ds] = SceneBank(load_prepared(Path(processed_root) / ds), mt.tasks, torch.device("cpu"))
            for task in mt.tasks:
                # Seeds depend on the subtask settings, not on the method: all methods share them.
                seed = derive_seed(params["seed"], exp, prefix, task.name, mt.shape)
                fname = f"{prefix}-{task.name}.parquet"
                build_manifest(banks[ds], task, split, mt.shape, n, seed).to_parquet(tmp / fname, index=False)
                files[fname] = {"dataset": ds, "split": split, "task": task.name, "episodes": n,
                                "content_md5": banks[ds].data.meta.get("content_md5")}
        # The datasets' content hashes make downstream stages rerun when the data change.
        sources = {**vars(mt.shape), "tasks": mt.task_names, "files": files}
        (tmp / "sources.json").write_text(json.dumps(sources, indent=2, sort_keys=True) + "\n")
    return out
