"""Real few-shot dataset adapters on small fixtures in each dataset's own on-disk format.

Archive-based sources (CIFAR-FS/FC100, CUB, Aircraft) are served by the loopback HTTP server
and go download -> extract -> decode -> prepared arrays -> episode manifests through the real
code, with `url`/`md5` options pointing at the fixture. miniImageNet/tieredImageNet read local
folders in each supported layout. Splits are checked against the published class lists.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtml.data import cifar, cub, download, imagenet
from mtml.data.aircraft import variant_split
from mtml.data.sources import prepare_dataset
from mtml.data.storage import SPLITS, load_prepared
from mtml.errors import UserError
from mtml.params import study as make_study
from mtml.stages import build_episodes

from http_fixture import serve
from pipeline_helpers import FlatLayout


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _jpeg(color, size=(20, 16), mode="RGB", fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, quality=95)
    return buf.getvalue()


def _tar(members: dict[str, bytes], gz: bool = True, level: int = 1) -> bytes:
    buf = io.BytesIO()
    kw = {"compresslevel": level} if gz else {}
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", **kw) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _prepare(tmp_path: Path, name: str, source: str, **options) -> Path:
    return prepare_dataset(name, {"source": source, "options": options}, tmp_path / "raw" / name,
                           tmp_path / "processed" / name, 0)


def _episodes(tmp_path: Path, datasets: dict, dataset: str, cross=(), ways=5, shots=1, queries=2) -> Path:
    study = make_study({
        "seed": 0, "device": "cpu",
        "datasets": {n: {"source": s} for n, s in datasets.items()},
        "experiments": {"exp": {"dataset": dataset, "cross_domain": list(cross), "ways": ways, "shots": shots,
                                "queries": queries}},
        "methods": {"protonet": {"filters": 8}},
        "training": {"val_episodes": 3}, "evaluation": {"episodes": 4},
    })
    out = build_episodes(study, FlatLayout(tmp_path, study), "exp")
    data = load_prepared(tmp_path / "processed" / dataset)
    for fname, split in (("val.parquet", "val"), ("test.parquet", "test")):
        df = pd.read_parquet(out / fname)
        assert set(df["class_id"]) <= set(data.split_classes(split))
        assert df["episode"].nunique() == (3 if split == "val" else 4)
    return out


def _check_split(data, expected: dict[str, list[str]]) -> None:
    by_split = {s: list(data.classes.loc[data.classes["split"] == s, "name"]) for s in SPLITS}
    for s in SPLITS:
        assert by_split[s] == expected[s], s
    names = [n for s in SPLITS for n in by_split[s]]
    assert len(names) == len(set(names))  # disjoint


# -- CIFAR-FS and FC100 -----------------------------------------------------------------------

def _cifar_archive(train_per_class: int, test_per_class: int, seed: int = 0, level: int = 1) -> tuple[bytes, dict]:
    """A cifar-100-python.tar.gz with the real names/superclasses and random images.

    Returns the archive and {fine name: first image [3, 32, 32]} to check pixels end to end.
    """
    rng = np.random.default_rng(seed)
    fine_names = sorted(cifar.SUPERCLASS_OF)          # CIFAR-100 lists them alphabetically
    coarse_names = sorted(cifar.SUPERCLASSES)
    members, first = {}, {}
    for part, per in (("train", train_per_class), ("test", test_per_class)):
        fine = np.repeat(np.arange(100), per)
        rng.shuffle(fine)
        data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        coarse = [coarse_names.index(cifar.SUPERCLASS_OF[fine_names[f]]) for f in fine]
        if part == "train":
            for f in range(100):
                first[fine_names[f]] = data[np.flatnonzero(fine == f)[0]].reshape(3, 32, 32)
        obj = {b"batch_label": f"{part} batch".encode(), b"fine_labels": fine.tolist(),
               b"coarse_labels": coarse, b"data": data,
               b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))]}
        members[f"cifar-100-python/{part}"] = pickle.dumps(obj, protocol=4)
    meta = {b"fine_label_names": [n.encode() for n in fine_names],
            b"coarse_label_names": [n.encode() for n in coarse_names]}
    members["cifar-100-python/meta"] = pickle.dumps(meta, protocol=4)
    return _tar(members, level=level), first


@pytest.fixture(scope="module")
def cifar_small():
    return _cifar_archive(train_per_class=3, test_per_class=1)


def test_cifar_fs_and_fc100_share_one_download(cifar_small, tmp_path):
    archive, first = cifar_small
    with serve({"c100.tar.gz": archive}) as srv:
        opts = {"url": srv.url("c100.tar.gz"), "md5": _md5(archive)}
        _prepare(tmp_path, "cifar-fs", "cifar-fs", **opts)
        _prepare(tmp_path, "fc100", "fc100", **opts)
        assert [s for _, _, s in srv.requests] == [200]  # one download serves both datasets

    fs = load_prepared(tmp_path / "processed" / "cifar-fs")
    _check_split(fs, cifar.CIFAR_FS_SPLIT)
    assert [len(cifar.CIFAR_FS_SPLIT[s]) for s in SPLITS] == [64, 16, 20]
    assert fs.images.shape == (400, 3, 32, 32) and (fs.classes["n_images"] == 4).all()
    assert fs.meta["complete"] is False and fs.meta["classes_per_split"] == {"train": 64, "val": 16, "test": 20}
    # The first image of a class is its first `train` image, pixel for pixel (CHW kept).
    whale = int(fs.classes.index[fs.classes["name"] == "whale"][0])
    np.testing.assert_array_equal(fs.images[np.flatnonzero(fs.labels == whale)[0]], first["whale"])

    fc = load_prepared(tmp_path / "processed" / "fc100")
    expected = {s: [c for sc in cifar.FC100_SPLIT[s] for c in cifar.SUPERCLASSES[sc]] for s in SPLITS}
    _check_split(fc, expected)
    groups = fc.classes.groupby("split")["group"].nunique().to_dict()
    assert groups == {"train": 12, "val": 4, "test": 4}
    assert sorted(fc.classes.loc[fc.classes["split"] == "test", "group"].unique()) == \
        ["aquatic_mammals", "insects", "medium_mammals", "people"]

    _episodes(tmp_path, {"cifar-fs": "cifar-fs", "fc100": "fc100"}, "cifar-fs", cross=["fc100"])


def test_cifar_resumes_a_cut_download(cifar_small, tmp_path, monkeypatch):
    archive, _ = cifar_small
    monkeypatch.setattr(download, "DEFAULT_BACKOFF", 0.0)
    with serve({"c100.tar.gz": archive}) as srv:
        srv.truncate_after, srv.truncate_times = len(archive) // 2, 1
        _prepare(tmp_path, "fs", "cifar-fs", url=srv.url("c100.tar.gz"), md5=_md5(archive), image_size=16)
        assert srv.range_requests == [f"bytes={len(archive) // 2}-"]
    assert load_prepared(tmp_path / "processed" / "fs").images.shape[1:] == (3, 16, 16)


def test_cifar_html_page_and_checksum_are_refused(cifar_small, tmp_path):
    archive, _ = cifar_small
    with serve({"c100.tar.gz": archive}) as srv:
        srv.html = True
        with pytest.raises(UserError, match="HTML page.*datasets.fs.options.local"):
            _prepare(tmp_path, "fs", "cifar-fs", url=srv.url("c100.tar.gz"), md5=_md5(archive))
        srv.html = False
        # The official checksum does not match the fixture: nothing is kept.
        with pytest.raises(UserError, match="checksum mismatch"):
            _prepare(tmp_path, "fs", "cifar-fs", url=srv.url("c100.tar.gz"))
    assert not list((tmp_path / "raw" / "_archives").glob("cifar*"))
    with pytest.raises(UserError, match=r"datasets\.fs\.options\.md5"):
        _prepare(tmp_path, "fs", "cifar-fs", md5="abc")
    with pytest.raises(UserError, match=r"datasets\.fs\.options\.colour.*allowed: .*image_size"):
        _prepare(tmp_path, "fs", "cifar-fs", colour=True)


@pytest.mark.slow
def test_cifar_full_size_prepare_is_fast(tmp_path):
    """All 60000 images in the real archive format; prints the prepare and reload times (-s)."""
    t0 = time.perf_counter()
    # gzip level 0 (stored blocks): a valid .tar.gz that is quick to build from random pixels.
    archive, first = _cifar_archive(train_per_class=500, test_per_class=100, level=0)
    build = time.perf_counter() - t0
    local = tmp_path / "cifar-100-python.tar.gz"
    local.write_bytes(archive)
    md5 = _md5(archive)
    del archive
    t0 = time.perf_counter()
    _prepare(tmp_path, "cifar-fs", "cifar-fs", local=str(local), md5=md5)
    prepare = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = load_prepared(tmp_path / "processed" / "cifar-fs", mmap=False)
    reload = time.perf_counter() - t0
    print(f"\nfull-size CIFAR-100 fixture built in {build:.1f}s; cifar-fs prepare {prepare:.1f}s, "
          f"reload {reload:.2f}s")
    assert data.images.shape == (60000, 3, 32, 32)
    assert (data.classes["n_images"] == cifar.IMAGES_PER_CLASS).all() and data.meta["complete"]
    tiger = int(data.classes.index[data.classes["name"] == "tiger"][0])
    np.testing.assert_array_equal(data.images[np.flatnonzero(data.labels == tiger)[0]], first["tiger"])
    assert prepare < 60 and reload < 10


# -- miniImageNet -----------------------------------------------------------------------------

MINI_IDS = [9, 10, 100, 25]  # numeric order 9, 10, 25, 100; string order differs


def _colour(rank: int, k: int) -> tuple[int, int, int]:
    """A flat colour that encodes (image rank, class number) so picks can be checked."""
    return (40 * rank + 20, (7 * k) % 250, 128)


def _ilsvrc_tree(root: Path, wnids: list[str], ids=MINI_IDS) -> Path:
    """An ILSVRC-2012 train folder: <wnid>/<wnid>_<id>.JPEG, a mix of sizes and modes."""
    order = sorted(ids)
    for k, w in enumerate(wnids):
        (root / w).mkdir(parents=True)
        for i in ids:
            rank = order.index(i)
            size = (40 + 7 * rank, 30 + 3 * k % 11)
            data = _jpeg(_colour(rank, k), size)
            if i == ids[-1] and k % 10 == 0:  # ImageNet has a few greyscale JPEGs
                data = _jpeg(128, size, mode="L")
            (root / w / f"{w}_{i}.JPEG").write_bytes(data)
    return root


@pytest.fixture(scope="module")
def mini_tree(tmp_path_factory):
    wnids = [w for s in SPLITS for w in imagenet.MINI_SPLIT[s]]
    return _ilsvrc_tree(tmp_path_factory.mktemp("ilsvrc") / "train", wnids)


def _mean_rgb(data, cls_name: str) -> np.ndarray:
    c = int(data.classes.index[data.classes["name"] == cls_name][0])
    return data.images[np.flatnonzero(data.labels == c)].astype(float).mean(axis=(2, 3))


def test_mini_from_ilsvrc_first_images(mini_tree, tmp_path):
    _prepare(tmp_path, "mini", "miniimagenet", local=str(mini_tree), images_per_class=3)
    data = load_prepared(tmp_path / "processed" / "mini")
    _check_split(data, imagenet.MINI_SPLIT)
    assert data.images.shape == (300, 3, 84, 84) and (data.classes["n_images"] == 3).all()
    assert data.meta["layout"] == "ilsvrc" and "NOT the published" in data.meta["selection"]
    assert data.meta["complete"] is False
    # Numeric file order: ids 9, 10, 25 (ranks 0, 1, 2), not the string order 10, 100, 25.
    k = 1  # the second wnid of the train list
    red = _mean_rgb(data, imagenet.MINI_SPLIT["train"][k])[:, 0]
    np.testing.assert_allclose(red, [_colour(r, k)[0] for r in range(3)], atol=3)
    _episodes(tmp_path, {"mini": "miniimagenet"}, "mini")

    with pytest.raises(UserError, match="fewer than 'datasets.m2.options.images_per_class' = 600"):
        _prepare(tmp_path, "m2", "miniimagenet", local=str(mini_tree))


def test_mini_from_ilsvrc_with_ravi_csvs(mini_tree, tmp_path):
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    for s in SPLITS:
        rows = ["filename,label"] + [f"{w}{r:08d}.jpg,{w}" for w in imagenet.MINI_SPLIT[s] for r in (4, 2)]
        (csv_dir / f"{s}.csv").write_text("\n".join(rows) + "\n")
    _prepare(tmp_path, "mini", "miniimagenet", local=str(mini_tree), split_csv=str(csv_dir))
    data = load_prepared(tmp_path / "processed" / "mini")
    assert (data.classes["n_images"] == 2).all() and "exact published" in data.meta["selection"]
    k = 3
    red = _mean_rgb(data, imagenet.MINI_SPLIT["train"][k])[:, 0]
    # 1-based ranks 4 and 2 in numeric order are ids 100 and 10 (ranks 3 and 1 from zero).
    np.testing.assert_allclose(red, [_colour(3, k)[0], _colour(1, k)[0]], atol=3)

    (csv_dir / "val.csv").write_text("filename,label\nn0000000100000001.jpg,n00000001\n")
    with pytest.raises(UserError, match="published miniImageNet val classes.*16 missing.*1 unexpected"):
        _prepare(tmp_path, "m3", "miniimagenet", local=str(mini_tree), split_csv=str(csv_dir))


def test_mini_prepared_layouts(tmp_path):
    """The original distribution, train/val/test folders and the cache pickles read alike."""
    ravi, folders, pkl = tmp_path / "ravi", tmp_path / "folders", tmp_path / "pkl"
    (ravi / "images").mkdir(parents=True)
    pkl.mkdir()
    for s in SPLITS:
        rows, arrays, class_dict = ["filename,label"], [], {}
        for k, w in enumerate(imagenet.MINI_SPLIT[s]):
            (folders / s / w).mkdir(parents=True)
            class_dict[w] = []
            for r in range(3):
                blob = _jpeg(_colour(r, k), (84, 84))
                (ravi / "images" / f"{w}{r + 1:08d}.jpg").write_bytes(blob)
                (folders / s / w / f"{w}{r + 1:08d}.jpg").write_bytes(blob)
                rows.append(f"{w}{r + 1:08d}.jpg,{w}")
                class_dict[w].append(len(arrays))
                arrays.append(np.full((84, 84, 3), _colour(r, k), np.uint8))
        (ravi / f"{s}.csv").write_text("\n".join(rows) + "\n")
        with open(pkl / f"mini-imagenet-cache-{s}.pkl", "wb") as f:
            pickle.dump({"image_data": np.stack(arrays), "class_dict": class_dict}, f)
    results = {}
    for layout, root in (("ravi", ravi), ("folders", folders), ("pickle", pkl)):
        _prepare(tmp_path, f"mini-{layout}", "miniimagenet", local=str(root))
        data = load_prepared(tmp_path / "processed" / f"mini-{layout}")
        assert data.meta["layout"] == layout
        _check_split(data, imagenet.MINI_SPLIT)
        results[layout] = data
    np.testing.assert_allclose(results["ravi"].images, results["folders"].images)
    # JPEG round trip vs. raw arrays: close, not equal.
    assert np.abs(results["ravi"].images.astype(int) - results["pickle"].images).max() <= 8

    (folders / "test" / imagenet.MINI_SPLIT["test"][0]).rename(folders / "test" / "n99999999")
    with pytest.raises(UserError, match="published miniImageNet test classes"):
        _prepare(tmp_path, "bad", "miniimagenet", local=str(folders))


def test_imagenet_sets_without_local_path_say_what_to_provide(tmp_path):
    with pytest.raises(UserError) as err:
        _prepare(tmp_path, "mini", "miniimagenet")
    msg = str(err.value)
    for part in ("datasets.mini.options.local", "ILSVRC2012_img_train", "datasets.mini.options.split_csv",
                 "meta-learning-lstm", "mini-imagenet-cache-train.pkl", "images/"):
        assert part in msg, part
    with pytest.raises(UserError) as err:
        _prepare(tmp_path, "tiered", "tieredimagenet")
    msg = str(err.value)
    for part in ("datasets.tiered.options.local", "train_images_png.pkl", "train_labels.pkl",
                 "tiered_imagenet_split", "datasets.tiered.options.split_csv"):
        assert part in msg, part
    assert not (tmp_path / "raw").exists()  # nothing fetched, nothing written
    with pytest.raises(UserError, match="datasets.mini.options.local' is '/nonexistent/x', which does not exist"):
        _prepare(tmp_path, "mini", "miniimagenet", local="/nonexistent/x")


# -- tieredImageNet ---------------------------------------------------------------------------

def _tiered_classes() -> dict[str, list[tuple[str, str]]]:
    """Fixture classes: the published superclasses and class counts, made-up class wnids."""
    out, n = {}, 0
    for s in SPLITS:
        supers = imagenet.TIERED_SUPERCLASSES[s]
        out[s] = [(f"n9{n + j:07d}", supers[j % len(supers)]) for j in range(imagenet.TIERED_CLASSES[s])]
        n += imagenet.TIERED_CLASSES[s]
    return out


def test_tiered_from_ilsvrc_with_ren_csvs(tmp_path):
    classes = _tiered_classes()
    wnids = [c for s in SPLITS for c, _ in classes[s]]
    root = _ilsvrc_tree(tmp_path / "train", wnids, ids=[3, 1, 2])
    csv_dir = tmp_path / "tiered_imagenet_split"
    csv_dir.mkdir()
    for s in SPLITS:
        (csv_dir / f"{s}.csv").write_text("".join(f"{c},{p}\n" for c, p in classes[s]))
    _prepare(tmp_path, "tiered", "tieredimagenet", local=str(root), split_csv=str(csv_dir), image_size=32)
    data = load_prepared(tmp_path / "processed" / "tiered")
    assert data.meta["layout"] == "ilsvrc" and data.meta["classes_per_split"] == {"train": 351, "val": 97, "test": 160}
    assert data.images.shape == (608 * 3, 3, 32, 32)
    supers = data.classes.groupby("split")["group"].unique().to_dict()
    for s in SPLITS:
        assert sorted(supers[s]) == sorted(imagenet.TIERED_SUPERCLASSES[s])
    _episodes(tmp_path, {"tiered": "tieredimagenet"}, "tiered")

    # A split file with another superclass is not Ren et al.'s split.
    bad = classes["val"][:-1] + [(classes["val"][-1][0], "n01524359")]
    (csv_dir / "val.csv").write_text("".join(f"{c},{p}\n" for c, p in bad))
    with pytest.raises(UserError, match="val.csv is not Ren et al.'s tieredImageNet val split"):
        _prepare(tmp_path, "t2", "tieredimagenet", local=str(root), split_csv=str(csv_dir))


def test_tiered_from_ren_pickles(tmp_path):
    classes = _tiered_classes()
    for s in SPLITS:
        supers = imagenet.TIERED_SUPERCLASSES[s]
        names = [c for c, _ in classes[s]]
        specific, general, pngs = [], [], []
        for k, (_, p) in enumerate(classes[s]):
            for r in range(3):
                specific.append(k)
                general.append(supers.index(p))
                pngs.append(np.frombuffer(_jpeg(_colour(r, k), (84, 84), fmt="PNG"), np.uint8))
        with open(tmp_path / f"{s}_images_png.pkl", "wb") as f:
            pickle.dump(pngs, f)
        with open(tmp_path / f"{s}_labels.pkl", "wb") as f:
            pickle.dump({"label_specific": np.array(specific), "label_general": np.array(general),
                         "label_specific_str": names, "label_general_str": supers}, f)
    _prepare(tmp_path, "tiered", "tieredimagenet", local=str(tmp_path))
    data = load_prepared(tmp_path / "processed" / "tiered")
    assert data.meta["layout"] == "pickle" and data.images.shape == (608 * 3, 3, 84, 84)
    assert data.classes.groupby("split")["group"].nunique().to_dict() == {"train": 20, "val": 6, "test": 8}
    # PNG is lossless: pixels come back exactly.
    c = classes["test"][5][0]
    np.testing.assert_array_equal(_mean_rgb(data, c)[:, 0], [_colour(r, 5)[0] for r in range(3)])


# -- CUB and the cross-domain experiment --------------------------------------------------------

def _cub_archive() -> bytes:
    members = {}
    classes, images, labels, boxes = [], [], [], []
    img_id = 0
    for c in range(1, 201):
        cname = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {cname}")
        for r in range(3):
            img_id += 1
            path = f"{cname}/Bird_{c}_{r:04d}_{img_id}.jpg"
            members[f"CUB_200_2011/images/{path}"] = _jpeg(_colour(r, c % 50), (24, 20))
            images.append(f"{img_id} {path}")
            labels.append(f"{img_id} {c}")
            boxes.append(f"{img_id} 2.0 3.0 12.0 10.0")
    for fname, rows in (("classes.txt", classes), ("images.txt", images),
                        ("image_class_labels.txt", labels), ("bounding_boxes.txt", boxes)):
        members[f"CUB_200_2011/{fname}"] = ("\n".join(rows) + "\n").encode()
    return _tar(members)


def test_cub_split_and_cross_domain_episodes(mini_tree, tmp_path):
    archive = _cub_archive()
    with serve({"CUB_200_2011.tgz": archive}) as srv:
        _prepare(tmp_path, "cub", "cub", url=srv.url("CUB_200_2011.tgz"), md5=_md5(archive))
        _prepare(tmp_path, "cub-box", "cub", url=srv.url("CUB_200_2011.tgz"), md5=_md5(archive),
                 crop="bbox", image_size=16)
        assert len(srv.requests) == 1  # extracted once, shared
    data = load_prepared(tmp_path / "processed" / "cub")
    index = {s: [int(n[:3]) - 1 for n in data.classes.loc[data.classes["split"] == s, "name"]] for s in SPLITS}
    assert index["train"] == list(range(0, 200, 2))
    assert index["val"] == list(range(1, 200, 4)) and index["test"] == list(range(3, 200, 4))
    assert [cub.chen_split(i) for i in (0, 1, 2, 3, 4, 5, 7)] == ["train", "val", "train", "test", "train", "val", "test"]
    assert data.images.shape == (600, 3, 84, 84) and data.meta["complete"] is False
    assert load_prepared(tmp_path / "processed" / "cub-box").images.shape == (600, 3, 16, 16)

    _prepare(tmp_path, "mini", "miniimagenet", local=str(mini_tree), images_per_class=3)
    out = _episodes(tmp_path, {"mini": "miniimagenet", "cub": "cub"}, "mini", cross=["cub"])
    cross = pd.read_parquet(out / "cross-cub.parquet")
    assert set(cross["class_id"]) <= set(data.split_classes("test"))


def test_archive_given_as_local_folder_or_file(tmp_path):
    archive = _cub_archive()
    (tmp_path / "CUB_200_2011.tgz").write_bytes(archive)
    with pytest.raises(UserError, match="md5 .* is not the expected 97eceeb196236b17998738112f37df78"):
        _prepare(tmp_path, "cub", "cub", local=str(tmp_path / "CUB_200_2011.tgz"))
    download.extract(tmp_path / "CUB_200_2011.tgz", tmp_path / "extracted")
    _prepare(tmp_path, "cub", "cub", local=str(tmp_path / "extracted"), image_size=8)
    assert load_prepared(tmp_path / "processed" / "cub").meta["from"] == str(tmp_path / "extracted" / "CUB_200_2011")
    assert not (tmp_path / "raw").exists()


# -- FGVC-Aircraft ------------------------------------------------------------------------------

def _aircraft_archive() -> tuple[bytes, list[str]]:
    variants = [f"{'F/A' if v % 7 == 0 else 'Model'}-{v} mk {v % 3}" for v in range(100)]
    members, lists, boxes = {}, {"train": [], "val": [], "test": []}, []
    for v, name in enumerate(variants):
        for r in range(3):
            img = f"{1000000 + 10 * v + r:07d}"
            # A 30-row aircraft above the 20-row copyright banner of every image.
            im = Image.new("RGB", (40, 50), (200, 30, 30))
            im.paste((0, 0, 255), (0, 30, 40, 50))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=95)
            members[f"fgvc-aircraft-2013b/data/images/{img}.jpg"] = buf.getvalue()
            lists[("train", "val", "test")[r]].append(f"{img} {name}")
            boxes.append(f"{img} 1 1 40 30")
    for s, rows in lists.items():
        members[f"fgvc-aircraft-2013b/data/images_variant_{s}.txt"] = ("\n".join(rows) + "\n").encode()
    members["fgvc-aircraft-2013b/data/images_box.txt"] = ("\n".join(boxes) + "\n").encode()
    members["fgvc-aircraft-2013b/data/variants.txt"] = ("\n".join(variants) + "\n").encode()
    return _tar(members), variants


def test_aircraft_split_crop_and_episodes(tmp_path):
    archive, variants = _aircraft_archive()
    with serve({"a.tar.gz": archive}) as srv:
        opts = {"url": srv.url("a.tar.gz"), "md5": _md5(archive), "image_size": 16}
        _prepare(tmp_path, "aircraft", "aircraft", **opts)
        _prepare(tmp_path, "aircraft-md", "aircraft", **opts, split_sizes=[70, 15, 15], crop="none")
        _prepare(tmp_path, "aircraft-box", "aircraft", **opts, crop="bbox")
        assert len(srv.requests) == 1
    data = load_prepared(tmp_path / "processed" / "aircraft")
    expected = variant_split(variants, [50, 25, 25], 0)
    _check_split(data, {s: sorted(v for v in variants if expected[v] == s) for s in SPLITS})
    assert data.meta["classes_per_split"] == {"train": 50, "val": 25, "test": 25}
    assert (data.classes["n_images"] == 3).all()
    # The banner (blue) is cropped away: the bottom row is red (JPEG chroma bleeds a little).
    assert data.images[:, 2, -1].mean() < 100 and data.images[:, 0, -1].mean() > 150
    md = load_prepared(tmp_path / "processed" / "aircraft-md")
    assert md.meta["classes_per_split"] == {"train": 70, "val": 15, "test": 15}
    assert md.images[:, 2, -1].mean() > 200  # crop: none keeps the banner
    box = load_prepared(tmp_path / "processed" / "aircraft-box")  # boxes 1..40 x 1..30: the aircraft
    assert box.images[:, 2, -1].mean() < 100 and box.images[:, 0, -1].mean() > 150
    # The split does not depend on the params seed, only on split_seed.
    assert variant_split(variants, [50, 25, 25], 0) == expected != variant_split(variants, [50, 25, 25], 1)
    _episodes(tmp_path, {"aircraft": "aircraft"}, "aircraft")
    with pytest.raises(UserError, match=r"split_sizes' sums to 99"):
        _prepare(tmp_path, "a3", "aircraft", local=str(tmp_path / "raw" / "_archives" / "fgvc-aircraft-2013b.tar.gz"),
                 md5=_md5(archive), split_sizes=[50, 25, 24])


# -- presets ------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["miniimagenet", "tieredimagenet", "cifar_fs", "fc100", "miniimagenet_to_cub"])
def test_presets_are_complete_params_for_these_sources(preset):
    from mtml.data import aircraft, sources
    from mtml.params import load

    params = load(Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml").params
    defaults = {"cifar-fs": cifar.DEFAULTS, "fc100": cifar.DEFAULTS, "miniimagenet": imagenet.MINI_DEFAULTS,
                "tieredimagenet": imagenet.TIERED_DEFAULTS, "cub": cub.DEFAULTS, "aircraft": aircraft.DEFAULTS}
    for name, cfg in params["datasets"].items():
        assert cfg["source"] in sources.load_sources()
        sources.check_options(name, cfg["options"], defaults[cfg["source"]])
    text = (Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml").read_text()
    assert "PUBLISHED VALUES, NOT RUNS OF THIS CODE" in text
