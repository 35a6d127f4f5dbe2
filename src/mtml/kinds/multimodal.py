"""Kind `multimodal`: tasks drawn from several datasets (modes) with one image shape
(Abdollahzadeh et al.; Vuorio et al.). Manifests: `val-<dataset>.parquet` and
`test-<dataset>.parquet` per mode; eval.json has a row per mode and one over all modes
(dataset "all"). Settings: `mtml.multimodal.config`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mtml.kinds import Kind, ManifestSpec
from mtml.utils import derive_seed

ALL = "all"


class Multimodal(Kind):
    name = "multimodal"

    def configure(self, study, exp):
        from mtml.multimodal.config import multimodal_config

        return multimodal_config(study.params, exp.name)

    def manifests(self, study, exp):
        counts = {"val": exp.training["val_episodes"], "test": exp.evaluation["episodes"]}
        specs = []
        for mode, dataset in enumerate(exp.settings.modes):
            for split, n in counts.items():
                fname = f"{split}-{dataset}.parquet"
                # Seeds depend on the episode settings, not on the method: all methods share them.
                seed = derive_seed(study.seed, exp.name, fname, exp.ways, exp.shots, exp.queries)
                specs.append(ManifestSpec(fname, dataset, split, split, n, seed, {"mode": mode}))
        return specs

    def build_manifest(self, exp, spec, data):
        from mtml.episodes.manifest import build_manifest

        return build_manifest(data, spec.split, exp.ways, exp.shots, exp.queries, spec.episodes, spec.seed,
                              exp.name)

    def sources(self, exp):
        return {**super().sources(exp), "modes": list(exp.settings.modes)}

    def load(self, exp, path, dataset):
        from dataclasses import replace

        from mtml.data.storage import load_prepared
        from mtml.multimodal.data import to_image_shape

        data = load_prepared(path, name=dataset)
        shape = exp.settings.image_shape
        images = to_image_shape(data.images, shape, where=f"dataset {dataset}")
        return replace(data, images=images, meta={**data.meta, "image_shape": list(shape)})

    def bank(self, exp, data, device):
        from mtml.multimodal.sampler import ModeImageBank

        return ModeImageBank(data, device, exp.settings.modes.index(data.name))

    def train_datasets(self, exp):
        return list(exp.settings.modes)

    def context(self, exp, banks):
        from mtml.methods.base import LearnerContext

        return LearnerContext(tuple(exp.settings.image_shape), exp.ways, tuple(exp.settings.modes))

    def stream(self, exp, banks, seed):
        from mtml.multimodal.sampler import MultimodalStream

        mm = exp.settings
        return MultimodalStream([banks[d] for d in mm.modes], mm.mode_mix, "train", exp.ways, exp.shots,
                                exp.queries, seed, mm.batch_mix)

    def validate(self, exp, learner, banks, val):
        from mtml.training.trainer import episodes_accuracy

        # Every mode has the same number of validation episodes: the mean of the per-mode
        # means is the mean over all of them.
        return float(np.mean([episodes_accuracy(learner, banks[spec.dataset], m) for spec, m in val]))

    def score(self, exp, learner, bank, spec, manifest, label):
        from mtml.evaluation.evaluate import evaluate_manifest

        return evaluate_manifest(learner, bank, manifest, label, exp.evaluation.get("episode_batch", "auto"),
                                 exp.evaluation.get("nil", "means"))

    def expected_rows(self, study, exp):
        return super().expected_rows(study, exp) | {("test", ALL)}

    def summarise(self, run, learner, scored):
        from mtml.evaluation.evaluate import summary_row

        rows = [summary_row(run, spec.role, spec.dataset, frame) for spec, frame in scored]
        everything = pd.concat([frame for _, frame in scored], ignore_index=True)
        rows.append(summary_row(run, "test", ALL, everything))
        return rows, {"rows": []}
