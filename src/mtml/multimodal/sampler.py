"""Mode-aware episodes: image banks that stamp their mode on every episode, and the training
stream that draws each task's mode from `mode_mix`, then the task from that mode alone.

How a meta-batch's modes are drawn (`options.batch_mix`):

- `independent`: each task's mode is drawn from `mode_mix` on its own, so a meta-batch
  follows `mode_mix` on average (with meta-batch 4 and three equal modes, 1 batch in 27 has
  one mode only);
- `balanced`: the meta-batch's modes are a systematic sample of `mode_mix`: mode m appears
  floor(B p_m) or ceil(B p_m) times in a meta-batch of B tasks, exactly B p_m on average,
  in shuffled order. With equal weights this is the sampler of MMAML's code, which takes
  the tasks of a meta-batch from the datasets in turn from a random first one.
"""

from __future__ import annotations

import numpy as np
import torch

from mtml.data.storage import PreparedDataset
from mtml.episodes.manifest import sample_indices
from mtml.episodes.sampler import ImageBank
from mtml.errors import UserError
from mtml.methods.base import Episode
from mtml.multimodal.config import BATCH_MIXES


class ModeImageBank(ImageBank):
    """An `ImageBank` whose episodes carry `mode` (also those of `manifest_episodes`)."""

    def __init__(self, data: PreparedDataset, device: torch.device, mode: int):
        super().__init__(data, device)
        self.mode = mode

    def episode(self, support: np.ndarray, query: np.ndarray, mode: int | None = None) -> Episode:
        return super().episode(support, query, self.mode if mode is None else mode)


def balanced_modes(rng: np.random.Generator, mix: np.ndarray, size: int) -> np.ndarray:
    """`size` modes, a systematic sample of the probabilities `mix`, in random order.

    Points (u + i) / size, u ~ U[0, 1), fall into the modes' intervals of the cumulative
    distribution, so mode m is drawn floor(size p_m) or ceil(size p_m) times and exactly
    size p_m times on average; a mode of weight 0 has an empty interval and never appears.
    """
    mix = np.asarray(mix, dtype=np.float64)
    edges = np.cumsum(mix / mix.sum())
    points = (rng.random() + np.arange(size)) / size
    # a point rounding past the last edge belongs to the last mode of positive weight
    modes = np.minimum(np.searchsorted(edges, points, side="right"), np.flatnonzero(mix > 0)[-1])
    return rng.permutation(modes)


class MultimodalStream:
    """Training tasks sampled on the fly: a mode from mode_mix (each task on its own, or a
    balanced meta-batch: `batch_mix`), then an episode of that mode's split.

    One seeded generator draws modes and items, so the stream is reproducible and its state
    is checkpointable like `EpisodeStream`'s.
    """

    def __init__(self, banks: list[ModeImageBank], mode_mix, split: str, ways: int, shots: int,
                 queries: int, seed: int, batch_mix: str = "independent"):
        self.banks, self.ways, self.shots, self.queries = banks, ways, shots, queries
        self.mix = np.asarray(mode_mix, dtype=np.float64)
        if len(self.mix) != len(banks):
            raise ValueError(f"{len(self.mix)} mode weights for {len(banks)} modes")
        if (self.mix < 0).any() or self.mix.sum() <= 0:
            raise ValueError(f"mode weights must be >= 0 with a positive sum; got {mode_mix!r}")
        if self.mix.sum() != 1.0:  # weights, as params may give them (validated ones sum to 1)
            self.mix = self.mix / self.mix.sum()
        if batch_mix not in BATCH_MIXES:
            raise ValueError(f"batch_mix {batch_mix!r}; allowed: {', '.join(BATCH_MIXES)}")
        self.batch_mix = batch_mix
        self.classes = [b.data.split_classes(split) for b in banks]
        for bank, classes, p in zip(banks, self.classes, self.mix):
            if p > 0 and len(classes) < ways:
                raise UserError(f"dataset {bank.data.name} has {len(classes)} {split} classes but "
                                f"episodes need ways={ways}")
        self.rng = np.random.default_rng(seed)

    def draw(self, mode: int | None = None) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(mode, class ids, support items [ways, shots], query items [ways, queries]); the
        mode is drawn from mode_mix unless given."""
        if mode is None:
            mode = int(self.rng.choice(len(self.banks), p=self.mix))
        chosen, support, query = sample_indices(self.rng, self.banks[mode].pools, self.classes[mode],
                                                self.ways, self.shots, self.queries)
        return mode, chosen, support, query

    def sample(self, mode: int | None = None) -> Episode:
        mode, _, support, query = self.draw(mode)
        return self.banks[mode].episode(support, query)

    def batch(self, size: int) -> list[Episode]:
        # balanced: the batch's modes first; independent: each task draws its own (None)
        modes = (balanced_modes(self.rng, self.mix, size).tolist() if self.batch_mix == "balanced"
                 else [None] * size)
        return [self.sample(m) for m in modes]

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
