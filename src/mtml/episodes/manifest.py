"""Fixed, seeded episode manifests (which items are support and query of each episode).

Every method is evaluated on the same manifests, so results are paired. A manifest is a
table with one row per item: episode, role (support|query), label (0..ways-1), class_id and
item (row of the prepared dataset's images.npy). Rows are sorted by episode, role, label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from mtml.data.storage import PreparedDataset
from mtml.errors import UserError


class ManifestRows(pa.DataFrameModel):
    episode: int = pa.Field(ge=0)
    role: str = pa.Field(isin=["support", "query"])
    label: int = pa.Field(ge=0)
    class_id: int = pa.Field(ge=0)
    item: int = pa.Field(ge=0)

    class Config:
        strict = True
        coerce = True


def _first(mask, df: pd.DataFrame) -> int:
    """The first flagged episode: `mask` is per row of `df`, or per group keyed by episode."""
    if isinstance(mask, pd.Series) and mask.index.names[0] == "episode":
        idx = mask[mask].index[0]
        return int(idx[0] if isinstance(idx, tuple) else idx)
    return int(df["episode"].to_numpy()[np.asarray(mask)][0])


def check_manifest(df: pd.DataFrame, ways: int, shots: int, queries: int,
                   allowed_classes=None, labels: np.ndarray | None = None, where: str = "",
                   fix: str = "") -> pd.DataFrame:
    """Validate rows, then the episode structure. Raises UserError naming `where`, the first
    bad episode and `fix` (what to do about it)."""
    try:
        df = ManifestRows.validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise UserError(f"episode manifest {where} has bad rows: "
                        f"{err.failure_cases.head(3).to_dict('records')}{fix}") from None
    problems = []
    n_classes = df.groupby("episode")["class_id"].nunique()
    if (n_classes != ways).any():
        problems.append(f"episode {_first(n_classes != ways, df)} does not have exactly {ways} classes")
    counts = df.groupby(["episode", "role", "label"]).size().unstack("role", fill_value=0)
    for role, n in (("support", shots), ("query", queries)):
        got = counts[role] if role in counts else pd.Series(0, index=counts.index)
        if (got != n).any():
            problems.append(f"episode {_first(got != n, df)} does not have {n} {role} items per class")
    dup = df.duplicated(["episode", "item"])
    if dup.any():
        problems.append(f"support and query overlap in episode {_first(dup, df)} (an item appears twice)")
    two = df.groupby(["episode", "label"])["class_id"].nunique() != 1
    if two.any():
        problems.append(f"a label maps to two classes in episode {_first(two, df)}")
    if allowed_classes is not None or labels is not None:
        problems += _data_problems(df, allowed_classes, labels)
    if problems:
        raise UserError(f"episode manifest {where} is invalid: " + "; ".join(problems[:2]) + fix)
    return df


def _data_problems(df: pd.DataFrame, allowed_classes, labels: np.ndarray | None,
                   dataset: str = "the dataset", split: str = "its split") -> list[str]:
    """What is wrong with the manifest's items and classes given the prepared data."""
    problems = []
    items = df["item"].to_numpy()
    if labels is not None and (items >= len(labels)).any():
        bad = items >= len(labels)
        return [f"episode {_first(bad, df)} uses item {items[bad][0]}, but {dataset} has "
                f"{len(labels)} images"]
    if allowed_classes is not None:
        outside = ~df["class_id"].isin(allowed_classes)
        if outside.any():
            problems.append(f"episode {_first(outside, df)} uses class {df['class_id'][outside].iloc[0]}, "
                            f"which is not in {split}")
    if labels is not None:
        differ = labels[items] != df["class_id"].to_numpy()
        if differ.any():
            problems.append(f"in episode {_first(differ, df)} item {items[differ][0]} is of class "
                            f"{labels[items[differ][0]]} in the class table, not {df['class_id'][differ].iloc[0]}")
    return problems


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


def check_sizes(data: PreparedDataset, split: str, ways: int, shots: int, queries: int,
                exp: str | None = None, prefix: str = "") -> None:
    """Episodes of `split` can be drawn: enough classes for `ways`, enough images per class
    for `shots + queries`. Raises UserError naming the dataset, split and params keys
    (`prefix` "train_": the training episode keys)."""
    key = f"experiments.{exp or '<experiment>'}.{prefix}"
    classes = data.split_classes(split)
    if len(classes) < ways:
        raise UserError(f"dataset {data.name}: its {split} split has {len(classes)} classes but episodes "
                        f"need ways={ways} (params key '{key}ways'); lower it, or give the split more "
                        f"classes (datasets.{data.name}.options)")
    sizes = data.classes.set_index("class_id").loc[classes, "n_images"]
    if len(sizes) and sizes.min() < shots + queries:
        raise UserError(f"dataset {data.name}: class {sizes.idxmin()} of its {split} split has {sizes.min()} "
                        f"images but episodes need shots+queries={shots + queries} (params keys "
                        f"'{key}shots' and '{key}queries'); lower them, or use more images per class")


def build_manifest(data: PreparedDataset, split: str, ways: int, shots: int, queries: int,
                   episodes: int, seed: int, exp: str | None = None) -> pd.DataFrame:
    check_sizes(data, split, ways, shots, queries, exp)
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


def _redo(path: Path) -> str:
    return f"; delete {path.parent} and rerun the episodes stage of its experiment"


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest, checked against the episode settings its folder's sources.json records.

    The frame's `attrs["manifest"]` (path, dataset, split) lets `check_items` name the file
    when the episodes meet the prepared data (`mtml.episodes.sampler.manifest_episodes`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"episode manifest {path} is missing; run the episodes stage first")
    try:
        df = pd.read_parquet(path)
        sources = json.loads((path.parent / "sources.json").read_text())
        entry = sources["files"][path.name]
        sizes = [int(sources[k]) for k in ("ways", "shots", "queries")]
    except Exception as err:  # noqa: BLE001 - unreadable parquet or sources.json, in many ways
        raise UserError(f"episode manifest {path} (or its sources.json) is unreadable "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                        f"{_redo(path)}") from None
    df = check_manifest(df, *sizes, where=str(path), fix=_redo(path))
    df.attrs["manifest"] = {"path": str(path), "dataset": entry["dataset"], "split": entry["split"]}
    return df


def check_items(df: pd.DataFrame, data: PreparedDataset) -> None:
    """The manifest's items exist in `data`, are of the class the manifest says, and their
    classes belong to the manifest's split (as read_manifest recorded it)."""
    info = df.attrs.get("manifest", {})
    split = info.get("split")
    where = info.get("path", f"for {data.name}")
    problems = _data_problems(df, data.split_classes(split) if split else None, data.labels,
                              data.name, f"the {split} split of {data.name}")
    if problems:
        fix = _redo(Path(info["path"])) if "path" in info else ""
        raise UserError(f"episode manifest {where} is invalid: " + "; ".join(problems[:2]) + fix)


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
