"""Metric-based methods: ProtoNet (Snell et al. 2017) and the raw-pixel nearest-neighbour
baseline that tells us how much of a benchmark pixels alone solve."""

from __future__ import annotations

import torch
from torch import Tensor

from mtml.methods.base import Episode, MetaLearner, accuracy, register
from mtml.models.conv4 import Conv4
from mtml.options import Option


def prototypes(support: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Class means of the support embeddings, [ways, D]."""
    one_hot = torch.nn.functional.one_hot(labels, ways).to(support.dtype)
    return (one_hot.T @ support) / one_hot.sum(0, keepdim=True).T


def squared_euclidean_logits(query: Tensor, protos: Tensor) -> Tensor:
    """logits[q, c] = -||query_q - proto_c||^2 (Snell et al., eq. 2)."""
    return -((query[:, None, :] - protos[None, :, :]) ** 2).sum(-1)


BATCH_NORM = Option(str, "transductive", "transductive: BatchNorm with the statistics of the batch at "
                    "hand, also at test (MAML's reference code); running: running averages from "
                    "meta-training normalise at test (ProtoNet's reference code)",
                    choices=("transductive", "running"))


def embed_episode_sets(backbone, hp: dict, support_x: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
    """Support and query embeddings. Transductive BatchNorm normalises each set by itself;
    with running statistics both go through as one batch, as ProtoNet's reference code does
    (`torch.cat([xs, xq])`), which in eval mode is the same as two passes."""
    if hp["batch_norm"] == "running":
        z = backbone(torch.cat([support_x, query_x]))
        return z[:len(support_x)], z[len(support_x):]
    return backbone(support_x), backbone(query_x)


def per_episode_meta_loss(learner: MetaLearner, batch, loss_fn) -> tuple[Tensor, dict]:
    """Mean query loss (`loss_fn(learner.logits(ep), ep.query_y)`) and accuracy over the
    meta-batch, one episode after another."""
    losses, accs = [], []
    for ep in batch:
        logits = learner.logits(ep)
        losses.append(loss_fn(logits, ep.query_y))
        accs.append(accuracy(logits, ep.query_y))
    return torch.stack(losses).mean(), {"acc": float(torch.stack(accs).mean())}


@register("protonet")
class ProtoNet(MetaLearner):
    any_ways = True
    options = {"filters": Option(int, 32, "conv filters per layer of the Conv-4 backbone", min=1),
               "batch_norm": BATCH_NORM}

    def __init__(self, hp, image_shape, ways):
        super().__init__(hp, image_shape, ways)
        self.backbone = Conv4(image_shape[0], hp["filters"], running_stats=hp["batch_norm"] == "running")

    def embed_and_logits(self, episode: Episode) -> tuple[Tensor, Tensor, Tensor]:
        """Support and query embeddings and the query logits (NIL reuses the embeddings)."""
        support, query = embed_episode_sets(self.backbone, self.hp, episode.support_x, episode.query_x)
        return support, query, squared_euclidean_logits(query, prototypes(support, episode.support_y, episode.ways))

    def logits(self, episode: Episode) -> Tensor:
        return self.embed_and_logits(episode)[2]

    def meta_loss(self, batch):
        # vmap cannot update running BatchNorm averages in place: that mode loops
        if self.task_parallel == "vmap" and self.hp["batch_norm"] == "transductive":
            from mtml.methods import parallel

            if parallel.family(self) == "metric":
                return parallel.meta_loss(self, batch)
        return per_episode_meta_loss(self, batch, torch.nn.functional.cross_entropy)

    def predict(self, episode):
        return self.logits(episode)

    def embed(self, x):
        return self.backbone(x)


@register("pixel-nn")
class PixelNearestNeighbour(MetaLearner):
    """1-nearest-neighbour on raw pixels (Euclidean); nothing to train."""

    options = {}
    trainable = False
    any_ways = True

    def predict(self, episode):
        s, q = episode.support_x.flatten(1), episode.query_x.flatten(1)
        dist = torch.cdist(q, s)  # [Q, S]
        one_hot = torch.nn.functional.one_hot(episode.support_y, episode.ways).bool()
        # Per class, the distance to its nearest support image; logits are its negative.
        per_class = torch.where(one_hot[None], dist[:, :, None], torch.inf).amin(1)
        return -per_class

    def embed(self, x):
        return x.flatten(1)
