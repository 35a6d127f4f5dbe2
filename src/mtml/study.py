"""A study: one params file, validated and resolved once.

`params.load(files)` returns a `Study`. Everything downstream asks it, never the raw dict:
`study.experiment(name)` is an `Experiment` (kind plug-in, kind settings, training with the
experiment's overrides), `study.run(exp, method)` a `Run` (the method's class and final
hyperparameters with every override applied, seed, device).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtml.errors import UserError

DEFAULT_STUDY = "default"


def study_name(params: dict, files) -> str:
    """`study:` if given, else the stem of the last params file (params.yaml is `default`)."""
    if params.get("study"):
        return params["study"]
    files = [Path(f) for f in (files or [])]
    stem = files[-1].stem if files else "params"
    return DEFAULT_STUDY if stem == "params" else stem


@dataclass(frozen=True)
class Experiment:
    name: str
    config: dict          # the params entry, schema defaults filled
    training: dict        # top-level training with the experiment's overrides
    evaluation: dict
    kind: Any             # the kind plug-in (mtml.kinds.Kind)
    settings: Any         # what kind.configure made of the experiment's options

    @property
    def dataset(self) -> str:
        return self.config["dataset"]

    @property
    def cross_domain(self) -> list[str]:
        return list(self.config["cross_domain"])

    @property
    def ways(self) -> int:
        return self.config["ways"]

    @property
    def shots(self) -> int:
        return self.config["shots"]

    @property
    def queries(self) -> int:
        return self.config["queries"]

    @property
    def datasets(self) -> list[str]:
        """Every dataset the experiment reads: its dataset, its modes, its cross-domain sets."""
        c = self.config
        return list(dict.fromkeys([c["dataset"], *c["modes"], *c["cross_domain"]]))

    def episode_inputs(self) -> dict:
        """What the fixed manifests are built from (not the methods or optimiser settings)."""
        cfg = {k: v for k, v in self.config.items() if k not in ("methods", "training")}
        return {**cfg, "val_episodes": self.training["val_episodes"],
                "test_episodes": self.evaluation["episodes"]}


@dataclass(frozen=True)
class Run:
    """One cell of the matrix: a method trained and evaluated on an experiment."""

    study: Study
    experiment: Experiment
    method: str
    cls: type
    hparams: dict         # defaults filled, `methods.<m>` and `experiments.<e>.methods.<m>` applied

    @property
    def seed(self) -> int:
        return self.study.seed

    @property
    def training(self) -> dict:
        return self.experiment.training

    @property
    def label(self) -> str:
        return f"{self.experiment.name}/{self.method}"

    def fingerprint(self, inputs: dict) -> str:
        """What a checkpoint must match to be resumed: every setting the run depends on and
        the content of its inputs (`inputs`: the data and manifests it reads)."""
        key = {"seed": self.seed, "experiment": self.experiment.config, "method": self.hparams,
               "algorithm": self.cls.algorithm, "training": self.training, "inputs": inputs}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Study:
    params: dict                      # validated, defaults filled
    name: str = DEFAULT_STUDY
    files: tuple[str, ...] = ()
    _experiments: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        # Resolve everything once: every kind setting and every run's hyperparameters are
        # checked here, so a bad params file fails before any stage starts.
        for exp in self.experiments:
            for meth in self.methods:
                self.run(exp, meth)

    # -- plain settings -----------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.params["seed"]

    @property
    def device(self) -> str:
        return self.params["device"]

    @property
    def threads(self) -> int:
        return self.params["threads"]

    @property
    def datasets(self) -> list[str]:
        return list(self.params["datasets"])

    @property
    def experiments(self) -> list[str]:
        return list(self.params["experiments"])

    @property
    def methods(self) -> list[str]:
        return list(self.params["methods"])

    @property
    def analyses(self) -> list[str]:
        return list(self.params["analyses"])

    def dataset(self, name: str) -> dict:
        if name not in self.params["datasets"]:
            raise UserError(f"dataset {name!r} is not in params 'datasets'; defined: {', '.join(self.datasets)}")
        return self.params["datasets"][name]

    # -- resolved objects -----------------------------------------------------------------
    def experiment(self, name: str) -> Experiment:
        if name not in self.params["experiments"]:
            raise UserError(f"experiment {name!r} is not in params; defined: {', '.join(self.experiments)}")
        if name not in self._experiments:
            from mtml.kinds import get_kind

            cfg = self.params["experiments"][name]
            kind = get_kind(cfg["kind"], f"experiments.{name}.kind")
            training = {**self.params["training"], **cfg.get("training", {})}
            partial = Experiment(name, cfg, training, self.params["evaluation"], kind, None)
            settings = kind.configure(self, partial)
            self._experiments[name] = Experiment(name, cfg, training, self.params["evaluation"], kind, settings)
        return self._experiments[name]

    def method_config(self, method: str, experiment: str | None = None) -> dict:
        """A method's params entry; for an experiment, with `experiments.<e>.methods.<m>` on top."""
        if method not in self.params["methods"]:
            raise UserError(f"method {method!r} is not in params; defined: {', '.join(self.methods)}")
        hp = dict(self.params["methods"][method] or {})
        if experiment is not None:
            hp.update(self.params["experiments"][experiment].get("methods", {}).get(method) or {})
        return hp

    def run(self, experiment: str, method: str) -> Run:
        from mtml.methods import resolve_hparams

        exp = self.experiment(experiment)
        override = f"experiments.{experiment}.methods.{method}"
        try:
            cls, hp = resolve_hparams(method, self.method_config(method, experiment))
        except UserError as err:
            if method in exp.config.get("methods", {}):
                raise UserError(f"{err} (as overridden by '{override}')") from None
            raise
        run = Run(self, exp, method, cls, hp)
        cls.check_run(run)
        exp.kind.check_run(run)
        return run

    def runs(self) -> list[Run]:
        return [self.run(e, m) for e in self.experiments for m in self.methods]
