"""Multimodal meta-learners: task-modulated MAML and ProtoNet, and one learner per mode.

- `mmaml` (Vuorio et al. 2019): a task encoder embeds the support set, a generator turns it
  into FiLM scales and shifts of every Conv-4 block; MAML's inner loop then adapts the
  backbone and head under that modulation.
- `mmaml-kml` (Abdollahzadeh et al. 2021): the generator modulates every conv kernel,
  W_hat = W * (J + u w^T), b_hat = b + delta_b; the inner loop starts from the modulated
  weights.
- `mprotonet`, `mprotonet-kml`: the same two modulations of ProtoNet's embedding.
- `multi-maml`, `multi-protonet`: one independent learner per mode, the mode known from
  `Episode.mode` (the "one specialist per mode" baseline of both papers).

Encoder, generator and backbone are meta-learned together by the outer loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtml.errors import UserError
from mtml.methods.base import Episode, MetaLearner, accuracy, register
from mtml.methods.gradient import MAML, TaskOutcome
from mtml.methods.inner_loop import adapt, named_params
from mtml.methods.metric import ProtoNet, prototypes, squared_euclidean_logits
from mtml.models.modulation import Conditioned, TaskConditioner
from mtml.options import Option

# embed_dim: size of v_T; encoder_filters: the task encoder's Conv-4 width; generator_hidden:
# hidden units of KML's u and w MLPs (0: linear); film_at: block (each block's output, through
# Conv4's block_hook) or norm (after BatchNorm, before ReLU, as MMAML). KML ignores film_at.
CONDITIONING = {
    "embed_dim": Option(int, 32, "size of the task embedding v_T", min=1),
    "encoder_filters": Option(int, 16, "the task encoder's Conv-4 width", min=1),
    "generator_hidden": Option(int, 16, "hidden units of KML's u and w MLPs (0: linear)", min=0),
    "film_at": Option(str, "block", "block: each block's output | norm: after BatchNorm, before ReLU "
                      "(as MMAML); KML ignores it", choices=TaskConditioner.FILM_AT),
}


class _Modulated:
    """Mixin: the task conditioner (encoder + generator) of a modulated method."""

    modulation = "film"

    def _build_conditioner(self, backbone) -> None:
        hp = self.hp
        self.conditioner = TaskConditioner(self.modulation, backbone, self.image_shape, self.ways,
                                           hp["embed_dim"], hp["encoder_filters"], hp["generator_hidden"],
                                           hp["film_at"])

    def generator_parameters(self) -> int:
        """Parameters of the modulation generator (the task encoder not counted)."""
        return self.conditioner.generator_parameters()


class _ModulatedMAML(_Modulated, MAML):
    options = {**MAML.options, **CONDITIONING}

    def __init__(self, hp, image_shape, ways):
        super().__init__(hp, image_shape, ways)
        self._build_conditioner(self.net.backbone)

    def _conditioned(self, episode: Episode, head: bool):
        mod = self.conditioner(episode.support_x, episode.support_y)
        module = Conditioned(self.net.backbone, self.net.head if head else None, mod.block_hook)
        params = mod.modulate(named_params(self.net))
        if not torch.is_grad_enabled():
            # `adapt` decides from one tensor whether to re-enable gradients; without grad
            # mode, modulated and untouched parameters must agree on it.
            params = {k: v.detach() for k, v in params.items()}
        if not head:
            params = {k: v for k, v in params.items() if k.startswith("backbone.")}
        return module, params

    def adapt_task(self, episode: Episode, steps: int, first_order: bool) -> TaskOutcome:
        """MAML's adaptation, started from the modulated weights and run under the block
        hook; `init` is the modulated (task-specific) starting point."""
        module, init = self._conditioned(episode, head=True)
        new = adapt(module, init, episode.support_x, episode.support_y, steps,
                    self.inner_update(), first_order=first_order)
        logits = functional_call(module, new, (episode.query_x,))
        return TaskOutcome(episode, module, init, new, episode.support_x, episode.query_x, logits,
                           nn.functional.cross_entropy(logits, episode.query_y),
                           accuracy(logits, episode.query_y))

    def embed_episode(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """NIL features: the modulated (not adapted) backbone, like MAML's `embed`."""
        module, params = self._conditioned(episode, head=False)
        return (functional_call(module, params, (episode.support_x,)),
                functional_call(module, params, (episode.query_x,)))


@register("mmaml")
class MMAML(_ModulatedMAML):
    modulation = "film"


@register("mmaml-kml")
class MMAMLKML(_ModulatedMAML):
    modulation = "kml"


class _ModulatedProtoNet(_Modulated, ProtoNet):
    options = {**ProtoNet.options, **CONDITIONING}

    def __init__(self, hp, image_shape, ways):
        super().__init__(hp, image_shape, ways)
        self._build_conditioner(self.backbone)

    def embed_episode(self, episode: Episode) -> tuple[Tensor, Tensor]:
        mod = self.conditioner(episode.support_x, episode.support_y)
        module = Conditioned(self.backbone, None, mod.block_hook)
        params = mod.modulate(named_params(self, "backbone."))
        return (functional_call(module, params, (episode.support_x,)),
                functional_call(module, params, (episode.query_x,)))

    def logits(self, episode: Episode) -> Tensor:
        support, query = self.embed_episode(episode)
        return squared_euclidean_logits(query, prototypes(support, episode.support_y, episode.ways))


@register("mprotonet")
class MProtoNet(_ModulatedProtoNet):
    modulation = "film"


@register("mprotonet-kml")
class MProtoNetKML(_ModulatedProtoNet):
    modulation = "kml"


MODES = Option(int, 1, "learners, one per mode (set by a multimodal experiment: its mode count)", min=1)


class PerMode(MetaLearner):
    """One independent `base` learner per mode; each episode goes to the learner of its mode.

    `modes` is filled in by the multimodal experiment kind (the number of its datasets); in a
    single-dataset experiment it is 1 and the method equals its base.
    """

    base: type[MetaLearner]

    def __init__(self, hp, image_shape, ways):
        super().__init__(hp, image_shape, ways)
        if not isinstance(hp["modes"], int) or hp["modes"] < 1:
            raise ValueError(f"{self.algorithm}: modes must be an integer >= 1, got {hp['modes']!r}")
        sub = {k: v for k, v in hp.items() if k != "modes"}
        self.learners = nn.ModuleList(self.base(sub, image_shape, ways) for _ in range(hp["modes"]))

    @classmethod
    def from_context(cls, hp, ctx):
        # One learner per mode of the experiment.
        return cls({**hp, "modes": len(ctx.modes) or hp["modes"]}, ctx.image_shape, ctx.ways)

    @classmethod
    def check_run(cls, run):
        given = run.study.method_config(run.method, run.experiment.name).get("modes")
        modes = len(getattr(run.experiment.settings, "modes", ()) or ())
        if given is not None and modes and given != modes:
            raise UserError(f"params key 'methods.{run.method}.modes' is {given!r} but experiment "
                            f"{run.experiment.name!r} has {modes} modes; leave it out (the experiment sets it)")

    def learner(self, mode: int) -> MetaLearner:
        if not 0 <= mode < len(self.learners):
            raise ValueError(f"{self.algorithm} has {len(self.learners)} modes; got an episode of mode {mode}")
        return self.learners[mode]

    def meta_loss(self, batch):
        # Each learner's mean loss over its episodes, weighted by their share of the batch,
        # so the total equals the mean over the batch.
        loss, acc = 0.0, 0.0
        for mode in sorted({ep.mode for ep in batch}):
            eps = [ep for ep in batch if ep.mode == mode]
            part, stats = self.learner(mode).meta_loss(eps)
            loss = loss + part * (len(eps) / len(batch))
            acc += stats["acc"] * len(eps) / len(batch)
        return loss, {"acc": acc}

    def predict(self, episode):
        return self.learner(episode.mode).predict(episode)

    def embed(self, x):
        """Mode 0's features (the mode is unknown here); `embed_episode` routes by mode."""
        return self.learners[0].embed(x)

    def embed_episode(self, episode):
        learner = self.learner(episode.mode)
        return learner.embed(episode.support_x), learner.embed(episode.query_x)

    def generator_parameters(self) -> int:
        return 0


@register("multi-maml")
class MultiMAML(PerMode):
    base = MAML
    options = {**MAML.options, "modes": MODES}


@register("multi-protonet")
class MultiProtoNet(PerMode):
    base = ProtoNet
    options = {**ProtoNet.options, "modes": MODES}
