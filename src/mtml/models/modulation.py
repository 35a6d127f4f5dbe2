"""Task-conditioned modulation of a Conv-4 backbone: the task encoder, FiLM (Vuorio et al.
2019, MMAML) and kernel modulation (KML, Abdollahzadeh et al. 2021).

A task encoder embeds the support set (images and labels) into a task embedding v_T. A
generator turns v_T into a `Modulation`, which acts on the backbone in one or both of two
ways, so every method applies it the same way:

- `block_hook(i, x)`: FiLM, a per-channel affine map of block i's output,
  x * (1 + gamma_i(v_T)) + beta_i(v_T), passed to `Conv4.forward(block_hook=...)`
  (`film_at: block`); or, with `film_at: norm`, the same map applied where MMAML applies it,
  after BatchNorm and before the ReLU, which is a modulation of BatchNorm's scale and shift:
  weight_hat = (1 + gamma) weight, bias_hat = (1 + gamma) bias + beta;
- `modulate(params)`: KML, new conv weights W_hat = W * (J + M(v_T)) (J all ones) and
  biases b_hat = b + delta_b(v_T), used through `torch.func.functional_call`.

The KML generator is the simplified, factorised one: for a kernel [C_out, C_in, k, k],
M = u(v_T) w(v_T)^T with u in R^C_out and w in R^(C_in k k), each the output of a small MLP,
instead of one MLP emitting all C_out C_in k k entries. `factorised_kml_parameters` and
`full_kml_parameters` give both counts.

Generators start at the identity: the layers that emit gamma, beta, u and delta_b are
zero-initialised, so a fresh modulated method computes exactly what its backbone computes.
(w keeps a random start: with u and w both zero, M = u w^T would have zero gradient in both.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from mtml.models.conv4 import Conv4

Params = dict[str, Tensor]
BlockHook = Callable[[int, Tensor], Tensor]


class Modulation:
    """The identity modulation; subclasses override `block_hook` and/or `modulate`."""

    block_hook: BlockHook | None = None

    def modulate(self, params: Mapping[str, Tensor]) -> Params:
        return dict(params)


class FiLMModulation(Modulation):
    """Per-block channel scales and shifts (each a list of [C] tensors, one per block).

    Without `norm_names` they act on each block's output (`block_hook`); with them, on the
    output of block i's BatchNorm, by modulating its (weight, bias) named norm_names[i].
    """

    def __init__(self, scales: list[Tensor], shifts: list[Tensor],
                 norm_names: list[tuple[str, str]] | None = None):
        self.scales, self.shifts, self.norm_names = scales, shifts, norm_names
        if norm_names is None:
            self.block_hook = self._affine

    def _affine(self, index: int, x: Tensor) -> Tensor:
        return x * self.scales[index][None, :, None, None] + self.shifts[index][None, :, None, None]

    def modulate(self, params: Mapping[str, Tensor]) -> Params:
        out = dict(params)
        for (w, b), scale, shift in zip(self.norm_names or [], self.scales, self.shifts):
            out[w], out[b] = params[w] * scale, params[b] * scale + shift
        return out


class KernelModulation(Modulation):
    """Element-wise kernel masks M (by weight name) and bias shifts (by bias name)."""

    def __init__(self, masks: Mapping[str, Tensor], bias_shifts: Mapping[str, Tensor]):
        self.masks, self.bias_shifts = dict(masks), dict(bias_shifts)

    def modulate(self, params: Mapping[str, Tensor]) -> Params:
        missing = sorted((set(self.masks) | set(self.bias_shifts)) - set(params))
        if missing:
            raise KeyError(f"kernel modulation names parameters the network lacks: {missing}")
        out = {}
        for name, p in params.items():
            if name in self.masks:
                p = p * (1 + self.masks[name])  # W * (J + M)
            elif name in self.bias_shifts:
                p = p + self.bias_shifts[name]
            out[name] = p
        return out


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """in -> out, with one ReLU hidden layer of `hidden` units unless hidden is 0."""
    if hidden <= 0:
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def _zero_last(net: nn.Sequential) -> nn.Sequential:
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class TaskEncoder(nn.Module):
    """v_T = mean over support examples of MLP([conv features of x_i, one-hot(y_i)]).

    The conv features are a Conv-4's channels averaged over space (as MMAML's encoder), so
    the encoder's size does not depend on the image size. The mean over examples makes v_T
    independent of the order of the support set; the label lets the encoder see which
    examples belong together.
    """

    def __init__(self, image_shape: tuple[int, int, int], ways: int, filters: int, embed_dim: int):
        super().__init__()
        self.ways, self.filters = ways, filters
        self.features = Conv4(image_shape[0], filters)
        self.head = mlp(filters + ways, embed_dim, embed_dim)

    def forward(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        onehot = nn.functional.one_hot(support_y, self.ways).to(support_x.dtype)
        pooled = self.features(support_x).view(len(support_x), self.filters, -1).mean(-1)
        return self.head(torch.cat([pooled, onehot], 1)).mean(0)


class FiLMGenerator(nn.Module):
    """v_T -> (scale, shift) per channel of each block; a linear map per block, as in MMAML.

    `norm_names` (weight, bias of each block's BatchNorm) moves the modulation from the block
    output to the BatchNorm output (MMAML's place)."""

    def __init__(self, embed_dim: int, channels: list[int], norm_names: list[tuple[str, str]] | None = None):
        super().__init__()
        self.channels, self.norm_names = list(channels), norm_names
        self.layers = nn.ModuleList(_zero_last(mlp(embed_dim, 0, 2 * c)) for c in self.channels)

    def forward(self, v: Tensor) -> FiLMModulation:
        scales, shifts = [], []
        for layer, c in zip(self.layers, self.channels):
            gamma, beta = layer(v).split(c)
            scales.append(1 + gamma)
            shifts.append(beta)
        return FiLMModulation(scales, shifts, self.norm_names)


class FactorisedKernelGenerator(nn.Module):
    """v_T -> M = u w^T for each named conv kernel, and delta_b for its bias (KML)."""

    def __init__(self, embed_dim: int, kernels: Mapping[str, tuple[int, ...]], hidden: int):
        super().__init__()
        self.names = list(kernels)
        self.shapes = {n: tuple(s) for n, s in kernels.items()}
        self.out_side = nn.ModuleList()   # u: one value per output channel
        self.in_side = nn.ModuleList()    # w: one value per (input channel, kernel position)
        self.bias = nn.ModuleList()       # delta_b
        for name in self.names:
            c_out, rest = self.shapes[name][0], int(torch.Size(self.shapes[name][1:]).numel())
            self.out_side.append(_zero_last(mlp(embed_dim, hidden, c_out)))
            self.in_side.append(mlp(embed_dim, hidden, rest))
            self.bias.append(_zero_last(mlp(embed_dim, 0, c_out)))

    def forward(self, v: Tensor) -> KernelModulation:
        masks, shifts = {}, {}
        for name, u_net, w_net, b_net in zip(self.names, self.out_side, self.in_side, self.bias):
            masks[name] = torch.outer(u_net(v), w_net(v)).reshape(self.shapes[name])
            shifts[bias_name(name)] = b_net(v)
        return KernelModulation(masks, shifts)


def bias_name(weight_name: str) -> str:
    return weight_name.rsplit(".", 1)[0] + ".bias"


def norm_parameters(backbone: Conv4, prefix: str = "backbone.") -> list[tuple[str, str]]:
    """(weight, bias) names of each block's BatchNorm, as the method's parameter dict spells them."""
    return [(f"{prefix}blocks.{i}.norm.weight", f"{prefix}blocks.{i}.norm.bias")
            for i in range(len(backbone.blocks))]


def conv_kernels(backbone: Conv4, prefix: str = "backbone.") -> dict[str, tuple[int, ...]]:
    """Names (as the method's parameter dict spells them) and shapes of the conv kernels."""
    return {f"{prefix}blocks.{i}.conv.weight": tuple(b.conv.weight.shape)
            for i, b in enumerate(backbone.blocks)}


def _mlp_count(a: int, hidden: int, b: int) -> int:
    return (a + 1) * b if hidden <= 0 else (a + 1) * hidden + (hidden + 1) * b


def factorised_kml_parameters(embed_dim: int, hidden: int, kernels, bias_shift: bool = True) -> int:
    """Parameters of `FactorisedKernelGenerator`: per kernel [C_out, C_in, k, k], an MLP to
    C_out (u), an MLP to C_in k k (w) and, with `bias_shift`, a linear map to C_out (delta_b)."""
    total = 0
    for shape in kernels:
        c_out, rest = shape[0], int(torch.Size(shape[1:]).numel())
        total += _mlp_count(embed_dim, hidden, c_out) + _mlp_count(embed_dim, hidden, rest)
        total += _mlp_count(embed_dim, 0, c_out) if bias_shift else 0
    return total


def full_kml_parameters(embed_dim: int, hidden: int, kernels, bias_shift: bool = True) -> int:
    """The unfactorised generator: one MLP emitting every kernel entry of M, plus (with
    `bias_shift`) the same delta_b map as the factorised one."""
    return sum(_mlp_count(embed_dim, hidden, int(torch.Size(s).numel()))
               + (_mlp_count(embed_dim, 0, s[0]) if bias_shift else 0) for s in kernels)


class TaskConditioner(nn.Module):
    """Task encoder + generator: support set -> `Modulation` of `backbone`.

    kind 'film' modulates each block's channels (at the block output, or with film_at='norm'
    at the BatchNorm output), 'kml' every conv kernel. Names are those of the method's
    parameter dict (`backbone.blocks.<i>.conv.weight`, ...).
    """

    KINDS = ("film", "kml")
    FILM_AT = ("block", "norm")

    def __init__(self, kind: str, backbone: Conv4, image_shape, ways: int, embed_dim: int,
                 encoder_filters: int, generator_hidden: int, film_at: str = "block"):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"modulation kind {kind!r}; allowed: {', '.join(self.KINDS)}")
        if film_at not in self.FILM_AT:
            raise ValueError(f"film_at {film_at!r}; allowed: {', '.join(self.FILM_AT)}")
        self.kind = kind
        self.encoder = TaskEncoder(tuple(image_shape), ways, encoder_filters, embed_dim)
        if kind == "film":
            norms = norm_parameters(backbone) if film_at == "norm" else None
            self.generator = FiLMGenerator(embed_dim, [b.conv.out_channels for b in backbone.blocks], norms)
        else:
            self.generator = FactorisedKernelGenerator(embed_dim, conv_kernels(backbone), generator_hidden)

    def forward(self, support_x: Tensor, support_y: Tensor) -> Modulation:
        return self.generator(self.encoder(support_x, support_y))

    def generator_parameters(self) -> int:
        return sum(p.numel() for p in self.generator.parameters())


class Conditioned(nn.Module):
    """A view of a backbone (and optional head) that runs with a fixed block hook.

    Its parameter names are `backbone.*` and `head.*`, exactly those of `Classifier`, so the
    same parameter dict drives it through `functional_call` (and the inner loop).
    """

    def __init__(self, backbone: Conv4, head: nn.Module | None, block_hook: BlockHook | None):
        super().__init__()
        self.backbone, self.head, self.block_hook = backbone, head, block_hook

    def forward(self, x: Tensor) -> Tensor:
        z = self.backbone(x, block_hook=self.block_hook)
        return z if self.head is None else self.head(z)
