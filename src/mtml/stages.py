"""The stage drivers, written once for every experiment kind.

prepare -> episodes -> train -> evaluate -> aggregate / analyse. Each takes the resolved
study objects (`Study`, `Run`) and a `Layout`, and writes its outputs atomically; what differs
between kinds is asked of the kind plug-in (`mtml.kinds.Kind`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch

from mtml import speed
from mtml.kinds import ManifestSpec
from mtml.layout import Layout
from mtml.methods.base import MetaLearner, build_learner
from mtml.study import Experiment, Run, Study
from mtml.utils import atomic_path, derive_seed, write_json


# -- prepare -----------------------------------------------------------------------------------
def prepare(study: Study, layout: Layout, dataset: str) -> Path:
    from mtml.data.sources import prepare_dataset

    out = layout.prepared(dataset)
    prepare_dataset(dataset, study.dataset(dataset), layout.raw(dataset), out, study.seed)
    return out


# -- episodes ----------------------------------------------------------------------------------
def load_data(exp: Experiment, layout: Layout, dataset: str):
    return exp.kind.load(exp, layout.prepared(dataset), dataset)


def build_episodes(study: Study, layout: Layout, experiment: str) -> Path:
    exp = study.experiment(experiment)
    out = layout.episodes(experiment)
    data = {}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        files = {}
        for spec in exp.kind.manifests(study, exp):
            if spec.dataset not in data:
                data[spec.dataset] = load_data(exp, layout, spec.dataset)
                if spec.dataset in exp.kind.train_datasets(exp):  # the training stream's tasks
                    exp.kind.check_train_data(exp, data[spec.dataset])
            d = data[spec.dataset]
            exp.kind.build_manifest(exp, spec, d).to_parquet(tmp / spec.file, index=False)
            files[spec.file] = {"dataset": spec.dataset, "split": spec.split, "episodes": spec.episodes,
                                "content_md5": d.meta.get("content_md5"), **spec.keys}
        # The datasets' content hashes make downstream stages rerun when the data change.
        sources = {"kind": exp.kind.name, **exp.kind.sources(exp), "files": files}
        (tmp / "sources.json").write_text(json.dumps(sources, indent=2, sort_keys=True) + "\n")
    return out


def read_manifests(exp: Experiment, layout: Layout, roles: tuple[str, ...]) -> list[tuple[ManifestSpec, pd.DataFrame]]:
    """The experiment's fixed manifests of the given roles, in the kind's order."""
    folder = layout.episodes(exp.name)
    out = []
    for spec in exp.kind.manifests(layout.study, exp):
        if spec.role in roles:
            frame = exp.kind.read_manifest(folder / spec.file)
            out.append((spec, frame[frame["episode"] < spec.episodes]))
    return out


def load_banks(exp: Experiment, layout: Layout, datasets, device) -> dict:
    return {d: exp.kind.bank(exp, load_data(exp, layout, d), device) for d in dict.fromkeys(datasets)}


def input_hashes(exp: Experiment, layout: Layout) -> dict:
    """The content of what a run reads: each dataset's content md5 and the manifests' record."""
    sources = layout.episodes(exp.name) / "sources.json"
    return {"episodes": json.loads(sources.read_text()) if sources.exists() else None}


def file_md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# -- train -------------------------------------------------------------------------------------
def init_learner(run: Run, ctx, device) -> MetaLearner:
    """The method at its seeded initialisation (the one training starts from)."""
    torch.manual_seed(derive_seed(run.seed, run.experiment.name, run.method, "init"))
    return speed.prepare(build_learner(run, ctx).to(device), run.training)


def training_stream(run: Run, banks: dict):
    """The experiment's training tasks; shared by its methods, so they see the same tasks."""
    exp = run.experiment
    return exp.kind.stream(exp, banks, derive_seed(run.seed, exp.name, "train-episodes"))


def train(run: Run, layout: Layout, device) -> dict:
    from mtml.training.trainer import fit

    exp = run.experiment
    val = read_manifests(exp, layout, ("val",))
    banks = load_banks(exp, layout, exp.kind.train_datasets(exp) + [s.dataset for s, _ in val], device)
    ctx = exp.kind.context(exp, banks)
    learner = init_learner(run, ctx, device)
    inputs = input_hashes(exp, layout)
    if run.dependencies:  # e.g. distillation teachers, trained before this run
        learner.attach_dependencies({d.method: load_learner(d, layout, device) for d in run.dependencies})
        inputs["models"] = {str(p): file_md5(p) for p in layout.dependency_models(exp.name, run.method, run.seed)}
    info = {"method": run.method, "experiment": exp.name, "seed": run.seed, **ctx.info()}
    with speed.numerics(run.training, device):
        return fit(learner, training_stream(run, banks), lambda m: exp.kind.validate(exp, m, banks, val),
                   run.training, run.fingerprint(inputs), *layout.train_dirs(run),
                   device, run.label, info)


# -- evaluate ----------------------------------------------------------------------------------
def load_learner(run: Run, layout: Layout, device, path: Path | None = None) -> MetaLearner:
    """The trained model of `run` (model.pt, or `path`), in evaluation mode."""
    from mtml.methods.base import LearnerContext
    from mtml.training.checkpoint import load_model, load_weights

    path = Path(path or layout.model(run.experiment.name, run.method, run.seed))
    saved = load_model(path, device)
    tasks = run.experiment.settings.tasks if saved.get("tasks") else ()
    ctx = LearnerContext(tuple(saved["image_shape"]), saved["ways"], tuple(saved.get("modes") or ()), tuple(tasks))
    learner = speed.prepare(build_learner(run, ctx).to(device), run.training)
    return load_weights(learner, saved, path).eval()


def evaluate(run: Run, layout: Layout, device) -> list[dict]:
    exp = run.experiment
    learner = load_learner(run, layout, device)
    t0 = time.perf_counter()
    specs = read_manifests(exp, layout, ("test", "cross-domain"))
    banks: dict = {}
    scored = []
    for spec, manifest in specs:
        if spec.dataset not in banks:
            banks.update(load_banks(exp, layout, [spec.dataset], device))
        where = " ".join(f"{k} {v}" for k, v in spec.keys.items())
        label = f"eval {run.label} {spec.role}:{spec.dataset}" + (f" {where}" if where else "")
        with speed.numerics(run.training, device):
            frame = exp.kind.score(exp, learner, banks[spec.dataset], spec, manifest, label)
        frame.insert(0, "split", spec.role)
        frame.insert(1, "dataset", spec.dataset)
        for i, (k, v) in enumerate(spec.keys.items()):
            frame.insert(2 + i, k, v)
        scored.append((spec, frame))
    rows, details = exp.kind.summarise(run, learner, scored)
    eval_seconds = time.perf_counter() - t0
    run_dir = layout.run_dir(exp.name, run.method, run.seed)
    episodes = pd.concat([f for _, f in scored], ignore_index=True)
    if exp.kind.episode_columns:
        episodes = episodes.reindex(columns=exp.kind.episode_columns)
    with atomic_path(run_dir / "episodes.csv") as tmp:
        episodes.to_csv(tmp, index=False, float_format=exp.kind.csv_float_format)
    write_json(run_dir / "eval.json", rows)
    write_json(run_dir / "details.json", {"kind": exp.kind.name, **details})
    write_json(run_dir / "timing_eval.json", {"eval_seconds": round(eval_seconds, 3)})
    return rows


# -- aggregate / analyse ------------------------------------------------------------------------
def aggregate(study: Study, layout: Layout):
    from mtml.analysis.aggregate import aggregate as run_aggregate

    return run_aggregate(study, layout)


def analyse(study: Study, layout: Layout, name: str) -> Path:
    from mtml.analysis.registry import get_analysis

    fn = get_analysis(name)
    out = layout.analysis(name)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        fn(study, layout, tmp)
    return out
