"""Source `miniplaces` (scene classes of Places from a local folder) and the cross-domain half of
the miniImageNet -> mini-places protocol (configs/multitask_miniplaces.yaml) on a small fixture
in the MIT Mini Places layout (images/train/<letter>/<category>/<8 digits>.jpg)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtml.data.sources import prepare_dataset
from mtml.data.storage import load_prepared
from mtml.errors import UserError
from mtml.params import study as make_study

CLASSES = ["a/abbey", "a/airport_terminal", "b/bedroom", "k/kitchen"]


def _colour(k: int, rank: int) -> tuple[int, int, int]:
    return (30 + 50 * k, 20 + 40 * rank, 200 - 30 * k)


def _jpeg(colour, size=(20, 14)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def places_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("miniplaces") / "images" / "train"
    for k, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for rank in (3, 0, 2, 1):  # written out of order: prepare takes file-name order
            (root / cls / f"{rank + 1:08d}.jpg").write_bytes(_jpeg(_colour(k, rank), (20 + rank, 14)))
        (root / cls / ".hidden.jpg").write_bytes(b"not an image")
        (root / cls / "notes.txt").write_text("not an image either")
    return root


def _prepare(tmp_path: Path, name="mp", **options) -> Path:
    return prepare_dataset(name, {"source": "miniplaces", "options": options}, tmp_path / "raw" / name,
                           tmp_path / "processed" / name, 0)


def test_class_folders_become_test_classes_with_their_first_images(places_tree, tmp_path):
    out = _prepare(tmp_path, local=str(places_tree), image_size=12, images_per_class=3)
    data = load_prepared(out)
    assert list(data.classes["name"]) == CLASSES and list(data.classes["group"]) == CLASSES
    assert set(data.classes["split"]) == {"test"} and list(data.classes["n_images"]) == [3] * 4
    assert data.images.shape == (12, 3, 12, 12)
    for k in range(len(CLASSES)):
        got = data.images[data.labels == k].astype(float).mean(axis=(2, 3))
        want = np.array([_colour(k, rank) for rank in range(3)], float)  # 00000001..3.jpg
        assert np.abs(got - want).max() < 4
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "miniplaces" and "first 3 images" in meta["selection"]
    all_images = load_prepared(_prepare(tmp_path, "all", local=str(places_tree), image_size=12,
                                        images_per_class=None, split="val"))
    assert list(all_images.classes["n_images"]) == [4] * 4 and set(all_images.classes["split"]) == {"val"}


@pytest.mark.parametrize("options, match", [
    ({"local": None}, r"datasets\.mp\.options\.local.*one sub-folder of images per scene class"),
    ({"local": "/nonexistent/places"}, r"datasets\.mp\.options\.local.*does not exist"),
    ({"images_per_class": 5}, r"a/abbey has 4 images, fewer than 'datasets\.mp\.options\.images_per_class' = 5"),
    ({"split": "holdout"}, r"datasets\.mp\.options\.split.*train, val, test"),
    ({"colour": 1}, r"datasets\.mp\.options\.colour.*allowed"),
])
def test_bad_options_and_folders_name_the_key(places_tree, tmp_path, options, match):
    with pytest.raises(UserError, match=match):
        _prepare(tmp_path, **{"local": str(places_tree), **options})


def test_a_folder_of_loose_images_is_refused(places_tree, tmp_path):
    with pytest.raises(UserError, match="holds images itself"):
        _prepare(tmp_path, local=str(places_tree / "a" / "abbey"))


def test_cross_domain_subtasks_on_miniplaces_train_and_evaluate(places_tree, tmp_path):
    """A multitask classification experiment (class_scope split, as in the mini-places preset)
    with the miniplaces folder as its cross-domain set: episodes, train, evaluate."""
    from mtml.layout import Layout
    from mtml.stages import build_episodes

    from pipeline_helpers import run_pipeline

    study = make_study({
        "seed": 0, "device": "cpu", "threads": 1,
        "datasets": {"scenes": {"source": "scenes", "options": {
                         "image_size": 16, "environments": [2, 1, 1], "room_types": [3, 3, 3],
                         "images_per_class": 4, "supersample": 1}},
                     "mp": {"source": "miniplaces", "options": {"local": str(places_tree), "image_size": 16,
                                                                "images_per_class": 4}}},
        "experiments": {"mt": {"kind": "multitask", "dataset": "scenes", "cross_domain": ["mp"],
                               "ways": 3, "shots": 1, "queries": 2,
                               "options": {"tasks": ["classification"], "class_scope": "split"}}},
        "methods": {"am": {"algorithm": "mt-am", "filters": 4, "inner_steps": 1, "eval_inner_steps": 2}},
        "training": {"iterations": 2, "meta_batch": 1, "val_interval": 2, "val_episodes": 2},
        "evaluation": {"episodes": 5},
    })
    layout = Layout(tmp_path, study)
    for name in study.datasets:
        prepare_dataset(name, study.dataset(name), layout.raw(name), layout.prepared(name), 0)
    build_episodes(study, layout, "mt")
    cross = pd.read_parquet(layout.episodes("mt") / "cross-mp-classification.parquet")
    mp = load_prepared(layout.prepared("mp"))
    assert set(cross["environment"]) == {"any"} and cross["episode"].nunique() == 5
    assert cross.groupby("episode")["item"].apply(lambda i: len(set(mp.labels[i]))).eq(3).all()
    assert cross["item"].max() < len(mp.labels)
    rows = run_pipeline(study, tmp_path)[("mt", "am")]
    assert [(r["split"], r["dataset"], r["episodes"]) for r in rows] == [("test", "scenes", 5),
                                                                         ("cross-domain", "mp", 5)]
    assert all(0 <= r["accuracy"] <= 100 and 0 <= r["nil_accuracy"] <= 100 for r in rows)
