"""FGVC-Aircraft (Maji et al. 2013), variant level, with a documented deterministic class split.

Source `aircraft`. The official archive fgvc-aircraft-2013b.tar.gz
(https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/; 2,753,340,328 bytes, md5
d4acdd33327262359767eeaa97a4f732) is downloaded once into `<raw root>/_archives/` and
extracted next to it. Layout used: `fgvc-aircraft-2013b/data/images_variant_{train,val,test}.txt`
(`<image id> <variant name>`, names may hold spaces), `data/images/<image id>.jpg` and, for
`crop: bbox`, `data/images_box.txt` (`<image id> <xmin> <ymin> <xmax> <ymax>`, 1-based pixels).
The official train/val/test image lists are pooled: few-shot splits are by class, so each
of the 100 variants keeps all its 100 images.

Split (this project's; there is no single published few-shot split of Aircraft): the 100
variant names are sorted, permuted with `numpy.random.default_rng(split_seed)` (default seed 0,
fixed, independent of the params seed) and cut into `split_sizes` classes (default
[50, 25, 25]). Meta-Dataset (Triantafillou et al., ICLR 2020) uses 70/15/15 with its own
permutation: `split_sizes: [70, 15, 15]` gives those sizes, not Meta-Dataset's class lists.

Crop (`crop`): `banner` (default) drops the bottom 20 pixel rows, which hold a copyright
banner in every image (dataset README); `bbox` crops to the aircraft's box; `none` keeps all.
Images are then squashed to `image_size` (default 84).

Options: `local`, `url`, `md5`, `size`, `image_size`, `crop`, `split_sizes`, `split_seed`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtml.data.imageset import (
    ARCHIVE_OPTIONS,
    Archive,
    ClassSpec,
    Collected,
    check_archive_options,
    check_choice,
    check_int,
    clipped,
    image_size,
    key,
    official_archive,
)
from mtml.data.sources import check_options, declare
from mtml.data.storage import SPLITS
from mtml.errors import UserError
from mtml.options import Option, defaults

ARCHIVE = Archive(url="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                  filename="fgvc-aircraft-2013b.tar.gz", md5="d4acdd33327262359767eeaa97a4f732",
                  size=2_753_340_328)
ROOT = "fgvc-aircraft-2013b"
BANNER_ROWS = 20
N_VARIANTS, IMAGES_PER_VARIANT = 100, 100
OPTIONS = {
    **ARCHIVE_OPTIONS,
    "image_size": image_size(84),
    "crop": Option(str, "banner", "banner: cut the copyright banner | bbox: the aircraft's box | none",
                   choices=("banner", "bbox", "none")),
    "split_sizes": Option(list, [50, 25, 25], "variants per split [train, val, test] (sum: 100)",
                          items=int, min=1, length=3),
    "split_seed": Option(int, 0, "seed of the permutation that assigns variants to splits",
                         min=0, max=2**32 - 1),
}
DEFAULTS = defaults(OPTIONS)


def variant_split(variants: list[str], sizes: list[int], seed: int) -> dict[str, str]:
    """variant -> split: sorted names, a seeded permutation, then consecutive blocks of `sizes`."""
    names = sorted(variants)
    perm = np.random.default_rng(seed).permutation(len(names))
    out, start = {}, 0
    for split, n in zip(SPLITS, sizes):
        for i in perm[start:start + n]:
            out[names[i]] = split
        start += n
    return out


def _image_lists(data: Path) -> dict[str, str]:
    """image id -> variant, pooled over the official train/val/test lists."""
    variant_of: dict[str, str] = {}
    for s in ("train", "val", "test"):
        path = data / f"images_variant_{s}.txt"
        if not path.is_file():
            raise UserError(f"{path} is missing: the folder is not an extracted {ARCHIVE.filename}")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().split(" ", 1)
            if len(parts) != 2:
                raise UserError(f"{path}:{n} is not '<image id> <variant>': {line!r}")
            if variant_of.setdefault(parts[0], parts[1]) != parts[1]:
                raise UserError(f"{path}:{n}: image {parts[0]} is listed under two variants")
    return variant_of


def _banner(w: int, h: int) -> tuple[int, int, int, int]:
    return (0, 0, w, max(1, h - BANNER_ROWS))


def _crops(data: Path, crop: str, ids: list[str]) -> dict | None:
    """image id -> crop function, or None for whole images."""
    if crop == "none":
        return None
    if crop == "banner":
        return dict.fromkeys(ids, _banner)
    box = {}
    path = data / "images_box.txt"
    if not path.is_file():
        raise UserError(f"{path} is missing (needed for crop: bbox)")
    for line in path.read_text().splitlines():
        if line.strip():
            i, x0, y0, x1, y1 = line.split()
            # 1-based inclusive pixel coordinates -> PIL's 0-based half-open box.
            box[i] = (float(x0) - 1, float(y0) - 1, float(x1), float(y1))
    missing = [i for i in ids if i not in box]
    if missing:
        raise UserError(f"{path} has no box for image {missing[0]}")
    return {i: clipped(box[i]) for i in ids}


def _check(name: str, opts: dict) -> dict:
    opts = check_archive_options(name, check_options(name, opts, OPTIONS), ARCHIVE)
    check_int(name, "image_size", opts["image_size"], 8, 512)
    check_choice(name, "crop", opts["crop"], ("banner", "bbox", "none"))
    check_int(name, "split_seed", opts["split_seed"], 0, 2**32 - 1)
    sizes = opts["split_sizes"]
    if (not isinstance(sizes, list) or len(sizes) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes)):
        raise UserError(f"params key '{key(name, 'split_sizes')}' must be three positive class counts "
                        f"[train, val, test], e.g. [50, 25, 25]; got {sizes!r}")
    return opts


@declare(OPTIONS)
def prepare(name: str, options: dict, raw_dir: Path, out_dir: Path, seed: int) -> None:
    opts = _check(name, options)
    root, origin = official_archive(name, opts, Path(raw_dir), ARCHIVE, extract_to_folder=True,
                                    marker=f"{ROOT}/data/images_variant_train.txt")
    data = root / "data"
    variant_of = _image_lists(data)
    variants = sorted(set(variant_of.values()))
    if sum(opts["split_sizes"]) != len(variants):
        raise UserError(f"params key '{key(name, 'split_sizes')}' sums to {sum(opts['split_sizes'])}, but "
                        f"{data} has {len(variants)} variants")
    split_of = variant_split(variants, opts["split_sizes"], opts["split_seed"])
    rank = {s: i for i, s in enumerate(SPLITS)}
    ordered = sorted(variants, key=lambda v: (rank[split_of[v]], v))
    by_variant: dict[str, list[str]] = {v: [] for v in variants}
    for img in sorted(variant_of):
        by_variant[variant_of[img]].append(img)
    crop = _crops(data, opts["crop"], sorted(variant_of))
    col = Collected()
    for v in ordered:
        ids = by_variant[v]
        col.add(ClassSpec(v, v, split_of[v]),
                [(f"{ROOT}/data/images/{i}.jpg", data / "images" / f"{i}.jpg") for i in ids],
                [crop[i] for i in ids] if crop is not None else None)
    meta = {"source": "aircraft", "dataset": name, "archive": ARCHIVE.filename, **origin,
            "options": json.loads(json.dumps(opts, default=str)),
            "split_reference": (f"sorted variants permuted by numpy default_rng({opts['split_seed']}), "
                                f"{'/'.join(map(str, opts['split_sizes']))} classes (this project's split)"),
            "split_classes": {s: [v for v in ordered if split_of[v] == s] for s in SPLITS},
            "complete": len(variants) == N_VARIANTS and len(col.items) == N_VARIANTS * IMAGES_PER_VARIANT}
    col.decode_and_write(out_dir, opts["image_size"], f"decode {name}", meta)
