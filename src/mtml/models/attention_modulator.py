"""Attention modulators (Lekkala & Itti, sections 4.1-4.2): per-channel feature weights from
a subtask's support set.

A modulator h_j reads the set of (support embedding, label vector) tokens of a subtask
through a stack of self-attention blocks (Q/K/V projections, scaled dot-product attention,
residual, LayerNorm), mean-pools them and outputs w with one entry per backbone channel
(blocks x channels). The backbone is then run again with every block's activation
multiplied channel-wise by (1 - w) (`modulation_hook`, through Conv4's `block_hook`).

- `FeatureModulator` (AM): w = tanh(A s) with A zero-initialised, so 1 - w starts at one
  exactly and a fresh modulator leaves the network unchanged; 1 - w stays in (0, 2).
- `ProbabilisticFeatureModulator` (P-AM): the pooled set gives a diagonal Gaussian over
  z_w (w = z_w as the paper writes it, or tanh z_w: the learner's `weight_squash`).
  Training samples z_w from the posterior q(z_w | query set) and adds a KL divergence
  between it and the prior p(z_w | support set) (direction: the learner's `kl_direction`);
  tests use the prior's mean.

`label_encoder` turns a task's labels into vectors (a `LabelCompressor` for pixel labels,
identity for class one-hots and vanishing points); it belongs to the modulator's
parameters Psi_j, trained with the modulator's own learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


class AttentionBlock(nn.Module):
    """Set self-attention: softmax(Q K^T / sqrt(d)) V, residual, LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:  # x: [S, dim], one token per example
        scores = self.q(x) @ self.k(x).T / math.sqrt(x.shape[-1])
        return self.norm(x + torch.softmax(scores, -1) @ self.v(x))


class SetEncoder(nn.Module):
    """Tokens [S, token_dim] -> one pooled vector [dim] after a stack of attention blocks."""

    def __init__(self, token_dim: int, dim: int, blocks: int):
        super().__init__()
        self.inp = nn.Linear(token_dim, dim)
        self.blocks = nn.Sequential(*(AttentionBlock(dim) for _ in range(blocks)))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.blocks(torch.relu(self.inp(tokens))).mean(0)


class FeatureModulator(nn.Module):
    """AM: deterministic channel weights w [blocks * channels] from a labelled set."""

    probabilistic = False
    outputs = 1  # numbers per channel the last layer gives

    def __init__(self, embed_dim: int, label_dim: int, blocks: int, channels: int,
                 dim: int = 64, attention_blocks: int = 2, label_encoder: nn.Module | None = None):
        super().__init__()
        self.blocks, self.channels = blocks, channels
        self.label_encoder = label_encoder if label_encoder is not None else nn.Identity()
        self.encoder = SetEncoder(embed_dim + label_dim, dim, attention_blocks)
        self.out = nn.Linear(dim, self.outputs * blocks * channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def pooled(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        tokens = torch.cat([embeddings, self.label_encoder(labels).flatten(1)], 1)
        return self.out(self.encoder(tokens))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return torch.tanh(self.pooled(embeddings, labels))


class ProbabilisticFeatureModulator(FeatureModulator):
    """P-AM: a diagonal Gaussian over z_w; `distribution` gives (mean, log std)."""

    probabilistic = True
    outputs = 2
    INIT_LOG_STD = math.log(0.1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():  # means start at 0 (1 - w = 1), standard deviations at 0.1
            self.out.bias[self.blocks * self.channels:] = self.INIT_LOG_STD

    def distribution(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.pooled(embeddings, labels).chunk(2)
        return mean, log_std

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The weights at the distribution's mean (used with the prior at test time)."""
        return torch.tanh(self.distribution(embeddings, labels)[0])

    @staticmethod
    def sample(mean: Tensor, log_std: Tensor, squash: bool = True) -> Tensor:
        """w = tanh(z) (or z itself without `squash`), z ~ N(mean, std^2) by
        reparameterisation (gradients reach both)."""
        z = mean + log_std.exp() * torch.randn_like(mean)
        return torch.tanh(z) if squash else z


def gaussian_kl(mean_q: Tensor, log_std_q: Tensor, mean_p: Tensor, log_std_p: Tensor) -> Tensor:
    """KL[q || p] of diagonal Gaussians q = N(mean_q, std_q^2), p = N(mean_p, std_p^2), summed
    over dimensions (the expectation is under the first one; swap the pairs for KL[p || q])."""
    var_q, var_p = (2 * log_std_q).exp(), (2 * log_std_p).exp()
    return (log_std_p - log_std_q + (var_q + (mean_q - mean_p) ** 2) / (2 * var_p) - 0.5).sum()


def modulation_hook(w: Tensor | None, channels: int) -> Callable[[int, Tensor], Tensor] | None:
    """Conv4 block_hook scaling block i's channels by (1 - w[i*C:(i+1)*C])."""
    if w is None:
        return None

    def hook(i: int, x: Tensor) -> Tensor:
        return x * (1 - w[i * channels:(i + 1) * channels]).view(1, channels, 1, 1)

    return hook
