"""Optimisation-based meta-learning: MAML (Finn et al. 2017), ANIL (Raghu et al. 2020) and
Meta-SGD (Li et al. 2017).

MAML adapts every parameter in the inner loop; ANIL adapts only the head on features of the
fixed backbone (Raghu et al., eq. 2), so the backbone is run once per episode. Meta-SGD is MAML
with a learned learning rate per parameter coordinate. All share the functional loop in
`inner_loop.adapt`; second order by default, `first_order: true` drops the second derivatives.

`adapt_task` returns a `TaskOutcome` (adapted weights, query loss and accuracy, ...): subclasses
that change only the inner update (Meta-SGD, the MetaLSTM family) override `inner_update`, and
task-level methods (TAML, task attention) read the per-task outcomes instead of a batch mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtml.methods.base import Episode, MetaLearner, accuracy, register
from mtml.methods.inner_loop import Params, UpdateRule, adapt, named_params, sgd_update
from mtml.models.conv4 import DOWNSAMPLE, Classifier
from mtml.options import Option


@dataclass
class TaskOutcome:
    """One task adapted: what the meta-objective and the task-level analyses need."""

    episode: Episode
    module: nn.Module  # the adapted module (the whole net, or the head for ANIL)
    init: Params  # the meta-parameters adaptation started from
    adapted: Params  # the task-specific parameters after the inner loop
    support_in: Tensor  # inputs of `module` (images, or backbone features for ANIL)
    query_in: Tensor
    logits: Tensor  # query logits under `adapted` (with graph to the meta-parameters)
    loss: Tensor  # query cross-entropy under `adapted`
    acc: Tensor


@register("maml")
class MAML(MetaLearner):
    options = {
        "filters": Option(int, 32, "conv filters per layer of the Conv-4 backbone", min=1),
        "inner_lr": Option(float, 0.4, "inner-loop SGD step size", min=0),
        "inner_steps": Option(int, 1, "inner-loop steps in meta-training", min=0),
        "eval_inner_steps": Option(int, 3, "inner-loop steps at evaluation", min=0),
        "first_order": Option(bool, False, "drop second derivatives (first-order MAML)"),
        # not recorded: runs made before the option existed keep their settings
        "downsample": Option(str, "maxpool", "how Conv-4 halves its maps: maxpool (2x2 max-pooling after "
                             "each block) | stride (stride-2 convolutions, SAME padding, features averaged "
                             "over the last map: Finn et al.'s Omniglot network; docs/protocols.md)",
                             choices=DOWNSAMPLE, recorded=False),  # default first
    }
    head_only = False

    def __init__(self, hp, image_shape, ways):
        super().__init__(hp, image_shape, ways)
        self.net = Classifier(self.image_shape, ways, hp["filters"],
                              hp.get("downsample", DOWNSAMPLE[0]))  # (MetaLSTM's options lack it)

    def adapted_module(self) -> nn.Module:
        return self.net.head if self.head_only else self.net

    def inner_update(self) -> UpdateRule:
        """A fresh update rule for one adaptation (stateful rules keep state per task)."""
        return sgd_update(self.hp["inner_lr"])

    def adapt_task(self, episode: Episode, steps: int, first_order: bool) -> TaskOutcome:
        """Adapt on the support set, then classify the query set with the adapted weights.

        Support and query pass through BatchNorm separately (batch statistics of each set),
        as in MAML's reference implementation.
        """
        module = self.adapted_module()
        if self.head_only:
            s_in, q_in = self.net.backbone(episode.support_x), self.net.backbone(episode.query_x)
        else:
            s_in, q_in = episode.support_x, episode.query_x
        init = named_params(module)
        new = adapt(module, init, s_in, episode.support_y, steps, self.inner_update(),
                    first_order=first_order)
        logits = torch.func.functional_call(module, new, (q_in,))
        return TaskOutcome(episode, module, init, new, s_in, q_in, logits,
                           nn.functional.cross_entropy(logits, episode.query_y),
                           accuracy(logits, episode.query_y))

    def clip_gradients(self) -> None:
        """Hook between backward and the meta-optimiser's step (the MetaLSTM family clips)."""

    def forward(self, episode: Episode) -> TaskOutcome:
        """The training-time adaptation; `functional_call(learner, meta_params, (episode,))`
        runs it from other meta-parameters (the task-attention look-ahead does)."""
        return self.adapt_task(episode, self.hp["inner_steps"], self.hp["first_order"])

    def query_logits(self, episode: Episode, steps: int, first_order: bool) -> Tensor:
        return self.adapt_task(episode, steps, first_order).logits

    def meta_loss(self, batch):
        if self.task_parallel == "vmap":
            from mtml.methods import parallel

            if parallel.family(self) == "gradient":
                return parallel.meta_loss(self, batch)
        outcomes = [self(ep) for ep in batch]
        return (torch.stack([o.loss for o in outcomes]).mean(),
                {"acc": float(torch.stack([o.acc for o in outcomes]).mean())})

    def predict(self, episode):
        return self.query_logits(episode, self.hp["eval_inner_steps"], first_order=True).detach()

    def embed(self, x):
        return self.net.backbone(x)


@register("anil")
class ANIL(MAML):
    head_only = True


class LearningRates(nn.Module):
    """One learning-rate tensor per adapted parameter, same shape, filled with `init`.

    Module attribute names cannot contain '.', so `backbone.blocks.0.conv.weight` is stored
    as `backbone-blocks-0-conv-weight`. With `learnable=False` they are buffers: saved with
    the model, never touched by the meta-optimiser.
    """

    def __init__(self, params: Params, init: float, learnable: bool):
        super().__init__()
        self.names = list(params)
        for name, p in params.items():
            value = torch.full_like(p.detach(), float(init))
            if learnable:
                self.register_parameter(name.replace(".", "-"), nn.Parameter(value))
            else:
                self.register_buffer(name.replace(".", "-"), value)

    def as_dict(self) -> dict[str, Tensor]:
        # getattr (not a cached dict) so that functional_call's substituted tensors are used
        return {name: getattr(self, name.replace(".", "-")) for name in self.names}


@register("metasgd")
class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017): theta_i = theta - alpha * grad, with alpha a learned tensor
    of the same shape as theta (initialised to `inner_lr`), meta-learned with theta. One
    inner step by default, as in the paper. `learn_lr: false` freezes alpha (then it is MAML
    with a constant learning rate)."""

    options = {
        **MAML.options,
        "inner_lr": Option(float, 0.4, "initial value of every learned learning rate", min=0),
        "inner_steps": Option(int, 1, "inner-loop steps in meta-training", min=0),
        "eval_inner_steps": Option(int, 1, "inner-loop steps at evaluation", min=0),
        "learn_lr": Option(bool, True, "meta-learn the learning rates (false: MAML with a constant rate)"),
    }

    def __init__(self, hp, image_shape, ways):
        super().__init__(hp, image_shape, ways)
        self.lrs = LearningRates(named_params(self.adapted_module()), hp["inner_lr"], bool(hp["learn_lr"]))

    def inner_update(self) -> UpdateRule:
        return sgd_update(self.lrs.as_dict())
