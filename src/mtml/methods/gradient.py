"""Optimisation-based meta-learning: MAML (Finn et al. 2017) and ANIL (Raghu et al. 2020).

MAML adapts every parameter in the inner loop; ANIL adapts only the head on features of the
fixed backbone (Raghu et al., eq. 2), so the backbone is run once per episode. Both share the
functional loop in `inner_loop.adapt`; second order by default, `first_order: true` drops the
second derivatives.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtml.methods.base import Episode, MetaLearner, accuracy, register
from mtml.methods.inner_loop import adapt, named_params, sgd_update
from mtml.models.conv4 import Classifier


@register("maml")
class MAML(MetaLearner):
    defaults = {
        "filters": 32,
        "inner_lr": 0.4,
        "inner_steps": 1,
        "eval_inner_steps": 3,
        "first_order": False,
    }
    head_only = False

    def __init__(self, hp, image_shape, ways):
        super().__init__(hp, image_shape, ways)
        self.net = Classifier(self.image_shape, ways, hp["filters"])

    def query_logits(self, episode: Episode, steps: int, first_order: bool) -> Tensor:
        """Adapt on the support set, then classify the query set with the adapted weights.

        Support and query pass through BatchNorm separately (batch statistics of each set),
        as in MAML's reference implementation.
        """
        if self.head_only:
            module, params = self.net.head, named_params(self.net.head)
            s_in, q_in = self.net.backbone(episode.support_x), self.net.backbone(episode.query_x)
        else:
            module, params = self.net, named_params(self.net)
            s_in, q_in = episode.support_x, episode.query_x
        new = adapt(module, params, s_in, episode.support_y, steps,
                    sgd_update(self.hp["inner_lr"]), first_order=first_order)
        return torch.func.functional_call(module, new, (q_in,))

    def meta_loss(self, batch):
        losses, accs = [], []
        for ep in batch:
            logits = self.query_logits(ep, self.hp["inner_steps"], self.hp["first_order"])
            losses.append(torch.nn.functional.cross_entropy(logits, ep.query_y))
            accs.append(accuracy(logits, ep.query_y))
        return torch.stack(losses).mean(), {"acc": float(torch.stack(accs).mean())}

    def predict(self, episode):
        return self.query_logits(episode, self.hp["eval_inner_steps"], first_order=True).detach()

    def embed(self, x):
        return self.net.backbone(x)


@register("anil")
class ANIL(MAML):
    head_only = True
