"""Fixed, seeded episode manifests (which items are support and query of each episode).

Every method is evaluated on the same manifests, so results are paired. A manifest is a
table with one row per item: episode, role (support|query), label (0..ways-1), class_id and
item (row of the prepared dataset's images.npy). Rows are sorted by episode, role, label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from mtml.data.storage import PreparedDataset
from mtml.errors import UserError
from mtml.utils import atomic_path


class ManifestRows(pa.DataFrameModel):
    episode: int = pa.Field(ge=0)
    role: str = pa.Field(isin=["support", "query"])
    label: int = pa.Field(ge=0)
    class_id: int = pa.Field(ge=0)
    item: int = pa.Field(ge=0)

    class Config:
        strict = True
        coerce = True


def check_manifest(df: pd.DataFrame, ways: int, shots: int, queries: int,
                   allowed_classes=None, labels: np.ndarray | None = None, where: str = "") -> pd.DataFrame:
    """Validate rows, then the episode structure. Raises UserError naming `where`."""
    try:
        df = ManifestRows.validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise UserError(f"episode manifest {where} has bad rows: {err.failure_cases.head(5).to_dict('records')}") from None
    problems = []
    per_ep = df.groupby("episode")
    if (per_ep["class_id"].nunique() != ways).any():
        problems.append(f"an episode does not have exactly {ways} classes")
    counts = df.groupby(["episode", "role", "label"]).size().unstack("role", fill_value=0)
    if not ((counts.get("support", 0) == shots).all() and (counts.get("query", 0) == queries).all()):
        problems.append(f"a class does not have {shots} support and {queries} query items")
    if df.duplicated(["episode", "item"]).any():
        problems.append("support and query overlap (an item appears twice in an episode)")
    if (df.groupby(["episode", "label"])["class_id"].nunique() != 1).any():
        problems.append("a label maps to two classes in one episode")
    if allowed_classes is not None and not df["class_id"].isin(allowed_classes).all():
        problems.append("an episode uses a class outside its split")
    if labels is not None and not (labels[df["item"].to_numpy()] == df["class_id"].to_numpy()).all():
        problems.append("an item's class differs from its class_id column")
    if problems:
        raise UserError(f"episode manifest {where} is invalid: " + "; ".join(problems))
    return df


def sample_indices(rng: np.random.Generator, items_by_class: list[np.ndarray], classes: np.ndarray,
                   ways: int, shots: int, queries: int):
    """Draw one episode: (chosen class ids, support items [ways, shots], query items [ways, queries])."""
    if len(classes) < ways:
        raise UserError(f"a split has {len(classes)} classes but episodes need ways={ways}")
    chosen = rng.choice(classes, size=ways, replace=False)
    support, query = [], []
    for c in chosen:
        pool = items_by_class[c]
        if len(pool) < shots + queries:
            raise UserError(
                f"class {c} has {len(pool)} images but an episode needs shots+queries={shots + queries}"
            )
        pick = rng.choice(pool, size=shots + queries, replace=False)
        support.append(pick[:shots])
        query.append(pick[shots:])
    return chosen, np.stack(support), np.stack(query)


def items_by_class(labels: np.ndarray, n_classes: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_classes + 1))
    return [order[bounds[c]:bounds[c + 1]] for c in range(n_classes)]


def build_manifest(data: PreparedDataset, split: str, ways: int, shots: int, queries: int,
                   episodes: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    classes = data.split_classes(split)
    pools = items_by_class(data.labels, len(data.classes))
    cols = {k: [] for k in ("episode", "role", "label", "class_id", "item")}
    for e in range(episodes):
        chosen, sup, qry = sample_indices(rng, pools, classes, ways, shots, queries)
        for role, items in (("support", sup), ("query", qry)):
            n = items.shape[1]
            cols["episode"].append(np.full(ways * n, e))
            cols["role"].append(np.full(ways * n, role, dtype=object))
            cols["label"].append(np.repeat(np.arange(ways), n))
            cols["class_id"].append(np.repeat(chosen, n))
            cols["item"].append(items.reshape(-1))
    df = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    return check_manifest(df, ways, shots, queries, classes, data.labels, f"{data.name}/{split}")


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise UserError(f"episode manifest {path} is missing; run the episodes stage first")
    return pd.read_parquet(path)


@dataclass(frozen=True)
class ManifestArrays:
    """A manifest as index arrays, built once: episode ids [E] (ascending) and the items of
    each episode's support [E, ways, shots] and query [E, ways, queries] sets by label."""

    episodes: np.ndarray
    support: np.ndarray
    query: np.ndarray


def manifest_arrays(df: pd.DataFrame) -> ManifestArrays:
    """Rows ordered by (episode, role, label) with ties in file order: the order a per-episode
    groupby and a stable sort by label give, so each episode's items are the same."""
    episode, label, item = (df[c].to_numpy() for c in ("episode", "label", "item"))
    is_query = df["role"].to_numpy() == "query"
    order = np.lexsort((label, is_query, episode))
    episode, label, item, is_query = episode[order], label[order], item[order], is_query[order]
    ids, index = np.unique(episode, return_inverse=True)
    parts = []
    for rows in (~is_query, is_query):
        counts = np.bincount(index[rows], minlength=len(ids))
        per = int(counts[0]) if len(ids) else 0
        lab = label[rows].reshape(len(ids), per) if (counts == per).all() and per else None
        ways = int(lab.max()) + 1 if lab is not None else 1
        if lab is None or per % ways or not (lab == np.repeat(np.arange(ways), per // ways)).all():
            raise ValueError("manifest episodes differ in ways, shots or queries (or labels are not 0..ways-1)")
        parts.append(item[rows].reshape(len(ids), ways, per // ways))
    if parts[0].shape[1] != parts[1].shape[1]:
        raise ValueError("manifest support and query sets have different ways")
    return ManifestArrays(ids.astype(np.int64), parts[0], parts[1])
