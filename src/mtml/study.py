"""A study: one params file, validated and resolved once.

`params.load(files)` returns a `Study`. Everything downstream asks it, never the raw dict:
`study.experiment(name)` is an `Experiment` (kind plug-in, kind settings, training with the
experiment's overrides), `study.run(exp, method, seed)` a `Run` (the method's class and final
hyperparameters with every override applied, its training seed).

Two kinds of seed: `study.seed` (params `seed`) prepares the data and draws the fixed val/test
manifests; `study.seeds` (params `seeds`, default `[seed]`) are the training seeds. Every
seed's model is evaluated on the same episodes, so results are paired across seeds and methods.
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
    seed: int             # the training seed (one of `study.seeds`)

    @property
    def training(self) -> dict:
        return self.experiment.training

    @property
    def label(self) -> str:
        return f"{self.experiment.name}/{self.method}/seed-{self.seed}"

    @property
    def dependencies(self) -> list[Run]:
        """Runs whose models this run reads while training (trained before it)."""
        return self.cls.run_dependencies(self)

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
    _runs: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        # Resolve everything once: every kind setting and every run's hyperparameters are
        # checked here, so a bad params file fails before any stage starts.
        for exp in self.experiments:
            for meth in self.methods:
                self.run(exp, meth)
        ref = self.params.get("reference")
        if ref is not None and ref not in self.params["methods"]:
            raise UserError(f"params key 'reference' names method {ref!r}; defined methods: {', '.join(self.methods)}")
        from mtml.analysis.compare import check_published

        check_published(self.params)

    # -- plain settings -----------------------------------------------------------------
    @property
    def seed(self) -> int:
        """The data seed: prepared datasets and the fixed manifests."""
        return self.params["seed"]

    @property
    def seeds(self) -> list[int]:
        """The training seeds (params `seeds`, else `[seed]`)."""
        return list(self.params.get("seeds") or [self.params["seed"]])

    @property
    def reference(self) -> str | None:
        """The method others are compared with (None: every pair)."""
        return self.params.get("reference")

    @property
    def published(self) -> dict:
        return self.params.get("published") or {}

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

    def run(self, experiment: str, method: str, seed: int | None = None) -> Run:
        """The run of `method` on `experiment` with training seed `seed` (default: the first
        of `seeds`, the one analyses read)."""
        from mtml.methods import resolve_hparams

        if seed is None:
            seed = self.seeds[0]
        elif int(seed) not in self.seeds:
            raise UserError(f"seed {seed} is not in params 'seeds' ({', '.join(map(str, self.seeds))})")
        if (experiment, method, int(seed)) in self._runs:
            return self._runs[(experiment, method, int(seed))]

        exp = self.experiment(experiment)
        override = f"experiments.{experiment}.methods.{method}"
        try:
            cls, hp = resolve_hparams(method, self.method_config(method, experiment))
        except UserError as err:
            if method in exp.config.get("methods", {}):
                raise UserError(f"{err} (as overridden by '{override}')") from None
            raise
        run = Run(self, exp, method, cls, hp, int(seed))
        cls.check_run(run)
        exp.kind.check_run(run)
        self._runs[(experiment, method, int(seed))] = run
        return run

    def runs(self) -> list[Run]:
        """Every run of the matrix: experiment x method x training seed."""
        return [self.run(e, m, s) for e in self.experiments for m in self.methods for s in self.seeds]
