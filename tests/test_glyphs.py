"""The embedded `glyphs` dataset: deterministic, valid, split by alphabet, and a real task."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtml.data import glyphs
from mtml.data.sources import SOURCES
from mtml.data.storage import load_prepared, validate
from mtml.errors import UserError

SMALL = {"alphabets": 6, "characters_per_alphabet": 5, "drawers": 4, "split": [4, 1, 1]}
STYLES = ["standard", "shifted"]


def small(**overrides):
    return {**SMALL, **overrides}


@pytest.fixture(scope="module", params=STYLES)
def generated(request):
    return request.param, glyphs.generate(small(style=request.param), seed=0)


def test_shapes_and_dtypes(generated):
    style, (images, labels, classes, meta) = generated
    assert meta["style"] == style and meta["source"] == "glyphs"
    assert images.dtype == np.uint8 and images.shape == (6 * 5 * 4, 1, 28, 28)
    assert labels.dtype == np.int64 and labels.shape == (120,)
    assert len(classes) == 30 and (classes["n_images"] == 4).all()
    assert np.array_equal(labels, np.repeat(np.arange(30), 4))
    json.dumps(meta)  # meta must be JSON-serialisable for meta.json


@pytest.mark.parametrize("style", STYLES)
def test_same_seed_same_bytes_other_seed_differs(style):
    a = glyphs.generate(small(style=style), seed=3)
    b = glyphs.generate(small(style=style), seed=3)
    c = glyphs.generate(small(style=style), seed=4)
    assert a[0].tobytes() == b[0].tobytes()
    assert np.array_equal(a[1], b[1]) and a[2].equals(b[2]) and a[3] == b[3]
    assert a[0].tobytes() != c[0].tobytes()


def test_class_table_valid_and_splits_disjoint(generated):
    _, (images, labels, classes, _) = generated
    classes = validate(images, labels, classes, "glyphs test")
    assert classes.groupby("group")["split"].nunique().max() == 1
    per_split = {s: set(classes.loc[classes["split"] == s, "group"]) for s in ("train", "val", "test")}
    assert [len(per_split[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    assert not (per_split["train"] & per_split["val"] or per_split["train"] & per_split["test"]
                or per_split["val"] & per_split["test"])
    ids = [set(classes.loc[classes["split"] == s, "class_id"]) for s in ("train", "val", "test")]
    assert sum(map(len, ids)) == len(classes) == len(set().union(*ids))
    assert classes["name"].is_unique
    assert all(name.startswith(group + "/") for name, group in zip(classes["name"], classes["group"]))


def test_images_are_not_blank_and_antialiased(generated):
    _, (images, *_rest) = generated
    flat = images.reshape(len(images), -1)
    assert (flat.max(1) == 255).all()
    ink = (flat > 127).mean(1)
    assert (ink > 0.02).all() and (ink < 0.6).all()
    assert ((flat > 0) & (flat < 255)).any(1).all()  # soft edges, not a binary mask


def _correlations(images, labels):
    x = images.reshape(len(images), -1).astype(np.float64)
    x -= x.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    corr = x @ x.T
    same = labels[:, None] == labels[None, :]
    off_diag = ~np.eye(len(labels), dtype=bool)
    return corr[same & off_diag].mean(), corr[~same].mean()


def test_samples_of_a_character_resemble_each_other(generated):
    _, (images, labels, *_rest) = generated
    within, between = _correlations(images, labels)
    # thin strokes keep raw correlations low, but within-character ones are about twice as high
    assert within > between + 0.07 and within > 1.3 * between, (within, between)


def test_drawers_vary(generated):
    _, (images, labels, *_rest) = generated
    # no two samples of a character are pixel-identical
    for c in range(5):
        group = images[labels == c].reshape(4, -1)
        assert len({row.tobytes() for row in group}) == 4


def test_standard_and_shifted_differ():
    std = glyphs.generate(small(), seed=0)[0]
    sft = glyphs.generate(small(style="shifted"), seed=0)[0]
    assert std.shape == sft.shape
    assert np.abs(std.astype(int) - sft.astype(int)).mean() > 10
    # the shifted style uses a heavier pen: clearly more ink per image
    assert (sft > 127).mean() > 1.2 * (std > 127).mean()


def test_image_size_option():
    images, labels, classes, meta = glyphs.generate(small(image_size=32, alphabets=3,
                                                          split=[1, 1, 1]), seed=0)
    assert images.shape == (3 * 5 * 4, 1, 32, 32)
    assert meta["options"]["image_size"] == 32
    validate(images, labels, classes, "glyphs 32")


def test_fewer_alphabets_give_a_prefix():
    # randomness is keyed by alphabet/character: a smaller run is the start of a larger one
    few = glyphs.generate(small(alphabets=3, split=[1, 1, 1]), seed=0)[0]
    many = glyphs.generate(small(), seed=0)[0]
    assert np.array_equal(few, many[: len(few)])


def test_difficulty_knobs_change_the_drawers():
    base = glyphs.generate(small(alphabets=3, split=[1, 1, 1]), seed=0)[0]
    still = glyphs.generate(small(alphabets=3, split=[1, 1, 1], jitter=0, translate=0, affine=0,
                                  width_jitter=0), seed=0)
    assert base.tobytes() != still[0].tobytes()
    # without drawer noise every sample of a character is the same image
    images, labels = still[0], still[1]
    for c in range(3):
        group = images[labels == c]
        assert (group == group[:1]).all()


def test_unknown_option_names_the_key():
    with pytest.raises(UserError, match=r"datasets\.glyphs\.options\.colour"):
        glyphs.generate(small(colour="red"), seed=0)
    with pytest.raises(UserError, match=r"datasets\.mine\.options\.colour"):
        glyphs.prepare("mine", {"colour": "red"}, None, None, 0)


@pytest.mark.parametrize("key,value", [("style", "fancy"), ("image_size", 4), ("drawers", 0),
                                       ("alphabets", 2.5), ("jitter", -1), ("stroke_width", 0),
                                       ("split", [1, 1]), ("split", [0, 1, 1]),
                                       ("split", {"train": 1, "dev": 1})])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(UserError, match=rf"datasets\.glyphs\.options\.{key}"):
        glyphs.generate(small(**{key: value}), seed=0)


def test_too_few_alphabets_for_the_split():
    with pytest.raises(UserError, match="alphabets"):
        glyphs.generate(small(alphabets=2, split=[4, 1, 1]), seed=0)


@pytest.mark.parametrize("split,alphabets,expected", [
    ([20, 5, 5], 30, [20, 5, 5]),   # counts
    ([20, 5, 5], 12, [8, 2, 2]),    # the default as weights for another size
    ([20, 5, 5], 6, [4, 1, 1]),
    ([0.6, 0.2, 0.2], 10, [6, 2, 2]),
    ([1, 0, 1], 5, [3, 0, 2]),
    ({"train": 3, "val": 1, "test": 1}, 5, [3, 1, 1]),
    ([1, 1, 1], 3, [1, 1, 1]),
])
def test_resolve_split(split, alphabets, expected):
    counts = glyphs.resolve_split(split, alphabets)
    assert counts == expected and sum(counts) == alphabets


def test_default_options():
    opts = glyphs.resolve_options({})
    assert opts["style"] == "standard" and opts["image_size"] == 28
    assert opts["alphabets"] * opts["characters_per_alphabet"] * opts["drawers"] == 12000
    assert opts["split"] == [20, 5, 5]


def test_prepare_writes_the_prepared_form(tmp_path):
    assert SOURCES["glyphs"] is glyphs.prepare
    out = tmp_path / "processed" / "g"
    glyphs.prepare("g", small(style="shifted"), tmp_path / "raw" / "g", out, 7)
    data = load_prepared(out, mmap=False)
    images, labels, classes, _ = glyphs.generate(small(style="shifted"), seed=7)
    assert np.array_equal(data.images, images) and np.array_equal(data.labels, labels)
    assert data.meta["source"] == "glyphs" and data.meta["style"] == "shifted"
    assert data.meta["n_images"] == 120 and data.meta["image_shape"] == [1, 28, 28]
    assert list(data.split_classes("test")) == list(range(25, 30))
    assert not (tmp_path / "raw").exists()  # nothing to download
