"""`miniplaces`: scene classes of Places (Zhou et al.) from a local folder, for the cross-domain
test of Lekkala & Itti's miniImageNet -> mini-places protocol (configs/multitask_miniplaces.yaml).

Nothing is downloaded: Places' images come under the MIT CSAIL terms, so `prepare` reads the
folder named in `datasets.<name>.options.local`. Every folder under it that directly holds
image files (.jpg, .jpeg, .png) is one scene class, named by its path relative to `local`.
That one rule reads:

- the MIT Mini Places challenge data (100 Places categories, 128x128; github.com/CSAILVision/
  miniplaces): `local` = its `images/train` folder, laid out `a/abbey/00000001.jpg`, ...
  (classes `a/abbey`, ...; 1000 images each);
- the Places365-Standard small images (`train_256/` or the "easy format"
  `places365_standard/train/`), or a subset of its classes;
- any folder with one sub-folder of images per scene class.

Images of a class are taken in file-name order, the first `images_per_class` of them (null:
all); a class with fewer is an error naming it. All classes go to split `split` (default
`test`: a cross-domain dataset is only evaluated on), group = class, so `class_scope: split`
draws N-way subtasks from all of them. Images are squashed to `image_size` x `image_size`
(default 84, like miniImageNet).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mtml.data.imageset import (
    IMAGE_SUFFIXES,
    ClassSpec,
    Collected,
    check_choice,
    check_int,
    check_path,
    image_size,
    key,
)
from mtml.data.sources import check_options, declare
from mtml.data.storage import SPLITS
from mtml.errors import UserError
from mtml.options import Option, defaults

MINIPLACES_URL = "https://github.com/CSAILVision/miniplaces"
OPTIONS = {
    "local": Option(str, None, "a folder with one sub-folder of images per scene class"),
    "image_size": image_size(84),
    "images_per_class": Option(int, 600, "images taken per class (null: all)", min=1, max=100_000,
                               nullable=True),
    "split": Option(str, "test", "the split every class goes to (a cross-domain test set: test)",
                    choices=SPLITS),
}
DEFAULTS = defaults(OPTIONS)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def class_folders(root: Path) -> dict[str, list[Path]]:
    """Relative class name -> its image files in name order, for every folder under `root`
    (itself included) that directly holds images; sorted by class name."""
    found: dict[str, list[Path]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images = sorted(f for f in files if _is_image(f))
        if images:
            rel = Path(folder).relative_to(root).as_posix()
            found["." if rel == "" else rel] = [Path(folder) / f for f in images]
    return dict(sorted(found.items()))


def resolve_options(name: str, options: dict) -> tuple[dict, Path]:
    opts = check_options(name, options, OPTIONS)
    if opts["local"] is None:
        raise UserError(
            f"dataset {name!r} (source miniplaces) needs a local copy: Places has no download here. "
            f"Set params key '{key(name, 'local')}' to a folder with one sub-folder of images per scene "
            f"class, e.g. the images/train folder of the MIT Mini Places data ({MINIPLACES_URL}) or "
            f"Places365-Standard's train folder")
    root = check_path(name, "local", opts["local"])
    if not root.is_dir():
        raise UserError(f"params key '{key(name, 'local')}' is {opts['local']!r}, a file; it must be a folder "
                        f"with one sub-folder of images per scene class")
    opts["image_size"] = check_int(name, "image_size", opts["image_size"], 8, 512)
    if opts["images_per_class"] is not None:
        opts["images_per_class"] = check_int(name, "images_per_class", opts["images_per_class"], 1, 100_000)
    opts["split"] = check_choice(name, "split", opts["split"], SPLITS)
    return opts, root


@declare(OPTIONS)
def prepare(name: str, options: dict, raw_dir: Path, out_dir: Path, seed: int) -> None:
    """Read the class folders under `options.local` into the prepared form (nothing is fetched)."""
    opts, root = resolve_options(name, options)
    classes = class_folders(root)
    if "." in classes:
        raise UserError(f"{root} (params key '{key(name, 'local')}') holds images itself; it must hold "
                        f"one sub-folder of images per scene class")
    if len(classes) < 2:
        raise UserError(f"{root} (params key '{key(name, 'local')}') has {len(classes)} class folders with "
                        f"images; it must hold one sub-folder of images per scene class")
    per_class = opts["images_per_class"]
    col = Collected()
    for cls, files in classes.items():
        if per_class is not None:
            if len(files) < per_class:
                raise UserError(f"class folder {root / cls} has {len(files)} images, fewer than "
                                f"'{key(name, 'images_per_class')}' = {per_class} (null takes all)")
            files = files[:per_class]
        col.add(ClassSpec(cls, cls, opts["split"]), [(str(p), p) for p in files])
    meta = {"source": "miniplaces", "dataset": name, "from": str(root),
            "selection": ("all images of each class folder" if per_class is None
                          else f"first {per_class} images of each class folder in file-name order"),
            "options": json.loads(json.dumps(opts, default=str))}
    col.decode_and_write(out_dir, opts["image_size"], f"decode {name}", meta, scratch_dir=raw_dir)
