"""Registers experiment kind `multitask` (Lekkala & Itti: heterogeneous high-level tasks,
each split into subtasks) and, through `learners`, the algorithms mt-anil, mt-am, mt-pam
and mt-maml. Stage functions load on first use."""

from mtml.kinds import Kind, _lazy, register_kind
from mtml.multitask.config import check

register_kind("multitask", Kind(
    check=check,
    episodes=_lazy("mtml.multitask.episodes", "build_multitask_episodes"),
    train=_lazy("mtml.multitask.train", "train"),
    evaluate=_lazy("mtml.multitask.evaluate", "evaluate"),
))
