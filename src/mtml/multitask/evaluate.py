"""Evaluation of a multitask run on fixed subtasks.

Writes, beside the usual per-run files:
- `eval.json`: classification rows in the format of `mtml.evaluation.evaluate` (split "test"
  on the experiment's dataset, "cross-domain" on each cross-domain dataset), so aggregation
  treats them like any few-shot result,
- `multitask.json`: per split, task and test environment (and "all"): subtasks, accuracy
  (classification: query accuracy; other tasks: "Acc", the share of outputs within the
  threshold) and MSE in the label's units, each with its 95% CI over subtasks,
- `episodes.csv`: one row per subtask (split, dataset, task, episode, environment, metrics).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtml.data.storage import load_prepared
from mtml.evaluation.stats import mean_ci95, nil_logits
from mtml.multitask.config import MultitaskConfig, learner_hparams, multitask_config
from mtml.multitask.data import SceneBank, manifest_subtasks, read_manifest
from mtml.multitask.episodes import manifest_path
from mtml.multitask.learners import MultiTaskLearner
from mtml.multitask.tasks import TaskSpec
from mtml.params import experiment
from mtml.training.checkpoint import load_model, load_weights
from mtml.utils import atomic_path, progress, write_json


def evaluate_subtasks(learner: MultiTaskLearner, bank: SceneBank, task: TaskSpec, manifest: pd.DataFrame,
                      threshold: float, nil: bool = True, label: str | None = None) -> pd.DataFrame:
    """Per-subtask metrics: accuracy (%), and mse (regression) or nil_accuracy (classification)."""
    was_training = learner.training
    learner.eval()
    rows = []
    n = manifest["episode"].nunique()
    bar, _ = progress(label or f"eval {task.name}", n)
    with bar, torch.no_grad():
        progress_task = bar.add_task(label or task.name, total=n)
        for ep, sub in manifest_subtasks(bank, task, manifest):
            row = {"episode": ep, "environment": sub.environment,
                   **task.metrics(learner.predict(sub), sub.query_y, threshold)}
            if task.kind == "classification" and nil:
                s_emb, q_emb = learner.subtask_embeddings(sub)
                logits = nil_logits(s_emb, sub.support_y, q_emb, sub.ways)
                row["nil_accuracy"] = 100 * float((logits.argmax(-1) == sub.query_y).float().mean())
            rows.append(row)
            bar.update(progress_task, advance=1)
    learner.train(was_training)
    return pd.DataFrame(rows)


def validation_score(learner: MultiTaskLearner, bank: SceneBank, mt: MultitaskConfig,
                     manifests: dict[str, pd.DataFrame]) -> float:
    """The val_accuracy of train_log.csv: the mean over high-level tasks of their accuracy in %
    (classification accuracy; share within threshold for the other tasks)."""
    return float(np.mean([evaluate_subtasks(learner, bank, t, manifests[t.name], mt.thresholds[t.name],
                                            nil=False)["accuracy"].mean() for t in mt.tasks]))


def load_learner(params: dict, exp: str, meth: str, model_path: Path, device) -> MultiTaskLearner:
    mt = multitask_config(params, exp)
    saved = load_model(model_path, device)
    cls, hp = learner_hparams(params, meth, mt, exp)
    learner = cls(hp, tuple(saved["image_shape"]), saved["ways"], mt.tasks).to(device)
    return load_weights(learner, saved, model_path).eval()


def evaluation_splits(params: dict, exp: str) -> list[tuple[str, str, str]]:
    """(split name, dataset, manifest prefix) of each evaluation."""
    cfg = experiment(params, exp)
    return [("test", cfg["dataset"], "test")] + [("cross-domain", ds, f"cross-{ds}") for ds in cfg["cross_domain"]]


def summary_rows(frame: pd.DataFrame, keys: dict, threshold: float, task: TaskSpec) -> list[dict]:
    """multitask.json rows: over all subtasks ("all") and per environment."""
    rows = []
    groups = [("all", frame)] + list(frame.groupby("environment", sort=True))
    for env, g in groups:
        acc, acc_ci = mean_ci95(g["accuracy"])
        row = {**keys, "environment": env, "subtasks": len(g), "accuracy": round(acc, 4),
               "accuracy_ci95": round(acc_ci, 4) if np.isfinite(acc_ci) else None}
        if task.kind == "classification":
            row.update(metric="query accuracy (%)", mse=None, mse_ci95=None, mse_unit=None, threshold=None)
        else:
            mse, mse_ci = mean_ci95(g["mse"])
            row.update(metric="share of outputs within threshold (%)", mse=round(mse, 6),
                       mse_ci95=round(mse_ci, 6) if np.isfinite(mse_ci) else None, mse_unit=task.unit,
                       threshold=threshold)
        rows.append(row)
    return rows


def evaluate(params: dict, exp: str, meth: str, model_path: Path, processed_root: Path,
             episodes_root: Path, metrics_dir: Path, device) -> list[dict]:
    cfg, mt = experiment(params, exp), multitask_config(params, exp)
    learner = load_learner(params, exp, meth, model_path, device)
    t0 = time.perf_counter()
    per_subtask, summary, detail = [], [], []
    for split, ds, prefix in evaluation_splits(params, exp):
        bank = SceneBank(load_prepared(Path(processed_root) / ds), mt.tasks, device)
        for task in mt.tasks:
            manifest = read_manifest(manifest_path(episodes_root, exp, prefix, task.name))
            frame = evaluate_subtasks(learner, bank, task, manifest, mt.thresholds[task.name],
                                      label=f"eval {exp}/{meth} {split}:{ds} {task.name}")
            keys = {"split": split, "dataset": ds, "task": task.name}
            detail += summary_rows(frame, keys, mt.thresholds[task.name], task)
            per_subtask.append(frame.assign(**keys))
            if task.kind == "classification":
                acc, ci = mean_ci95(frame["accuracy"])
                nil, nil_ci = mean_ci95(frame["nil_accuracy"])
                summary.append({
                    "experiment": exp, "dataset": ds, "split": split, "method": meth,
                    "algorithm": learner.algorithm, "ways": cfg["ways"], "shots": cfg["shots"],
                    "queries": cfg["queries"], "episodes": len(frame),
                    "accuracy": round(acc, 4), "ci95": round(ci, 4),
                    "nil_accuracy": round(nil, 4), "nil_ci95": round(nil_ci, 4)})
    eval_seconds = time.perf_counter() - t0
    columns = ["split", "dataset", "task", "episode", "environment", "accuracy", "nil_accuracy", "mse"]
    with atomic_path(Path(metrics_dir) / "episodes.csv") as tmp:
        pd.concat(per_subtask).reindex(columns=columns).to_csv(tmp, index=False, float_format="%.6g")
    write_json(Path(metrics_dir) / "eval.json", summary)
    write_json(Path(metrics_dir) / "multitask.json", {
        "experiment": exp, "method": meth, "algorithm": learner.algorithm, "tasks": mt.task_names,
        "thresholds": mt.thresholds, "rows": detail})
    write_json(Path(metrics_dir) / "timing_eval.json", {"eval_seconds": round(eval_seconds, 3)})
    return summary
