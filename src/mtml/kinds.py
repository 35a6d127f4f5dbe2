"""Experiment kinds: how an experiment's episodes are built, trained and evaluated.

`fewshot` is N-way K-shot classification on one dataset. Other kinds (multimodal task
distributions, heterogeneous multi-task learning) register here with the same three stage
functions, so the CLI, Snakemake and DVC stay one stage graph for all of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Kind:
    # check(params, experiment) -> None: raise UserError on bad kind-specific settings
    check: Callable
    # episodes(params, experiment, processed_root, episodes_root) -> Path
    episodes: Callable
    # train(params, experiment, method, processed_root, episodes_root, model_dir, metrics_dir, device) -> dict
    train: Callable
    # evaluate(params, experiment, method, model_path, processed_root, episodes_root, metrics_dir, device) -> rows
    evaluate: Callable


KINDS: dict[str, Kind] = {}

# Modules that register kinds on import (besides fewshot, registered below).
KIND_MODULES: list[str] = ["mtml.multimodal.kind", "mtml.multitask.kind"]


def register_kind(name: str, kind: Kind) -> None:
    KINDS[name] = kind


def _fewshot_check(params: dict, name: str) -> None:
    return None


def _lazy(module: str, attr: str) -> Callable:
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    return call


register_kind("fewshot", Kind(
    check=_fewshot_check,
    episodes=_lazy("mtml.episodes.build", "build_experiment_episodes"),
    train=_lazy("mtml.training.trainer", "train"),
    evaluate=_lazy("mtml.evaluation.evaluate", "evaluate"),
))

for _mod in KIND_MODULES:
    importlib.import_module(_mod)
