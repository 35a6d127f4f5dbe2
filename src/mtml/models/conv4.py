"""Conv-4 backbone (Vinyals et al.; Finn et al.) and the linear head.

Four blocks of 3x3 conv (padding 1), BatchNorm, ReLU, 2x2 max-pool (computed as pool, then
ReLU: the same numbers, see `ConvBlock.forward`; on a CPU, batch-statistics BatchNorm, pool
and ReLU run in one pass in `cpu_kernels`, with torch's bits). By default BatchNorm
uses the statistics of the batch at hand (`track_running_stats=False`): inside an episode the
support and query sets are normalised by themselves, as in MAML's reference code, and a
model never carries running statistics from meta-training into a test episode
("transductive"). `running_stats=True` is ProtoNet's reference code instead: batch statistics
while training, updating running averages (momentum 0.1) that normalise in eval mode, so a
test query's prediction does not depend on the other queries (docs/protocols.md).

`downsample` (method hyperparameter, MAML family): `maxpool` (default) is the block above;
`stride` is Finn et al.'s Omniglot network (reference code cbfinn/maml without `--max_pool`):
3x3 convolutions of stride 2 with TensorFlow's SAME padding (output ceil(n/2); an odd pad total
puts the extra row and column after, so 28 -> 14 -> 7 -> 4 -> 2), no pooling, and the features
are the mean over the last map's positions (the reference's `reduce_mean` over height and
width: `filters` features at any image size). With max-pooling the reference flattens (its
miniImageNet network), as we do (28x28 -> 1x1, 84x84 -> 5x5).

`block_hook(index, activation)` lets a feature modulator (attention, FiLM) rescale each
block's output channels without a copy of the network.
"""

from __future__ import annotations

import contextlib
import copy
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch._C._functorch import is_batchedtensor, is_functorch_wrapped_tensor

from mtml.models import cpu_kernels
from mtml.utils import switched_on


_SPLIT_AFFINE = contextvars.ContextVar("split_affine_batch_norm", default=False)


def split_affine_batch_norm() -> contextlib.AbstractContextManager[None]:
    """BatchNorm as normalise-then-scale-and-shift (two ops) inside: torch 2.x's vmap gives
    wrong second derivatives for batch_norm with an affine weight when its input depends on
    the parameters too (conv -> batch_norm, seen on torch 2.15), so second-order MAML under
    vmap runs this way, and so does vmap under bf16 autocast (whose fused backward fails on
    the mixed dtypes). Outside, the fused op runs, bit for bit as always."""
    return switched_on(_SPLIT_AFFINE)


DOWNSAMPLE = ("maxpool", "stride")  # the default first


def max_pool(x: Tensor) -> Tensor:
    """2x2 max-pooling, stride 2: torch's `max_pool2d(x, 2)` bit for bit, faster on a CPU.

    torch's NCHW max-pool kernel is the slowest op of a Conv-4 step on a CPU (~12x its
    channels-last kernel at 80x32x28x28, torch 2.15, one thread). For a contiguous CPU input:
    - without a graph (evaluation), the maximum of each pair of rows, then of each pair of
      columns of that (strided views; faster than the four views of a window at once);
    - with one, where the native kernels run, `cpu_kernels.max_pool` (values, the window
      choice and the backward in C); elsewhere torch's channels-last kernel only finds each
      window's maximum (its index in the plane, as the NCHW kernel gives it: both keep a
      window's first maximum) and a `gather` on the contiguous input takes those values;
      gather's backward scatters into zeros, as the max-pool's does, so gradients and second
      derivatives are the same too.
    Pooling only selects, so every path gives the same numbers (tests/test_conv4_pool.py),
    and the layers around it still see contiguous tensors. Elsewhere (CUDA, inside
    torch.func transforms such as the vmap'd paths, channels-last runs) the plain op runs."""
    if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous() and not is_functorch_wrapped_tensor(x):
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        if h == 0 or w == 0:  # (torch says why it cannot pool)
            return nn.functional.max_pool2d(x, 2)
        if not (torch.is_grad_enabled() and x.requires_grad):
            # pairs of rows first: contiguous runs, and the column step reads half the data
            x = x[..., :h, :w]
            rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
            return torch.maximum(rows[..., 0::2], rows[..., 1::2])
        out = cpu_kernels.max_pool(x)
        if out is not None:
            return out
        with torch.no_grad():
            _, index = nn.functional.max_pool2d(x.detach().contiguous(memory_format=torch.channels_last), 2,
                                                return_indices=True)
        index = index.contiguous()
        return x.flatten(2).gather(2, index.flatten(2)).view(index.shape)
    return nn.functional.max_pool2d(x, 2)


def same_padding(size: int, kernel: int = 3, stride: int = 2) -> tuple[int, int]:
    """TensorFlow's SAME padding of one dimension: (before, after), the odd one after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, pool: bool = True, running_stats: bool = False,
                 stride: bool = False):
        super().__init__()
        # stride: a stride-2 convolution with SAME padding halves the map (pool is ignored)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=0 if stride else 1, stride=2 if stride else 1)
        self.norm = nn.BatchNorm2d(out_channels, track_running_stats=running_stats)
        self.pool = pool and not stride
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride:
            (top, bottom), (left, right) = same_padding(x.shape[-2]), same_padding(x.shape[-1])
            x = nn.functional.pad(x, (left, right, top, bottom))
        x = self.conv(x)
        if _SPLIT_AFFINE.get():
            n = self.norm
            x = nn.functional.batch_norm(x, None, None, None, None, True, 0.0, n.eps)
            x = x * n.weight[:, None, None] + n.bias[:, None, None]
        elif self.norm.running_mean is None:  # batch statistics: torch's bits, faster on a CPU
            n = self.norm
            if self.pool:  # BatchNorm, pool and ReLU in one pass where it can
                out = cpu_kernels.batch_norm_pool_relu(x, n.weight, n.bias, n.eps)
                if out is not None:
                    return out
            x = cpu_kernels.batch_norm(x, n.weight, n.bias, n.eps)
        else:
            x = self.norm(x)
        # ReLU after the pool: the two commute exactly (ReLU is monotone, both only select),
        # values and gradients alike (tests/test_conv4_pool.py), and ReLU then touches a
        # quarter of the elements
        return torch.relu(max_pool(x) if self.pool else x)


class Conv4(nn.Module):
    # torch.channels_last under `training.channels_last` (mtml.speed): inputs are converted
    # here, so the data path needs no change; inside vmap the batched path keeps its layout
    memory_format = torch.contiguous_format

    def __init__(self, in_channels: int = 1, filters: int = 32, blocks: int = 4, running_stats: bool = False,
                 downsample: str = "maxpool"):
        super().__init__()
        if downsample not in DOWNSAMPLE:
            raise ValueError(f"Conv-4 downsample {downsample!r}; allowed: {', '.join(DOWNSAMPLE)}")
        chans = [in_channels] + [filters] * blocks
        self.blocks = nn.ModuleList(ConvBlock(a, b, running_stats=running_stats, stride=downsample == "stride")
                                    for a, b in zip(chans[:-1], chans[1:]))
        self.filters, self.downsample = filters, downsample

    def forward(self, x: Tensor, block_hook: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        if self.memory_format is torch.channels_last and x.dim() == 4 and not is_batchedtensor(x):
            x = x.contiguous(memory_format=torch.channels_last)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if block_hook is not None:
                x = block_hook(i, x)
        if self.downsample == "stride":  # the reference's mean over the last map (Omniglot)
            return x.mean((-2, -1))
        return x.flatten(1)

    def feature_dim(self, image_shape: tuple[int, int, int]) -> int:
        # a copy: a probe through running-stat BatchNorm would move its running averages
        probe = copy.deepcopy(self) if any(b.norm.track_running_stats for b in self.blocks) else self
        with torch.no_grad():
            return int(probe.forward(torch.zeros(2, *image_shape)).shape[1])


class Classifier(nn.Module):
    """Backbone + linear head. Parameter names are `backbone.*` and `head.*`."""

    def __init__(self, image_shape: tuple[int, int, int], ways: int, filters: int = 32, downsample: str = "maxpool"):
        super().__init__()
        self.backbone = Conv4(image_shape[0], filters, downsample=downsample)
        self.head = nn.Linear(self.backbone.feature_dim(image_shape), ways)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
