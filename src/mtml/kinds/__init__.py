"""Experiment kinds: what is different about an experiment's tasks, and nothing else.

A kind says which fixed manifests its experiments need and how to build one, how to hold a
dataset in memory (its bank), how training draws tasks (its stream), what a learner is told
(its context), how a manifest is scored and how scores become eval.json rows. How files are
written, seeded, validated, resumed and timed is the stage drivers' (`mtml.stages`), written
once for every kind.

A new kind is one module with a `Kind` subclass and one line in `KINDS` (or, for a plug-in
outside this package, `kind: "package.module:ClassName"` in params).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mtml.errors import UserError

# name -> "module:attr", imported on first use
KINDS: dict[str, str] = {
    "fewshot": "mtml.kinds.fewshot:FewShot",
    "multimodal": "mtml.kinds.multimodal:Multimodal",
    "multitask": "mtml.kinds.multitask:Multitask",
}
_loaded: dict[str, Kind] = {}


@dataclass(frozen=True)
class ManifestSpec:
    """One fixed manifest of an experiment."""

    file: str              # file name inside the experiment's episodes folder
    dataset: str
    split: str             # the dataset split its classes come from: val | test
    role: str              # val (training's validation) | test | cross-domain (evaluation splits)
    episodes: int
    seed: int
    keys: dict = field(default_factory=dict)   # further columns of the unit (mode, task)


class Kind:
    """Base class of the kind plug-ins; the defaults fit N-way K-shot tasks on image banks."""

    name = ""
    # episodes.csv columns in order (None: as the frames come) and number format
    episode_columns: list[str] | None = None
    csv_float_format = "%.4f"
    # reads train_ways/train_shots/train_queries and test_episodes (mtml.study.FEWSHOT_ONLY)
    fewshot_protocol = False

    # -- params ----------------------------------------------------------------------------
    def configure(self, study, exp) -> Any:
        """Validate the experiment's kind settings (`experiments.<e>.options`) once; the
        result is `Experiment.settings`. Raise UserError naming the params key."""
        if exp.config.get("options"):
            key = sorted(exp.config["options"])[0]
            raise UserError(f"params key 'experiments.{exp.name}.options.{key}' is unknown: kind "
                            f"{self.name} has no options")
        return None

    def check_run(self, run) -> None:
        """Reject a method this kind cannot run (UserError naming the params key)."""
        from mtml.methods.multitask import MultiTaskLearner

        if issubclass(run.cls, MultiTaskLearner):
            raise UserError(f"params key 'methods.{run.method}.algorithm' is {run.cls.algorithm!r}, which needs "
                            f"an experiment of kind multitask; experiment {run.experiment.name!r} is of kind "
                            f"{self.name}")

    # -- the episodes stage ------------------------------------------------------------------
    def manifests(self, study, exp) -> list[ManifestSpec]:
        raise NotImplementedError

    def build_manifest(self, exp, spec: ManifestSpec, data) -> pd.DataFrame:
        raise NotImplementedError

    def check_train_data(self, exp, data) -> None:
        """Fail at episodes time, naming the params key, when the training stream could not draw
        its tasks from `data` (one of `train_datasets`)."""
        from mtml.episodes.manifest import check_sizes

        check_sizes(data, "train", exp.train_ways, exp.train_shots, exp.train_queries, exp.name,
                    prefix="train_" if exp.train_ways != exp.ways or exp.train_shots != exp.shots
                    or exp.train_queries != exp.queries else "")

    def read_manifest(self, path: Path) -> pd.DataFrame:
        from mtml.episodes.manifest import read_manifest

        return read_manifest(path)

    def sources(self, exp) -> dict:
        """Settings recorded in the episodes folder's sources.json beside the file list."""
        return {"ways": exp.ways, "shots": exp.shots, "queries": exp.queries}

    # -- data in memory ----------------------------------------------------------------------
    def load(self, exp, path: Path, dataset: str):
        from mtml.data.storage import load_prepared

        return load_prepared(path, name=dataset)

    def bank(self, exp, data, device):
        from mtml.episodes.sampler import ImageBank

        return ImageBank(data, device)

    def train_datasets(self, exp) -> list[str]:
        """The datasets training draws its tasks from."""
        return [exp.dataset]

    # -- training ----------------------------------------------------------------------------
    def context(self, exp, banks: dict):
        raise NotImplementedError

    def stream(self, exp, banks: dict, seed: int):
        raise NotImplementedError

    def tasks_of(self, batch) -> list:
        """The tasks of a meta-batch that `stream(...).batch(n)` returned."""
        return list(batch)

    def validate(self, exp, learner, banks: dict, val: list[tuple[ManifestSpec, pd.DataFrame]]) -> float | tuple[float, dict]:
        """Validation accuracy in % (best-checkpoint selection, train_log.csv)."""
        raise NotImplementedError

    # -- evaluation --------------------------------------------------------------------------
    def score(self, exp, learner, bank, spec: ManifestSpec, manifest: pd.DataFrame, label: str) -> pd.DataFrame:
        """Per-episode results of one manifest: episode, accuracy, nil_accuracy, ..."""
        raise NotImplementedError

    def expected_rows(self, study, exp) -> set[tuple[str, str]]:
        """The (split, dataset) of every eval.json row a run of `exp` must have."""
        return {(s.role, s.dataset) for s in self.manifests(study, exp) if s.role != "val"}

    def table_episodes(self, exp, episodes: pd.DataFrame) -> pd.DataFrame:
        """The rows of a run's episodes.csv behind its eval.json rows (the summary table's);
        the paired comparisons use every row."""
        return episodes

    def summarise(self, run, learner, scored: list[tuple[ManifestSpec, pd.DataFrame]]) -> tuple[list[dict], dict]:
        """(eval.json rows, details.json content) from the scored manifests."""
        raise NotImplementedError


def _resolve(ref: str, key: str) -> Kind:
    module, _, attr = ref.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"params key '{key}' names kind {ref!r}, which cannot be imported ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Kind)):
        raise UserError(f"params key '{key}': {ref!r} is not a mtml.kinds.Kind subclass")
    kind = cls()
    kind.name = kind.name or ref
    return kind


def get_kind(name: str, key: str = "experiments.<name>.kind") -> Kind:
    """The kind plug-in of a registered name, or of a "module:Class" reference."""
    if name not in _loaded:
        if name in KINDS:
            _loaded[name] = _resolve(KINDS[name], key)
        elif ":" in name:
            _loaded[name] = _resolve(name, key)
        else:
            raise UserError(f"params key '{key}' is {name!r}; allowed: {', '.join(sorted(KINDS))} "
                            f"(or a plug-in as \"module:Class\")")
    return _loaded[name]
