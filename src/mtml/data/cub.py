"""CUB-200-2011 (Wah et al. 2011), with the few-shot class split of Chen et al. (ICLR 2019).

Source `cub`. The official archive CUB_200_2011.tgz (CaltechDATA,
https://data.caltech.edu/records/65de6-vp158; 1,150,585,339 bytes, md5
97eceeb196236b17998738112f37df78) is downloaded once into `<raw root>/_archives/` and
extracted next to it. Its index files give the images and classes:
`CUB_200_2011/classes.txt` (`<class id> <NNN.Name>`), `images.txt` (`<image id> <path under
images/>`), `image_class_labels.txt` (`<image id> <class id>`) and, for `crop: bbox`,
`bounding_boxes.txt` (`<image id> <x> <y> <width> <height>`).

Split (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019;
their filelists/CUB/write_CUB_filelist.py): with i the 0-based index of a class in sorted
folder order (i = class id - 1), train = classes with i % 2 == 0 (100), val = i % 4 == 1 (50),
test = i % 4 == 3 (50). All 11,788 images are used, squashed to `image_size` (default 84, to
pair with miniImageNet in the cross-domain setting of that paper).

Options: `local` (the archive, or the folder it extracts to), `url`/`md5`/`size` (a mirror),
`image_size`, `crop` (`none`, default, as Chen et al.; `bbox` crops to the bird's box).
"""

from __future__ import annotations

import json
from pathlib import Path

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
    official_archive,
    split_order,
)
from mtml.data.sources import check_options, declare
from mtml.errors import UserError
from mtml.options import Option, defaults

ARCHIVE = Archive(url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
                  filename="CUB_200_2011.tgz", md5="97eceeb196236b17998738112f37df78", size=1_150_585_339)
ROOT = "CUB_200_2011"
N_CLASSES, N_IMAGES = 200, 11_788
OPTIONS = {**ARCHIVE_OPTIONS, "image_size": image_size(84),
           "crop": Option(str, "none", "none | bbox: crop each image to its bounding box first",
                          choices=("none", "bbox"))}
DEFAULTS = defaults(OPTIONS)


def chen_split(class_index: int) -> str:
    """Chen et al.'s split of the class at 0-based sorted position `class_index`."""
    if class_index % 2 == 0:
        return "train"
    return "val" if class_index % 4 == 1 else "test"


def _table(path: Path, columns: int) -> list[list[str]]:
    """Whitespace-separated rows; the last column keeps any spaces in it."""
    if not path.is_file():
        raise UserError(f"{path} is missing: the folder is not an extracted {ARCHIVE.filename}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            row = line.split(maxsplit=columns - 1)
            if len(row) != columns:
                raise UserError(f"{path}:{n} has {len(row)} fields, expected {columns}: {line!r}")
            rows.append(row)
    return rows


@declare(OPTIONS)
def prepare(name: str, options: dict, raw_dir: Path, out_dir: Path, seed: int) -> None:
    opts = check_archive_options(name, check_options(name, options, OPTIONS), ARCHIVE)
    size = check_int(name, "image_size", opts["image_size"], 8, 512)
    crop = check_choice(name, "crop", opts["crop"], ("none", "bbox"))
    root, origin = official_archive(name, opts, Path(raw_dir), ARCHIVE, extract_to_folder=True,
                                    marker=f"{ROOT}/images.txt")

    class_rows = sorted(((int(i), n) for i, n in _table(root / "classes.txt", 2)))
    if [i for i, _ in class_rows] != list(range(1, len(class_rows) + 1)):
        raise UserError(f"{root / 'classes.txt'}: class ids are not 1..{len(class_rows)}")
    paths = {int(i): p for i, p in _table(root / "images.txt", 2)}
    label = {int(i): int(c) for i, c in _table(root / "image_class_labels.txt", 2)}
    if set(paths) != set(label):
        raise UserError(f"{root}: images.txt and image_class_labels.txt list different image ids")
    boxes = {}
    if crop == "bbox":
        for i, x, y, w, h in _table(root / "bounding_boxes.txt", 5):
            x0, y0 = float(x), float(y)
            boxes[int(i)] = (x0, y0, x0 + float(w), y0 + float(h))

    specs = [ClassSpec(n, n, chen_split(i - 1)) for i, n in class_rows]
    by_class: dict[int, list[int]] = {i: [] for i, _ in class_rows}
    for img in sorted(paths):
        if label[img] not in by_class:
            raise UserError(f"{root / 'image_class_labels.txt'}: image {img} has unknown class {label[img]}")
        by_class[label[img]].append(img)

    col = Collected()
    for k in split_order(specs):
        imgs = by_class[class_rows[k][0]]
        items = [(f"{ROOT}/images/{paths[i]}", root / "images" / paths[i]) for i in imgs]
        crops = [clipped(boxes[i]) for i in imgs] if crop == "bbox" else None
        col.add(specs[k], items, crops)
    meta = {"source": "cub", "dataset": name, "archive": ARCHIVE.filename, **origin,
            "options": json.loads(json.dumps(opts, default=str)),
            "split_reference": "Chen et al., ICLR 2019: train i%2==0, val i%4==1, test i%4==3 "
                               "(i = 0-based class index)",
            "complete": len(specs) == N_CLASSES and len(col.items) == N_IMAGES}
    col.decode_and_write(out_dir, size, f"decode {name}", meta)
