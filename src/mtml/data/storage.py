"""The canonical prepared form of every dataset.

`data/processed/<dataset>/` holds
- `images.npy`  uint8 array [N, C, H, W] (memory-mappable),
- `labels.npy`  int64 array [N]: the class id of each image,
- `classes.csv` the class table: class_id, name, group (alphabet/domain/...), split, n_images,
- `meta.json`   source, image shape and the params that made it.
- `<extra>.npy` optional per-image arrays [N, ...] (dense labels of multi-task datasets),
  listed in meta.json under `extras`.

Every source (generator, official archive, a user's folder) ends here, so the rest of the
pipeline never knows where a dataset came from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from mtml.errors import UserError
from mtml.utils import atomic_path

SPLITS = ("train", "val", "test")


class ClassTable(pa.DataFrameModel):
    """One row per class; class ids are 0..C-1 in row order."""

    class_id: int = pa.Field(ge=0, unique=True)
    name: str = pa.Field(str_length={"min_value": 1})
    group: str
    split: str = pa.Field(isin=list(SPLITS))
    n_images: int = pa.Field(gt=0)

    class Config:
        strict = True
        coerce = True

    @pa.dataframe_check
    def ids_are_row_order(cls, df: pd.DataFrame) -> bool:
        return bool((df["class_id"].to_numpy() == np.arange(len(df))).all())

    @pa.dataframe_check
    def groups_do_not_straddle_splits(cls, df: pd.DataFrame) -> bool:
        # Splits are by group (alphabet, domain): one group never feeds two splits.
        return bool((df.groupby("group")["split"].nunique() <= 1).all())


@dataclass
class PreparedDataset:
    name: str
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N]
    classes: pd.DataFrame
    meta: dict
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # per-image arrays [N, ...]

    def split_classes(self, split: str) -> np.ndarray:
        return self.classes.loc[self.classes["split"] == split, "class_id"].to_numpy()


def validate(images: np.ndarray, labels: np.ndarray, classes: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check arrays and class table agree; raise UserError naming `where` otherwise."""
    try:
        classes = ClassTable.validate(classes, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases[["column", "check", "failure_case"]].head(5).to_dict("records")
        raise UserError(f"class table of {where} is invalid: {cases}") from None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(f"{where}: images must be uint8 [N, C, H, W], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise UserError(f"{where}: {labels.shape[0]} labels for {images.shape[0]} images")
    counts = np.bincount(labels, minlength=len(classes))
    if len(counts) != len(classes) or not (counts == classes["n_images"].to_numpy()).all():
        raise UserError(f"{where}: labels.npy does not match n_images of classes.csv")
    return classes


def write_prepared(
    out_dir: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: pd.DataFrame,
    meta: dict,
    extras: dict[str, np.ndarray] | None = None,
) -> None:
    """Validate, then write the prepared form atomically (a directory rename).

    `extras` are further per-image arrays (first axis N), saved as `<name>.npy`.
    """
    out_dir = Path(out_dir)
    classes = validate(images, labels.astype(np.int64), classes, str(out_dir))
    extras = dict(extras or {})
    for key, arr in extras.items():
        if not key.isidentifier() or key in ("images", "labels") or arr.shape[:1] != images.shape[:1]:
            raise ValueError(f"extra {key!r}: needs an identifier name and {images.shape[0]} rows")
    # A content hash lets downstream stages notice any change of the data itself.
    digest = hashlib.md5(np.ascontiguousarray(images).data)
    digest.update(labels.astype(np.int64).tobytes())
    digest.update(classes.to_csv(index=False).encode())
    for key in sorted(extras):
        digest.update(key.encode() + np.ascontiguousarray(extras[key]).tobytes())
    if extras:
        meta = {**meta, "extras": sorted(extras)}
    meta = {**meta, "image_shape": list(images.shape[1:]), "n_images": int(images.shape[0]),
            "n_classes": int(len(classes)), "content_md5": digest.hexdigest()}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        np.save(tmp / "images.npy", np.ascontiguousarray(images))
        np.save(tmp / "labels.npy", labels.astype(np.int64))
        classes.to_csv(tmp / "classes.csv", index=False)
        for key, arr in extras.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_prepared(path: str | Path, mmap: bool = True, name: str | None = None) -> PreparedDataset:
    """The prepared dataset at `path`; `name` is its params name (default: the folder's)."""
    path = Path(path)
    needed = ["images.npy", "labels.npy", "classes.csv", "meta.json"]
    missing = [n for n in needed if not (path / n).exists()]
    if missing:
        raise UserError(
            f"prepared dataset {path} lacks {', '.join(missing)}; run the prepare stage "
            f"(python -m mtml prepare --dataset {name or path.name}) first"
        )
    images = np.load(path / "images.npy", mmap_mode="r" if mmap else None)
    labels = np.load(path / "labels.npy")
    classes = pd.read_csv(path / "classes.csv", keep_default_na=False)
    classes = validate(images, labels, classes, str(path))
    meta = json.loads((path / "meta.json").read_text())
    extras = {}
    for key in meta.get("extras", []):
        if not (path / f"{key}.npy").exists():
            raise UserError(f"prepared dataset {path} lacks {key}.npy; run the prepare stage again")
        extras[key] = np.load(path / f"{key}.npy", mmap_mode="r" if mmap else None)
    return PreparedDataset(name or path.name, images, labels, classes, meta, extras)
