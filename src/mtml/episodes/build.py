"""The episodes stage: fixed validation, test and cross-domain manifests for one experiment."""

from __future__ import annotations

import json
from pathlib import Path

from mtml.data.storage import load_prepared
from mtml.episodes.manifest import build_manifest, check_sizes
from mtml.params import experiment, training_config
from mtml.utils import atomic_path, derive_seed


def build_experiment_episodes(params: dict, exp: str, processed_root: Path, out_root: Path) -> Path:
    cfg = experiment(params, exp)
    ways, shots, queries = cfg["ways"], cfg["shots"], cfg["queries"]
    n_val = training_config(params, exp)["val_episodes"]
    n_test = params["evaluation"]["episodes"]
    data = load_prepared(Path(processed_root) / cfg["dataset"])
    check_sizes(data, "train", ways, shots, queries, exp)  # the training stream's episodes
    plan = [("val.parquet", data, "val", n_val), ("test.parquet", data, "test", n_test)]
    for ds in cfg["cross_domain"]:
        plan.append((f"cross-{ds}.parquet", load_prepared(Path(processed_root) / ds), "test", n_test))
    out = Path(out_root) / exp
    with atomic_path(out) as tmp:
        tmp.mkdir()
        sources = {}
        for fname, d, split, n in plan:
            # Seeds depend on the episode settings, not on the method: all methods share them.
            seed = derive_seed(params["seed"], exp, fname, ways, shots, queries)
            build_manifest(d, split, ways, shots, queries, n, seed, exp).to_parquet(tmp / fname, index=False)
            sources[fname] = {"dataset": d.name, "split": split, "episodes": n,
                              "content_md5": d.meta.get("content_md5")}
        # Recording the datasets' content hashes makes downstream stages rerun when data change.
        (tmp / "sources.json").write_text(json.dumps({"ways": ways, "shots": shots, "queries": queries,
                                                      "files": sources}, indent=2, sort_keys=True) + "\n")
    return out
