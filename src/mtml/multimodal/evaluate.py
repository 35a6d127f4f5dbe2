"""Evaluation of a multimodal experiment on each mode's fixed test episodes: one eval.json row
per mode (dataset = the mode's dataset) and one over all modes (dataset = "all"), in the
format of `mtml.evaluation.evaluate`, so the shared aggregate stage reads them."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from mtml.evaluation.evaluate import evaluate_manifest, summary_row
from mtml.methods.base import MetaLearner
from mtml.multimodal.config import MultimodalConfig, multimodal_config
from mtml.multimodal.episodes import read_mode_manifest
from mtml.multimodal.sampler import mode_banks
from mtml.multimodal.train import build_learner
from mtml.params import experiment
from mtml.training.checkpoint import load_model, load_weights
from mtml.utils import atomic_path, write_json

ALL = "all"


def load_learner(params: dict, exp: str, meth: str, mm: MultimodalConfig, model_path: Path, device) -> MetaLearner:
    saved = load_model(model_path, device)
    learner = build_learner(params, exp, meth, mm, saved["ways"]).to(device)
    return load_weights(learner, saved, model_path).eval()


def evaluate(params: dict, exp: str, meth: str, model_path: Path, processed_root: Path,
             episodes_root: Path, metrics_dir: Path, device) -> list[dict]:
    cfg, mm = experiment(params, exp), multimodal_config(params, exp)
    learner = load_learner(params, exp, meth, mm, model_path, device)
    t0 = time.perf_counter()
    frames, summary = [], []
    for bank in mode_banks(mm, processed_root, device):
        dataset = bank.data.name
        frame = evaluate_manifest(learner, bank, read_mode_manifest(episodes_root, exp, "test", dataset),
                                  f"eval {exp}/{meth} mode {bank.mode}:{dataset}")
        frame.insert(0, "split", "test")
        frame.insert(1, "dataset", dataset)
        frame.insert(2, "mode", bank.mode)
        frames.append(frame)
        summary.append(summary_row(exp, cfg, meth, learner, "test", dataset, frame))
    everything = pd.concat(frames, ignore_index=True)
    summary.append(summary_row(exp, cfg, meth, learner, "test", ALL, everything))
    eval_seconds = time.perf_counter() - t0
    with atomic_path(Path(metrics_dir) / "episodes.csv") as tmp:
        everything.to_csv(tmp, index=False, float_format="%.4f")
    write_json(Path(metrics_dir) / "eval.json", summary)
    write_json(Path(metrics_dir) / "timing_eval.json", {"eval_seconds": round(eval_seconds, 3)})
    return summary
