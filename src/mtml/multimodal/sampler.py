"""Mode-aware episodes: image banks that stamp their mode on every episode, and the training
stream that draws each task's mode from `mode_mix`, then the task from that mode alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mtml.data.storage import PreparedDataset
from mtml.episodes.manifest import sample_indices
from mtml.episodes.sampler import ImageBank
from mtml.errors import UserError
from mtml.methods.base import Episode
from mtml.multimodal.config import MultimodalConfig
from mtml.multimodal.data import load_mode


class ModeImageBank(ImageBank):
    """An `ImageBank` whose episodes carry `mode` (also those of `manifest_episodes`)."""

    def __init__(self, data: PreparedDataset, device: torch.device, mode: int):
        super().__init__(data, device)
        self.mode = mode

    def episode(self, support: np.ndarray, query: np.ndarray, mode: int | None = None) -> Episode:
        return super().episode(support, query, self.mode if mode is None else mode)


def mode_banks(mm: MultimodalConfig, processed_root: Path, device: torch.device) -> list[ModeImageBank]:
    return [ModeImageBank(load_mode(processed_root, ds, mm.image_shape), device, i)
            for i, ds in enumerate(mm.modes)]


class MultimodalStream:
    """Training tasks sampled on the fly: mode ~ mode_mix, then an episode of that mode's split.

    One seeded generator draws modes and items, so the stream is reproducible and its state
    is checkpointable like `EpisodeStream`'s.
    """

    def __init__(self, banks: list[ModeImageBank], mode_mix, split: str, ways: int, shots: int,
                 queries: int, seed: int):
        self.banks, self.ways, self.shots, self.queries = banks, ways, shots, queries
        self.mix = np.asarray(mode_mix, dtype=np.float64)
        if len(self.mix) != len(banks):
            raise ValueError(f"{len(self.mix)} mode weights for {len(banks)} modes")
        self.classes = [b.data.split_classes(split) for b in banks]
        for bank, classes, p in zip(banks, self.classes, self.mix):
            if p > 0 and len(classes) < ways:
                raise UserError(f"dataset {bank.data.name} has {len(classes)} {split} classes but "
                                f"episodes need ways={ways}")
        self.rng = np.random.default_rng(seed)

    def draw(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(mode, class ids, support items [ways, shots], query items [ways, queries])."""
        mode = int(self.rng.choice(len(self.banks), p=self.mix))
        chosen, support, query = sample_indices(self.rng, self.banks[mode].pools, self.classes[mode],
                                                self.ways, self.shots, self.queries)
        return mode, chosen, support, query

    def sample(self) -> Episode:
        mode, _, support, query = self.draw()
        return self.banks[mode].episode(support, query)

    def batch(self, size: int) -> list[Episode]:
        return [self.sample() for _ in range(size)]

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
