"""Multi-task optimisation for the multi-task learners: dynamic loss weighting, gradient
aggregation on the shared (trunk) parameters, and task scheduling.

Loss weighting (`loss_weighting`; `fixed` and `uncertainty` live in the learner's `combine`):
- `dwa` (Liu et al. 2019, dynamic weight average): w_k(t) = K exp(r_k(t-1) / T) /
  sum_i exp(r_i(t-1) / T), r_k(t-1) = L_k(t-1) / L_k(t-2), w = 1 until two losses are known.
  L_k are the meta-batch's query losses of the previous meta-iterations (the paper: epoch
  averages). Weights sum to K, the number of tasks in the meta-batch.
- `gradnorm` (Chen et al. 2018): learned w_i; with G_i = ||grad_W w_i L_i|| on the trunk's
  last layer W, Lt_i = L_i(t) / L_i(0) and r_i = Lt_i / mean(Lt), the weights descend
  L_grad = sum_i |G_i - mean(G) r_i^alpha| (the target held constant, as in the paper), by
  the meta optimiser (Adam, learning rate `gradnorm_lr`), then are renormalised to sum to K.
- `random` (Lin et al. 2021, random loss weighting): w = K softmax(eps), eps ~ N(0, I) drawn
  every meta-iteration (the paper's weights sum to 1; the factor K keeps the scale of `fixed`,
  and Adam is invariant to it).

Gradient aggregation (`optimiser`): `sum` is plain backpropagation of the weighted total.
The others take the Jacobian of the weighted task losses w.r.t. the shared trunk parameters
(TorchJD `autojac.backward`, one backward pass per task) and replace its row sum by a TorchJD
aggregator: MGDA (Sener & Koltun 2018), PCGrad (Yu et al. 2020), IMTL-G (Liu et al. 2021),
Aligned-MTL (Senushkin et al. 2023); UPGrad (Quinton & Rey 2024), CAGrad (Liu et al. 2021)
and Nash-MTL (Navon et al. 2022) need solvers TorchJD installs as extras. Task-specific
parameters (heads, gates, modulators, loss weights) get their ordinary gradients.

Task scheduling (`schedule`, `schedule_tasks` = k tasks per meta-iteration):
`all` (every task every iteration), `round-robin` (k tasks in turn), `uniform` (k sampled
without replacement) and `difficulty` (k sampled with probability proportional to each task's
last training loss divided by its first; 1 for a task not yet trained).
Randomness comes from torch's global generator, which the trainer checkpoints.
"""

from __future__ import annotations

import importlib.util
import numbers
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mtml.errors import UserError
from mtml.options import Option
from mtml.options import defaults as option_defaults

LOSS_WEIGHTINGS = ("fixed", "uncertainty", "dwa", "gradnorm", "random")
SCHEDULES = ("all", "round-robin", "uniform", "difficulty")
# optimiser -> (torchjd aggregator class name, extra modules it needs, pip extra)
AGGREGATORS = {
    "mgda": ("MGDA", (), None),
    "pcgrad": ("PCGrad", (), None),
    "imtl-g": ("IMTLG", (), None),
    "aligned-mtl": ("AlignedMTL", (), None),
    "upgrad": ("UPGrad", ("qpsolvers", "quadprog"), "quadprog_projector"),
    "cagrad": ("CAGrad", ("cvxpy", "clarabel"), "cagrad"),
    "nash-mtl": ("NashMTL", ("cvxpy", "ecos"), "nash_mtl"),
}
OPTIMISERS = ("sum", *AGGREGATORS)
OPTIONS = {
    "optimiser": Option(str, "sum", "update of the shared parameters: sum of the task gradients, or a "
                        "TorchJD aggregator of them", choices=OPTIMISERS),
    "cagrad_c": Option(float, 0.4, "CAGrad's c (the paper's NYUv2 setting)", min=0),
    "dwa_temperature": Option(float, 2.0, "DWA's T (the paper's value)", min=0, above=True),
    "gradnorm_alpha": Option(float, 1.5, "GradNorm's asymmetry alpha (the paper's NYUv2 value)", min=0),
    "gradnorm_lr": Option(float, 0.025, "Adam learning rate of GradNorm's weights", min=0),
    "schedule": Option(str, "all", "which tasks a meta-iteration trains on", choices=SCHEDULES),
    "schedule_tasks": Option(int, 1, "tasks per meta-iteration when schedule is not `all`", min=1),
}
DEFAULTS = option_defaults(OPTIONS)


def check(hp: dict, key: Callable[[str], str], task_names: list[str]) -> None:
    """UserError naming the params key of a bad optimisation option."""
    for k, allowed in (("loss_weighting", LOSS_WEIGHTINGS), ("optimiser", OPTIMISERS), ("schedule", SCHEDULES)):
        if hp[k] not in allowed:
            raise UserError(f"{key(k)} is {hp[k]!r}; allowed: {', '.join(allowed)}")
    for k in ("cagrad_c", "gradnorm_alpha", "gradnorm_lr"):
        if not isinstance(hp[k], numbers.Real) or isinstance(hp[k], bool) or hp[k] < 0:
            raise UserError(f"{key(k)} must be a number >= 0; got {hp[k]!r}")
    t = hp["dwa_temperature"]
    if not isinstance(t, numbers.Real) or isinstance(t, bool) or t <= 0:
        raise UserError(f"{key('dwa_temperature')} must be a number > 0; got {t!r}")
    k = hp["schedule_tasks"]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(task_names):
        raise UserError(f"{key('schedule_tasks')} must be an integer in [1, {len(task_names)}] "
                        f"(the experiment's tasks); got {k!r}")
    if hp["optimiser"] in AGGREGATORS:
        _, deps, extra = AGGREGATORS[hp["optimiser"]]
        missing = [d for d in deps if importlib.util.find_spec(d) is None]
        if missing:
            raise UserError(f"{key('optimiser')} {hp['optimiser']!r} needs {', '.join(missing)}: "
                            f"pip install \"torchjd[{extra}]\", or choose one of "
                            f"{', '.join(o for o, v in AGGREGATORS.items() if not v[1])}")


def make_aggregator(name: str, n_tasks: int, cagrad_c: float = 0.4):
    """The TorchJD aggregator of optimiser `name` (not `sum`)."""
    import torchjd.aggregation as agg

    cls = getattr(agg, AGGREGATORS[name][0])
    if name == "cagrad":
        return cls(c=cagrad_c)
    if name == "nash-mtl":
        return cls(n_tasks=n_tasks)
    return cls()


def aggregate_backward(rows: list[Tensor], shared: list[Tensor], aggregator) -> Tensor | None:
    """Accumulate the aggregated gradient of `rows` (one loss per task) into the `.grad` of
    the `shared` parameters; returns the aggregator's row weights where it has them."""
    from torchjd.autojac import backward, jac_to_grad

    # One backward pass per row: vmap (TorchJD's parallel mode) does not go through the
    # inner loop's functional calls and double backward.
    backward(rows, inputs=shared, retain_graph=True, parallel_chunk_size=1)
    return jac_to_grad(shared, aggregator)


# --------------------------------------------------------------------------- loss weighting


def dwa_weights(previous: Tensor, before: Tensor, temperature: float) -> Tensor:
    """DWA's weights from the last two losses per task (NaN where unknown: weight 1)."""
    ratio = previous / before
    if not torch.isfinite(ratio).all():  # the paper: w = 1 for t = 1, 2
        return torch.ones_like(ratio)
    return len(ratio) * torch.softmax(ratio / temperature, 0)


class DynamicWeightAverage(nn.Module):
    """DWA with its loss history as buffers (so checkpoints resume it)."""

    def __init__(self, tasks: list[str], temperature: float):
        super().__init__()
        self.tasks, self.temperature = list(tasks), temperature
        self.register_buffer("history", torch.full((2, len(tasks)), float("nan")))  # [t-2, t-1]

    def weights(self, losses: dict[str, Tensor]) -> dict[str, float]:
        idx = [self.tasks.index(k) for k in losses]
        w = dwa_weights(self.history[1, idx], self.history[0, idx], self.temperature)
        with torch.no_grad():
            for i, v in zip(idx, losses.values()):
                self.history[0, i] = self.history[1, i]
                self.history[1, i] = v.detach()
        return {k: float(x) for k, x in zip(losses, w)}


class GradNorm(nn.Module):
    """GradNorm's learned weights; `set_grad` gives them dL_grad/dw, `renormalise` after the step."""

    def __init__(self, tasks: list[str], alpha: float):
        super().__init__()
        self.tasks, self.alpha = list(tasks), alpha
        self.weight = nn.Parameter(torch.ones(len(tasks)))
        self.register_buffer("initial", torch.full((len(tasks),), float("nan")))

    def weights(self, losses: dict[str, Tensor]) -> dict[str, float]:
        return {k: float(self.weight.detach()[self.tasks.index(k)]) for k in losses}

    def set_grad(self, losses: dict[str, Tensor], grad_norms: dict[str, Tensor]) -> None:
        """w.grad = dL_grad/dw for the tasks in `losses` (L_i unweighted, grad_norms[i] =
        ||grad_W L_i||); the target mean(G) r_i^alpha is a constant, as in the paper."""
        idx = torch.tensor([self.tasks.index(k) for k in losses])
        loss = torch.stack([v.detach() for v in losses.values()])
        with torch.no_grad():
            first = torch.isnan(self.initial[idx])
            self.initial[idx[first]] = loss[first]
            norms = torch.stack([grad_norms[k].detach() for k in losses])
            g = self.weight.detach()[idx] * norms
            rel = loss / self.initial[idx]
            target = g.mean() * (rel / rel.mean()) ** self.alpha
            grad = torch.zeros_like(self.weight)
            grad[idx] = torch.sign(g - target) * norms
        self.weight.grad = grad if self.weight.grad is None else self.weight.grad + grad

    @torch.no_grad()
    def renormalise(self) -> None:
        """Keep weights positive and summing to the number of tasks (the paper's step)."""
        self.weight.clamp_(min=1e-6)
        self.weight.mul_(len(self.tasks) / self.weight.sum())


def random_weights(tasks: list[str]) -> dict[str, float]:
    """RLW: K softmax(eps), eps ~ N(0, I), from torch's global generator."""
    w = len(tasks) * torch.softmax(torch.randn(len(tasks)), 0)
    return {k: float(x) for k, x in zip(tasks, w)}


# --------------------------------------------------------------------------- task scheduling


class TaskScheduler(nn.Module):
    """Which high-level tasks a meta-iteration trains on; state in buffers (checkpointed)."""

    def __init__(self, tasks: list[str], schedule: str, k: int):
        super().__init__()
        self.tasks, self.schedule, self.k = list(tasks), schedule, k
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("first", torch.full((len(tasks),), float("nan")))
        self.register_buffer("last", torch.full((len(tasks),), float("nan")))

    def probabilities(self) -> Tensor:
        """Sampling probabilities: uniform, or (difficulty) last loss / first loss, normalised."""
        if self.schedule == "difficulty":
            ratio = self.last / self.first
            ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
            return ratio / ratio.sum()
        return torch.full((len(self.tasks),), 1 / len(self.tasks))

    def select(self, available: list[str]) -> list[str]:
        if self.schedule == "all":
            return available
        if self.schedule == "round-robin":
            n = len(self.tasks)
            chosen = {self.tasks[(int(self.step) * self.k + j) % n] for j in range(self.k)}
        else:
            idx = torch.multinomial(self.probabilities(), self.k, replacement=False)
            chosen = {self.tasks[int(i)] for i in idx}
        self.step += 1
        return [t for t in available if t in chosen]

    @torch.no_grad()
    def observe(self, losses: dict[str, Tensor]) -> None:
        for k, v in losses.items():
            i = self.tasks.index(k)
            if torch.isnan(self.first[i]):
                self.first[i] = v.detach()
            self.last[i] = v.detach()
