"""Multi-task meta-learners (Lekkala & Itti): multi-task ANIL, AM, P-AM and full adaptation.

One Conv-4 backbone is shared by all high-level tasks (`tasks: multi`), or each task gets
its own (`tasks: single`, the paper's single-meta-task rows). Every task j has a head phi_j:
a linear layer for classification and vanishing points, a conv-transpose decoder for depth
and normals. Per subtask (paper eq. 2-3) the head is adapted on the support set by the
shared inner loop (`inner_loop.adapt`) while the backbone stays fixed; the outer loss is
the sum over tasks of the mean query loss over a task's subtasks (eq. 4), weighted by fixed
per-task weights or by learned uncertainties (Kendall et al. 2018, see `combine`).

- `mt-anil`: the above.
- `mt-am`: a `FeatureModulator` h_j per task reads the support set's (embedding, label)
  tokens and gives channel weights w; the backbone runs again with each block's channels
  scaled by (1 - w) and the head adapts on the modulated embeddings. The modulators Psi_j
  have their own learning rate `attention_lr` (gamma, eq. 5). `am_update: paper` (default)
  splits the outer update as eqs. 4-5 do: backbone and heads descend the *unmodulated* query
  loss (the mt-anil loss), Psi_j the modulated one, which reaches nothing else (the
  backbone and head initialisations enter it detached, and so do the support embeddings at
  the modulator's input); `joint` trains everything from the modulated loss alone.
- `mt-pam`: the same with a `ProbabilisticFeatureModulator`: training samples z_w from the
  posterior q(z_w | query set) and adds `kl_weight` (default 1, the ELBO as written) times
  a KL divergence to the prior p(z_w | support set): KL[p || q] as the paper's text writes
  it (`kl_direction: prior-posterior`, default) or KL[q || p], the ELBO's direction
  (`posterior-prior`). The channel scale is 1 - z_w as written (`weight_squash: none`) or
  1 - tanh(z_w) (`tanh`, bounded in (0, 2)); evaluation uses the prior's mean.
- `mt-maml`: MAML-style full adaptation (backbone and head in the inner loop), the speed
  baseline of the paper's comparison.

`pretrained_heads` lists tasks whose head is not adapted per subtask but trained across all
domains by the outer loop (paper Fig. 4b); classification cannot be one (its labels are
per-subtask).

Issue 16's options: `architecture` puts a multi-task trunk (`mtml.models.mtl_trunks`) in the
backbone's place; `loss_weighting` dwa/gradnorm/random, `optimiser` (TorchJD gradient
aggregation on the shared trunk parameters, `train_step`) and `schedule` come from
`mtml.multitask.optimisation`. `distill` names a teacher run whose predictions (or features)
the student is distilled from (`mtml.multitask.distillation`). At their defaults the learners
are unchanged.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from mtml.errors import UserError
from mtml.methods.base import MetaLearner, register
from mtml.methods.inner_loop import adapt, named_params, sgd_update
from mtml.models import mtl_trunks
from mtml.models.attention_modulator import (
    FeatureModulator,
    ProbabilisticFeatureModulator,
    gaussian_kl,
    modulation_hook,
)
from mtml.models.conv4 import Conv4
from mtml.models.dense_heads import ConvDecoder, LabelCompressor
from mtml.multitask import distillation
from mtml.multitask import optimisation as mtl_opt
from mtml.multitask.data import Subtask
from mtml.multitask.tasks import TASKS, TaskSpec
from mtml.options import Option
from mtml.options import defaults as option_defaults

KL_DIRECTIONS = ("prior-posterior", "posterior-prior")
AM_UPDATES = ("paper", "joint")
WEIGHT_SQUASHES = ("none", "tanh")
BASE_OPTIONS = {
    "filters": Option(int, 32, "conv filters per layer of the Conv-4 backbone", min=1),
    "tasks": Option(str, "multi", "multi: one backbone for all tasks | single: one per task",
                    choices=("multi", "single")),
    "loss_weighting": Option(str, "fixed", "fixed | uncertainty (learned per-task log variances) | dwa | "
                             "gradnorm | random (mtml.multitask.optimisation)", choices=mtl_opt.LOSS_WEIGHTINGS),
    "task_weights": Option(dict, {}, "fixed weights per task (default 1)", items=float, min=0),
    "inner_lr": Option(float, {}, "inner-loop step size: one number, or numbers per task "
                       "(defaults in multitask/tasks.py)", min=0, per_key=True),
    "inner_steps": Option(int, 5, "inner-loop steps in meta-training", min=0),
    "eval_inner_steps": Option(int, 10, "inner-loop steps at evaluation", min=0),
    "first_order": Option(bool, False, "drop second derivatives"),
    "pretrained_heads": Option(list, [], "tasks whose head is trained across domains, not adapted",
                               items=str),
    # Multi-task architectures and optimisation (issue 16): mtml.models.mtl_trunks and
    # mtml.multitask.optimisation declare their options.
    **mtl_trunks.OPTIONS,
    **mtl_opt.OPTIONS,
    **distillation.OPTIONS,
}
AM_OPTIONS = {
    **BASE_OPTIONS,
    "attention_lr": Option(float, 0.001, "learning rate gamma of the modulators (eq. 5)", min=0),
    "attention_dim": Option(int, 64, "width of the modulators' attention", min=1),
    "attention_blocks": Option(int, 2, "attention blocks of a modulator", min=1),
    "am_update": Option(str, "paper", "paper: backbone and heads learn from the unmodulated query loss "
                        "(eq. 4), the modulators from the modulated one (eq. 5) | joint: one modulated "
                        "loss trains everything", choices=AM_UPDATES),
}
PAM_OPTIONS = {
    **AM_OPTIONS,
    "kl_weight": Option(float, 1.0, "weight of the KL term (1: the ELBO as written)", min=0),
    "kl_direction": Option(str, "prior-posterior", "prior-posterior: KL[p || q] (the paper's text) | "
                           "posterior-prior: KL[q || p] (the ELBO's direction)", choices=KL_DIRECTIONS),
    "weight_squash": Option(str, "none", "none: channels scaled by 1 - z (the paper) | tanh: by 1 - tanh(z)",
                            choices=WEIGHT_SQUASHES),
}
BASE_DEFAULTS, AM_DEFAULTS, PAM_DEFAULTS = map(option_defaults, (BASE_OPTIONS, AM_OPTIONS, PAM_OPTIONS))


def check_hparams(method: str, hp: dict, task_names: list[str]) -> None:
    """The checks of a multitask method's (declared-valid) hyperparameters against the
    experiment's tasks; a UserError names `methods.<method>.<key>`."""
    key = lambda k: f"params key 'methods.{method}.{k}'"  # noqa: E731
    mtl_trunks.check(hp, key)
    mtl_opt.check(hp, key, task_names)
    if hp["architecture"] != "hard" and hp["tasks"] != "multi":
        raise UserError(f"{key('architecture')} {hp['architecture']!r} shares a trunk between tasks; it needs "
                        f"'tasks: multi' (or architecture: hard for one backbone per task)")
    for k in ("inner_lr", "task_weights"):
        for name in hp[k] if isinstance(hp[k], dict) else ():
            if name not in task_names:
                raise UserError(f"{key(k)} names task {name!r}; the experiment's tasks: {', '.join(task_names)}")
    heads = hp["pretrained_heads"]
    if any(h not in task_names for h in heads):
        raise UserError(f"{key('pretrained_heads')} must list tasks of the experiment "
                        f"({', '.join(task_names)}); got {heads!r}")
    if "classification" in heads:
        raise UserError(f"{key('pretrained_heads')} cannot hold classification: its labels differ "
                        f"in every subtask, so its head must adapt")


def feature_shape(backbone: Conv4, image_shape) -> tuple[int, int, int]:
    """(channels, h, w) of the backbone's last block for images of `image_shape`."""
    with torch.no_grad():
        x = torch.zeros(2, *image_shape)
        for block in backbone.blocks:
            x = block(x)
    return tuple(x.shape[1:])


class TaskNet(nn.Module):
    """Backbone (optionally modulated) then head; what full adaptation adapts."""

    def __init__(self, backbone: Conv4, head: nn.Module, w: Tensor | None):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.hook = modulation_hook(w, backbone.filters)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x, block_hook=self.hook))


class MultiTaskLearner(MetaLearner):
    options = BASE_OPTIONS
    modulator_cls: type[FeatureModulator] | None = None
    adapt_backbone = False

    def __init__(self, hp: dict, image_shape, ways: int, tasks: list[TaskSpec] | None = None):
        if tasks is None:
            raise UserError(f"algorithm {self.algorithm!r} needs an experiment of kind multitask "
                            f"(experiments.<name>.kind: multitask)")
        super().__init__(hp, image_shape, ways)
        self.task_specs = {t.name: t for t in tasks}
        self.filters = hp["filters"]
        towers = ["shared"] if hp["tasks"] == "multi" else list(self.task_specs)
        if hp["architecture"] == "hard":
            self.backbones = nn.ModuleDict({k: Conv4(image_shape[0], self.filters) for k in towers})
            fshape = feature_shape(next(iter(self.backbones.values())), image_shape)
        else:  # a multi-task trunk (mtml.models.mtl_trunks) in the backbone's place
            if self.adapt_backbone:
                raise UserError(f"{self.algorithm} adapts the backbone in its inner loop; it needs "
                                f"architecture: hard (got {hp['architecture']!r})")
            self.backbones = nn.ModuleDict({"shared": mtl_trunks.build_trunk(hp, tasks, image_shape, ways)})
            fshape = mtl_trunks.feature_shape(image_shape, self.filters)
        self.embed_dim = math.prod(fshape)
        size = tuple(image_shape[1:])
        self.heads = nn.ModuleDict()
        for t in tasks:
            if t.kind == "dense":
                self.heads[t.name] = ConvDecoder(fshape, t.channels, size)
            else:
                self.heads[t.name] = nn.Linear(self.embed_dim, ways if t.kind == "classification" else t.channels)
        if self.modulator_cls is not None:
            self.modulators = nn.ModuleDict()
            for t in tasks:
                encoder = LabelCompressor(t.channels, size) if t.kind == "dense" else None
                label_dim = encoder.out_dim if encoder else (ways if t.kind == "classification" else t.channels)
                self.modulators[t.name] = self.modulator_cls(
                    self.embed_dim, label_dim, len(self.backbone(t.name).blocks), self.filters,
                    hp["attention_dim"], hp["attention_blocks"], encoder)
        if hp["loss_weighting"] == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(len(tasks)))
        self._init_mtl_optimisation(hp)

    def _init_mtl_optimisation(self, hp: dict) -> None:
        """Issue 16's loss weighting, gradient aggregator and task scheduler (modules with
        buffers, so checkpoints resume them); none of them exists at the defaults."""
        names = list(self.task_specs)
        if hp["loss_weighting"] == "dwa":
            self.dwa = mtl_opt.DynamicWeightAverage(names, hp["dwa_temperature"])
        if hp["loss_weighting"] == "gradnorm":
            self.gradnorm = mtl_opt.GradNorm(names, hp["gradnorm_alpha"])
        if hp["schedule"] != "all":
            self.scheduler = mtl_opt.TaskScheduler(names, hp["schedule"], hp["schedule_tasks"])
        self.aggregator = (mtl_opt.make_aggregator(hp["optimiser"], len(names), hp["cagrad_c"])
                           if hp["optimiser"] != "sum" else None)

    @classmethod
    def from_context(cls, hp, ctx):
        return cls(hp, ctx.image_shape, ctx.ways, list(ctx.tasks) or None)

    @classmethod
    def check_run(cls, run):
        tasks = getattr(run.experiment.settings, "task_names", None)
        if tasks is None:
            raise UserError(f"params key 'methods.{run.method}.algorithm' is {cls.algorithm!r}, which needs "
                            f"an experiment of kind multitask; experiment {run.experiment.name!r} is of kind "
                            f"{run.experiment.config['kind']}")
        check_hparams(run.method, run.hparams, tasks)
        distillation.check(run, lambda k: f"params key 'methods.{run.method}.{k}'")
        if cls.adapt_backbone and run.hparams["architecture"] != "hard":
            raise UserError(f"params key 'methods.{run.method}.architecture' is {run.hparams['architecture']!r}, "
                            f"but {cls.algorithm} adapts the whole backbone per subtask; it needs architecture: hard")

    @classmethod
    def run_dependencies(cls, run):
        """The teacher run (`distill`): same experiment and training seed."""
        teacher = run.hparams["distill"]
        return [run.study.run(run.experiment.name, teacher, run.seed)] if teacher is not None else []

    def attach_dependencies(self, learners: dict) -> None:
        # Not a submodule: the teacher is neither trained nor saved with the student.
        object.__setattr__(self, "teacher", learners[self.hp["distill"]])

    # ------------------------------------------------------------------ pieces

    def backbone(self, task: str) -> Conv4:
        return self.backbones["shared" if "shared" in self.backbones else task]

    @property
    def trunk(self) -> mtl_trunks.Trunk | None:
        return self.backbones["shared"] if self.hp["architecture"] != "hard" else None

    def embed(self, x: Tensor, task: str | None = None, w: Tensor | None = None, detach: bool = False) -> Tensor:
        """Backbone (or trunk) features of x under channel weights w; `detach`: with the
        backbone's parameters as constants (gradients still reach w)."""
        task = task or next(iter(self.task_specs))
        if self.trunk is not None:
            module, args, kwargs = self.trunk, (x, task, modulation_hook(w, self.filters)), {}
        else:
            module, args, kwargs = self.backbone(task), (x,), {"block_hook": modulation_hook(w, self.filters)}
        if detach:
            return functional_call(module, {k: v.detach() for k, v in module.named_parameters()}, args, kwargs)
        return module(*args, **kwargs)

    @property
    def paper_update(self) -> bool:
        """AM's outer update split as eqs. 4-5 (`am_update: paper`)."""
        return self.modulator_cls is not None and self.hp["am_update"] == "paper"

    def inner_lr(self, task: str) -> float:
        lr = self.hp["inner_lr"]
        if isinstance(lr, numbers.Real):
            return float(lr)
        return float(lr.get(task, TASKS[task].inner_lr))

    def label_vectors(self, sub: Subtask, y: Tensor) -> Tensor:
        if self.task_specs[sub.task].kind == "classification":
            return F.one_hot(y, self.ways).float()
        return y

    def channel_weights(self, sub: Subtask, sample: bool) -> tuple[Tensor | None, Tensor]:
        """(w or None, KL term). AM: w from the support set. P-AM: w sampled from the
        query-set posterior q when `sample` (training), with KL[p || q] to the support-set
        prior p (KL[q || p] with `kl_direction: posterior-prior`), else the prior's mean.
        Under `am_update: paper` the embeddings enter the modulator detached: no gradient
        reaches the backbone through the modulator's input."""
        zero = sub.support_x.new_zeros(())
        if self.modulator_cls is None:
            return None, zero
        mod = self.modulators[sub.task]
        cut = (lambda t: t.detach()) if self.paper_update else (lambda t: t)  # noqa: E731
        support = (cut(self.embed(sub.support_x, sub.task)), self.label_vectors(sub, sub.support_y))
        if not mod.probabilistic:
            return mod(*support), zero
        squash = self.hp["weight_squash"] == "tanh"
        mean_p, log_std_p = mod.distribution(*support)
        if not sample:
            return (torch.tanh(mean_p) if squash else mean_p), zero
        mean_q, log_std_q = mod.distribution(cut(self.embed(sub.query_x, sub.task)),
                                             self.label_vectors(sub, sub.query_y))
        w = mod.sample(mean_q, log_std_q, squash)  # before the KL term: the same graph (and floats) as before the option
        if self.hp["kl_direction"] == "prior-posterior":
            return w, gaussian_kl(mean_p, log_std_p, mean_q, log_std_q)
        return w, gaussian_kl(mean_q, log_std_q, mean_p, log_std_p)

    def query_output(self, sub: Subtask, w: Tensor | None, steps: int, first_order: bool,
                     detach: bool = False) -> Tensor:
        """Adapt on the support set under channel weights w; return the query predictions.
        `detach`: backbone and head initialisation enter as constants (only w is trained)."""
        spec = self.task_specs[sub.task]
        head = self.heads[sub.task]
        if self.adapt_backbone:
            module = TaskNet(self.backbone(sub.task), head, w)
            s_in, q_in = sub.support_x, sub.query_x
            params = named_params(module)
        else:
            module = head
            s_in = self.embed(sub.support_x, sub.task, w, detach)
            q_in = self.embed(sub.query_x, sub.task, w, detach)
            params = named_params(head)
        if detach:
            params = {k: v.detach() for k, v in params.items()}
        frozen = {}
        if sub.task in self.hp["pretrained_heads"]:  # trained across domains: not in the inner loop
            frozen = {k: v for k, v in params.items() if module is head or k.startswith("head.")}
            params = {k: v for k, v in params.items() if k not in frozen}
        if params and steps:
            params = adapt(module, params, s_in, sub.support_y, steps, sgd_update(self.inner_lr(sub.task)),
                           first_order=first_order, loss_fn=spec.loss, frozen=frozen)
        return functional_call(module, {**frozen, **params}, (q_in,))

    def combine(self, task_losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Total loss and the effective weight of each task."""
        terms, weights = self.loss_terms(task_losses)
        return sum(terms.values()), weights

    def loss_terms(self, task_losses: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Each task's term in the total loss, and its effective weight.

        Uncertainty (Kendall et al. 2018, s = log sigma^2 learned per task): a regression
        loss counts 0.5 exp(-s) L + 0.5 s, a classification loss exp(-s) L + 0.5 s.
        """
        if self.hp["loss_weighting"] == "uncertainty":
            s = dict(zip(self.task_specs, self.log_vars))
            factor = {k: 1.0 if self.task_specs[k].kind == "classification" else 0.5 for k in task_losses}
            terms = {k: factor[k] * torch.exp(-s[k]) * v + 0.5 * s[k] for k, v in task_losses.items()}
            return terms, {k: factor[k] * float(torch.exp(-s[k].detach())) for k in task_losses}
        weights = self.dynamic_weights(task_losses)
        return {k: weights[k] * v for k, v in task_losses.items()}, weights

    def dynamic_weights(self, task_losses: dict[str, Tensor]) -> dict[str, float]:
        """The weight of each task: fixed `task_weights`, or DWA / GradNorm / random ones
        (mtml.multitask.optimisation), all constants in the total loss."""
        lw = self.hp["loss_weighting"]
        if lw == "dwa":
            return self.dwa.weights(task_losses)
        if lw == "gradnorm":
            return self.gradnorm.weights(task_losses)
        if lw == "random":
            return mtl_opt.random_weights(list(task_losses))
        return {k: float(self.hp["task_weights"].get(k, 1.0)) for k in task_losses}

    # ------------------------------------------------------------------ MetaLearner API

    def aux_loss(self, sub: Subtask, w: Tensor | None) -> Tensor | float:
        """PAD-Net's intermediate-prediction loss of a subtask (0 for other trunks)."""
        if self.hp["architecture"] != "pad-net" or self.hp["pad_aux_weight"] == 0:
            return 0.0
        return self.hp["pad_aux_weight"] * self.trunk.aux_loss(
            sub.task, sub.support_x, sub.support_y, sub.query_x, sub.query_y, modulation_hook(w, self.filters))

    def meta_loss(self, batch: dict[str, list[Subtask]]) -> tuple[Tensor, dict]:
        total, stats, _ = self.meta_loss_terms(batch)
        return total, stats

    def meta_loss_terms(self, batch: dict[str, list[Subtask]]) -> tuple[Tensor, dict, dict]:
        """(total, stats, parts): parts holds each task's unweighted loss (`task_losses`),
        its term in the total (`terms`), the regulariser (`penalty`, or None) and, under
        `am_update: paper`, the modulators' weighted loss (`modulator`, else None)."""
        if hasattr(self, "scheduler") and self.training:
            batch = {k: batch[k] for k in self.scheduler.select(list(batch))}
        paper = self.paper_update
        steps, first_order = self.hp["inner_steps"], self.hp["first_order"]
        task_losses, modulated, attention, accs, distilled = {}, {}, {}, [], {}
        teacher = getattr(self, "teacher", None) if self.training else None

        def with_distillation(task, sub, loss, out, w):  # the student's loss mixed with the teacher's (issue 16)
            if teacher is None:
                return loss
            d = distillation.distill_loss(self, sub, out, w)
            distilled.setdefault(task, []).append(float(d.detach()))
            return distillation.mix(loss, d, self.hp["distill_weight"])

        for task, subs in batch.items():
            spec, losses, mod_losses = self.task_specs[task], [], []
            for sub in subs:
                w, kl = self.channel_weights(sub, sample=True)
                if paper:  # eq. 4: the unmodulated loss (backbone, heads); eq. 5: the modulated one (Psi_j)
                    plain = self.query_output(sub, None, steps, first_order)
                    losses.append(with_distillation(task, sub, spec.loss(plain, sub.query_y), plain, None)
                                  + self.aux_loss(sub, None))
                    out = self.query_output(sub, w, steps, first_order, detach=True)
                    mod_losses.append(spec.loss(out, sub.query_y) + self.hp.get("kl_weight", 0.0) * kl)
                else:
                    out = self.query_output(sub, w, steps, first_order)
                    losses.append(with_distillation(task, sub, spec.loss(out, sub.query_y), out, w)
                                  + self.hp.get("kl_weight", 0.0) * kl + self.aux_loss(sub, w))
                if spec.kind == "classification":
                    accs.append(float((out.argmax(-1) == sub.query_y).float().mean()))
                if w is not None:
                    attention.setdefault(task, []).append(w.detach().view(-1, self.filters).mean(1))
            task_losses[task] = torch.stack(losses).mean()
            if mod_losses:
                modulated[task] = torch.stack(mod_losses).mean()
        if hasattr(self, "scheduler") and self.training:
            self.scheduler.observe(task_losses)
        terms, weights = self.loss_terms(task_losses)
        total = sum(terms.values())
        # the modulators' loss under the same (constant) task weights; it reaches Psi only
        mod_total = sum(weights[k] * v for k, v in modulated.items()) if modulated else None
        if mod_total is not None:
            total = total + mod_total
        penalty = self.trunk.penalty() if self.trunk is not None else None
        if penalty is not None:
            total = total + penalty
        trace = {"task_loss": {k: round(float(v.detach()), 6) for k, v in task_losses.items()},
                 "task_weight": {k: round(v, 6) for k, v in weights.items()}}
        if modulated:
            trace["task_loss_modulated"] = {k: round(float(v.detach()), 6) for k, v in modulated.items()}
        if distilled:
            trace["distill_loss"] = {k: round(sum(v) / len(v), 6) for k, v in distilled.items()}
        if attention:  # mean weight per block, per task: how far modulation moves from identity
            trace["attention_block_mean"] = {k: [round(float(x), 6) for x in torch.stack(v).mean(0)]
                                             for k, v in attention.items()}
        stats = {"trace": trace}
        if accs:
            stats["acc"] = sum(accs) / len(accs)
        return total, stats, {"task_losses": task_losses, "terms": terms, "penalty": penalty,
                              "modulator": mod_total}

    def subtask_embeddings(self, sub: Subtask) -> tuple[Tensor, Tensor]:
        """Support and query embeddings under the subtask's channel weights (NIL metric)."""
        w, _ = self.channel_weights(sub, sample=False)
        return self.embed(sub.support_x, sub.task, w), self.embed(sub.query_x, sub.task, w)

    def predict(self, sub: Subtask) -> Tensor:
        w, _ = self.channel_weights(sub, sample=False)
        return self.query_output(sub, w, self.hp["eval_inner_steps"], first_order=True).detach()

    def make_optimizer(self, meta_lr: float) -> torch.optim.Optimizer:
        """Adam; the modulators Psi_j get their own learning rate gamma (eq. 5), GradNorm's
        weights `gradnorm_lr`."""
        mod = {id(p) for p in self.modulators.parameters()} if self.modulator_cls else set()
        gn = [self.gradnorm.weight] if hasattr(self, "gradnorm") else []
        groups = [{"params": [p for p in self.parameters() if id(p) not in mod and all(p is not g for g in gn)]}]
        if mod:
            groups.append({"params": list(self.modulators.parameters()), "lr": self.hp["attention_lr"]})
        if gn:
            groups.append({"params": gn, "lr": self.hp["gradnorm_lr"]})
        return torch.optim.Adam(groups, lr=meta_lr)

    # ------------------------------------------------------------------ issue 16: optimisation

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters all tasks' losses share (what a gradient aggregator acts on)."""
        if self.trunk is not None:
            return self.trunk.shared_parameters()
        return list(self.backbones["shared"].parameters()) if "shared" in self.backbones else []

    def last_shared_layer(self) -> list[nn.Parameter]:
        """GradNorm's W: the conv weights of the trunk's (or every backbone's) last block."""
        if self.trunk is not None:
            return self.trunk.last_block_parameters()
        return [b.blocks[-1].conv.weight for b in self.backbones.values()]

    def train_step(self, batch, optimizer, sample_batch) -> dict:
        """Plain backpropagation unless a gradient aggregator (`optimiser`) or GradNorm is on:
        then the shared parameters get the aggregated Jacobian of the tasks' terms, the
        others their ordinary gradient, and GradNorm's weights dL_grad/dw."""
        if self.aggregator is None and not hasattr(self, "gradnorm"):
            return super().train_step(batch, optimizer, sample_batch)
        optimizer.zero_grad(set_to_none=True)
        total, stats, parts = self.meta_loss_terms(batch)
        if hasattr(self, "gradnorm"):
            layer = self.last_shared_layer()
            norms = {k: torch.sqrt(sum((g ** 2).sum() for g in torch.autograd.grad(
                v, layer, retain_graph=True, allow_unused=True) if g is not None))
                for k, v in parts["task_losses"].items()}
            self.gradnorm.set_grad(parts["task_losses"], norms)
        shared = [p for p in self.shared_parameters() if p.requires_grad]
        if self.aggregator is None or not shared:
            total.backward()
        else:
            ids = {id(p) for p in shared}
            others = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
            rows = list(parts["terms"].values())
            weights = mtl_opt.aggregate_backward(rows, shared, self.aggregator)
            rest = sum(rows) if parts["modulator"] is None else sum(rows) + parts["modulator"]
            torch.autograd.backward(rest, inputs=others, retain_graph=parts["penalty"] is not None)
            if parts["penalty"] is not None:
                parts["penalty"].backward()
            if weights is not None:
                stats["trace"]["aggregator_weight"] = {k: round(float(x), 6)
                                                       for k, x in zip(parts["terms"], weights)}
        optimizer.step()
        if hasattr(self, "gradnorm"):
            self.gradnorm.renormalise()
        return {"loss": float(total.detach()), **stats}


@register("mt-anil")
class MultiTaskANIL(MultiTaskLearner):
    pass


@register("mt-am")
class MultiTaskAM(MultiTaskLearner):
    options = AM_OPTIONS
    modulator_cls = FeatureModulator


@register("mt-pam")
class MultiTaskPAM(MultiTaskLearner):
    options = PAM_OPTIONS
    modulator_cls = ProbabilisticFeatureModulator


@register("mt-maml")
class MultiTaskMAML(MultiTaskLearner):
    adapt_backbone = True


ALGORITHMS = ("mt-anil", "mt-am", "mt-pam", "mt-maml")
