"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query's label distribution is an attention-weighted vote of the support labels (eq. 1):
P(y | x, S) = sum_i a(x, x_i) y_i, with a(x, x_i) = softmax_i cos(f(x), g(x_i)) (eq. 2,
cosine, no temperature). f and g are one Conv-4 embedding (shared, as in the paper); the
loss is -log P(y | x, S) of the query labels, so `predict` returns log P as logits.

`fce: true` adds the paper's full-context embeddings (its section 2.1.2 and appendix):
g(x_i) = g'(x_i) + h_fwd_i + h_bwd_i from a bidirectional LSTM over the support embeddings
(in label order), and f(x) from an attention LSTM run for K steps (`fce_steps`) that reads
the support set g(S):
    h^_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1});  h_k = h^_k + f'(x)
    r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i)
The paper concatenates the read-out r into the LSTM's hidden state; its hidden state must be
as wide as f'(x) for the residual sum, so here r_{k-1} enters as input beside f'(x) (an
LSTM cell on [f'(x), r_{k-1}] with hidden h_{k-1}), the same information in the same step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtml.methods.base import Episode, MetaLearner, register
from mtml.methods.metric import BATCH_NORM, embed_episode_sets, per_episode_meta_loss
from mtml.models.conv4 import Conv4
from mtml.options import Option


def cosine_attention(query: Tensor, support: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """P(y = c | query) = sum over support items i of class c of softmax_i cos(query, support_i),
    [Q, ways] (Vinyals et al., eqs. 1-2). Also NIL's per-sample form (`mtml.evaluation.stats`)."""
    cos = nn.functional.normalize(query, dim=-1) @ nn.functional.normalize(support, dim=-1).T  # [Q, S]
    attention = torch.softmax(cos, dim=-1)
    one_hot = nn.functional.one_hot(support_y, ways).to(attention.dtype)  # [S, ways]
    return attention @ one_hot


class SupportContext(nn.Module):
    """g: the support embeddings read in context by a bidirectional LSTM, plus a skip."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, bidirectional=True)

    def forward(self, support: Tensor) -> Tensor:
        out, _ = self.lstm(support[:, None, :])        # [S, 1, 2D]: forward and backward states
        fwd, bwd = out[:, 0].chunk(2, dim=-1)
        return support + fwd + bwd


class AttentionLSTM(nn.Module):
    """f: each query embedding refined over K steps of attention on the support set g(S)."""

    def __init__(self, dim: int):
        super().__init__()
        self.cell = nn.LSTMCell(2 * dim, dim)

    def forward(self, query: Tensor, support: Tensor, steps: int) -> Tensor:
        h = torch.zeros_like(query)
        c = torch.zeros_like(query)
        r = torch.zeros_like(query)
        for _ in range(steps):
            h, c = self.cell(torch.cat([query, r], dim=-1), (h, c))
            h = h + query
            r = torch.softmax(h @ support.T, dim=-1) @ support
        return h


@register("matchingnet")
class MatchingNet(MetaLearner):
    any_ways = True
    options = {
        "filters": Option(int, 32, "conv filters per layer of the Conv-4 embedding (paper: 64)", min=1),
        "batch_norm": BATCH_NORM,
        "fce": Option(bool, False, "full-context embeddings: a bidirectional LSTM over the support set "
                      "and an attention LSTM for each query (Vinyals et al., section 2.1.2)"),
        "fce_steps": Option(int, None, "attention LSTM steps K of the query embedding with fce (null: the "
                            "support-set size)", min=1),
    }

    def __init__(self, hp, image_shape, ways):
        super().__init__(hp, image_shape, ways)
        self.backbone = Conv4(image_shape[0], hp["filters"], running_stats=hp["batch_norm"] == "running")
        if hp["fce"]:
            dim = self.backbone.feature_dim(image_shape)
            self.support_context = SupportContext(dim)
            self.query_context = AttentionLSTM(dim)

    def embed_episode(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """g(S) and f(Q): with fce, in the context of the episode's support set."""
        support, query = embed_episode_sets(self.backbone, self.hp, episode.support_x, episode.query_x)
        if self.hp["fce"]:
            support = self.support_context(support)
            query = self.query_context(query, support, self.hp["fce_steps"] or len(support))
        return support, query

    def logits(self, episode: Episode) -> Tensor:
        support, query = self.embed_episode(episode)
        probs = cosine_attention(query, support, episode.support_y, episode.ways)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))

    def meta_loss(self, batch):
        return per_episode_meta_loss(self, batch, nn.functional.nll_loss)

    def predict(self, episode):
        return self.logits(episode)

    def embed(self, x):
        return self.backbone(x)
