"""Meta-training on a multimodal task distribution, through the shared trainer loop
(`mtml.training.trainer.fit`) with the mode-mixing stream and per-mode validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mtml.methods import build, resolve_hparams
from mtml.methods.base import MetaLearner
from mtml.methods.multimodal import PerMode
from mtml.multimodal.config import MultimodalConfig, multimodal_config
from mtml.multimodal.episodes import read_mode_manifest
from mtml.multimodal.sampler import ModeImageBank, MultimodalStream, mode_banks
from mtml.params import experiment, method, training_config
from mtml.training.trainer import episodes_accuracy, fit, run_fingerprint
from mtml.utils import derive_seed


def build_learner(params: dict, exp: str, meth: str, mm: MultimodalConfig, ways: int) -> MetaLearner:
    """The method, with `modes` set to the experiment's number of modes for per-mode methods."""
    config = method(params, meth, exp)
    cls, _ = resolve_hparams(meth, config)
    if issubclass(cls, PerMode):
        config["modes"] = len(mm.modes)
    return build(meth, config, mm.image_shape, ways)


def training_stream(params: dict, exp: str, mm: MultimodalConfig, banks: list[ModeImageBank]) -> MultimodalStream:
    """The experiment's training tasks; shared by its methods, so they see the same tasks."""
    cfg = experiment(params, exp)
    return MultimodalStream(banks, mm.mode_mix, "train", cfg["ways"], cfg["shots"], cfg["queries"],
                            derive_seed(params["seed"], exp, "train-episodes"), mm.batch_mix)


def init_learner(params: dict, exp: str, meth: str, mm: MultimodalConfig, device) -> MetaLearner:
    """The method at its seeded initialisation (the one training starts from)."""
    torch.manual_seed(derive_seed(params["seed"], exp, meth, "init"))
    return build_learner(params, exp, meth, mm, experiment(params, exp)["ways"]).to(device)


def train(params: dict, exp: str, meth: str, processed_root: Path, episodes_root: Path,
          model_dir: Path, metrics_dir: Path, device: torch.device) -> dict:
    cfg, mm, tcfg = experiment(params, exp), multimodal_config(params, exp), training_config(params, exp)
    banks = mode_banks(mm, processed_root, device)
    val = [read_mode_manifest(episodes_root, exp, "val", ds, tcfg["val_episodes"]) for ds in mm.modes]

    def validate(learner: MetaLearner) -> float:
        # Every mode has the same number of validation episodes: the mean of the per-mode
        # means is the mean over all of them.
        return float(np.mean([episodes_accuracy(learner, bank, m) for bank, m in zip(banks, val)]))

    learner = init_learner(params, exp, meth, mm, device)
    stream = training_stream(params, exp, mm, banks)
    info = {"method": meth, "experiment": exp, "image_shape": list(mm.image_shape), "ways": cfg["ways"],
            "modes": list(mm.modes)}
    return fit(learner, stream, validate, tcfg, run_fingerprint(params, exp, meth), model_dir,
               metrics_dir, device, f"{exp}/{meth}", info)
