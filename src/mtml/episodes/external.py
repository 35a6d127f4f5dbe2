"""External test episodes: evaluate on an episode list another paper or library published.

`experiments.<e>.test_episodes: <file>` (kind fewshot) replaces the sampled test manifest by
the file's episodes. The file is CSV (or parquet, by its suffix) with one row per item:

- `episode`: any id; episodes are numbered 0.. in the order they first appear,
- `role`: support | query,
- `class`: the class name of the prepared dataset's classes.csv (e.g. Omniglot's
  `Alphabet/character01/rot90`), or its integer class_id,
- `file`: the image's file name (datasets that record them: Omniglot, as
  `<alphabet>/<character>/<file>.png`; the bare file name is enough, since a class's file
  names differ), or `index`: the image's position among its class's images (0-based, in the
  prepared order: file-name order for the archive sources).

Labels are 0..ways-1 in the order each episode's classes first appear. The episodes are then
validated like our own manifests (ways distinct classes, shots support and queries query items
per class, support and query disjoint, classes of the dataset's test split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtml.data.storage import PreparedDataset
from mtml.episodes.manifest import check_manifest, items_by_class
from mtml.errors import UserError
from mtml.utils import file_md5

COLUMNS = ("episode", "role", "class")


def read_episode_file(path: str | Path, key: str) -> pd.DataFrame:
    """The file's rows, with its columns checked (`key`: the params key naming it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params key '{key}' is {str(path)!r}, which is not a file; give a CSV of test "
                        f"episodes (columns episode, role, class, file or index; docs/protocols.md)")
    try:
        df = (pd.read_parquet(path) if path.suffix == ".parquet"
              else pd.read_csv(path, dtype=str, keep_default_na=False))
    except Exception as err:  # noqa: BLE001 - unreadable in many ways
        raise UserError(f"test episodes file {path} (params key '{key}') is unreadable "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing or not {"file", "index"} & set(df.columns):
        need = ", ".join(missing + ([] if {"file", "index"} & set(df.columns) else ["file or index"]))
        raise UserError(f"test episodes file {path} (params key '{key}') lacks column(s) {need}; it has "
                        f"{', '.join(map(str, df.columns))}")
    if df.empty:
        raise UserError(f"test episodes file {path} (params key '{key}') has no rows")
    df = df.astype(str)
    bad = ~df["role"].isin(["support", "query"])
    if bad.any():
        row = df[bad].iloc[0]
        raise UserError(f"test episodes file {path}: episode {row['episode']} has role {row['role']!r}; "
                        f"allowed: support, query")
    return df


def count_episodes(path: str | Path, key: str) -> int:
    return int(read_episode_file(path, key)["episode"].nunique())


def file_fingerprint(path: str | Path) -> str:
    return file_md5(Path(path))


def _class_ids(df: pd.DataFrame, data: PreparedDataset, path, fix: str) -> np.ndarray:
    by_name = dict(zip(data.classes["name"].astype(str), data.classes["class_id"]))
    n = len(data.classes)
    out = np.empty(len(df), dtype=np.int64)
    for i, (ep, c) in enumerate(zip(df["episode"], df["class"])):
        if c in by_name:
            out[i] = by_name[c]
        elif c.isdigit() and int(c) < n:
            out[i] = int(c)
        else:
            raise UserError(f"test episodes file {path}: episode {ep} names class {c!r}, which is not a class "
                            f"name or id of prepared dataset {data.name} (classes.csv){fix}")
    return out


def _items(df: pd.DataFrame, classes: np.ndarray, data: PreparedDataset, path, fix: str) -> np.ndarray:
    pools = items_by_class(data.labels, len(data.classes))
    use_file = "file" in df.columns and (df["file"] != "").all()
    files = data.extras.get("files")
    if use_file and files is None:
        if "index" not in df.columns:
            raise UserError(f"test episodes file {path}: prepared dataset {data.name} records no file names; "
                            f"give each item's position in its class in an `index` column instead")
        use_file = False
    out = np.empty(len(df), dtype=np.int64)
    names: dict[int, dict[str, int]] = {}
    for i, (ep, role, c) in enumerate(zip(df["episode"], df["role"], classes)):
        pool = pools[c]
        cname = data.classes["name"].iloc[c]
        if use_file:
            if c not in names:
                names[c] = {Path(str(files[j])).name: int(j) for j in pool}
            given = df["file"].iloc[i]
            j = names[c].get(Path(given).name)
            if j is None:
                raise UserError(f"test episodes file {path}: episode {ep}, {role} item {given!r} of class "
                                f"{cname!r} is not in prepared dataset {data.name}{fix}")
            out[i] = j
        else:
            given = df["index"].iloc[i]
            if not given.isdigit() or int(given) >= len(pool):
                raise UserError(f"test episodes file {path}: episode {ep}, {role} item index {given!r} of class "
                                f"{cname!r} is not in prepared dataset {data.name} (the class has {len(pool)} "
                                f"images, indices 0..{len(pool) - 1}){fix}")
            out[i] = pool[int(given)]
    return out


def external_manifest(path: str | Path, data: PreparedDataset, split: str, ways: int, shots: int,
                      queries: int, key: str) -> pd.DataFrame:
    """The file's episodes as a manifest of `data`, validated (UserError naming the file, the
    episode and the item)."""
    fix = (f"; is the file for this dataset's prepared form (datasets.{data.name}.options)? "
           f"Fix the file or params key '{key}'")
    df = read_episode_file(path, key)
    classes = _class_ids(df, data, path, fix)
    allowed = set(data.split_classes(split).tolist())
    outside = [i for i, c in enumerate(classes) if c not in allowed]
    if outside:
        i = outside[0]
        c = data.classes.iloc[classes[i]]
        raise UserError(f"test episodes file {path}: episode {df['episode'].iloc[i]} uses class {c['name']!r}, "
                        f"which is in the {c['split']} split of prepared dataset {data.name}, not {split}{fix}")
    items = _items(df, classes, data, path, fix)
    episode = pd.factorize(df["episode"])[0]
    # labels: each episode's classes in order of first appearance
    frame = pd.DataFrame({"episode": episode, "role": df["role"].to_numpy(), "class_id": classes, "item": items})
    first = frame.drop_duplicates(["episode", "class_id"]).copy()
    first["label"] = first.groupby("episode").cumcount()
    frame = frame.merge(first[["episode", "class_id", "label"]], on=["episode", "class_id"], how="left")
    frame = frame[["episode", "role", "label", "class_id", "item"]]
    frame = frame.sort_values(["episode", "role", "label"], key=lambda s: s.map({"support": 0, "query": 1})
                              if s.name == "role" else s, kind="stable").reset_index(drop=True)
    return check_manifest(frame, ways, shots, queries, data.split_classes(split), data.labels,
                          where=f"from test episodes file {path} (episodes numbered from 0 in file order)",
                          fix=f"; fix the file, or set {key.rsplit('.', 1)[0]}.ways/shots/queries to its "
                              f"episodes' sizes")
