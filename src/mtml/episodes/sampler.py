"""Episodes as tensors: the prepared images live in memory (on the GPU when there is one)
and an episode is an index gather, never a file read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mtml.data.storage import PreparedDataset
from mtml.episodes.manifest import check_items, items_by_class, manifest_arrays, sample_indices
from mtml.methods.base import Episode


class ImageBank:
    """A prepared dataset's uint8 images on `device`, gathered into float episodes."""

    def __init__(self, data: PreparedDataset, device: torch.device):
        self.data = data
        self.device = device
        # One read of the (memory-mapped) array into memory, then onto the device.
        self.images = torch.from_numpy(np.array(data.images)).to(device)
        self.image_shape = tuple(self.images.shape[1:])
        self.pools = items_by_class(data.labels, len(data.classes))

    def gather(self, items: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(np.array(items, dtype=np.int64).reshape(-1), device=self.device)
        return self.images.index_select(0, idx).float().div_(255.0)

    def episode(self, support: np.ndarray, query: np.ndarray, mode: int = 0) -> Episode:
        """support [ways, shots] and query [ways, queries] item arrays → Episode."""
        ways = support.shape[0]
        label = lambda n: torch.arange(ways, device=self.device).repeat_interleave(n)  # noqa: E731
        return Episode(self.gather(support), label(support.shape[1]),
                       self.gather(query), label(query.shape[1]), ways, mode)


class EpisodeStream:
    """Training episodes sampled on the fly from a seeded generator (state is checkpointable)."""

    def __init__(self, bank: ImageBank, split: str, ways: int, shots: int, queries: int, seed: int):
        self.bank, self.ways, self.shots, self.queries = bank, ways, shots, queries
        self.classes = bank.data.split_classes(split)
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Episode:
        _, sup, qry = sample_indices(self.rng, self.bank.pools, self.classes,
                                     self.ways, self.shots, self.queries)
        return self.bank.episode(sup, qry)

    def batch(self, size: int) -> list[Episode]:
        return [self.sample() for _ in range(size)]

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def manifest_episodes(bank: ImageBank, manifest: pd.DataFrame):
    """Yield (episode id, Episode) for each episode of a fixed manifest (in id order)."""
    check_items(manifest, bank.data)
    arrays = manifest_arrays(manifest)
    for i, ep in enumerate(arrays.episodes):
        yield int(ep), bank.episode(arrays.support[i], arrays.query[i])
