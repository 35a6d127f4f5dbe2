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
# experiment keys only kinds with `fewshot_protocol` read (docs/protocols.md)
FEWSHOT_ONLY = ("train_ways", "train_shots", "train_queries", "test_episodes")


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

    # Training episodes may differ from the test episodes (Snell et al. train ProtoNet with
    # more ways); absent keys mean the test values, so older params keep their fingerprints.
    @property
    def train_ways(self) -> int:
        return self.config.get("train_ways") or self.ways

    @property
    def train_shots(self) -> int:
        return self.config.get("train_shots") or self.shots

    @property
    def train_queries(self) -> int:
        return self.config.get("train_queries") or self.queries

    @property
    def datasets(self) -> list[str]:
        """Every dataset the experiment reads: its dataset, its modes, its cross-domain sets."""
        c = self.config
        return list(dict.fromkeys([c["dataset"], *c["modes"], *c["cross_domain"]]))

    def episode_inputs(self) -> dict:
        """What the fixed manifests are built from (not the methods or optimiser settings)."""
        cfg = {k: v for k, v in self.config.items() if k not in ("methods", "training")}
        if cfg.get("test_episodes"):  # an edited external episode list gives new manifests
            from mtml.utils import file_md5

            path = Path(cfg["test_episodes"])
            cfg["test_episodes_md5"] = file_md5(path) if path.is_file() else None
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
    # a searched method (params `search`): the training keys its configuration sets, and
    # which trial this run is (None: a final run, trained with the selected configuration)
    training_overrides: dict = field(default_factory=dict)
    trial: int | None = None

    @property
    def training(self) -> dict:
        return {**self.experiment.training, **self.training_overrides}

    @property
    def label(self) -> str:
        last = f"trial-{self.trial}" if self.trial is not None else f"seed-{self.seed}"
        return f"{self.experiment.name}/{self.method}/{last}"

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
    _draws: dict = field(default_factory=dict, repr=False)
    searches: dict = field(default_factory=dict, init=False, repr=False)   # method -> mtml.search.Search

    def __post_init__(self):
        # Resolve everything once: every kind setting and every run's hyperparameters are
        # checked here, so a bad params file fails before any stage starts.
        from mtml.search import parse

        self.searches = parse(self.params)
        for exp in self.experiments:
            for meth in self.methods:
                self.run(exp, meth)
        # A search's space: every choice and both ends of every range (a draw lies between
        # them); the drawn configurations resolve when a trial runs.
        for meth, search in self.searches.items():
            for exp in search.experiments:
                for key, value in search.corners():
                    self._resolve(exp, meth, self.seeds[0], {key: value}, None, f"a bound of its '{key}' range")
        ref = self.params.get("reference")
        if ref is not None and ref not in self.params["methods"]:
            raise UserError(f"params key 'reference' names method {ref!r}; defined methods: {', '.join(self.methods)}")
        if ref is not None and self.params.get("comparisons"):
            raise UserError("params keys 'reference' and 'comparisons' both choose compare.md's pairs; keep one")
        for i, (a, b) in enumerate(self.comparisons or []):
            for meth in (a, b):
                if meth not in self.params["methods"]:
                    raise UserError(f"params key 'comparisons[{i}]' names method {meth!r}; defined methods: "
                                    f"{', '.join(self.methods)}")
            if a == b:
                raise UserError(f"params key 'comparisons[{i}]' compares {a!r} with itself; name two methods")
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
    def comparisons(self) -> list[tuple[str, str]] | None:
        """Planned [method, versus] pairs for compare.md (None: `reference` or every pair)."""
        pairs = self.params.get("comparisons")
        return [tuple(p) for p in pairs] if pairs else None

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
            for key in FEWSHOT_ONLY:
                if key in cfg and not kind.fewshot_protocol:
                    raise UserError(f"params key 'experiments.{name}.{key}' is for experiments of kind "
                                    f"fewshot; experiment {name!r} is of kind {cfg['kind']}: remove it")
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

    def run(self, experiment: str, method: str, seed: int | None = None, selected: dict | None = None) -> Run:
        """The run of `method` on `experiment` with training seed `seed` (default: the first
        of `seeds`, the one analyses read). A searched run (`searched`) is trained with the
        configuration its search selected: pass it as `selected` (`mtml.search.read_selection`);
        without it the run has the method's params as given."""
        if seed is None:
            seed = self.seeds[0]
        elif int(seed) not in self.seeds:
            raise UserError(f"seed {seed} is not in params 'seeds' ({', '.join(map(str, self.seeds))})")
        if selected is not None:
            return self._resolve(experiment, method, int(seed), selected, None, "its search's selection")
        if (experiment, method, int(seed)) not in self._runs:
            self._runs[(experiment, method, int(seed))] = self._resolve(experiment, method, int(seed), {}, None, "")
        return self._runs[(experiment, method, int(seed))]

    def _resolve(self, experiment: str, method: str, seed: int, config: dict, trial: int | None,
                 origin: str) -> Run:
        """A run with a search configuration (`config`, from `origin`) over the method's params."""
        from mtml.methods import resolve_hparams
        from mtml.search import split

        exp = self.experiment(experiment)
        override = f"experiments.{experiment}.methods.{method}"
        hp_over, training = split(config)
        try:
            cls, hp = resolve_hparams(method, {**self.method_config(method, experiment), **hp_over})
            if origin:
                _check_training(training, method)
        except UserError as err:
            if origin:
                raise UserError(f"{err} (set by 'search.{method}.space': {origin})") from None
            if method in exp.config.get("methods", {}):
                raise UserError(f"{err} (as overridden by '{override}')") from None
            raise
        if trial is not None:
            search = self.searches[method]
            training["iterations"] = search.iterations or exp.training["iterations"]
        run = Run(self, exp, method, cls, hp, seed, training, trial)
        cls.check_run(run)
        exp.kind.check_run(run)
        return run

    # -- hyperparameter search (params `search`; mtml.search) ------------------------------
    def searched(self, experiment: str, method: str) -> bool:
        """Whether `method`'s runs on `experiment` train with a searched configuration."""
        return method in self.searches and experiment in self.searches[method].experiments

    def trial_configs(self, method: str) -> list[dict]:
        """The configurations the search of `method` draws, trial 0 first."""
        if method not in self._draws:
            self._draws[method] = self.searches[method].draw()
        return self._draws[method]

    def trial(self, experiment: str, method: str, trial: int) -> Run:
        """Trial `trial` of the search of `method` on `experiment`: the drawn configuration,
        the search's iterations, the first training seed."""
        if not self.searched(experiment, method):
            raise UserError(f"{method} is not searched on {experiment}: params 'search.{method}' "
                            f"{'does not list it' if method in self.searches else 'is not given'}")
        configs = self.trial_configs(method)
        if not 0 <= trial < len(configs):
            raise UserError(f"trial {trial} is not one of the {len(configs)} of params 'search.{method}.trials'")
        key = (experiment, method, "trial", trial)
        if key not in self._runs:
            self._runs[key] = self._resolve(experiment, method, self.seeds[0], configs[trial], trial,
                                            f"trial {trial}")
        return self._runs[key]

    def trials(self) -> list[Run]:
        """Every trial run of every search."""
        return [self.trial(e, m, t) for m, s in self.searches.items() for e in s.experiments
                for t in range(s.trials)]

    def runs(self) -> list[Run]:
        """Every run of the matrix: experiment x method x training seed (a search's trials:
        `trials()`)."""
        return [self.run(e, m, s) for e in self.experiments for m in self.methods for s in self.seeds]


def _check_training(training: dict, method: str) -> None:
    """Training keys a search may set (iterations are the search's own; val_episodes would
    change the validation episodes the trials are compared on)."""
    from mtml.options import Option, check_options

    check_options(training, {
        "meta_lr": Option(float, None, "Adam learning rate", min=0, above=True, nullable=False),
        "meta_batch": Option(int, None, "tasks per meta-update", min=1, nullable=False),
        "val_interval": Option(int, None, "iterations between validations", min=1, nullable=False),
    }, f"search.{method}.space.training", unknown="cannot be searched")
