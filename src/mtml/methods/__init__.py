"""Methods, one module per family, all behind `MetaLearner` and built by name."""

import importlib

from mtml.methods.base import (
    REGISTRY,
    Episode,
    LearnerContext,
    MetaLearner,
    build,
    build_learner,
    resolve_hparams,
)

# Each family module registers its algorithms on import.
FAMILY_MODULES = [
    "mtml.methods.gradient",
    "mtml.methods.metric",
    "mtml.methods.multimodal",
    "mtml.methods.learned_optimizer",
    "mtml.methods.task_weighting",
    "mtml.methods.multitask",
]

for _mod in FAMILY_MODULES:
    importlib.import_module(_mod)

__all__ = ["REGISTRY", "Episode", "LearnerContext", "MetaLearner", "build", "build_learner", "resolve_hparams"]
