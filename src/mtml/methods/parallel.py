"""Many tasks at once: `torch.func.vmap` over a method's own per-task code.

The batched path runs the very functions the per-task loop runs (`MAML.adapt_task` with the
inner loop's gradients taken by `torch.func.grad`, `ProtoNet.embed_and_logits`), so it cannot
drift from the loop: vmap turns each convolution into one call over every task's images and
BatchNorm still normalises each task's support and query sets by their own statistics (vmap's
batch-norm rule needs no running statistics, and Conv-4 keeps none). Results equal the loop's
to float rounding; tests/test_parallel.py checks logits and meta-gradients.

Used by meta-training (`training.task_parallel: vmap`, through `meta_loss`) and by the batched
evaluation (`mtml.evaluation.batched`). Methods that change the per-task code (modulated and
per-mode learners, learned optimisers) are not covered: `family` says None and they loop.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import vmap

from mtml.methods.base import Episode, MetaLearner, accuracy
from mtml.methods.gradient import MAML, MetaSGD
from mtml.methods.inner_loop import functional_grads
from mtml.methods.metric import ProtoNet
from mtml.models.conv4 import split_affine_batch_norm


@dataclass
class EpisodeBatch:
    """E episodes of one shape stacked: support_x [E, S, C, H, W], support_y [E, S], ..."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int

    @classmethod
    def stack(cls, episodes: list[Episode]) -> EpisodeBatch:
        return cls(*(torch.stack([getattr(ep, k) for ep in episodes])
                     for k in ("support_x", "support_y", "query_x", "query_y")), episodes[0].ways)

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.support_x, self.support_y, self.query_x, self.query_y


@dataclass
class BatchOutputs:
    """Per-episode results of a batch: query logits [E, Q, ways], query loss and accuracy [E],
    and the NIL features of support and query [E, n, D] when asked for."""

    logits: Tensor
    loss: Tensor
    acc: Tensor
    support_features: Tensor | None = None
    query_features: Tensor | None = None


def _overrides(cls: type, base: type, names: tuple[str, ...]) -> bool:
    return any(getattr(cls, n) is not getattr(base, n) for n in names)


def family(learner: MetaLearner) -> str | None:
    """'gradient' or 'metric' when the learner's per-task code is one vmap covers, else None.

    A subclass that replaces the adaptation, the inner update, prediction or the NIL features
    (MetaLSTM, the modulated and per-mode learners) falls back to the loop.
    """
    cls = type(learner)
    if cls.embed_episode is not MetaLearner.embed_episode:  # task-dependent features
        return None
    if isinstance(learner, MAML):
        base = MetaSGD if isinstance(learner, MetaSGD) else MAML
        if not _overrides(cls, base, ("adapt_task", "inner_update", "predict", "query_logits", "embed", "forward")):
            return "gradient"
    if isinstance(learner, ProtoNet) and not _overrides(
            cls, ProtoNet, ("embed_and_logits", "logits", "predict", "embed")):
        return "metric"
    return None


def batch_outputs(learner: MetaLearner, batch: EpisodeBatch, steps: int = 0, first_order: bool = True,
                  features: bool = False) -> BatchOutputs:
    """Run every episode of `batch` through the learner at once. Gradient methods adapt with
    `steps` inner steps (`first_order` as in `adapt_task`); `features` adds NIL's features
    (the prediction's own when it computed them: ProtoNet's embeddings, ANIL's backbone)."""
    kind = family(learner)
    if kind is None:
        raise ValueError(f"{learner.algorithm} has no batched path (mtml.methods.parallel.family)")
    ways = batch.ways
    if kind == "metric":
        def task(sx, sy, qx, qy):
            s, q, logits = learner.embed_and_logits(Episode(sx, sy, qx, qy, ways))
            return logits, torch.nn.functional.cross_entropy(logits, qy), accuracy(logits, qy), s, q

        logits, loss, acc, s, q = vmap(task)(*batch.tensors())
        return BatchOutputs(logits, loss, acc, s if features else None, q if features else None)

    head_only = learner.head_only

    def task(sx, sy, qx, qy):
        o = learner.adapt_task(Episode(sx, sy, qx, qy, ways), steps, first_order)
        extra = (o.support_in, o.query_in) if features and head_only else ()
        return (o.logits, o.loss, o.acc, *extra)

    second_order = not first_order and torch.is_grad_enabled()
    # bf16 autocast (training.amp): vmap's batch_norm backward then fails on the mixed
    # dtypes ("expected scalar type BFloat16 but found Float", torch 2.15); the split form works
    autocast = torch.is_autocast_enabled(batch.support_x.device.type)
    split = second_order or autocast
    with functional_grads(), split_affine_batch_norm() if split else contextlib.nullcontext():
        out = vmap(task)(*batch.tensors())
    result = BatchOutputs(*out[:3])
    if features:
        if head_only:  # ANIL's head adapted on the backbone's features: NIL's very features
            result.support_features, result.query_features = out[3], out[4]
        else:  # MAML's adapted backbone differs from the meta-backbone NIL reads
            result.support_features = vmap(learner.embed)(batch.support_x)
            result.query_features = vmap(learner.embed)(batch.query_x)
    return result


def meta_loss(learner: MetaLearner, episodes: list[Episode]) -> tuple[Tensor, dict]:
    """The meta-objective of `learner.meta_loss` (mean query loss over the meta-batch) with
    the tasks adapted in parallel."""
    batch = EpisodeBatch.stack(episodes)
    if family(learner) == "gradient":
        out = batch_outputs(learner, batch, learner.hp["inner_steps"], learner.hp["first_order"])
    else:
        out = batch_outputs(learner, batch)
    return out.loss.mean(), {"acc": float(out.acc.mean())}


# `training.task_parallel: auto` per device type, from the interleaved measurements in the
# README ("Tasks in parallel"): on CPU the loop is faster at the default sizes.
AUTO_TASK_PARALLEL = {"cpu": "loop", "cuda": "vmap"}


def resolve_task_parallel(setting: str, device: torch.device) -> str:
    """`training.task_parallel` as 'loop' or 'vmap'."""
    if setting == "auto":
        return AUTO_TASK_PARALLEL.get(device.type, "loop")
    return setting
