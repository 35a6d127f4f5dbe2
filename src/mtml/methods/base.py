"""The one interface every method implements, and the registry that builds them by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtml.options import Option, check_options
from mtml.options import defaults as option_defaults


@dataclass
class Episode:
    """One few-shot task: images as float tensors in [0, 1], labels 0..ways-1."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int
    mode: int = 0  # which mode (source dataset) a multimodal task comes from

    def to(self, device) -> Episode:
        return Episode(self.support_x.to(device), self.support_y.to(device),
                       self.query_x.to(device), self.query_y.to(device), self.ways, self.mode)


@dataclass(frozen=True)
class LearnerContext:
    """What an experiment tells every learner it builds, whatever its kind."""

    image_shape: tuple[int, int, int]
    ways: int
    modes: tuple[str, ...] = ()     # multimodal: the dataset of each mode
    tasks: tuple = ()               # multitask: the high-level tasks (TaskSpec)

    def info(self) -> dict:
        """Stored in model.pt beside the weights (plain types: loads with weights_only)."""
        return {"image_shape": list(self.image_shape), "ways": self.ways, "modes": list(self.modes),
                "tasks": [t.name for t in self.tasks]}


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(-1) == targets).float().mean()


class MetaLearner(nn.Module):
    """Base class: `meta_loss` for training, `predict` for evaluation, `embed` for NIL.

    Hyperparameters come from params (`methods.<name>`). `options` declares every key a
    method accepts (type, bounds, default, description; see mtml.options), so a typo or a bad
    value is caught when params are validated, with the key in the message. `defaults`
    ({key: default}) is derived from it.
    """

    options: dict[str, Option] = {}
    defaults: dict = {}
    algorithm: str = ""
    trainable = True
    # Predicts for any number of classes per episode (no `ways`-wide head), so it can train
    # with `train_ways` other than the test `ways`.
    any_ways = False
    # "loop" or "vmap": how meta_loss runs a meta-batch's tasks (set by the trainer from
    # training.task_parallel; methods without a batched path loop whatever it says)
    task_parallel = "loop"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "options" in cls.__dict__:
            cls.defaults = option_defaults(cls.options)
        elif "defaults" in cls.__dict__:  # an undeclared method: any value, keys still checked
            cls.options = {k: Option(object, v, "(undeclared)") for k, v in cls.defaults.items()}

    def __init__(self, hp: dict, image_shape: tuple[int, int, int], ways: int):
        super().__init__()
        self.hp = hp
        self.image_shape = tuple(image_shape)
        self.ways = ways

    def meta_loss(self, batch: list[Episode]) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def predict(self, episode: Episode) -> Tensor:
        """Adapt on the support set and return logits for the query set."""
        raise NotImplementedError

    def embed(self, x: Tensor) -> Tensor:
        """Features used by the NIL metric (no head: cosine to support embeddings)."""
        raise NotImplementedError

    @classmethod
    def from_context(cls, hp: dict, ctx: LearnerContext) -> MetaLearner:
        """Build for an experiment. Methods that need more of the context (the modes of a
        multimodal experiment, the tasks of a multitask one) override this."""
        return cls(hp, ctx.image_shape, ctx.ways)

    @classmethod
    def check_run(cls, run) -> None:
        """Reject settings of `run` (a `mtml.study.Run`) this method cannot train with; raise
        UserError naming the params key."""

    @classmethod
    def run_dependencies(cls, run) -> list:
        """Other runs (`mtml.study.Run`) whose trained models this run reads while training
        (e.g. distillation teachers): both front doors train them first, and the train stage
        hands their models to `attach_dependencies`."""
        return []

    def attach_dependencies(self, learners: dict) -> None:
        """Receive the trained learners of `run_dependencies`, by method name."""
        raise NotImplementedError(f"{type(self).__name__} declares no run dependencies")

    # Optional capabilities, declared here so callers never probe with hasattr.
    def embed_episode(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Support and query features for NIL; task-dependent features (modulated or
        per-mode networks) override this."""
        return self.embed(episode.support_x), self.embed(episode.query_x)

    def generator_parameters(self) -> int | None:
        """Parameters of a modulation generator (None: the method has none)."""
        return None

    def make_optimizer(self, meta_lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=meta_lr)

    def train_step(
        self,
        batch: list[Episode],
        optimizer: torch.optim.Optimizer,
        sample_batch: Callable[[], list[Episode]],
    ) -> dict:
        """One meta-update. Methods with a two-phase update (task attention) override this;
        `sample_batch` draws a further meta-batch from the same seeded stream."""
        optimizer.zero_grad(set_to_none=True)
        loss, stats = self.meta_loss(batch)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach()), **stats}


def register(name: str) -> Callable[[type[MetaLearner]], type[MetaLearner]]:
    """Name a class's algorithm; the class must be listed under that name in
    mtml.methods.ALGORITHMS (the one table of algorithms)."""
    def wrap(cls: type[MetaLearner]) -> type[MetaLearner]:
        from mtml.methods import ALGORITHMS

        where = f"{cls.__module__}:{cls.__qualname__}"
        if ALGORITHMS.get(name) != where:
            raise RuntimeError(f"algorithm {name!r} ({where}) is not listed so in mtml.methods.ALGORITHMS")
        cls.algorithm = name
        return cls

    return wrap


def resolve_hparams(method: str, config: dict) -> tuple[type[MetaLearner], dict]:
    """Check a method's params entry against its algorithm's declared options and fill in
    its defaults."""
    from mtml.methods import METHODS

    config = dict(config or {})
    algorithm = config.pop("algorithm", method)
    cls = METHODS.resolve(algorithm, f"methods.{method}.algorithm")
    hp = check_options(config, cls.options, f"methods.{method}",
                       unknown=f"is not a {algorithm} hyperparameter")
    return cls, hp


def build(method: str, config: dict, image_shape, ways: int) -> MetaLearner:
    cls, hp = resolve_hparams(method, config)
    return cls(hp, image_shape, ways)


def build_learner(run, ctx: LearnerContext) -> MetaLearner:
    """The one way the pipeline builds a learner: `run` (a `mtml.study.Run`) in context `ctx`."""
    return run.cls.from_context(dict(run.hparams), ctx)
