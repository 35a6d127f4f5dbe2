"""Fixed-episode evaluation: per-episode accuracy (kept for paired comparisons), mean and
95% CI per split, the NIL metric, and cross-domain splits."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from mtml.data.storage import load_prepared
from mtml.episodes.manifest import manifest_arrays, read_manifest
from mtml.episodes.sampler import ImageBank, manifest_episodes
from mtml.evaluation import batched
from mtml.evaluation.stats import mean_ci95, nil_logits
from mtml.methods import build
from mtml.methods.base import MetaLearner
from mtml.params import experiment, method
from mtml.utils import atomic_path, progress, write_json


def evaluation_splits(params: dict, exp: str) -> list[tuple[str, str, str]]:
    """(split name, dataset, manifest file name) for each evaluation of an experiment."""
    cfg = experiment(params, exp)
    splits = [("test", cfg["dataset"], "test.parquet")]
    splits += [("cross-domain", ds, f"cross-{ds}.parquet") for ds in cfg["cross_domain"]]
    return splits


def load_learner(params: dict, exp: str, meth: str, model_path: Path, device) -> MetaLearner:
    saved = torch.load(model_path, map_location=device, weights_only=False)
    learner = build(meth, method(params, meth, exp), tuple(saved["image_shape"]), saved["ways"]).to(device)
    learner.load_state_dict(saved["state"])
    return learner.eval()


def episode_embeddings(learner: MetaLearner, ep) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query features for NIL. Methods whose features depend on the task
    (modulated or per-mode networks) provide `embed_episode(episode)`."""
    if hasattr(learner, "embed_episode"):
        return learner.embed_episode(ep)
    return learner.embed(ep.support_x), learner.embed(ep.query_x)


def evaluate_manifest(learner: MetaLearner, bank: ImageBank, manifest: pd.DataFrame, label: str,
                      episode_batch: int | str = 1) -> pd.DataFrame:
    """Per-episode accuracy and NIL accuracy. `episode_batch` (params `evaluation.episode_batch`)
    > 1 runs methods with a batched path through `mtml.evaluation.batched`; 1 is the
    per-episode reference loop; `auto` picks per device."""
    rows = []
    arrays = manifest_arrays(manifest)
    n = len(arrays.episodes)
    size = batched.resolve_episode_batch(episode_batch, learner, arrays, bank.image_shape, bank.device)
    bar, _ = progress(label, n)
    with bar, torch.no_grad():
        task = bar.add_task(label, total=n)
        if size > 1 and batched.supports(learner):
            rows = batched.evaluate_batches(learner, bank, arrays, size, lambda k: bar.update(task, advance=k))
            return pd.DataFrame(rows)
        for ep_id, ep in manifest_episodes(bank, manifest):
            logits, support, query = batched.predict_with_features(learner, ep)
            acc = (logits.argmax(-1) == ep.query_y).float().mean()
            nil = nil_logits(support, ep.support_y, query, ep.ways)
            nil_acc = (nil.argmax(-1) == ep.query_y).float().mean()
            rows.append({"episode": ep_id, "accuracy": 100 * float(acc), "nil_accuracy": 100 * float(nil_acc)})
            bar.update(task, advance=1)
    return pd.DataFrame(rows)


def summary_row(exp: str, cfg: dict, meth: str, learner: MetaLearner, split: str, dataset: str,
                frame: pd.DataFrame) -> dict:
    """One eval.json row: mean accuracy and NIL accuracy of `frame`'s episodes with 95% CIs."""
    acc, ci = mean_ci95(frame["accuracy"])
    nil, nil_ci = mean_ci95(frame["nil_accuracy"])
    return {"experiment": exp, "dataset": dataset, "split": split, "method": meth,
            "algorithm": learner.algorithm, "ways": cfg["ways"], "shots": cfg["shots"],
            "queries": cfg["queries"], "episodes": len(frame),
            "accuracy": round(acc, 4), "ci95": round(ci, 4),
            "nil_accuracy": round(nil, 4), "nil_ci95": round(nil_ci, 4)}


def evaluate(params: dict, exp: str, meth: str, model_path: Path, processed_root: Path,
             episodes_root: Path, metrics_dir: Path, device) -> list[dict]:
    cfg = experiment(params, exp)
    learner = load_learner(params, exp, meth, model_path, device)
    t0 = time.perf_counter()
    per_episode, summary = [], []
    for split, dataset, fname in evaluation_splits(params, exp):
        bank = ImageBank(load_prepared(Path(processed_root) / dataset), device)
        frame = evaluate_manifest(learner, bank, read_manifest(Path(episodes_root) / exp / fname),
                                  f"eval {exp}/{meth} {split}:{dataset}", params["evaluation"].get("episode_batch", "auto"))
        frame.insert(0, "split", split)
        frame.insert(1, "dataset", dataset)
        per_episode.append(frame)
        summary.append(summary_row(exp, cfg, meth, learner, split, dataset, frame))
    eval_seconds = time.perf_counter() - t0
    with atomic_path(Path(metrics_dir) / "episodes.csv") as tmp:
        pd.concat(per_episode).to_csv(tmp, index=False, float_format="%.4f")
    write_json(Path(metrics_dir) / "eval.json", summary)
    write_json(Path(metrics_dir) / "timing_eval.json", {"eval_seconds": round(eval_seconds, 3)})
    return summary
