"""Subtasks as tensors: sampling, fixed manifests and the seeded training stream.

A classification subtask is N-way K-shot over room types *within one environment* (scene
classes of two environments would differ by palette alone); with `class_scope: split` (for
datasets whose groups are not environments, e.g. miniImageNet) over any classes of the
split, recorded as environment "any". A dense or vector subtask is one environment: K support
and Q query images of it, any room type. Fixed val/test subtasks
cycle through the split's environments (episode e uses environment e mod E), so every
environment gets the same number of test subtasks and per-environment results are balanced.

A manifest has one row per item: episode, role (support|query), label (the class index in
the episode, -1 for dense and vector tasks), item (row of the prepared arrays), environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import torch
from torch import Tensor

from mtml.data.storage import PreparedDataset
from mtml.errors import UserError
from mtml.multitask.tasks import TaskSpec


@dataclass
class Subtask:
    task: str
    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    environment: str
    ways: int = 0  # classification only


ANY_ENVIRONMENT = "any"


@dataclass(frozen=True)
class Shape:
    """Episode sizes: classification uses ways/shots/queries, the other tasks dense_*;
    `class_scope` is where a classification subtask's classes come from."""

    ways: int
    shots: int
    queries: int
    dense_shots: int
    dense_queries: int
    class_scope: str = "environment"  # environment | split


class SubtaskRows(pa.DataFrameModel):
    episode: int = pa.Field(ge=0)
    role: str = pa.Field(isin=["support", "query"])
    label: int = pa.Field(ge=-1)
    item: int = pa.Field(ge=0)
    environment: str

    class Config:
        strict = True
        coerce = True


class SceneBank:
    """A prepared scenes dataset on `device`: images, targets per task, and item pools."""

    def __init__(self, data: PreparedDataset, tasks: list[TaskSpec], device: torch.device):
        missing = [t.extra for t in tasks if t.extra and t.extra not in data.extras]
        if missing:
            raise UserError(f"dataset {data.name} has no {missing[0]!r} labels; multitask experiments "
                            f"need a dataset with dense labels (source: scenes)")
        self.data, self.device = data, device
        # np.array copies the (read-only, memory-mapped) arrays into writable memory for torch.
        self.images = torch.from_numpy(np.array(data.images)).to(device)
        self.image_shape = tuple(self.images.shape[1:])
        self.targets = {t.name: torch.from_numpy(np.array(data.extras[t.extra])).to(device)
                        for t in tasks if t.extra}
        self.scale = {t.name: t.scale for t in tasks}
        groups = data.classes["group"].to_numpy()
        self.env_of_item = groups[data.labels]
        classes = data.classes
        self.envs = {s: sorted(classes.loc[classes["split"] == s, "group"].unique()) for s in ("train", "val", "test")}
        self.classes_of_env = {g: rows["class_id"].to_numpy() for g, rows in classes.groupby("group")}
        self.classes_of_split = {s: data.split_classes(s) for s in ("train", "val", "test")}
        order = np.argsort(data.labels, kind="stable")
        bounds = np.searchsorted(data.labels[order], np.arange(len(classes) + 1))
        self.items_of_class = [order[bounds[c]:bounds[c + 1]] for c in range(len(classes))]
        self.items_of_env = {g: np.flatnonzero(self.env_of_item == g) for g in self.classes_of_env}

    def index(self, items: np.ndarray) -> Tensor:
        # a copy: manifest columns are read-only numpy views, which torch refuses to share
        return torch.tensor(np.asarray(items).reshape(-1), dtype=torch.long, device=self.device)

    def gather_x(self, items: np.ndarray) -> Tensor:
        return self.images.index_select(0, self.index(items)).float().div_(255.0)

    def gather_y(self, task: str, items: np.ndarray) -> Tensor:
        y = self.targets[task].index_select(0, self.index(items)).float() * self.scale[task]
        return y.flatten(1) if y.dim() == 3 else y  # vanishing points [N, 3, 3] -> [N, 9]

    def subtask(self, task: TaskSpec, support: np.ndarray, query: np.ndarray,
                labels: tuple[np.ndarray, np.ndarray] | None, env: str, ways: int) -> Subtask:
        if task.kind == "classification":
            ys = [torch.tensor(np.asarray(lab), device=self.device, dtype=torch.long) for lab in labels]
        else:
            ys = [self.gather_y(task.name, support), self.gather_y(task.name, query)]
        return Subtask(task.name, self.gather_x(support), ys[0], self.gather_x(query), ys[1], env, ways)


def sample_items(rng: np.random.Generator, bank: SceneBank, task: TaskSpec, env: str, shape: Shape,
                 split: str):
    """(support items, query items, (support labels, query labels) or None) of one subtask."""
    if task.kind == "classification":
        if env == ANY_ENVIRONMENT:
            classes, where = bank.classes_of_split[split], f"the {split} split"
        else:
            classes, where = bank.classes_of_env[env], f"environment {env}"
        if len(classes) < shape.ways:
            hint = (" (for datasets whose groups are not environments set the experiment's "
                    "options.class_scope: split)" if env != ANY_ENVIRONMENT else "")
            raise UserError(f"{where} of {bank.data.name} has {len(classes)} classes but classification "
                            f"subtasks need ways={shape.ways}{hint}")
        chosen = rng.choice(classes, size=shape.ways, replace=False)
        sup, qry = [], []
        for c in chosen:
            pool = bank.items_of_class[c]
            if len(pool) < shape.shots + shape.queries:
                raise UserError(f"{bank.data.name}: a scene class has {len(pool)} images but subtasks "
                                f"need shots+queries={shape.shots + shape.queries}")
            pick = rng.choice(pool, size=shape.shots + shape.queries, replace=False)
            sup.append(pick[:shape.shots])
            qry.append(pick[shape.shots:])
        labels = (np.repeat(np.arange(shape.ways), shape.shots), np.repeat(np.arange(shape.ways), shape.queries))
        return np.concatenate(sup), np.concatenate(qry), labels
    pool = bank.items_of_env[env]
    n = shape.dense_shots + shape.dense_queries
    if len(pool) < n:
        raise UserError(f"environment {env} of {bank.data.name} has {len(pool)} images but {task.name} "
                        f"subtasks need dense_shots+dense_queries={n}")
    pick = rng.choice(pool, size=n, replace=False)
    return pick[:shape.dense_shots], pick[shape.dense_shots:], None


def split_envs(bank: SceneBank, split: str, task: TaskSpec | None = None, shape: Shape | None = None) -> list[str]:
    """Environments subtasks of `task` cycle through (classification with class_scope split: "any")."""
    if task is not None and task.kind == "classification" and shape.class_scope == "split":
        return [ANY_ENVIRONMENT]
    envs = bank.envs[split]
    if not envs:
        raise UserError(f"dataset {bank.data.name} has no {split} environments; "
                        f"set its options.environments to give the {split} split some")
    return envs


def build_manifest(bank: SceneBank, task: TaskSpec, split: str, shape: Shape, episodes: int,
                   seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    envs = split_envs(bank, split, task, shape)
    frames = []
    for e in range(episodes):
        env = envs[e % len(envs)]
        sup, qry, labels = sample_items(rng, bank, task, env, shape, split)
        for role, items, lab in (("support", sup, labels[0] if labels else None),
                                 ("query", qry, labels[1] if labels else None)):
            frames.append(pd.DataFrame({"episode": e, "role": role,
                                        "label": lab if lab is not None else -1,
                                        "item": items, "environment": env}))
    return SubtaskRows.validate(pd.concat(frames, ignore_index=True))


def read_manifest(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise UserError(f"subtask manifest {path} is missing; run the episodes stage first")
    try:
        return SubtaskRows.validate(pd.read_parquet(path))
    except pa.errors.SchemaError as err:
        raise UserError(f"subtask manifest {path} is invalid: {err}") from None


def manifest_subtasks(bank: SceneBank, task: TaskSpec, manifest: pd.DataFrame):
    """Yield (episode id, Subtask) for each episode of a fixed manifest."""
    for ep, rows in manifest.groupby("episode", sort=True):
        sup, qry = rows[rows["role"] == "support"], rows[rows["role"] == "query"]
        labels = (sup["label"].to_numpy(), qry["label"].to_numpy()) if task.kind == "classification" else None
        ways = int(sup["label"].nunique()) if labels else 0
        yield int(ep), bank.subtask(task, sup["item"].to_numpy(), qry["item"].to_numpy(), labels,
                                    str(rows["environment"].iloc[0]), ways)


class SubtaskStream:
    """Training subtasks sampled on the fly; `batch(n)` gives n subtasks of every task.
    The generator's state is checkpointable, so a resumed run sees the same subtasks."""

    def __init__(self, bank: SceneBank, tasks: list[TaskSpec], shape: Shape, seed: int, split: str = "train"):
        self.bank, self.tasks, self.shape, self.split = bank, tasks, shape, split
        self.envs = {t.name: split_envs(bank, split, t, shape) for t in tasks}
        self.rng = np.random.default_rng(seed)

    def sample(self, task: TaskSpec) -> Subtask:
        envs = self.envs[task.name]
        env = envs[self.rng.integers(len(envs))]
        sup, qry, labels = sample_items(self.rng, self.bank, task, env, self.shape, self.split)
        return self.bank.subtask(task, sup, qry, labels, env, self.shape.ways)

    def batch(self, size: int) -> dict[str, list[Subtask]]:
        return {t.name: [self.sample(t) for _ in range(size)] for t in self.tasks}

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
