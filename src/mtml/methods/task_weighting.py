"""Task-level weighting of the meta-objective: TAML (Jamal & Qi 2019) and task attention
(Aimen, Sidheekh & Krishnan 2021).

TAML adds lambda * I({loss_i}) to MAML's objective, where I is an economic inequality measure
over the tasks of a meta-batch (Theil, Atkinson, generalised entropy, Gini): the initial
model is pushed to be equally good (or bad) on every task instead of over-fitting some.

Task attention (Algorithm 1 of Aimen et al.) learns the weights instead. Per task of a
meta-batch it forms the meta-information tuple (gradient norm, query loss, query accuracy,
loss ratio after/before adaptation); an attention network maps the batch's tuples to weights
w that sum to one, and

  eq. 2: theta <- theta - beta * sum_i w_i grad_i    (w is a constant here: no gradient
                                                      reaches the attention network)
  eq. 3: a new batch is adapted from the look-ahead theta'(w) = theta - beta sum_i w_i grad_i
         and the attention network descends that batch's mean query loss through w.

The wrapper works with any base whose `forward(episode)` returns a `TaskOutcome` (MAML,
Meta-SGD, MetaLSTM++); the look-ahead runs the base with `torch.func.functional_call`, so it
covers every meta-parameter of the base (Meta-SGD's learning rates, the LSTM's weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtml.errors import UserError
from mtml.methods.base import Episode, MetaLearner, register
from mtml.methods.gradient import MAML, MetaSGD, TaskOutcome
from mtml.methods.learned_optimizer import MetaLSTMPlusPlus
from mtml.options import Option
from mtml.options import defaults as option_defaults

# ---------------------------------------------------------------- inequality measures (TAML)


def _shares(losses: Tensor) -> Tensor:
    """loss_i / mean loss (the measures below are scale-free functions of these)."""
    losses = losses.clamp_min(1e-12)
    return losses / losses.mean()


def theil(losses: Tensor) -> Tensor:
    """T = mean_i r_i ln r_i with r_i = l_i / mean(l)."""
    r = _shares(losses)
    return torch.special.xlogy(r, r).mean()


def generalized_entropy(losses: Tensor, alpha: float = 2.0) -> Tensor:
    """GE(a) = mean_i (r_i^a - 1) / (a (a - 1)); a = 1 is Theil, a = 0 the mean log deviation."""
    r = _shares(losses)
    if alpha == 1:
        return torch.special.xlogy(r, r).mean()
    if alpha == 0:
        return -r.log().mean()
    return (r.pow(alpha) - 1).mean() / (alpha * (alpha - 1))


def atkinson(losses: Tensor, epsilon: float = 0.5) -> Tensor:
    """A(e) = 1 - (mean_i r_i^(1-e))^(1/(1-e)); e = 1 uses the geometric mean."""
    r = _shares(losses)
    if epsilon == 1:
        return 1 - r.log().mean().exp()
    return 1 - r.pow(1 - epsilon).mean().pow(1 / (1 - epsilon))


def gini(losses: Tensor) -> Tensor:
    """G = sum_ij |l_i - l_j| / (2 n^2 mean(l))."""
    r = _shares(losses)
    return (r[:, None] - r[None, :]).abs().mean() / 2


INEQUALITIES = ("theil", "atkinson", "generalized_entropy", "gini")
INEQUALITY_ON = ("initial", "adapted")


def inequality(losses: Tensor, kind: str, ge_alpha: float = 2.0, atkinson_epsilon: float = 0.5) -> Tensor:
    if kind == "theil":
        return theil(losses)
    if kind == "generalized_entropy":
        return generalized_entropy(losses, ge_alpha)
    if kind == "atkinson":
        return atkinson(losses, atkinson_epsilon)
    if kind == "gini":
        return gini(losses)
    raise UserError(f"params key 'inequality' of a taml method is {kind!r}; allowed: {', '.join(INEQUALITIES)}")


@register("taml")
class TAML(MAML):
    """Inequality-minimisation TAML (Jamal & Qi 2019, Algorithm 2) on top of MAML.

    `inequality_on: initial` (the paper) measures the inequality of the initial model's
    losses on the tasks' support sets; `adapted` measures it on the query losses after
    adaptation (the quantity MAML's meta-objective averages).
    """

    options = {
        **MAML.options,
        "lambda": Option(float, 0.05, "weight of the inequality term in the meta-objective", min=0),
        "inequality": Option(str, "theil", "the inequality measure", choices=INEQUALITIES),
        "inequality_on": Option(str, "initial", "initial: the initial model's support losses (the "
                                "paper) | adapted: the query losses after adaptation",
                                choices=INEQUALITY_ON),
        "ge_alpha": Option(float, 2.0, "alpha of the generalized entropy measure"),
        "atkinson_epsilon": Option(float, 0.5, "epsilon (inequality aversion) of the Atkinson measure",
                                   min=0),
    }

    @staticmethod
    def initial_loss(o: TaskOutcome) -> Tensor:
        logits = functional_call(o.module, o.init, (o.support_in,))
        return nn.functional.cross_entropy(logits, o.episode.support_y)

    def meta_loss(self, batch):
        outcomes = [self(ep) for ep in batch]
        query = torch.stack([o.loss for o in outcomes])
        measured = query if self.hp["inequality_on"] == "adapted" else torch.stack(
            [self.initial_loss(o) for o in outcomes])
        ineq = inequality(measured, self.hp["inequality"], self.hp["ge_alpha"], self.hp["atkinson_epsilon"])
        return query.mean() + self.hp["lambda"] * ineq, {
            "acc": float(torch.stack([o.acc for o in outcomes]).mean()), "inequality": float(ineq.detach())}


# ---------------------------------------------------------------------------- task attention

META_INFORMATION = ("grad_norm", "query_loss", "query_acc", "loss_ratio")


class AttentionNetwork(nn.Module):
    """Meta-information of a batch [N, 4] -> task weights [N] (positive, summing to one).

    A 1x1 convolution folds each task's four components into one number, `layers` fully
    connected ReLU layers of `hidden` units mix these across the batch, and a last linear
    layer and a softmax over the batch give the weights (the authors' `TaskAttention` module:
    Conv1d(4, 1, 1), Linear(N, 32), ReLU, [Linear(32, 32), ReLU] x (layers - 1),
    Linear(32, N), Softmax). The input and output widths are the meta-batch size, so the
    network is built for one batch size.
    """

    def __init__(self, tasks: int, hidden: int = 32, layers: int = 2, components: int = len(META_INFORMATION)):
        super().__init__()
        self.tasks = tasks
        self.fold = nn.Conv1d(components, 1, kernel_size=1)
        mix: list[nn.Module] = [nn.Linear(tasks, hidden), nn.ReLU()]
        for _ in range(layers - 1):
            mix += [nn.Linear(hidden, hidden), nn.ReLU()]
        self.mix = nn.Sequential(*mix, nn.Linear(hidden, tasks))

    def forward(self, info: Tensor) -> Tensor:
        x = self.fold(info.T[None])  # [1, components, N] -> [1, 1, N]
        return torch.softmax(self.mix(x.reshape(1, -1))[0], 0)


def task_gradient(loss: Tensor, theta: dict[str, Tensor], retain_graph: bool = False) -> dict[str, Tensor]:
    grads = torch.autograd.grad(loss, list(theta.values()), retain_graph=retain_graph, allow_unused=True)
    return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(theta.items(), grads)}


def global_norm(tensors) -> Tensor:
    return torch.sqrt(sum((t.detach() ** 2).sum() for t in tensors))


def meta_information(o: TaskOutcome, meta_grad: dict[str, Tensor] | None = None) -> Tensor:
    """(gradient norm, query loss, query accuracy, query loss after / before adaptation).

    The gradient norm is that of the query loss w.r.t. the adapted parameters, or, given
    `meta_grad`, the norm of the task's meta-gradient (what the authors' code measures).
    """
    if meta_grad is None:
        adapted = list(o.adapted.values())
        grads = torch.autograd.grad(o.loss, adapted, retain_graph=True, allow_unused=True)
        norm = global_norm(g for g in grads if g is not None)
    else:
        norm = global_norm(meta_grad.values())
    with torch.no_grad():
        before = nn.functional.cross_entropy(functional_call(o.module, o.init, (o.query_in,)), o.episode.query_y)
    loss = o.loss.detach()
    return torch.stack([norm, loss, o.acc.detach().to(loss.dtype), loss / before.clamp_min(1e-12)])


@dataclass
class AttendedStep:
    """What eq. 2 leaves for eq. 3."""

    theta: dict[str, Tensor]  # meta-parameters before the update (detached copies)
    grads: list[dict[str, Tensor]]  # per-task meta-gradients (constants)
    weights: Tensor  # attention weights, with graph to the attention network
    info: Tensor  # [N, 4] meta-information
    losses: Tensor  # [N] query losses after adaptation
    accs: Tensor


class TaskAttention(MetaLearner):
    """A base meta-learner trained with task attention (Algorithm 1 of Aimen et al.)."""

    base_class: type[MAML]
    attention_options = {
        "meta_batch": Option(int, 4, "the attention network's width; must equal training.meta_batch", min=1),
        "attention_lr": Option(float, 0.003, "Adam learning rate of the attention network (eq. 3; "
                               "authors' code)", min=0),
        "attention_hidden": Option(int, 32, "hidden units of the attention network", min=1),
        # as described, and the authors' module default; their run config passes 1
        "attention_layers": Option(int, 2, "hidden ReLU layers of the attention network", min=1),
        "lookahead_lr": Option(float, None, "beta of the look-ahead; null: the meta learning rate", min=0),
        "grad_norm": Option(str, "adapted", "which gradient's norm is meta-information",
                            choices=("adapted", "meta")),
    }
    attention_defaults = option_defaults(attention_options)

    def __init__(self, hp, image_shape, ways):
        super().__init__(hp, image_shape, ways)
        self.base = self.base_class({k: hp[k] for k in self.base_class.defaults}, image_shape, ways)
        self.attention = AttentionNetwork(hp["meta_batch"], hp["attention_hidden"], hp["attention_layers"])
        self.meta_lr: float | None = None

    @classmethod
    def check_run(cls, run):
        batch = run.training["meta_batch"]
        if run.hparams["meta_batch"] != batch:
            raise UserError(
                f"params key 'methods.{run.method}.meta_batch' is {run.hparams['meta_batch']} but experiment "
                f"{run.experiment.name!r} trains with meta-batches of {batch} (training.meta_batch): a "
                f"{cls.algorithm} method's attention network weighs exactly meta_batch tasks; "
                f"set both to the same number")

    # evaluation is the base's: the attention network only shapes meta-training
    def predict(self, episode):
        return self.base.predict(episode)

    def embed(self, x):
        return self.base.embed(x)

    def make_optimizer(self, meta_lr):
        self.meta_lr = meta_lr
        # One Adam, two groups: a step only moves parameters that have a gradient, so eq. 2
        # moves the base and eq. 3 the attention network; one state dict resumes both.
        return torch.optim.Adam([{"params": list(self.base.parameters()), "lr": meta_lr},
                                 {"params": list(self.attention.parameters()), "lr": self.hp["attention_lr"]}])

    def _check_batch(self, batch: list[Episode]) -> None:
        if len(batch) != self.hp["meta_batch"]:
            raise UserError(f"a {self.algorithm} method has meta_batch: {self.hp['meta_batch']} (its attention "
                            f"network's width) but is trained on batches of {len(batch)} tasks; set its "
                            f"'meta_batch' hyperparameter to training.meta_batch ({len(batch)})")

    def attend(self, batch: list[Episode]) -> AttendedStep:
        """Adapt each task, take its meta-gradient and meta-information, weigh the batch."""
        self._check_batch(batch)
        theta = dict(self.base.named_parameters())
        info, grads, losses, accs = [], [], [], []
        for ep in batch:
            o = self.base(ep)
            if self.hp["grad_norm"] == "adapted":
                info.append(meta_information(o))
                grads.append(task_gradient(o.loss, theta))
            else:
                grads.append(task_gradient(o.loss, theta, retain_graph=True))
                info.append(meta_information(o, grads[-1]))
            losses.append(o.loss.detach())
            accs.append(o.acc.detach())
        info = torch.stack(info)
        return AttendedStep({k: p.detach().clone() for k, p in theta.items()}, grads,
                            self.attention(info), info, torch.stack(losses), torch.stack(accs))

    def meta_update(self, step: AttendedStep, optimizer: torch.optim.Optimizer) -> None:
        """Eq. 2: the base descends sum_i w_i L_i with w held constant."""
        optimizer.zero_grad(set_to_none=True)
        w = step.weights.detach()
        for k, p in self.base.named_parameters():
            p.grad = sum(w[i] * g[k] for i, g in enumerate(step.grads))
        self.base.clip_gradients()
        optimizer.step()

    def lookahead_loss(self, step: AttendedStep, batch: list[Episode], weights: Tensor) -> Tensor:
        """Mean query loss of `batch` adapted from theta'(w) = theta - beta sum_i w_i grad_i."""
        beta = self.hp["lookahead_lr"] if self.hp["lookahead_lr"] is not None else self.meta_lr
        if beta is None:
            raise RuntimeError("call make_optimizer (it sets the meta learning rate) before training")
        theta = {k: v - beta * sum(weights[i] * g[k] for i, g in enumerate(step.grads))
                 for k, v in step.theta.items()}
        return torch.stack([functional_call(self.base, theta, (ep,)).loss for ep in batch]).mean()

    def attention_update(self, step: AttendedStep, batch: list[Episode], optimizer: torch.optim.Optimizer) -> Tensor:
        """Eq. 3: the attention network descends the look-ahead batch's loss through w."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.lookahead_loss(step, batch, step.weights)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def meta_loss(self, batch):
        """The eq.-2 objective sum_i w_i L_i (w constant), for callers outside `train_step`."""
        theta = dict(self.base.named_parameters())
        outcomes = [self.base(ep) for ep in batch]
        info = [meta_information(o) if self.hp["grad_norm"] == "adapted"
                else meta_information(o, task_gradient(o.loss, theta, retain_graph=True)) for o in outcomes]
        w = self.attention(torch.stack(info)).detach()
        losses = torch.stack([o.loss for o in outcomes])
        return (w * losses).sum(), {"acc": float(torch.stack([o.acc for o in outcomes]).mean())}

    def train_step(self, batch, optimizer, sample_batch):
        step = self.attend(batch)
        self.meta_update(step, optimizer)
        lookahead = self.attention_update(step, sample_batch(), optimizer)
        w = step.weights.detach()
        rnd = lambda t: [round(float(x), 6) for x in t]  # noqa: E731
        trace = {"weights": rnd(w), "lookahead_loss": round(float(lookahead), 6),
                 **{name: rnd(step.info[:, j]) for j, name in enumerate(META_INFORMATION)}}
        return {"loss": float(step.losses.mean()), "acc": float(step.accs.mean()),
                "weighted_loss": float((w * step.losses).sum()), "trace": trace}


@register("ta-maml")
class TaskAttendedMAML(TaskAttention):
    base_class = MAML
    options = {**MAML.options, **TaskAttention.attention_options}


@register("ta-metasgd")
class TaskAttendedMetaSGD(TaskAttention):
    base_class = MetaSGD
    options = {**MetaSGD.options, **TaskAttention.attention_options}


@register("ta-metalstm++")
class TaskAttendedMetaLSTM(TaskAttention):
    base_class = MetaLSTMPlusPlus
    options = {**MetaLSTMPlusPlus.options, **TaskAttention.attention_options}
