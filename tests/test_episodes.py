"""Prepared form and episode manifests: schemas catch planted bad rows, splits are disjoint."""

import numpy as np
import pandas as pd
import pytest

from mtml.data.storage import load_prepared, write_prepared
from mtml.episodes.manifest import build_manifest, check_manifest
from mtml.errors import UserError


def _dataset(tmp_path, n_groups=6, per_group=3, per_class=6):
    rows, labels = [], []
    splits = ["train"] * (n_groups - 2) + ["val", "test"]
    for g in range(n_groups):
        for c in range(per_group):
            cid = len(rows)
            rows.append({"class_id": cid, "name": f"g{g}/c{c}", "group": f"g{g}", "split": splits[g],
                         "n_images": per_class})
            labels += [cid] * per_class
    labels = np.array(labels)
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 1, 8, 8), dtype=np.uint8)
    write_prepared(tmp_path / "toy", images, labels, pd.DataFrame(rows), {"source": "test"})
    return load_prepared(tmp_path / "toy")


def test_prepared_roundtrip_and_content_hash(tmp_path):
    d = _dataset(tmp_path)
    assert d.images.shape == (6 * 3 * 6, 1, 8, 8) and d.images.dtype == np.uint8
    assert len(d.meta["content_md5"]) == 32
    assert not list(tmp_path.glob(".*tmp"))  # no temp folder left behind


@pytest.mark.parametrize("column,value,pattern", [
    ("split", "training", "split"),
    ("n_images", 0, "n_images"),
    ("class_id", 99, "ids_are_row_order"),
])
def test_class_table_rejects_planted_bad_rows(tmp_path, column, value, pattern):
    d = _dataset(tmp_path)
    classes = d.classes.copy()
    classes.loc[1, column] = value
    with pytest.raises(UserError, match=pattern):
        write_prepared(tmp_path / "bad", np.asarray(d.images), d.labels, classes, {})
    assert not (tmp_path / "bad").exists()


def test_group_straddling_two_splits_is_rejected(tmp_path):
    d = _dataset(tmp_path)
    classes = d.classes.copy()
    classes.loc[0, "split"] = "test"  # g0 now feeds train and test
    with pytest.raises(UserError, match="groups_do_not_straddle_splits"):
        write_prepared(tmp_path / "bad", np.asarray(d.images), d.labels, classes, {})


def test_manifest_structure_and_determinism(tmp_path):
    d = _dataset(tmp_path)
    m = build_manifest(d, "train", ways=3, shots=2, queries=3, episodes=20, seed=5)
    assert len(m) == 20 * 3 * 5
    assert m.equals(build_manifest(d, "train", 3, 2, 3, 20, seed=5))
    assert not m.equals(build_manifest(d, "train", 3, 2, 3, 20, seed=6))
    train_classes = set(d.split_classes("train"))
    assert set(m["class_id"]) <= train_classes
    for _, ep in m.groupby("episode"):
        assert ep["class_id"].nunique() == 3
        s, q = set(ep[ep.role == "support"]["item"]), set(ep[ep.role == "query"]["item"])
        assert not s & q


def test_splits_are_disjoint(tmp_path):
    d = _dataset(tmp_path)
    sets = {s: set(d.split_classes(s)) for s in ("train", "val", "test")}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    for split in ("val", "test"):
        m = build_manifest(d, split, 3, 1, 2, 5, 0)
        assert set(m["class_id"]) <= sets[split]


@pytest.mark.parametrize("plant,pattern", [
    (lambda m: m.assign(item=np.where(m.index == 1, m["item"].iloc[0], m["item"])), "overlap"),
    (lambda m: m.assign(class_id=np.where(m.index == 0, 0, m["class_id"])), "classes|label maps|outside"),
    (lambda m: m.drop(index=m.index[-1]), "query items"),
    (lambda m: m.assign(role=np.where(m.index == 0, "both", m["role"])), "bad rows"),
])
def test_manifest_check_catches_planted_errors(tmp_path, plant, pattern):
    d = _dataset(tmp_path)
    m = build_manifest(d, "test", 3, 2, 3, 4, 0)
    with pytest.raises(UserError, match=pattern):
        check_manifest(plant(m).reset_index(drop=True), 3, 2, 3, d.split_classes("test"), d.labels, "planted")


def test_too_few_classes_is_a_clear_error(tmp_path):
    d = _dataset(tmp_path)
    with pytest.raises(UserError, match="ways=5"):
        build_manifest(d, "val", 5, 1, 1, 1, 0)
