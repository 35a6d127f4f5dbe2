"""The one interface every method implements, and the registry that builds them by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtml.errors import UserError


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


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(-1) == targets).float().mean()


class MetaLearner(nn.Module):
    """Base class: `meta_loss` for training, `predict` for evaluation, `embed` for NIL.

    Hyperparameters come from params (`method_config.<name>`); `defaults` lists every key a
    method accepts, so a typo is caught by `build` with the allowed keys in the message.
    """

    defaults: dict = {}
    trainable = True
    # "loop" or "vmap": how meta_loss runs a meta-batch's tasks (set by the trainer from
    # training.task_parallel; methods without a batched path loop whatever it says)
    task_parallel = "loop"

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


REGISTRY: dict[str, type[MetaLearner]] = {}


def register(name: str) -> Callable[[type[MetaLearner]], type[MetaLearner]]:
    def wrap(cls: type[MetaLearner]) -> type[MetaLearner]:
        if name in REGISTRY:
            raise RuntimeError(f"algorithm {name!r} registered twice")
        REGISTRY[name] = cls
        cls.algorithm = name
        return cls

    return wrap


def resolve_hparams(method: str, config: dict) -> tuple[type[MetaLearner], dict]:
    """Check a method's params entry and fill in its defaults."""
    config = dict(config)
    algorithm = config.pop("algorithm", method)
    if algorithm not in REGISTRY:
        raise UserError(
            f"params key 'methods.{method}.algorithm' is {algorithm!r}; "
            f"allowed: {', '.join(sorted(REGISTRY))}"
        )
    cls = REGISTRY[algorithm]
    unknown = sorted(set(config) - set(cls.defaults))
    if unknown:
        raise UserError(
            f"params key 'methods.{method}.{unknown[0]}' is not a {algorithm} "
            f"hyperparameter; allowed: {', '.join(sorted(cls.defaults)) or '(none)'}"
        )
    return cls, {**cls.defaults, **config}


def build(method: str, config: dict, image_shape, ways: int) -> MetaLearner:
    cls, hp = resolve_hparams(method, config)
    return cls(hp, image_shape, ways)
