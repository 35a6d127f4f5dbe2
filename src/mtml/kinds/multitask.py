"""Kind `multitask` (Lekkala & Itti): heterogeneous high-level tasks (classification, depth,
normals, vanishing point) on one scenes dataset, each split into subtasks by environment.

Manifests: `<prefix>-<task>.parquet` per task for prefix val, test and cross-<dataset>.
eval.json holds the classification rows (so aggregation treats them like any few-shot
result); details.json holds, per split, task and test environment (and "all"): subtasks,
accuracy (classification: query accuracy; other tasks: the share of outputs within the
threshold, named by `metric`), the paper's Acc (`paper_acc`: share within 1e-3 of the label)
and MSE in the label's units, each with its 95% CI over subtasks.
Settings: `mtml.multitask.config`.
"""

from __future__ import annotations

import torch

from mtml.errors import UserError
from mtml.kinds import Kind, ManifestSpec
from mtml.utils import derive_seed


class Multitask(Kind):
    name = "multitask"
    episode_columns = ["split", "dataset", "task", "episode", "environment", "accuracy", "nil_accuracy", "mse",
                       "paper_acc"]
    csv_float_format = "%.6g"

    def __init__(self):
        self._cpu_banks: dict = {}

    def configure(self, study, exp):
        from mtml.multitask.config import multitask_config

        return multitask_config(study.params, exp.name)

    def check_run(self, run):
        from mtml.methods.multitask import ALGORITHMS, MultiTaskLearner

        if not issubclass(run.cls, MultiTaskLearner):
            raise UserError(
                f"params key 'methods.{run.method}.algorithm' is {run.cls.algorithm!r}, which cannot run a "
                f"multitask experiment; allowed: {', '.join(ALGORITHMS)} (keep multitask experiments in a "
                f"params file of their own, e.g. configs/multitask.yaml)")

    def manifests(self, study, exp):
        mt = exp.settings
        n_val, n_test = exp.training["val_episodes"], exp.evaluation["episodes"]
        plan = [("val", exp.dataset, "val", "val", n_val), ("test", exp.dataset, "test", "test", n_test)]
        plan += [(f"cross-{ds}", ds, "test", "cross-domain", n_test) for ds in exp.cross_domain]
        # Seeds depend on the subtask settings, not on the method: all methods share them.
        return [ManifestSpec(f"{prefix}-{task.name}.parquet", ds, split, role, n,
                             derive_seed(study.seed, exp.name, prefix, task.name, mt.shape), {"task": task.name})
                for prefix, ds, split, role, n in plan for task in mt.tasks]

    def _task(self, exp, spec):
        return next(t for t in exp.settings.tasks if t.name == spec.keys["task"])

    def build_manifest(self, exp, spec, data):
        from mtml.multitask.data import SceneBank, build_manifest

        key = (exp.name, id(data))
        if key not in self._cpu_banks:
            self._cpu_banks = {key: SceneBank(data, exp.settings.tasks, torch.device("cpu"))}
        return build_manifest(self._cpu_banks[key], self._task(exp, spec), spec.split, exp.settings.shape,
                              spec.episodes, spec.seed)

    def check_train_data(self, exp, data):
        # subtask sizes are checked by the subtask sampler, per task and environment
        return None

    def read_manifest(self, path):
        from mtml.multitask.data import read_manifest

        return read_manifest(path)

    def sources(self, exp):
        return {**vars(exp.settings.shape), "tasks": exp.settings.task_names}

    def bank(self, exp, data, device):
        from mtml.multitask.data import SceneBank

        return SceneBank(data, exp.settings.tasks, device)

    def context(self, exp, banks):
        from mtml.methods.base import LearnerContext

        return LearnerContext(banks[exp.dataset].image_shape, exp.ways, tasks=tuple(exp.settings.tasks))

    def stream(self, exp, banks, seed):
        from mtml.multitask.data import SubtaskStream

        return SubtaskStream(banks[exp.dataset], exp.settings.tasks, exp.settings.shape, seed)

    def tasks_of(self, batch):
        return [sub for subs in batch.values() for sub in subs]

    def validate(self, exp, learner, banks, val):
        from mtml.multitask.scoring import validation_score

        return validation_score(learner, banks[exp.dataset], exp.settings,
                                {spec.keys["task"]: m for spec, m in val})

    def score(self, exp, learner, bank, spec, manifest, label):
        from mtml.multitask.scoring import evaluate_subtasks

        task = self._task(exp, spec)
        return evaluate_subtasks(learner, bank, task, manifest, exp.settings.thresholds[task.name], label=label,
                                 nil_mode=exp.evaluation.get("nil", "means"))

    def expected_rows(self, study, exp):
        # eval.json holds the classification rows only
        return {(s.role, s.dataset) for s in self.manifests(study, exp)
                if s.role != "val" and self._task(exp, s).kind == "classification"}

    def table_episodes(self, exp, episodes):
        # the classification tasks, as eval.json (dense tasks: details.json and compare.md)
        names = [t.name for t in exp.settings.tasks if t.kind == "classification"]
        return episodes[episodes["task"].isin(names)].drop(columns="task")

    def summarise(self, run, learner, scored):
        from mtml.evaluation.evaluate import summary_row
        from mtml.multitask.scoring import summary_rows

        exp, mt = run.experiment, run.experiment.settings
        rows, detail = [], []
        for spec, frame in scored:
            task = self._task(exp, spec)
            keys = {"split": spec.role, "dataset": spec.dataset, "task": task.name}
            detail += summary_rows(frame, keys, mt.thresholds[task.name], task)
            if task.kind == "classification":
                rows.append(summary_row(run, spec.role, spec.dataset, frame))
        return rows, {"experiment": exp.name, "method": run.method, "algorithm": run.cls.algorithm,
                      "tasks": mt.task_names, "thresholds": mt.thresholds, "rows": detail}
