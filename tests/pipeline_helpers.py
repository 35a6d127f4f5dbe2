"""Shared test helpers: a tiny params dict and an in-process run of the stages."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import torch

from mtml.benchmark import random_episode  # noqa: F401  (re-exported for the tests)
from mtml.layout import Layout
from mtml.params import study as make_study

TINY = {
    "seed": 0,
    "device": "cpu",
    "threads": 1,
    "datasets": {
        "glyphs": {"source": "glyphs", "options": {"alphabets": 12, "characters_per_alphabet": 8,
                                                   "drawers": 12, "split": [8, 2, 2]}},
        "glyphs-shifted": {"source": "glyphs", "options": {"style": "shifted", "alphabets": 4,
                                                           "characters_per_alphabet": 8, "drawers": 12,
                                                           "split": [2, 1, 1]}},
    },
    "experiments": {"tiny": {"dataset": "glyphs", "cross_domain": ["glyphs-shifted"], "ways": 5,
                             "shots": 1, "queries": 5}},
    "methods": {"protonet": {"filters": 16}, "maml": {"filters": 16}},
    "training": {"iterations": 30, "meta_batch": 2, "meta_lr": 0.003, "val_interval": 15, "val_episodes": 10},
    "evaluation": {"episodes": 30},
}


def tiny_params(**overrides):
    """The Study of TINY with top-level keys replaced (e.g. methods={...})."""
    p = copy.deepcopy(TINY)
    p.update(copy.deepcopy(overrides))
    return make_study(p, ["tiny.yaml"])


def run_pipeline(study, root: Path, methods=None, device="cpu", evaluate_on=None) -> dict:
    """prepare -> episodes -> train (on `device`) -> evaluate (on `evaluate_on`, default the
    same device) for every (experiment, method, training seed) of `study` under `root`,
    whatever the kind.

    Returns {(experiment, method): eval rows} for the first seed, and
    {(experiment, method, seed): eval rows} for further seeds. Inputs are built once per root.
    """
    from mtml import stages

    layout = Layout(root, study)
    for name in study.datasets:
        if not layout.prepared(name).exists():
            stages.prepare(study, layout, name)
    results = {}
    train_dev = torch.device(device)
    eval_dev = torch.device(evaluate_on) if evaluate_on is not None else train_dev
    for exp in study.experiments:
        if not layout.episodes(exp).exists():
            stages.build_episodes(study, layout, exp)
        for meth in methods or study.methods:
            for seed in study.seeds:
                run = study.run(exp, meth, seed)
                stages.train(run, layout, train_dev)
                key = (exp, meth) if seed == study.seeds[0] else (exp, meth, seed)
                results[key] = stages.evaluate(run, layout, eval_dev)
    return results




class FlatLayout(Layout):
    """A layout with unkeyed input folders (<root>/processed/<dataset>, <root>/episodes/<exp>),
    for tests that prepare datasets with options the study does not list."""

    def prepared(self, dataset):
        return self.root / "processed" / dataset

    def episodes(self, experiment):
        return self.root / "episodes" / experiment


ROOT = Path(__file__).resolve().parents[1]
# Subprocesses find the venv's snakemake, dvc and python first.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run_command(cmd, cwd, timeout=900, **kw) -> subprocess.CompletedProcess:
    """Run a command; fail the test with the end of its output when it fails."""
    r = subprocess.run(cmd, cwd=cwd, env=kw.pop("env", ENV), capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def project_dir(tmp: Path, params: dict | None = None, env: dict | None = None) -> Path:
    """A project folder (Snakefile, workflow/, .gitignore) whose params.yaml is `params`
    (default: configs/tiny.yaml), with the dvc.yaml generated for it (in `env`, default ENV)."""
    import shutil

    import yaml

    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Snakefile", tmp / "Snakefile")
    shutil.copy(ROOT / ".gitignore", tmp / ".gitignore")
    shutil.copytree(ROOT / "workflow", tmp / "workflow")
    p = params or yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    (tmp / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run_command([sys.executable, "-m", "mtml", "dvc-yaml"], tmp, env=env or ENV)
    return tmp
