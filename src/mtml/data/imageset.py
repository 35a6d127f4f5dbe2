"""What the natural-image few-shot sources share (CIFAR, miniImageNet, tieredImageNet, CUB, Aircraft).

- `official_archive`: where a source's archive comes from. Options `url`, `md5`, `size` and
  `local` of every archive-based source are read here, downloads go through
  `mtml.data.download.fetch` (size + md5 check, resume, retries, HTML refusal) into one folder
  shared by all datasets (`<raw root>/_archives/`), so CIFAR-FS and FC100 download CIFAR-100
  once. A file lock keeps two prepare jobs from writing the same download.
- `decode_images`: decode, crop and resize image files (or bytes, or arrays) once, in
  parallel threads (PIL releases the GIL while it decodes and resamples), into one uint8
  [N, 3, S, S] array, optionally a memory-mapped file for the big sets.
- `write_classes`: the class table, labels and `write_prepared` from an ordered class list.

Resizing squashes the (cropped) image to S x S without keeping the aspect ratio, like the
published miniImageNet/tieredImageNet/CUB pipelines, with area averaging when shrinking
(PIL BOX, as cv2.INTER_AREA in the common miniImageNet generator) and bicubic when growing.
JPEGs are decoded at the smallest DCT scale that still covers S x S (PIL `draft`), which
makes ImageNet-size photos several times cheaper to decode.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mtml.data.download import extract, fetch
from mtml.data.storage import SPLITS, write_prepared
from mtml.errors import UserError
from mtml.options import Option
from mtml.utils import file_md5, progress

MAX_WORKERS = 32
CHUNK = 128
# A box-returning function (original width, height) -> (left, top, right, bottom) crops an image.
BoxFn = Callable[[int, int], tuple[float, float, float, float]]
# Where an image comes from: a file, encoded bytes, or an HWC/HW uint8 array.
Source = Path | bytes | np.ndarray


def key(name: str, option: str) -> str:
    return f"datasets.{name}.options.{option}"


def workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, n))


# -- option checks ------------------------------------------------------------------------

def check_int(name: str, option: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UserError(f"params key '{key(name, option)}' must be an integer in {lo}..{hi}; got {value!r}")
    return value


def check_choice(name: str, option: str, value, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise UserError(f"params key '{key(name, option)}' is {value!r}; allowed: {', '.join(allowed)}")
    return value


def check_path(name: str, option: str, value) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UserError(f"params key '{key(name, option)}' must be a path; got {value!r}")
    path = Path(os.path.expanduser(value))
    if not path.exists():
        raise UserError(f"params key '{key(name, option)}' is {value!r}, which does not exist")
    return path


# -- archives -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Archive:
    """An official archive: its URL, file name, md5 and size in bytes."""

    url: str
    filename: str
    md5: str
    size: int

    @property
    def stem(self) -> str:
        for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
            if self.filename.endswith(suffix):
                return self.filename[: -len(suffix)]
        return self.filename


MD5_PATTERN = "[0-9a-fA-F]{32}"
# The options of a source that downloads one official archive (declared; see mtml.options).
ARCHIVE_OPTIONS = {
    "url": Option(str, None, "a mirror of the official archive; null: the official URL",
                  pattern="[A-Za-z][A-Za-z0-9+.-]*://.+", what="a URL (http(s)://...)"),
    "md5": Option(str, None, "the archive's md5 (with url: the mirror's file); null: the official one",
                  pattern=MD5_PATTERN, what="a 32-digit hex md5"),
    "size": Option(int, None, "the archive's size in bytes; null: the official size (unknown for a mirror)",
                   min=1, max=2**50),
    "local": Option(str, None, "a local copy (the archive or its extracted folder); nothing is downloaded"),
}


def image_size(default: int) -> Option:
    return Option(int, default, "images are resized to image_size x image_size", min=8, max=512)


def check_archive_options(name: str, opts: dict, archive: Archive) -> dict:
    """Validate `url`, `md5`, `size`, `local`; fill the official values.

    A changed `url` or `md5` (a mirror, a test fixture) drops the pinned size unless `size`
    is given too: the pinned size belongs to the official file.
    """
    url, md5, size = opts["url"], opts["md5"], opts["size"]
    if url is not None and (not isinstance(url, str) or "://" not in url):
        raise UserError(f"params key '{key(name, 'url')}' must be a URL (http(s)://...); got {url!r}")
    if md5 is not None and (not isinstance(md5, str) or len(md5) != 32
                            or any(c not in "0123456789abcdefABCDEF" for c in md5)):
        raise UserError(f"params key '{key(name, 'md5')}' must be a 32-digit hex md5; got {md5!r}")
    if size is not None:
        check_int(name, "size", size, 1, 2**50)
    custom = url is not None or md5 is not None
    return {**opts, "url": url or archive.url, "md5": (md5 or archive.md5).lower(),
            "size": size if size is not None else (None if custom else archive.size),
            "local": check_path(name, "local", opts["local"])}


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (a no-op where fcntl is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def archives_dir(raw_dir: Path) -> Path:
    """The download folder shared by every dataset: `<raw root>/_archives`."""
    return Path(raw_dir).parent / "_archives"


def official_archive(name: str, opts: dict, raw_dir: Path, archive: Archive, *,
                     extract_to_folder: bool, marker: str) -> tuple[Path, dict]:
    """The archive (or, with `extract_to_folder`, its extracted root folder) and provenance.

    `marker` is a path inside the archive's root folder (e.g. `CUB_200_2011/images.txt`)
    that proves a folder holds this dataset. `options.local` may be the archive file, the
    folder it extracts to, or that folder's parent.
    """
    local = opts["local"]
    root_name = marker.split("/")[0]
    if local is not None:
        if local.is_dir():
            for cand in (local, local / root_name):
                if (cand / marker.split("/", 1)[1]).exists():
                    return cand, {"from": str(cand)}
            raise UserError(f"params key '{key(name, 'local')}' is the folder {local}, which does not hold "
                            f"{marker} (the layout of {archive.filename}); point it at the archive file "
                            f"or the folder it extracts to")
        path, origin = local, {"from": str(local), "md5": file_md5(local)}
        if origin["md5"] != opts["md5"]:
            raise UserError(f"params key '{key(name, 'local')}' is {local}, whose md5 {origin['md5']} is not "
                            f"the expected {opts['md5']} of {archive.filename}; use the official archive, "
                            f"or set '{key(name, 'md5')}' to accept this file")
    else:
        store = archives_dir(raw_dir)
        with _locked(store / f".{archive.filename}.lock"):
            path = fetch(opts["url"], store / archive.filename, opts["md5"], opts["size"],
                         local_key=key(name, "local"))
        origin = {"from": opts["url"], "md5": opts["md5"]}
    if not extract_to_folder:
        return path, origin
    # Extract next to the downloads, once per archive content (the md5 names the folder).
    folder = archives_dir(raw_dir) / f"{archive.stem}-{origin['md5'][:8]}"
    with _locked(archives_dir(raw_dir) / f".{folder.name}.lock"):
        if not (folder / marker).exists():
            extract(path, folder, key(name, "local") if local is not None else None)
    if not (folder / marker).exists():
        raise UserError(f"{path} does not hold {marker}: it is not {archive.filename} (or it is corrupt); "
                        + (f"point '{key(name, 'local')}' at a good copy" if local is not None else
                           f"delete it and rerun, or point '{key(name, 'local')}' at a good copy"))
    return folder / root_name, origin


# -- decoding -----------------------------------------------------------------------------

def clipped(box: tuple[float, float, float, float]) -> BoxFn:
    """A crop function for a fixed `box` (an annotation), clipped to the image."""
    return lambda w, h: (max(0.0, box[0]), max(0.0, box[1]), min(w, box[2]), min(h, box[3]))


def _decode_one(src: Source, size: int, box_fn: BoxFn | None):
    from PIL import Image

    if isinstance(src, np.ndarray):
        im = Image.fromarray(src)
    else:
        im = Image.open(io.BytesIO(src) if isinstance(src, bytes | bytearray | memoryview) else src)
    with im:
        w, h = im.size
        box = box_fn(w, h) if box_fn is not None else (0, 0, w, h)
        bw, bh = box[2] - box[0], box[3] - box[1]
        if bw < 1 or bh < 1:
            raise ValueError(f"empty crop box {box} for a {w}x{h} image")
        if im.format == "JPEG":
            # Decode at the smallest 1/2^k scale whose crop still covers size x size.
            im.draft(im.mode, (math.ceil(w * size / bw), math.ceil(h * size / bh)))
            sx, sy = im.size[0] / w, im.size[1] / h
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            bw, bh = bw * sx, bh * sy
        rgb = im.convert("RGB")
        if (box == (0, 0, *rgb.size)) and rgb.size == (size, size):
            out = rgb
        else:
            shrink = bw >= size and bh >= size
            out = rgb.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC,
                             box=box)
        return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


def _decode_chunk(out: np.ndarray, start: int, items: Sequence[tuple[str, Source]], size: int,
                  boxes: Sequence[BoxFn | None] | None) -> int:
    from PIL import Image, UnidentifiedImageError

    for j, (where, src) in enumerate(items):
        try:
            out[start + j] = _decode_one(src, size, boxes[j] if boxes is not None else None)
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise UserError(f"{where} is not a readable image ({type(err).__name__}: {err}); the data is "
                            f"corrupt or incomplete: replace the file, or delete the download and rerun") from None
    return len(items)


def decode_images(items: Sequence[tuple[str, Source]], size: int, label: str, *,
                  boxes: Sequence[BoxFn | None] | None = None, scratch: Path | None = None) -> np.ndarray:
    """Decode `items` [(where, file|bytes|array)] into uint8 [N, 3, size, size], in parallel.

    `boxes` (one per item, or None) crop before resizing. With `scratch`, the array is a
    memory-mapped .npy file there (tieredImageNet does not fit in memory twice).
    """
    n = len(items)
    shape = (n, 3, size, size)
    if scratch is not None:
        scratch.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint8, shape=shape)
    else:
        out = np.empty(shape, dtype=np.uint8)
    starts = range(0, n, CHUNK)
    bar, _ = progress(label, n)
    with bar, ThreadPoolExecutor(workers()) as pool:
        task = bar.add_task(label, total=n)
        jobs = [pool.submit(_decode_chunk, out, s, items[s:s + CHUNK], size,
                            boxes[s:s + CHUNK] if boxes is not None else None) for s in starts]
        try:
            for job in jobs:
                bar.update(task, advance=job.result())
        except BaseException:
            for job in jobs:
                job.cancel()
            raise
    return out


# -- the prepared form --------------------------------------------------------------------

@dataclass(frozen=True)
class ClassSpec:
    name: str
    group: str
    split: str


def write_classes(out_dir: Path, images: np.ndarray, classes: Sequence[ClassSpec], counts: Sequence[int],
                  meta: dict) -> None:
    """Class ids follow `classes`' order; `images` hold each class's images in one block, in that order."""
    counts = np.asarray(counts, dtype=np.int64)
    if int(counts.sum()) != len(images):
        raise AssertionError(f"{counts.sum()} images counted, {len(images)} decoded")
    table = pd.DataFrame({"class_id": np.arange(len(classes)), "name": [c.name for c in classes],
                          "group": [c.group for c in classes], "split": [c.split for c in classes],
                          "n_images": counts})
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    meta = {**meta,
            "classes_per_split": {s: int((table["split"] == s).sum()) for s in SPLITS},
            "images_per_split": {s: int(table.loc[table["split"] == s, "n_images"].sum()) for s in SPLITS}}
    write_prepared(out_dir, images, labels, table, meta)


# Above this many bytes of decoded images, `Collected.decode_and_write` decodes into a
# memory-mapped scratch file (tieredImageNet does not fit in memory twice).
IN_MEMORY_LIMIT = 4 << 30
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # the image files the folder layouts read


class Collected:
    """Classes in class-id order, each with its image sources (and optional crop boxes)."""

    def __init__(self):
        self.specs: list[ClassSpec] = []
        self.items: list[tuple[str, Source]] = []
        self.boxes: list[BoxFn | None] = []
        self.counts: list[int] = []

    def add(self, spec: ClassSpec, items: list[tuple[str, Source]], boxes: list[BoxFn] | None = None) -> None:
        if not items:
            raise UserError(f"class {spec.name} ({spec.split}) has no images")
        self.specs.append(spec)
        self.items.extend(items)
        self.boxes.extend(boxes if boxes is not None else [None] * len(items))
        self.counts.append(len(items))

    def decode_and_write(self, out_dir: Path, size: int, label: str, meta: dict,
                         scratch_dir: Path | None = None) -> None:
        """Decode every image once (in parallel), then write the prepared form. With
        `scratch_dir`, images over IN_MEMORY_LIMIT bytes decode into a memory-mapped file there."""
        big = len(self.items) * 3 * size * size > IN_MEMORY_LIMIT
        scratch = Path(scratch_dir) / "decoded.npy" if scratch_dir is not None and big else None
        boxes = self.boxes if any(b is not None for b in self.boxes) else None
        images = decode_images(self.items, size, label, boxes=boxes, scratch=scratch)
        try:
            write_classes(out_dir, images, self.specs, self.counts, meta)
        finally:
            del images
            if scratch is not None:
                scratch.unlink(missing_ok=True)


def split_order(specs: Sequence[ClassSpec]) -> list[int]:
    """Indices of `specs` ordered train, val, test (stable within a split)."""
    rank = {s: i for i, s in enumerate(SPLITS)}
    return sorted(range(len(specs)), key=lambda i: rank[specs[i].split])
