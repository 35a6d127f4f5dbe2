"""Registers experiment kind `multimodal` (stage functions load on first use)."""

from mtml.kinds import Kind, _lazy, register_kind
from mtml.multimodal.config import check

register_kind("multimodal", Kind(
    check=check,
    episodes=_lazy("mtml.multimodal.episodes", "build_multimodal_episodes"),
    train=_lazy("mtml.multimodal.train", "train"),
    evaluate=_lazy("mtml.multimodal.evaluate", "evaluate"),
))
