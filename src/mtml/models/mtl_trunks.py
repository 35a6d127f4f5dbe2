"""Shared-trunk architectures of multi-task learning (the `architecture` hyperparameter of the
multi-task learners). Every trunk maps images to per-task embeddings of the Conv-4 shape
(`filters` x h x w, flattened), so the per-task heads and the AM/P-AM modulators of
`mtml.methods.multitask` work on any of them unchanged.

- `hard` (the reference) is the plain shared `Conv4`; it stays in the learner's code path.
- `mmoe` (Ma et al. 2018): K Conv-4 experts; per task a gate g_t(x) = softmax(W_t x + b_t)
  over K, a linear map of the flattened image; the task's embedding is sum_k g_tk(x) f_k(x).
  `mmoe-shared`: one gate for all tasks (the "one-gate MoE" of the paper).
- `cross-stitch` (Misra et al. 2016): one Conv-4 column per task; after each block a
  cross-stitch unit mixes the columns per channel, x'_t = sum_s a[t, s, c] x_s, initialised
  with a[t, t] = `cross_stitch_init` and a[t, s] = (1 - init) / (T - 1).
- `routing` (Strezoski et al. 2019, task routing): one Conv-4; after each block task t's
  activation is multiplied by a fixed binary channel mask with round(ratio * C) ones, drawn
  once from `routing_seed` (a buffer, saved with the model).
- `pad-net` (Xu et al. 2018): Conv-4 blocks 1..B-1 shared; block B per task gives the
  intermediate features I_t, from which an intermediate prediction is made (`aux_loss`); the
  attention-guided distillation (the paper's variant C) fuses them into each task's final
  features F_t = I_t + sum_{s != t} sigmoid(G_t * I_t) . (M_ts * I_s), 3x3 convolutions.
- `soft` (Duong et al. 2015): one Conv-4 column per task, coupled by the penalty
  `soft_sharing_weight` x sum_{t < s} ||theta_t - theta_s||^2 over corresponding weights.

Every trunk keeps its blocks in `self.blocks` (block i: a ModuleList of columns, one
`ConvBlock` each), so GradNorm's "last shared layer" and the analyses find them generically.
`block_hook(i, x)` (AM/P-AM) acts on the task's own path after block i.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mtml.errors import UserError
from mtml.models.conv4 import ConvBlock
from mtml.options import Option
from mtml.options import defaults as option_defaults

BlockHook = Callable[[int, Tensor], Tensor] | None
ARCHITECTURES = ("hard", "mmoe", "mmoe-shared", "cross-stitch", "routing", "pad-net", "soft")
OPTIONS = {
    "architecture": Option(str, "hard", "shared trunk: hard | mmoe | mmoe-shared | cross-stitch | routing | "
                           "pad-net | soft", choices=ARCHITECTURES),
    "experts": Option(int, 3, "mmoe: number of trunks K", min=1),
    "cross_stitch_init": Option(float, 0.9, "cross-stitch: a[t, t] at initialisation", min=0, max=1),
    "routing_ratio": Option(float, 0.5, "routing: share of each block's channels a task sees", min=0,
                            above=True, max=1),
    "routing_seed": Option(int, 0, "routing: seed of the masks"),
    "pad_aux_weight": Option(float, 1.0, "pad-net: weight of the intermediate-prediction loss", min=0),
    "soft_sharing_weight": Option(float, 0.01, "soft: weight of the L2 distance penalty", min=0),
}
DEFAULTS = option_defaults(OPTIONS)
BLOCKS = 4


def check(hp: dict, key: Callable[[str], str]) -> None:
    """UserError naming the params key of a bad architecture option."""
    if hp["architecture"] not in ARCHITECTURES:
        raise UserError(f"{key('architecture')} is {hp['architecture']!r}; allowed: {', '.join(ARCHITECTURES)}")
    if not isinstance(hp["experts"], int) or isinstance(hp["experts"], bool) or hp["experts"] < 1:
        raise UserError(f"{key('experts')} must be an integer >= 1; got {hp['experts']!r}")
    if not isinstance(hp["routing_seed"], int) or isinstance(hp["routing_seed"], bool):
        raise UserError(f"{key('routing_seed')} must be an integer; got {hp['routing_seed']!r}")
    for k, lo, hi in (("cross_stitch_init", 0.0, 1.0), ("routing_ratio", 0.0, 1.0),
                      ("pad_aux_weight", 0.0, None), ("soft_sharing_weight", 0.0, None)):
        v = hp[k]
        if (not isinstance(v, numbers.Real) or isinstance(v, bool) or v < lo or (hi is not None and v > hi)
                or (k == "routing_ratio" and v == 0)):
            bound = f"in ({lo}, {hi}]" if k == "routing_ratio" else f"in [{lo}, {hi}]" if hi else f">= {lo}"
            raise UserError(f"{key(k)} must be a number {bound}; got {v!r}")


def column_blocks(in_channels: int, filters: int, columns: int, blocks: int = BLOCKS) -> nn.ModuleList:
    """blocks x columns ConvBlocks (block i of column j: `self.blocks[i][j]`)."""
    chans = [in_channels] + [filters] * blocks
    return nn.ModuleList(nn.ModuleList(ConvBlock(a, b) for _ in range(columns))
                         for a, b in zip(chans[:-1], chans[1:]))


def feature_shape(image_shape, filters: int, blocks: int = BLOCKS) -> tuple[int, int, int]:
    """Conv-4's output shape: each block halves h and w (floor, as max_pool2d)."""
    h, w = image_shape[1:]
    for _ in range(blocks):
        h, w = h // 2, w // 2
    return filters, h, w


class Trunk(nn.Module):
    """Base: `forward(x, task, block_hook)` -> the task's embedding [B, C*h*w]."""

    def __init__(self, tasks: list[str], filters: int):
        super().__init__()
        self.tasks, self.filters = list(tasks), filters
        self.index = {t: i for i, t in enumerate(self.tasks)}

    def penalty(self) -> Tensor | None:
        """A regulariser added to the total loss (soft sharing), or None."""
        return None

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only `task`'s output depends on (not shared by the tasks' losses)."""
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for t in self.tasks for p in self.task_parameters(t)}
        return [p for p in self.parameters() if id(p) not in own]

    def last_block_parameters(self) -> list[nn.Parameter]:
        """Conv weights of the last block (GradNorm's W, the last layer of the trunk)."""
        return [col.conv.weight for col in self.blocks[-1]]


class MixtureTrunk(Trunk):
    """MMoE: K experts, per-task (or one shared) softmax gate on the flattened image."""

    def __init__(self, tasks, image_shape, filters: int, experts: int, shared_gate: bool):
        super().__init__(tasks, filters)
        self.blocks = column_blocks(image_shape[0], filters, experts)
        gates = 1 if shared_gate else len(self.tasks)
        self.gates = nn.ModuleList(nn.Linear(int(torch.tensor(image_shape).prod()), experts) for _ in range(gates))
        self.shared_gate = shared_gate

    def gate(self, x: Tensor, task: str) -> Tensor:
        return torch.softmax(self.gates[0 if self.shared_gate else self.index[task]](x.flatten(1)), -1)

    def forward(self, x: Tensor, task: str, block_hook: BlockHook = None) -> Tensor:
        h = [x] * len(self.blocks[0])
        for i, block in enumerate(self.blocks):
            h = [col(v) for col, v in zip(block, h)]
            if block_hook is not None:
                h = [block_hook(i, v) for v in h]
        g = self.gate(x, task)  # [B, K]
        return sum(g[:, k:k + 1] * v.flatten(1) for k, v in enumerate(h))

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [] if self.shared_gate else list(self.gates[self.index[task]].parameters())


class CrossStitchTrunk(Trunk):
    """One column per task; a per-channel cross-stitch unit after every block."""

    def __init__(self, tasks, image_shape, filters: int, init: float):
        super().__init__(tasks, filters)
        n = len(self.tasks)
        self.blocks = column_blocks(image_shape[0], filters, n)
        off = (1 - init) / (n - 1) if n > 1 else 0.0
        unit = torch.full((n, n), off)
        unit.fill_diagonal_(init)
        # a[i, t, s, c]: weight of column s's channel c in column t after block i
        self.stitch = nn.Parameter(unit[None, :, :, None].repeat(BLOCKS, 1, 1, filters))

    def forward(self, x: Tensor, task: str, block_hook: BlockHook = None) -> Tensor:
        t = self.index[task]
        h = [x] * len(self.tasks)
        for i, block in enumerate(self.blocks):
            h = torch.stack([col(v) for col, v in zip(block, h)])  # [T, B, C, h, w]
            h = list(torch.einsum("tsc,sbchw->tbchw", self.stitch[i], h))
            if block_hook is not None:  # the modulator of `task` acts on its own column
                h[t] = block_hook(i, h[t])
        return h[t].flatten(1)


class RoutingTrunk(Trunk):
    """One Conv-4; fixed per-task binary channel masks after each block."""

    def __init__(self, tasks, image_shape, filters: int, ratio: float, seed: int):
        super().__init__(tasks, filters)
        self.blocks = column_blocks(image_shape[0], filters, 1)
        on = max(1, round(ratio * filters))
        g = torch.Generator().manual_seed(seed)
        masks = torch.zeros(len(self.tasks), BLOCKS, filters)
        for t in range(len(self.tasks)):
            for i in range(BLOCKS):
                masks[t, i, torch.randperm(filters, generator=g)[:on]] = 1.0
        self.register_buffer("masks", masks)

    def forward(self, x: Tensor, task: str, block_hook: BlockHook = None) -> Tensor:
        m = self.masks[self.index[task]]
        for i, block in enumerate(self.blocks):
            x = block[0](x) * m[i].view(1, -1, 1, 1)
            if block_hook is not None:
                x = block_hook(i, x)
        return x.flatten(1)


class SoftSharingTrunk(Trunk):
    """One column per task, coupled only by the L2 penalty on corresponding weights."""

    def __init__(self, tasks, image_shape, filters: int, weight: float):
        super().__init__(tasks, filters)
        self.blocks = column_blocks(image_shape[0], filters, len(self.tasks))
        self.weight = weight

    def column_parameters(self, t: int) -> list[nn.Parameter]:
        return [p for block in self.blocks for p in block[t].parameters()]

    def forward(self, x: Tensor, task: str, block_hook: BlockHook = None) -> Tensor:
        t = self.index[task]
        for i, block in enumerate(self.blocks):
            x = block[t](x)
            if block_hook is not None:
                x = block_hook(i, x)
        return x.flatten(1)

    def penalty(self) -> Tensor | None:
        cols = [self.column_parameters(t) for t in range(len(self.tasks))]
        if self.weight == 0 or len(cols) < 2:
            return None
        return self.weight * sum(((a - b) ** 2).sum() for i, j in itertools.combinations(range(len(cols)), 2)
                                 for a, b in zip(cols[i], cols[j]))

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return self.column_parameters(self.index[task])


class PadNetTrunk(Trunk):
    """Shared blocks, a per-task last block (intermediate features I_t), intermediate
    predictions and attention-guided multi-modal distillation into each task's features."""

    def __init__(self, tasks, image_shape, filters: int, specs: dict, ways: int, aux_weight: float):
        super().__init__(tasks, filters)
        n = len(self.tasks)
        self.blocks = column_blocks(image_shape[0], filters, 1, BLOCKS - 1)
        self.blocks.append(column_blocks(filters, filters, n, 1)[0])
        self.fshape = feature_shape(image_shape, filters)
        self.size = tuple(image_shape[1:])
        self.specs, self.ways, self.aux_weight = specs, ways, aux_weight
        conv = lambda: nn.Conv2d(filters, filters, 3, padding=1)  # noqa: E731
        self.gate_convs = nn.ModuleList(conv() for _ in range(n))                     # G_t
        self.messages = nn.ModuleList(nn.ModuleList(conv() for _ in range(n)) for _ in range(n))  # M_ts
        # Intermediate heads: classification needs none (prototypes of the support set).
        self.aux_heads = nn.ModuleDict()
        for t in self.tasks:
            spec = specs[t]
            if spec.kind == "dense":
                self.aux_heads[t] = nn.Conv2d(filters, spec.channels, 1)
            elif spec.kind == "vector":
                self.aux_heads[t] = nn.Linear(int(torch.tensor(self.fshape).prod()), spec.channels)

    def intermediate(self, x: Tensor, block_hook: BlockHook = None) -> list[Tensor]:
        """I_t of every task, [B, C, h, w] each."""
        for i, block in enumerate(self.blocks[:-1]):
            x = block[0](x)
            if block_hook is not None:
                x = block_hook(i, x)
        last = len(self.blocks) - 1
        feats = [col(x) for col in self.blocks[-1]]
        return [block_hook(last, f) for f in feats] if block_hook is not None else feats

    def forward(self, x: Tensor, task: str, block_hook: BlockHook = None) -> Tensor:
        t = self.index[task]
        feats = self.intermediate(x, block_hook)
        gate = torch.sigmoid(self.gate_convs[t](feats[t]))
        out = feats[t] + sum(gate * self.messages[t][s](f) for s, f in enumerate(feats) if s != t)
        return out.flatten(1)

    def aux_loss(self, task: str, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                 block_hook: BlockHook = None) -> Tensor:
        """The task's loss of its intermediate prediction on the query set: a linear /
        1x1-conv head (trained by the outer loop) for regression tasks; for classification,
        whose labels differ per subtask, logits -||I(q) - prototype_c||^2 with prototypes
        of the support set's intermediate features."""
        t, spec = self.index[task], self.specs[task]
        q = self.intermediate(query_x, block_hook)[t]
        if spec.kind == "classification":
            s = self.intermediate(support_x, block_hook)[t].flatten(1)
            protos = torch.stack([s[support_y == c].mean(0) for c in range(self.ways)])
            return F.cross_entropy(-torch.cdist(q.flatten(1), protos) ** 2, query_y)
        if spec.kind == "dense":
            pred = F.interpolate(self.aux_heads[task](q), size=self.size, mode="bilinear", align_corners=False)
        else:
            pred = self.aux_heads[task](q.flatten(1))
        return spec.loss(pred, query_y)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        t = self.index[task]
        own = list(self.gate_convs[t].parameters()) + [p for m in self.messages[t] for p in m.parameters()]
        return own + (list(self.aux_heads[task].parameters()) if task in self.aux_heads else [])


def build_trunk(hp: dict, tasks: list, image_shape, ways: int) -> Trunk:
    """The trunk of `hp['architecture']` (not `hard`, which is the learner's plain Conv4)."""
    names, arch, filters = [t.name for t in tasks], hp["architecture"], hp["filters"]
    if arch in ("mmoe", "mmoe-shared"):
        return MixtureTrunk(names, image_shape, filters, hp["experts"], shared_gate=arch == "mmoe-shared")
    if arch == "cross-stitch":
        return CrossStitchTrunk(names, image_shape, filters, hp["cross_stitch_init"])
    if arch == "routing":
        return RoutingTrunk(names, image_shape, filters, hp["routing_ratio"], hp["routing_seed"])
    if arch == "soft":
        return SoftSharingTrunk(names, image_shape, filters, hp["soft_sharing_weight"])
    if arch == "pad-net":
        return PadNetTrunk(names, image_shape, filters, {t.name: t for t in tasks}, ways, hp["pad_aux_weight"])
    raise ValueError(f"no trunk class for architecture {arch!r}")
