"""The episodes stage of a multimodal experiment: fixed validation and test manifests per mode,
`val-<dataset>.parquet` and `test-<dataset>.parquet` (the mode's dataset in the file name)."""

from __future__ import annotations

import json
from pathlib import Path

from mtml.data.storage import load_prepared
from mtml.episodes.manifest import build_manifest, check_sizes, read_manifest
from mtml.multimodal.config import multimodal_config
from mtml.params import experiment, training_config
from mtml.utils import atomic_path, derive_seed


def manifest_name(split: str, dataset: str) -> str:
    return f"{split}-{dataset}.parquet"


def read_mode_manifest(episodes_root: Path, exp: str, split: str, dataset: str, limit: int | None = None):
    frame = read_manifest(Path(episodes_root) / exp / manifest_name(split, dataset))
    return frame if limit is None else frame[frame["episode"] < limit]


def build_multimodal_episodes(params: dict, exp: str, processed_root: Path, out_root: Path) -> Path:
    cfg, mm = experiment(params, exp), multimodal_config(params, exp)
    ways, shots, queries = cfg["ways"], cfg["shots"], cfg["queries"]
    counts = {"val": training_config(params, exp)["val_episodes"], "test": params["evaluation"]["episodes"]}
    out = Path(out_root) / exp
    with atomic_path(out) as tmp:
        tmp.mkdir()
        files = {}
        for mode, dataset in enumerate(mm.modes):
            data = load_prepared(Path(processed_root) / dataset)
            check_sizes(data, "train", ways, shots, queries, exp)  # the training stream's episodes
            for split, n in counts.items():
                fname = manifest_name(split, dataset)
                # Seeds depend on the episode settings, not on the method: all methods share them.
                seed = derive_seed(params["seed"], exp, fname, ways, shots, queries)
                build_manifest(data, split, ways, shots, queries, n, seed, exp).to_parquet(tmp / fname, index=False)
                files[fname] = {"dataset": dataset, "mode": mode, "split": split, "episodes": n,
                                "content_md5": data.meta.get("content_md5")}
        # The datasets' content hashes make downstream stages rerun when the data change.
        (tmp / "sources.json").write_text(json.dumps(
            {"kind": "multimodal", "modes": list(mm.modes), "ways": ways, "shots": shots,
             "queries": queries, "files": files}, indent=2, sort_keys=True) + "\n")
    return out
