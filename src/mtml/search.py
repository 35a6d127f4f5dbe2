"""Hyperparameter search as pipeline stages: trials drawn up front, one job per trial.

A `search:` block in params names methods whose hyperparameters are searched before their
real runs (Aimen et al. 2021: 30 configurations drawn log-uniformly, 5k iterations each, the
best on validation retrained in full):

    search:
      ta-maml:                       # a method of `methods`
        trials: 30                   # configurations drawn
        iterations: 5000             # training iterations of each trial (null: the full training)
        seed: 0                      # the sampler's seed
        experiments: [mini-5w1s]     # default: every experiment
        space:                       # key -> one range
          training.meta_lr: {log_uniform: [1.0e-4, 1.0e-2]}   # training.<key>: the training block
          inner_lr: {log_uniform: [1.0e-2, 0.5]}              # other keys: the method's hyperparameters
          attention_layers: {choice: [1, 2]}

Per searched experiment x method the stage graph is: `trials` trial trainings (independent
jobs, so a cluster runs them in parallel; trial t trains with configuration t), then `select`
(the best validation accuracy on the experiment's fixed validation episodes; ties go to the
lower trial number), then the method's usual runs, trained and evaluated with the selected
configuration. Trials train with the first training seed, on the same episode stream and from
the same initialisation as the final run, so they differ only in their hyperparameters.

The configurations come from Optuna's RandomSampler with the search's seed, asked for every
trial up front (the sampler draws each trial independently, which is what lets the trials run
at once; a sampler that learns from finished trials would serialise them). The draw depends
only on the search block, so the stage graph is known before any trial runs, and `select`
stores the drawn values with their scores (selection.json, trials.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from mtml.errors import UserError
from mtml.options import Option, check_options

RANGES = ("log_uniform", "uniform", "choice")
TRAINING = "training."   # space keys with this prefix set the training block
METRIC = "best_val_accuracy"   # what `select` maximises (train.json of each trial)

OPTIONS = {
    "trials": Option(int, 30, "configurations drawn (one training job each)", min=1),
    "iterations": Option(int, None, "training iterations of each trial (null: the experiment's "
                         "training.iterations)", min=1),
    "seed": Option(int, 0, "seed of the sampler that draws the configurations", min=0),
    "experiments": Option(list, None, "experiments searched (null: every experiment); the other "
                          "experiments train the method with its params as given", items=str),
    "space": Option(dict, {}, "hyperparameter -> range: {log_uniform: [low, high]}, "
                    "{uniform: [low, high]} or {choice: [values]}; `training.<key>` for a "
                    "training setting (e.g. training.meta_lr), other keys are the method's"),
}


@dataclass(frozen=True)
class Search:
    method: str
    trials: int
    iterations: int | None
    seed: int
    experiments: tuple[str, ...]
    space: dict           # key -> (range kind, argument)

    def distributions(self) -> dict:
        """The space as Optuna distributions, in a fixed (sorted) order."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        out = {}
        for key in sorted(self.space):
            kind, arg = self.space[key]
            out[key] = (CategoricalDistribution(list(arg)) if kind == "choice"
                        else FloatDistribution(arg[0], arg[1], log=kind == "log_uniform"))
        return out

    def draw(self) -> list[dict]:
        """The trials' configurations, trial 0 first: the same for the same block, whatever
        ran before (a fresh in-memory Optuna study each time)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.RandomSampler(seed=self.seed)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        dists = self.distributions()
        return [_plain(study.ask(dists).params) for _ in range(self.trials)]

    def corners(self) -> list[tuple[str, object]]:
        """(key, value) pairs that bound the space: every choice and both ends of a range
        (each must be a valid setting, whether or not a trial draws it)."""
        return [(k, v) for k, (kind, arg) in self.space.items() for v in arg]


def _plain(values: dict) -> dict:
    """Python scalars (numpy's would not survive YAML/JSON round trips the same way)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}


def split(config: dict) -> tuple[dict, dict]:
    """A configuration as (method hyperparameters, training overrides)."""
    method = {k: v for k, v in config.items() if not k.startswith(TRAINING)}
    training = {k[len(TRAINING):]: v for k, v in config.items() if k.startswith(TRAINING)}
    return method, training


def _range(key: str, spec) -> tuple[str, object]:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in RANGES:
        raise UserError(f"params key '{key}' must be one range: {{log_uniform: [low, high]}}, {{uniform: [low, high]}} "
                        f"or {{choice: [values]}}; got {spec!r}")
    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise UserError(f"params key '{key}.choice' must be a non-empty list of values; got {arg!r}")
        return kind, tuple(arg)
    ok = (isinstance(arg, list) and len(arg) == 2
          and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in arg))
    if not ok or not arg[0] < arg[1]:
        raise UserError(f"params key '{key}.{kind}' must be [low, high] with low < high; got {arg!r}")
    if kind == "log_uniform" and arg[0] <= 0:
        raise UserError(f"params key '{key}.log_uniform' needs low > 0 (it is uniform in log); got {arg!r}")
    return kind, (float(arg[0]), float(arg[1]))


def parse(params: dict) -> dict[str, Search]:
    """The validated `search:` block: method -> Search (names checked against params)."""
    out = {}
    for method, block in (params.get("search") or {}).items():
        where = f"search.{method}"
        if method not in params["methods"]:
            raise UserError(f"params key '{where}' names method {method!r}; defined methods: "
                            f"{', '.join(params['methods'])}")
        cfg = check_options(block, OPTIONS, where)
        if not cfg["space"]:
            raise UserError(f"params key '{where}.space' is empty: give at least one hyperparameter range")
        experiments = cfg["experiments"] if cfg["experiments"] is not None else list(params["experiments"])
        for e in experiments:
            if e not in params["experiments"]:
                raise UserError(f"params key '{where}.experiments' names experiment {e!r}; defined: "
                                f"{', '.join(params['experiments'])}")
        space = {k: _range(f"{where}.space.{k}", v) for k, v in cfg["space"].items()}
        out[method] = Search(method, cfg["trials"], cfg["iterations"], cfg["seed"],
                             tuple(dict.fromkeys(experiments)), space)
    return out


# -- selection --------------------------------------------------------------------------------
def select(scores: list[float]) -> int:
    """The trial with the best validation score (the lowest trial number among equals)."""
    if not scores:
        raise ValueError("no trials to select from")
    return max(range(len(scores)), key=lambda t: (scores[t], -t))


def selection_record(search: Search, experiment: str, configs: list[dict], results: list[dict]) -> dict:
    """What selection.json holds: every trial's configuration and score, and the choice."""
    best = select([r[METRIC] for r in results])
    return {"experiment": experiment, "method": search.method, "metric": METRIC, "seed": search.seed,
            "iterations": search.iterations, "selected": best, "config": configs[best],
            "trials": [{"trial": t, "config": c, **{k: r[k] for k in (METRIC, "best_iteration")}}
                       for t, (c, r) in enumerate(zip(configs, results, strict=True))]}


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trials_table(record: dict, search: Search) -> str:
    """trials.md: one row per trial, sorted by score, the selected one marked."""
    keys = sorted(search.space)
    ranges = ", ".join(f"`{k}` {search.space[k][0]} {list(search.space[k][1])}" for k in keys)
    rows = sorted(record["trials"], key=lambda r: (-r[METRIC], r["trial"]))
    lines = [f"# Search: {record['method']} on {record['experiment']}", "",
             f"{len(rows)} trials drawn by Optuna's RandomSampler (seed {record['seed']}) from {ranges}; "
             f"each trained {record['iterations'] or 'the full'} iterations; selected: trial "
             f"{record['selected']} (best validation accuracy on the fixed validation episodes).", "",
             "| trial | " + " | ".join(keys) + " | best val acc (%) | at iteration | selected |",
             "|---" * (len(keys) + 4) + "|"]
    for r in rows:
        mark = "**yes**" if r["trial"] == record["selected"] else ""
        lines.append(f"| {r['trial']} | " + " | ".join(_fmt(r["config"][k]) for k in keys)
                     + f" | {r[METRIC]:.2f} | {r['best_iteration']} | {mark} |")
    return "\n".join(lines) + "\n"


def read_selection(path: Path, experiment: str, method: str) -> dict:
    """The selected configuration of a searched run, or one clear error when it is missing."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} is missing: {method} is searched on {experiment} (params 'search.{method}'); "
                        f"run its trials and `python -m mtml select --experiment {experiment} --method {method}` "
                        f"first (Snakemake and dvc repro do this in order)")
    return json.loads(path.read_text())["config"]


def run_select(study, layout, experiment: str, method: str) -> dict:
    """The `select` stage: read every trial's train.json, write selection.json and trials.md."""
    from mtml.utils import write_json, write_text

    if not study.searched(experiment, method):
        raise UserError(f"{method} is not searched on {experiment} (params 'search.{method}')")
    search = study.searches[method]
    results = []
    for t in range(search.trials):
        path = layout.trial_dir(experiment, method, t) / "train.json"
        if not path.exists():
            raise UserError(f"{path} is missing: train trial {t} first (`python -m mtml train --experiment "
                            f"{experiment} --method {method} --trial {t}`)")
        results.append(json.loads(path.read_text()))
    record = selection_record(search, experiment, study.trial_configs(method), results)
    write_text(layout.search_table(experiment, method), trials_table(record, search))
    write_json(layout.selection(experiment, method), record)
    return record


def resolve_run(study, layout, experiment: str, method: str, seed=None, trial: int | None = None):
    """The run a train/evaluate stage executes: a trial, a searched run with its selected
    configuration, or a plain run."""
    if trial is not None:
        return study.trial(experiment, method, trial)
    if study.searched(experiment, method):
        return study.run(experiment, method, seed,
                         selected=read_selection(layout.selection(experiment, method), experiment, method))
    return study.run(experiment, method, seed)
