"""Settings of a `multitask` experiment (`experiments.<name>.options`) and its checks.

    options:
      tasks: [classification, depth, normals, vanishing_point]   # high-level tasks
      dense_shots: 5        # support images of a depth / normals / vanishing-point subtask
      dense_queries: 10     # query images of one
      accuracy_thresholds: {depth: 1.25, normals: 22.5, vanishing_point: 5.0}
      class_scope: environment   # classification classes from one environment | the whole split

Classification subtasks use the experiment's ways, shots and queries. Every method of a
params file with a multitask experiment must be a multitask algorithm (mt-anil, mt-am,
mt-pam, mt-maml): the experiments x methods matrix runs each method on each experiment.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from mtml.errors import UserError
from mtml.multitask.data import Shape
from mtml.multitask.tasks import TASKS, TaskSpec, task_specs
from mtml.params import experiment

OPTION_DEFAULTS = {
    "tasks": list(TASKS),
    "dense_shots": 5,
    "dense_queries": 10,
    "accuracy_thresholds": {},
    "class_scope": "environment",
}


@dataclass(frozen=True)
class MultitaskConfig:
    tasks: list[TaskSpec]
    shape: Shape
    thresholds: dict[str, float]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


def multitask_config(params: dict, exp: str) -> MultitaskConfig:
    cfg = experiment(params, exp)
    key = lambda k: f"params key 'experiments.{exp}.options.{k}'"  # noqa: E731
    options = dict(cfg.get("options") or {})
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise UserError(f"{key(unknown[0])} is unknown; allowed: {', '.join(sorted(OPTION_DEFAULTS))}")
    opts = {**OPTION_DEFAULTS, **options}
    tasks = task_specs(opts["tasks"], f"experiments.{exp}.options.tasks")
    for k in ("dense_shots", "dense_queries"):
        v = opts[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserError(f"{key(k)} must be an integer >= 1; got {v!r}")
    thresholds = opts["accuracy_thresholds"]
    if not isinstance(thresholds, dict):
        raise UserError(f"{key('accuracy_thresholds')} must map tasks to numbers; got {thresholds!r}")
    for name, v in thresholds.items():
        if name not in TASKS or TASKS[name].kind == "classification":
            allowed = ", ".join(n for n, t in TASKS.items() if t.kind != "classification")
            raise UserError(f"{key('accuracy_thresholds')} names {name!r}; allowed: {allowed}")
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or v <= 0:
            raise UserError(f"{key('accuracy_thresholds')}.{name} must be a number > 0; got {v!r}")
    if opts["class_scope"] not in ("environment", "split"):
        raise UserError(f"{key('class_scope')} is {opts['class_scope']!r}; allowed: environment, split")
    shape = Shape(cfg["ways"], cfg["shots"], cfg["queries"], opts["dense_shots"], opts["dense_queries"],
                  opts["class_scope"])
    return MultitaskConfig(tasks, shape, {t.name: float(thresholds.get(t.name, t.threshold)) for t in tasks})
