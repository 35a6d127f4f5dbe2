"""Scoring multitask subtasks: per-subtask metrics, the validation score, and the per-task
rows of details.json (see `mtml.kinds.multitask` for what the evaluate stage writes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mtml.evaluation.stats import mean_ci95, nil_logits
from mtml.methods.multitask import MultiTaskLearner
from mtml.multitask.config import MultitaskConfig
from mtml.multitask.data import SceneBank, manifest_subtasks
from mtml.multitask.tasks import TaskSpec
from mtml.utils import progress


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
