"""Methods, one module per family, all behind `MetaLearner` and built by name.

ALGORITHMS is the one table of algorithms (name -> "module:class"); a family module is
imported the first time one of its algorithms is asked for, so checking names imports nothing
(not even torch). `build`, `build_learner`, `resolve_hparams`, `MetaLearner`, `LearnerContext` and `Episode`
load `base` lazily.
"""

from mtml.registry import Registry

ALGORITHMS = {
    "maml": "mtml.methods.gradient:MAML",
    "anil": "mtml.methods.gradient:ANIL",
    "metasgd": "mtml.methods.gradient:MetaSGD",
    "protonet": "mtml.methods.metric:ProtoNet",
    "pixel-nn": "mtml.methods.metric:PixelNearestNeighbour",
    "matchingnet": "mtml.methods.matching:MatchingNet",
    "mmaml": "mtml.methods.multimodal:MMAML",
    "mmaml-kml": "mtml.methods.multimodal:MMAMLKML",
    "mprotonet": "mtml.methods.multimodal:MProtoNet",
    "mprotonet-kml": "mtml.methods.multimodal:MProtoNetKML",
    "multi-maml": "mtml.methods.multimodal:MultiMAML",
    "multi-protonet": "mtml.methods.multimodal:MultiProtoNet",
    "metalstm": "mtml.methods.learned_optimizer:MetaLSTM",
    "metalstm++": "mtml.methods.learned_optimizer:MetaLSTMPlusPlus",
    "taml": "mtml.methods.task_weighting:TAML",
    "ta-maml": "mtml.methods.task_weighting:TaskAttendedMAML",
    "ta-metasgd": "mtml.methods.task_weighting:TaskAttendedMetaSGD",
    "ta-metalstm++": "mtml.methods.task_weighting:TaskAttendedMetaLSTM",
    "mt-anil": "mtml.methods.multitask:MultiTaskANIL",
    "mt-am": "mtml.methods.multitask:MultiTaskAM",
    "mt-pam": "mtml.methods.multitask:MultiTaskPAM",
    "mt-maml": "mtml.methods.multitask:MultiTaskMAML",
}
METHODS = Registry("algorithm", ALGORITHMS)
REGISTRY = METHODS  # the old name: algorithm -> class

_BASE = ("Episode", "LearnerContext", "MetaLearner", "build", "build_learner", "resolve_hparams")


def __getattr__(name: str):
    if name in _BASE:
        from mtml.methods import base

        return getattr(base, name)
    raise AttributeError(f"module 'mtml.methods' has no attribute {name!r}")


__all__ = ["ALGORITHMS", "METHODS", "REGISTRY", *_BASE]
