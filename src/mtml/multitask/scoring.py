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
                      threshold: float, nil: bool = True, label: str | None = None,
                      loss: bool = False, nil_mode: str = "means") -> pd.DataFrame:
    """Per-subtask metrics: accuracy (%), and mse (regression) or nil_accuracy (classification,
    against class means or support samples: `nil_mode`, params `evaluation.nil`); with `loss`,
    the task's query loss too (cross-entropy, or MSE in loss units)."""
    was_training = learner.training
    learner.eval()
    rows = []
    n = manifest["episode"].nunique()
    bar, _ = progress(label or f"eval {task.name}", n)
    with bar, torch.no_grad():
        progress_task = bar.add_task(label or task.name, total=n)
        for ep, sub in manifest_subtasks(bank, task, manifest):
            pred = learner.predict(sub)
            row = {"episode": ep, "environment": sub.environment, **task.metrics(pred, sub.query_y, threshold)}
            if loss:
                row["loss"] = float(task.loss(pred, sub.query_y))
            if task.kind == "classification" and nil:
                s_emb, q_emb = learner.subtask_embeddings(sub)
                logits = nil_logits(s_emb, sub.support_y, q_emb, sub.ways, nil_mode)
                row["nil_accuracy"] = 100 * float((logits.argmax(-1) == sub.query_y).float().mean())
            rows.append(row)
            bar.update(progress_task, advance=1)
    learner.train(was_training)
    return pd.DataFrame(rows)


def validation_score(learner: MultiTaskLearner, bank: SceneBank, mt: MultitaskConfig,
                     manifests: dict[str, pd.DataFrame]) -> tuple[float, dict]:
    """The val_accuracy of train_log.csv: the mean over high-level tasks of their accuracy in %
    (classification accuracy; share within threshold for the other tasks); and per task its
    mean accuracy and query loss (CE / MSE in loss units: the paper's Fig. 5 curves), which the
    trainer keeps in trace.jsonl."""
    per_task = {}
    for t in mt.tasks:
        frame = evaluate_subtasks(learner, bank, t, manifests[t.name], mt.thresholds[t.name], nil=False, loss=True)
        per_task[t.name] = {"accuracy": round(float(frame["accuracy"].mean()), 4),
                            "loss": round(float(frame["loss"].mean()), 6)}
    return float(np.mean([v["accuracy"] for v in per_task.values()])), {"task": per_task}


def summary_rows(frame: pd.DataFrame, keys: dict, threshold: float, task: TaskSpec) -> list[dict]:
    """multitask.json rows: over all subtasks ("all") and per environment."""
    rows = []
    groups = [("all", frame)] + list(frame.groupby("environment", sort=True))
    for env, g in groups:
        acc, acc_ci = mean_ci95(g["accuracy"])
        row = {**keys, "environment": env, "subtasks": len(g), "accuracy": round(acc, 4),
               "accuracy_ci95": round(acc_ci, 4) if np.isfinite(acc_ci) else None}
        if task.kind == "classification":
            row.update(metric="query accuracy (%)", mse=None, mse_ci95=None, mse_unit=None, threshold=None,
                       paper_acc=None, paper_acc_ci95=None)
        else:
            mse, mse_ci = mean_ci95(g["mse"])
            paper, paper_ci = mean_ci95(g["paper_acc"])
            row.update(metric=f"{task.threshold_label(threshold)} (%)", mse=round(mse, 6),
                       mse_ci95=round(mse_ci, 6) if np.isfinite(mse_ci) else None, mse_unit=task.unit,
                       threshold=threshold, paper_acc=round(paper, 4),
                       paper_acc_ci95=round(paper_ci, 4) if np.isfinite(paper_ci) else None)
        rows.append(row)
    return rows
