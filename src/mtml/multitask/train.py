"""Meta-training of a multitask experiment through the shared trainer loop
(`mtml.training.trainer.fit`) with the subtask stream and the multi-task validation score
(mean over high-level tasks of their accuracy, see `evaluate.validation_score`)."""

from __future__ import annotations

from pathlib import Path

import torch

from mtml.data.storage import load_prepared
from mtml.multitask.config import MultitaskConfig, learner_hparams, multitask_config
from mtml.multitask.data import SceneBank, SubtaskStream, read_manifest
from mtml.multitask.episodes import manifest_path
from mtml.multitask.evaluate import validation_score
from mtml.multitask.learners import MultiTaskLearner
from mtml.params import experiment, training_config
from mtml.training.trainer import fit, run_fingerprint
from mtml.utils import derive_seed


def init_learner(params: dict, exp: str, meth: str, mt: MultitaskConfig, image_shape, device) -> MultiTaskLearner:
    """The method at its seeded initialisation (the one training starts from)."""
    cls, hp = learner_hparams(params, meth, mt, exp)
    torch.manual_seed(derive_seed(params["seed"], exp, meth, "init"))
    return cls(hp, tuple(image_shape), experiment(params, exp)["ways"], mt.tasks).to(device)


def training_stream(params: dict, exp: str, mt: MultitaskConfig, bank: SceneBank) -> SubtaskStream:
    """The experiment's training subtasks; shared by its methods, so they see the same ones."""
    return SubtaskStream(bank, mt.tasks, mt.shape, derive_seed(params["seed"], exp, "train-episodes"))


def train(params: dict, exp: str, meth: str, processed_root: Path, episodes_root: Path,
          model_dir: Path, metrics_dir: Path, device: torch.device) -> dict:
    cfg, mt, tcfg = experiment(params, exp), multitask_config(params, exp), training_config(params, exp)
    bank = SceneBank(load_prepared(Path(processed_root) / cfg["dataset"]), mt.tasks, device)
    val = {}
    for t in mt.tasks:
        manifest = read_manifest(manifest_path(episodes_root, exp, "val", t.name))
        val[t.name] = manifest[manifest["episode"] < tcfg["val_episodes"]]
    learner = init_learner(params, exp, meth, mt, bank.image_shape, device)
    info = {"method": meth, "experiment": exp, "image_shape": list(bank.image_shape), "ways": cfg["ways"],
            "tasks": mt.task_names}
    return fit(learner, training_stream(params, exp, mt, bank), lambda m: validation_score(m, bank, mt, val),
               tcfg, run_fingerprint(params, exp, meth), model_dir, metrics_dir, device, f"{exp}/{meth}", info)
