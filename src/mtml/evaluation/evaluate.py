"""Scoring fixed episodes: per-episode accuracy (kept for paired comparisons), the NIL metric,
and the eval.json row of a set of episodes (mean and 95% CI). The evaluate stage itself is
`mtml.stages.evaluate`, the same for every experiment kind."""

from __future__ import annotations

import pandas as pd
import torch

from mtml.episodes.manifest import manifest_arrays
from mtml.episodes.sampler import ImageBank, manifest_episodes
from mtml.evaluation import batched
from mtml.evaluation.stats import mean_ci95, nil_logits
from mtml.methods.base import MetaLearner
from mtml.utils import progress


def episode_embeddings(learner: MetaLearner, ep) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query features for NIL (`MetaLearner.embed_episode`)."""
    return learner.embed_episode(ep)


def evaluate_manifest(learner: MetaLearner, bank: ImageBank, manifest: pd.DataFrame, label: str,
                      episode_batch: int | str = 1, nil: str = "means") -> pd.DataFrame:
    """Per-episode accuracy and NIL accuracy. `episode_batch` (params `evaluation.episode_batch`)
    > 1 runs methods with a batched path through `mtml.evaluation.batched`; 1 is the
    per-episode reference loop; `auto` picks per device. `nil` (params `evaluation.nil`):
    NIL against class means or support samples (`mtml.evaluation.stats.nil_logits`)."""
    rows = []
    arrays = manifest_arrays(manifest)
    n = len(arrays.episodes)
    size = batched.resolve_episode_batch(episode_batch, learner, arrays, bank.image_shape, bank.device)
    bar, _ = progress(label, n)
    with bar, torch.no_grad():
        task = bar.add_task(label, total=n)
        # `episode_batch: 1` is the per-episode reference; otherwise (auto included) a
        # running-statistics metric learner embeds each test image once for all episodes
        if batched.embeds_once(learner) and str(episode_batch) != "1":
            rows = batched.evaluate_embedded_once(learner, bank, arrays, lambda k: bar.update(task, advance=k), nil)
            return pd.DataFrame(rows)
        if size > 1 and batched.supports(learner):
            rows = batched.evaluate_batches(learner, bank, arrays, size, lambda k: bar.update(task, advance=k),
                                            nil=nil)
            return pd.DataFrame(rows)
        for ep_id, ep in manifest_episodes(bank, manifest):
            logits, support, query = batched.predict_with_features(learner, ep)
            acc = (logits.argmax(-1) == ep.query_y).float().mean()
            nil_out = nil_logits(support, ep.support_y, query, ep.ways, nil)
            nil_acc = (nil_out.argmax(-1) == ep.query_y).float().mean()
            rows.append({"episode": ep_id, "accuracy": 100 * float(acc), "nil_accuracy": 100 * float(nil_acc)})
            bar.update(task, advance=1)
    return pd.DataFrame(rows)


def summary_row(run, split: str, dataset: str, frame: pd.DataFrame) -> dict:
    """One eval.json row of `run` (a `mtml.study.Run`): mean accuracy and NIL accuracy of
    `frame`'s episodes with 95% CIs."""
    acc, ci = mean_ci95(frame["accuracy"])
    nil, nil_ci = mean_ci95(frame["nil_accuracy"])
    exp = run.experiment
    return {"experiment": exp.name, "dataset": dataset, "split": split, "method": run.method,
            "algorithm": run.cls.algorithm, "ways": exp.ways, "shots": exp.shots,
            "queries": exp.queries, "episodes": len(frame),
            "accuracy": round(acc, 4), "ci95": round(ci, 4),
            "nil_accuracy": round(nil, 4), "nil_ci95": round(nil_ci, 4)}
