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

from dataclasses import dataclass

from mtml.errors import UserError
from mtml.multitask.data import Shape
from mtml.multitask.tasks import TASKS, TaskSpec, task_specs
from mtml.options import Option, check_options
from mtml.options import defaults as option_defaults
from mtml.params import experiment

OPTIONS = {
    "tasks": Option(list, list(TASKS), "the high-level tasks", items=str, choices=tuple(TASKS)),
    "dense_shots": Option(int, 5, "support images of a depth / normals / vanishing-point subtask", min=1),
    "dense_queries": Option(int, 10, "query images of one", min=1),
    "accuracy_thresholds": Option(dict, {}, "task -> threshold of its accuracy (default: the task's own)",
                                  items=float, min=0, above=True),
    "class_scope": Option(str, "environment", "classification classes from one environment | the "
                          "whole split", choices=("environment", "split")),
}
OPTION_DEFAULTS = option_defaults(OPTIONS)


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
    opts = check_options(cfg.get("options"), OPTIONS, f"experiments.{exp}.options")
    tasks = task_specs(opts["tasks"], f"experiments.{exp}.options.tasks")
    thresholds = opts["accuracy_thresholds"]
    for name in thresholds:
        if name not in TASKS or TASKS[name].kind == "classification":
            allowed = ", ".join(n for n, t in TASKS.items() if t.kind != "classification")
            raise UserError(f"{key('accuracy_thresholds')} names {name!r}; allowed: {allowed}")
    shape = Shape(cfg["ways"], cfg["shots"], cfg["queries"], opts["dense_shots"], opts["dense_queries"],
                  opts["class_scope"])
    return MultitaskConfig(tasks, shape, {t.name: float(thresholds.get(t.name, t.threshold)) for t in tasks})
