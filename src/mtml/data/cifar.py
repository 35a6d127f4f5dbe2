"""CIFAR-FS and FC100: two few-shot splits of CIFAR-100, from its one official python archive.

Sources `cifar-fs` and `fc100`. Both read `cifar-100-python.tar.gz` (Krizhevsky 2009,
https://www.cs.toronto.edu/~kriz/cifar-100.html; 169,001,437 bytes, md5
eb9058c3a382ffc7106e4002c42a8d85), downloaded once into `<raw root>/_archives/` and shared by
both. The pickles (`cifar-100-python/{train,test,meta}`) are read straight from the archive.
Every class keeps all its 600 images (500 from `train`, then 100 from `test`), 32x32 RGB,
as in both papers.

- CIFAR-FS (Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with differentiable
  closed-form solvers", ICLR 2019): a random 64/16/20 split of the 100 fine classes; the lists
  below are those of the authors' split files (github.com/bertinetto/r2d2, `splits/`). Classes of
  one superclass may fall in different splits, so a class is its own group.
- FC100 (Oreshkin, Rodriguez & Lacoste, "TADAM", NeurIPS 2018): split by superclass, 12/4/4
  superclasses = 60/20/20 classes, so that test classes are semantically far from the training
  ones. The class table's group is the superclass.

Options (`datasets.<name>.options`):
- `local`: a local `cifar-100-python.tar.gz`, or the folder it extracts to; nothing is downloaded.
- `url`, `md5`, `size`: another location (a mirror) and the checksum/size to verify it with.
  The official URL, md5 and size are the defaults.
- `image_size`: side of the stored images (default 32, the originals; other sizes are resized).

Class ids run over splits (train, val, test) and, within a split, the class order below.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from mtml.data.imageset import (
    ARCHIVE_OPTIONS,
    Archive,
    ClassSpec,
    check_archive_options,
    check_int,
    decode_images,
    image_size,
    official_archive,
    write_classes,
)
from mtml.data.sources import check_options, declare
from mtml.errors import UserError
from mtml.options import defaults

ARCHIVE = Archive(url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                  filename="cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85",
                  size=169_001_437)
ROOT = "cifar-100-python"
IMAGES_PER_CLASS = 600  # 500 train + 100 test in CIFAR-100

# The 20 CIFAR-100 superclasses (coarse labels) and their 5 fine classes each.
SUPERCLASSES: dict[str, list[str]] = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
SUPERCLASS_OF = {c: s for s, cs in SUPERCLASSES.items() for c in cs}

# CIFAR-FS, Bertinetto et al. 2019: splits/bertinetto/{train,val,test}.txt of their repository.
CIFAR_FS_SPLIT: dict[str, list[str]] = {
    "train": [
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can",
        "castle", "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup", "dinosaur",
        "dolphin", "elephant", "forest", "girl", "hamster", "house", "kangaroo", "keyboard",
        "lawn_mower", "lion", "lizard", "lobster", "mountain", "mouse", "mushroom", "oak_tree",
        "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate", "porcupine", "possum",
        "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper", "snake",
        "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train", "trout", "tulip",
        "turtle", "willow_tree", "wolf",
    ],
    "val": [
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp",
        "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ],
    "test": [
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain",
        "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe",
        "whale", "woman", "worm",
    ],
}

# FC100, Oreshkin et al. 2018, section 4: superclasses per split (coarse label ids
# train {1,2,3,4,5,6,9,10,15,17,18,19}, val {8,11,13,16}, test {0,7,12,14}).
FC100_SPLIT: dict[str, list[str]] = {
    "train": [
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
        "reptiles", "trees", "vehicles_1", "vehicles_2",
    ],
    "val": ["large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"],
    "test": ["aquatic_mammals", "insects", "medium_mammals", "people"],
}

OPTIONS = {**ARCHIVE_OPTIONS, "image_size": image_size(32)}
DEFAULTS = defaults(OPTIONS)


def _class_specs(variant: str) -> list[ClassSpec]:
    if variant == "cifar-fs":
        return [ClassSpec(c, c, s) for s, cs in CIFAR_FS_SPLIT.items() for c in cs]
    return [ClassSpec(c, sc, s) for s, scs in FC100_SPLIT.items() for sc in scs for c in SUPERCLASSES[sc]]


# -- reading the archive ------------------------------------------------------------------

def _text(x) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def _unpickle(blob: bytes, where: str) -> dict:
    # The official pickles are Python 2 ones: byte strings as keys and names.
    try:
        obj = pickle.load(io.BytesIO(blob), encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise UserError(f"{where} is not a CIFAR-100 python pickle ({type(err).__name__}: {err}); the archive "
                        f"is corrupt or another file: delete it and rerun") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where} is not a CIFAR-100 python pickle (a {type(obj).__name__}, not a dict)")
    return {_text(k): v for k, v in obj.items()}


def _read_members(path: Path) -> dict[str, dict]:
    """{'train', 'test', 'meta'} -> unpickled dict, from the .tar.gz or its extracted folder."""
    names = ("train", "test", "meta")
    if path.is_dir():
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)}: not an extracted {ROOT} folder")
        return {n: _unpickle((path / n).read_bytes(), str(path / n)) for n in names}
    out = {}
    try:
        # One streaming pass: a gzip archive cannot seek without decompressing again.
        with tarfile.open(path, "r|*") as tf:
            for member in tf:
                n = member.name.removeprefix(f"{ROOT}/")
                if n in names and member.name == f"{ROOT}/{n}" and member.isfile():
                    out[n] = _unpickle(tf.extractfile(member).read(), f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise UserError(f"archive {path} is corrupt ({type(err).__name__}: {err}); delete it and rerun to "
                        f"download it again") from None
    missing = [f"{ROOT}/{n}" for n in names if n not in out]
    if missing:
        raise UserError(f"archive {path} has no member {', '.join(missing)}: it is not {ARCHIVE.filename}")
    return out


def _images_and_labels(parts: dict[str, dict], where: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All 60000 images [N, 3, 32, 32] (train then test), fine labels, fine names."""
    meta = parts["meta"]
    try:
        fine_names = [_text(n) for n in meta["fine_label_names"]]
        coarse_names = [_text(n) for n in meta["coarse_label_names"]]
        data = np.concatenate([np.asarray(parts[s]["data"], dtype=np.uint8) for s in ("train", "test")])
        fine = np.concatenate([np.asarray(parts[s]["fine_labels"], dtype=np.int64) for s in ("train", "test")])
        coarse = np.concatenate([np.asarray(parts[s]["coarse_labels"], dtype=np.int64) for s in ("train", "test")])
    except (KeyError, ValueError) as err:
        raise UserError(f"{where} does not have the CIFAR-100 python layout ({type(err).__name__}: {err})") from None
    if set(fine_names) != set(SUPERCLASS_OF) or len(fine_names) != 100:
        unknown = sorted(set(fine_names) - set(SUPERCLASS_OF))[:5]
        raise UserError(f"{where}: the fine class names are not CIFAR-100's 100 classes (unexpected: {unknown})")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or not (len(data) == len(fine) == len(coarse)):
        raise UserError(f"{where}: image data has shape {data.shape}, expected [N, 3072] with one label each")
    if fine.min() < 0 or fine.max() >= 100 or coarse.min() < 0 or coarse.max() >= len(coarse_names):
        raise UserError(f"{where}: labels out of range")
    # Every image's coarse label must be its fine class's superclass: a check of the archive.
    expected = np.array([coarse_names.index(SUPERCLASS_OF[n]) if SUPERCLASS_OF[n] in coarse_names else -1
                         for n in fine_names])
    if (expected[fine] != coarse).any():
        raise UserError(f"{where}: coarse labels disagree with the CIFAR-100 superclasses")
    # Stored row-major as R plane, G plane, B plane: [N, 3, 32, 32] directly.
    return data.reshape(-1, 3, 32, 32), fine, fine_names


# -- the sources --------------------------------------------------------------------------

def _prepare(variant: str, name: str, options: dict, raw_dir: Path, out_dir: Path) -> None:
    opts = check_options(name, options, OPTIONS)
    opts = check_archive_options(name, opts, ARCHIVE)
    size = check_int(name, "image_size", opts["image_size"], 8, 512)
    path, origin = official_archive(name, opts, Path(raw_dir), ARCHIVE, extract_to_folder=False,
                                    marker=f"{ROOT}/meta")
    images, fine, fine_names = _images_and_labels(_read_members(path), path)

    specs = _class_specs(variant)
    index_of = {n: i for i, n in enumerate(fine_names)}
    order = np.argsort(fine, kind="stable")  # archive order within a class: train, then test
    bounds = np.searchsorted(fine[order], np.arange(101))
    rows = [order[bounds[index_of[c.name]]:bounds[index_of[c.name] + 1]] for c in specs]
    counts = [len(r) for r in rows]
    empty = [c.name for c, n in zip(specs, counts) if n == 0]
    if empty:
        raise UserError(f"{path} has no images of {', '.join(empty[:5])}")
    picked = images[np.concatenate(rows)]
    if size != 32:
        items = [(f"{path}[{i}]", im.transpose(1, 2, 0)) for i, im in zip(np.concatenate(rows), picked)]
        picked = decode_images(items, size, f"resize {name}")
    meta = {
        "source": variant, "dataset": name, "archive": ARCHIVE.filename, **origin,
        "options": json.loads(json.dumps(opts, default=str)),
        "split_reference": ("Bertinetto et al., ICLR 2019 (R2D2), CIFAR-FS 64/16/20 classes"
                            if variant == "cifar-fs" else
                            "Oreshkin et al., NeurIPS 2018 (TADAM), FC100 12/4/4 superclasses"),
        "published_images_per_class": IMAGES_PER_CLASS,
        "complete": all(n == IMAGES_PER_CLASS for n in counts),
        "superclass_of": {c.name: SUPERCLASS_OF[c.name] for c in specs},
    }
    write_classes(out_dir, np.ascontiguousarray(picked), specs, counts, meta)


@declare(OPTIONS)
def prepare_cifar_fs(name: str, options: dict, raw_dir: Path, out_dir: Path, seed: int) -> None:
    _prepare("cifar-fs", name, options, raw_dir, out_dir)


@declare(OPTIONS)
def prepare_fc100(name: str, options: dict, raw_dir: Path, out_dir: Path, seed: int) -> None:
    _prepare("fc100", name, options, raw_dir, out_dir)

