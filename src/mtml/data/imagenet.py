"""miniImageNet and tieredImageNet, from a local copy of ImageNet or of a pre-split distribution.

Sources `miniimagenet` and `tieredimagenet`. Neither set has an official download (ImageNet's
licence requires a registered account), so `prepare` reads a local path given in
`datasets.<name>.options.local` and never fetches anything. Images are squashed to
`image_size` x `image_size` (default 84) RGB as in both papers.

miniImageNet (Vinyals et al. 2016; the split of Ravi & Larochelle, ICLR 2017,
github.com/twitter/meta-learning-lstm, data/miniImagenet/{train,val,test}.csv): 64/16/20
ImageNet classes (MINI_SPLIT below) x 600 images. `options.local` is one of (`layout: auto`
tells them apart, except `pickle`, which must be named):

- `ilsvrc`: the ILSVRC-2012 training folder (ILSVRC2012_img_train.tar extracted, one folder of
  JPEGs per wnid: `<local>/n01532829/n01532829_10007.JPEG`). Without split files the first 600
  images of each class in numeric file order are taken: the same classes and counts as the
  published set, but NOT its exact images. With `split_csv` set to the folder holding Ravi's
  train.csv/val.csv/test.csv, the exact published images are taken: a file name
  `n0153282900000005.jpg` there means the 5th image of n01532829 in numeric order of the
  ILSVRC file ids (the convention of the widely used generator,
  github.com/yaoyao-liu/mini-imagenet-tools).
- `ravi`: the original distribution: `<local>/images/*.jpg` (60000 images, already 84x84)
  and `<local>/{train,val,test}.csv` (`filename,label`).
- `folders`: `<local>/{train,val,test}/<wnid>/*.jpg` (e.g. the output of that generator).
- `pickle`: `<local>/mini-imagenet-cache-{train,val,test}.pkl`, each a dict with `image_data`
  (uint8 [N, 84, 84, 3]) and `class_dict` ({wnid: [row indices]}). Pickles run code when
  loaded: read only with `layout: pickle` (never by `auto`), with a warning naming the files.

The classes found must be exactly the published ones per split (checked).

tieredImageNet (Ren et al., "Meta-Learning for Semi-Supervised Few-Shot Classification", ICLR
2018): 608 ImageNet classes under 34 superclasses, split by superclass 20/6/8 = 351/97/160
classes, all ILSVRC-2012 training images of each class (448,695 / 124,261 / 206,209). The
class -> superclass lists are the authors' files
github.com/renmengye/few-shot-ssl-public, fewshot/data/tiered_imagenet_split/{train,val,test}.csv
(rows `<class wnid>,<superclass wnid>`); this code pins the 34 superclasses per split
(TIERED_SUPERCLASSES) and the class counts, and checks the files against them. `options.local`:

- `pickle` (only when named, as for miniImageNet): the authors' distribution (tiered-imagenet.tar):
  `<local>/{train,val,test}_images_png.pkl` (a list of PNG-encoded 84x84 images; or
  `{split}_images.npz` with an `images` array [N, 84, 84, 3]) and `{split}_labels.pkl` (a dict
  with `label_specific`, `label_general`, `label_specific_str`, `label_general_str`).
- `ilsvrc`: the ILSVRC-2012 training folder, plus the three split CSVs (in `split_csv`, in
  `<local>` or in `<local>/tiered_imagenet_split/`).
- `folders`: `<local>/{train,val,test}/<wnid>/*`, plus the three split CSVs as above.

Class ids run over splits (train, val, test), then the published class order (miniImageNet)
or (superclass, class) order (tieredImageNet); images of a class in file order.
"""

from __future__ import annotations

import csv
import json
import pickle
import re
import sys
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

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

# Ravi & Larochelle 2017, data/miniImagenet/{train,val,test}.csv: the wnids of each split.
MINI_SPLIT: dict[str, list[str]] = {
    "train": [
        "n01532829", "n01558993", "n01704323", "n01749939", "n01770081", "n01843383", "n01910747",
        "n02074367", "n02089867", "n02091831", "n02101006", "n02105505", "n02108089", "n02108551",
        "n02108915", "n02111277", "n02113712", "n02120079", "n02165456", "n02457408", "n02606052",
        "n02687172", "n02747177", "n02795169", "n02823428", "n02966193", "n03017168", "n03047690",
        "n03062245", "n03207743", "n03220513", "n03337140", "n03347037", "n03400231", "n03476684",
        "n03527444", "n03676483", "n03838899", "n03854065", "n03888605", "n03908618", "n03924679",
        "n03998194", "n04067472", "n04243546", "n04251144", "n04258138", "n04275548", "n04296562",
        "n04389033", "n04435653", "n04443257", "n04509417", "n04515003", "n04596742", "n04604644",
        "n04612504", "n06794110", "n07584110", "n07697537", "n07747607", "n09246464", "n13054560",
        "n13133613",
    ],
    "val": [
        "n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826", "n02971356",
        "n02981792", "n03075370", "n03417042", "n03535780", "n03584254", "n03770439", "n03773504",
        "n03980874", "n09256479",
    ],
    "test": [
        "n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738", "n02129165",
        "n02219486", "n02443484", "n02871525", "n03127925", "n03146219", "n03272010", "n03544143",
        "n03775546", "n04146614", "n04149813", "n04418357", "n04522168", "n07613480",
    ],
}
MINI_IMAGES_PER_CLASS = 600

# Ren et al. 2018, tiered_imagenet_split/{train,val,test}.csv: the superclass wnids of each split.
TIERED_SUPERCLASSES: dict[str, list[str]] = {
    "train": [
        "n01524359", "n01674216", "n01726692", "n01844917", "n02087551", "n02092468", "n02120997",
        "n02370806", "n02469914", "n02913152", "n03125870", "n03278248", "n03297735", "n03414162",
        "n03419014", "n03574816", "n03800933", "n04014297", "n04081844", "n04451818",
    ],
    "val": ["n02098550", "n03257877", "n03405265", "n03699975", "n03738472", "n03791235"],
    "test": ["n00020090", "n01473806", "n02103406", "n02159955", "n03839993", "n04531098",
             "n09287968", "n15046900"],
}
TIERED_CLASSES = {"train": 351, "val": 97, "test": 160}
TIERED_IMAGES = {"train": 448_695, "val": 124_261, "test": 206_209}

IMAGENET_URL = "https://image-net.org/download.php"
RAVI_CSV_URL = "https://github.com/twitter/meta-learning-lstm/tree/master/data/miniImagenet"
REN_CSV_URL = "https://github.com/renmengye/few-shot-ssl-public/tree/master/fewshot/data/tiered_imagenet_split"
WNID = re.compile(r"^n\d{8}$")

MINI_LAYOUTS = ("auto", "ilsvrc", "ravi", "folders", "pickle")
TIERED_LAYOUTS = ("auto", "ilsvrc", "folders", "pickle")
TIERED_OPTIONS = {
    "local": Option(str, None, "the folder holding the data (see docs/datasets.md for the layouts)"),
    "layout": Option(str, "auto", "how the folder is laid out; auto: detect it", choices=TIERED_LAYOUTS),
    "split_csv": Option(str, None, "ilsvrc layout: a folder with the split CSVs (train/val/test.csv)"),
    "image_size": image_size(84),
}
MINI_OPTIONS = {  # in this order (it is the order of the options recorded in meta.json)
    "local": TIERED_OPTIONS["local"],
    "layout": Option(str, "auto", "how the folder is laid out; auto: detect it", choices=MINI_LAYOUTS),
    "split_csv": TIERED_OPTIONS["split_csv"],
    "images_per_class": Option(int, MINI_IMAGES_PER_CLASS, "ilsvrc layout without split_csv: images "
                               "taken per class", min=1, max=1300),
    "image_size": TIERED_OPTIONS["image_size"],
}
MINI_DEFAULTS = defaults(MINI_OPTIONS)
TIERED_DEFAULTS = defaults(TIERED_OPTIONS)


# -- what the user must provide -------------------------------------------------------------

def _missing_local(name: str, source: str) -> UserError:
    if source == "miniimagenet":
        what = (f"miniImageNet has no official download. Set params key '{key(name, 'local')}' to one of: "
                f"(1) the ILSVRC-2012 training folder (ILSVRC2012_img_train.tar from {IMAGENET_URL}, "
                f"extracted to one folder per wnid: <folder>/n01532829/n01532829_10007.JPEG); add "
                f"'{key(name, 'split_csv')}' = the folder with Ravi & Larochelle's train.csv, val.csv, "
                f"test.csv ({RAVI_CSV_URL}) to get their exact 600 images per class, otherwise the "
                f"first 600 per class are taken; (2) the original miniImageNet folder: images/ (60000 "
                f"JPEGs) with train.csv, val.csv, test.csv; (3) a folder with train/, val/, test/ "
                f"holding one folder per wnid; (4) a folder with mini-imagenet-cache-train.pkl, "
                f"mini-imagenet-cache-val.pkl, mini-imagenet-cache-test.pkl")
    else:
        what = (f"tieredImageNet has no official download. Set params key '{key(name, 'local')}' to one of: "
                f"(1) the folder of Ren et al.'s distribution (tiered-imagenet.tar extracted): "
                f"train_images_png.pkl, train_labels.pkl, val_images_png.pkl, val_labels.pkl, "
                f"test_images_png.pkl, test_labels.pkl; (2) the ILSVRC-2012 training folder "
                f"(ILSVRC2012_img_train.tar from {IMAGENET_URL}, one folder per wnid) together with "
                f"Ren et al.'s class->superclass files train.csv, val.csv, test.csv ({REN_CSV_URL}) "
                f"in '{key(name, 'split_csv')}'; (3) a folder with train/, val/, test/ holding one "
                f"folder per wnid, with those three CSVs likewise")
    return UserError(f"dataset {name!r} (source {source}) needs a local copy: {what}")


# -- small readers ------------------------------------------------------------------------

def _images_in(folder: Path) -> list[Path]:
    """Image files of one class folder, in ILSVRC numeric order (`<wnid>_<id>.JPEG`), else by name."""
    def order(p: Path):
        m = re.match(r"^n\d{8}_(\d+)$", p.stem)
        return (0, int(m.group(1)), p.name) if m else (1, 0, p.name)

    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=order)


def _wnid_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and WNID.match(p.name))


def _read_csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return [[c.strip() for c in row] for row in csv.reader(f) if row and any(c.strip() for c in row)]


def _load_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            try:
                return pickle.load(f)
            except UnicodeDecodeError:  # a Python 2 pickle
                f.seek(0)
                return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            MemoryError, zlib.error) as err:
        raise UserError(f"{path} is not a readable pickle ({type(err).__name__}: {err}); the file is "
                        f"corrupt or of another layout") from None


def _text(x) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def _check_classes(name: str, where: str, found: dict[str, list[str]], expected: dict[str, list[str]]) -> None:
    """`found` split -> classes must equal the published `expected` lists."""
    for s in SPLITS:
        got, want = set(found.get(s, [])), set(expected[s])
        if got != want:
            missing, extra = sorted(want - got), sorted(got - want)
            raise UserError(
                f"{where} does not hold the published miniImageNet {s} classes of dataset {name!r}: "
                f"{len(missing)} missing ({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}), "
                f"{len(extra)} unexpected ({', '.join(extra[:5])}{'...' if len(extra) > 5 else ''})")


# -- miniImageNet ---------------------------------------------------------------------------

def _mini_layout(root: Path) -> str:
    if (root / "images").is_dir() and (root / "train.csv").is_file():
        return "ravi"
    if all((root / s).is_dir() for s in SPLITS):
        return "folders"
    if _wnid_folders(root):
        return "ilsvrc"
    if (root / "mini-imagenet-cache-train.pkl").is_file():
        return "pickle"
    raise UserError(f"{root} has none of the miniImageNet layouts: an ILSVRC train folder (wnid "
                    f"folders), images/ + train.csv, train/ val/ test/ folders, or "
                    f"mini-imagenet-cache-*.pkl; see docs/datasets.md")


def _ravi_csv(folder: Path, what: str) -> dict[str, dict[str, list[str]]]:
    """split -> wnid -> [file names] from Ravi's train/val/test.csv (`filename,label`)."""
    out: dict[str, dict[str, list[str]]] = {}
    for s in SPLITS:
        path = folder / f"{s}.csv"
        if not path.is_file():
            raise UserError(f"{what} {folder} lacks {s}.csv (Ravi & Larochelle's split files: {RAVI_CSV_URL})")
        per: dict[str, list[str]] = defaultdict(list)
        for row in _read_csv_rows(path):
            if row[0] == "filename" or len(row) < 2:
                continue
            per[row[1]].append(row[0])
        out[s] = dict(per)
    return out


def _mini_ilsvrc(name: str, root: Path, opts: dict) -> tuple[Collected, dict]:
    missing = [w for s in SPLITS for w in MINI_SPLIT[s] if not (root / w).is_dir()]
    if missing:
        raise UserError(f"{root} (params key '{key(name, 'local')}') lacks {len(missing)} of the 100 "
                        f"miniImageNet class folders, e.g. {', '.join(missing[:5])}: it should be the "
                        f"ILSVRC-2012 training folder with one folder per wnid")
    csvs = _ravi_csv(opts["split_csv"], f"params key '{key(name, 'split_csv')}'") if opts["split_csv"] else None
    if csvs is not None:
        _check_classes(name, str(opts["split_csv"]), {s: list(v) for s, v in csvs.items()}, MINI_SPLIT)
    per_class = opts["images_per_class"]
    col = Collected()
    for s in SPLITS:
        for w in MINI_SPLIT[s]:
            files = _images_in(root / w)
            if csvs is not None:
                picked = []
                for fname in csvs[s][w]:
                    m = re.match(rf"^{w}(\d+)\.\w+$", fname)
                    if not m:
                        raise UserError(f"{opts['split_csv']}/{s}.csv names {fname!r}, not <wnid><number>.jpg")
                    rank = int(m.group(1))
                    if not 1 <= rank <= len(files):
                        raise UserError(f"{fname} in {opts['split_csv']}/{s}.csv is image {rank} of {w}, but "
                                        f"{root / w} has {len(files)} images: not the full ILSVRC-2012 train folder")
                    picked.append(files[rank - 1])
            else:
                if len(files) < per_class:
                    raise UserError(f"{root / w} has {len(files)} images, fewer than "
                                    f"'{key(name, 'images_per_class')}' = {per_class} (ILSVRC-2012 has at "
                                    f"least 732 per class: is this the full training folder?)")
                picked = files[:per_class]
            col.add(ClassSpec(w, w, s), [(str(p), p) for p in picked])
    how = ("exact published images (Ravi & Larochelle CSVs, ranks in numeric ILSVRC file order)" if csvs
           else f"first {per_class} images per class in numeric ILSVRC file order (NOT the published image lists)")
    return col, {"selection": how}


def _mini_ravi(name: str, root: Path) -> tuple[Collected, dict]:
    csvs = _ravi_csv(root, "the miniImageNet folder")
    _check_classes(name, str(root), {s: list(v) for s, v in csvs.items()}, MINI_SPLIT)
    col = Collected()
    for s in SPLITS:
        for w in MINI_SPLIT[s]:
            files = [root / "images" / f for f in csvs[s][w]]
            absent = [f for f in files if not f.is_file()]
            if absent:
                raise UserError(f"{root}/images lacks {len(absent)} files listed in {s}.csv, e.g. {absent[0].name}")
            col.add(ClassSpec(w, w, s), [(str(p), p) for p in files])
    return col, {"selection": "the original distribution's images and CSVs"}


def _mini_folders(name: str, root: Path) -> tuple[Collected, dict]:
    _check_classes(name, str(root), {s: _wnid_folders(root / s) for s in SPLITS}, MINI_SPLIT)
    col = Collected()
    for s in SPLITS:
        for w in MINI_SPLIT[s]:
            col.add(ClassSpec(w, w, s), [(str(p), p) for p in _images_in(root / s / w)])
    return col, {"selection": "all images of the train/val/test folders"}


def _mini_pickle(name: str, root: Path) -> tuple[Collected, dict]:
    col = Collected()
    found, data = {}, {}
    for s in SPLITS:
        path = root / f"mini-imagenet-cache-{s}.pkl"
        if not path.is_file():
            raise UserError(f"{root} lacks {path.name}")
        obj = _load_pickle(path)
        try:
            images, class_dict = np.asarray(obj["image_data"]), {_text(k): v for k, v in obj["class_dict"].items()}
        except (KeyError, TypeError, AttributeError):
            raise UserError(f"{path} is not a mini-imagenet-cache pickle (a dict with image_data and "
                            f"class_dict)") from None
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(f"{path}: image_data is {images.dtype} {images.shape}, expected uint8 [N, H, W, 3]")
        found[s], data[s] = list(class_dict), (images, class_dict, path)
    _check_classes(name, str(root), found, MINI_SPLIT)
    for s in SPLITS:
        images, class_dict, path = data[s]
        for w in MINI_SPLIT[s]:
            rows = [int(i) for i in class_dict[w]]
            col.add(ClassSpec(w, w, s), [(f"{path}[{i}]", images[i]) for i in rows])
    return col, {"selection": "all images of the mini-imagenet-cache pickles"}


# -- tieredImageNet -------------------------------------------------------------------------

def _tiered_layout(root: Path) -> str:
    if all((root / s).is_dir() for s in SPLITS):
        return "folders"
    if _wnid_folders(root):
        return "ilsvrc"
    if (root / "train_labels.pkl").is_file():
        return "pickle"
    raise UserError(f"{root} has none of the tieredImageNet layouts: {{train,val,test}}_labels.pkl with "
                    f"_images_png.pkl, train/ val/ test/ folders, or an ILSVRC train folder; see docs/datasets.md")


def _ren_csv(name: str, root: Path, split_csv: Path | None) -> dict[str, list[tuple[str, str]]]:
    """split -> [(class wnid, superclass wnid)] from Ren et al.'s CSVs, checked against the paper."""
    places = [split_csv] if split_csv else [root, root / "tiered_imagenet_split"]
    folder = next((p for p in places if all((p / f"{s}.csv").is_file() for s in SPLITS)), None)
    if folder is None:
        raise UserError(f"tieredImageNet from {root} needs Ren et al.'s class->superclass files train.csv, "
                        f"val.csv and test.csv ({REN_CSV_URL}); put them in {root} or set params key "
                        f"'{key(name, 'split_csv')}' to their folder")
    out, seen = {}, {}
    for s in SPLITS:
        rows = [(r[0], r[1]) for r in _read_csv_rows(folder / f"{s}.csv") if len(r) >= 2 and WNID.match(r[0])]
        supers = sorted({sup for _, sup in rows})
        classes = [c for c, _ in rows]
        if supers != sorted(TIERED_SUPERCLASSES[s]) or len(set(classes)) != TIERED_CLASSES[s] or len(classes) != len(set(classes)):
            raise UserError(f"{folder / f'{s}.csv'} is not Ren et al.'s tieredImageNet {s} split: it has "
                            f"{len(set(classes))} classes ({len(classes)} rows) under {len(supers)} superclasses, "
                            f"the paper has {TIERED_CLASSES[s]} under {len(TIERED_SUPERCLASSES[s])} "
                            f"({', '.join(TIERED_SUPERCLASSES[s])}); get the files from {REN_CSV_URL}")
        for c in classes:
            if c in seen:
                raise UserError(f"class {c} is in both {seen[c]}.csv and {s}.csv of {folder}")
            seen[c] = s
        out[s] = rows
    return out


def _tiered_from_folders(name: str, root: Path, opts: dict, layout: str) -> tuple[Collected, dict]:
    rows = _ren_csv(name, root, opts["split_csv"])
    col = Collected()
    for s in SPLITS:
        base = root / s if layout == "folders" else root
        missing = [c for c, _ in rows[s] if not (base / c).is_dir()]
        if missing:
            raise UserError(f"{base} lacks {len(missing)} of the {len(rows[s])} tieredImageNet {s} class "
                            f"folders, e.g. {', '.join(missing[:5])}")
        for c, sup in sorted(rows[s], key=lambda r: (r[1], r[0])):
            col.add(ClassSpec(c, sup, s), [(str(p), p) for p in _images_in(base / c)])
    return col, {"selection": "all images of each class folder", "superclasses": "Ren et al. split CSVs"}


def _tiered_pickle(name: str, root: Path) -> tuple[Collected, dict]:
    col = Collected()
    for s in SPLITS:
        lpath = root / f"{s}_labels.pkl"
        if not lpath.is_file():
            raise UserError(f"{root} lacks {lpath.name} (Ren et al.'s tieredImageNet distribution)")
        labels = {_text(k): v for k, v in _load_pickle(lpath).items()}
        try:
            specific = np.asarray(labels["label_specific"], dtype=np.int64)
            general = np.asarray(labels["label_general"], dtype=np.int64)
            specific_str = [_text(x) for x in labels["label_specific_str"]]
            general_str = [_text(x) for x in labels["label_general_str"]]
        except (KeyError, ValueError, TypeError):
            raise UserError(f"{lpath} lacks label_specific/label_general/label_specific_str/label_general_str") from None
        png, npz = root / f"{s}_images_png.pkl", root / f"{s}_images.npz"
        if png.is_file():
            images = _load_pickle(png)
            # PNG-encoded images, as bytes or as uint8 arrays of the encoded bytes.
            srcs = [(f"{png}[{i}]", b if isinstance(b, bytes) else np.asarray(b, dtype=np.uint8).tobytes())
                    for i, b in enumerate(images)]
        elif npz.is_file():
            try:
                arr = np.load(npz)["images"]
            except (OSError, KeyError, ValueError, zlib.error) as err:
                raise UserError(f"{npz} is not an .npz with an 'images' array ({err})") from None
            srcs = [(f"{npz}[{i}]", arr[i]) for i in range(len(arr))]
        else:
            raise UserError(f"{root} lacks {png.name} (or {npz.name}) next to {lpath.name}")
        if not (len(srcs) == len(specific) == len(general)):
            raise UserError(f"{s} of {root}: {len(srcs)} images but {len(specific)} labels")
        n_cls = len(specific_str)
        if n_cls != TIERED_CLASSES[s] or len(general_str) != len(TIERED_SUPERCLASSES[s]):
            raise UserError(f"{lpath} has {n_cls} classes under {len(general_str)} superclasses; Ren et al.'s {s} "
                            f"split has {TIERED_CLASSES[s]} under {len(TIERED_SUPERCLASSES[s])}")
        sup_of: dict[int, int] = {}
        for c, g in zip(specific.tolist(), general.tolist()):
            if sup_of.setdefault(c, g) != g:
                raise UserError(f"{lpath}: class {specific_str[c]} appears under two superclasses")
        order = np.argsort(specific, kind="stable")
        bounds = np.searchsorted(specific[order], np.arange(n_cls + 1))
        for c in sorted(range(n_cls), key=lambda c: (general_str[sup_of.get(c, 0)], specific_str[c])):
            idx = order[bounds[c]:bounds[c + 1]]
            col.add(ClassSpec(specific_str[c], general_str[sup_of.get(c, 0)], s), [srcs[i] for i in idx])
    return col, {"selection": "all images of Ren et al.'s pickles"}


# -- the sources --------------------------------------------------------------------------

def _pickle_files(root: Path, source: str) -> list[Path]:
    names = ([f"mini-imagenet-cache-{s}.pkl" for s in SPLITS] if source == "miniimagenet"
             else [f"{s}_{part}.pkl" for s in SPLITS for part in ("labels", "images_png")])
    return [root / n for n in names if (root / n).is_file()]


def _options(name: str, source: str, options: dict) -> tuple[dict, Path, str]:
    declared, layouts = (MINI_OPTIONS, MINI_LAYOUTS) if source == "miniimagenet" else (TIERED_OPTIONS, TIERED_LAYOUTS)
    opts = check_options(name, options, declared)
    if opts["local"] is None:
        raise _missing_local(name, source)
    root = check_path(name, "local", opts["local"])
    if not root.is_dir():
        raise UserError(f"params key '{key(name, 'local')}' is {opts['local']!r}, a file; it must be a folder "
                        f"(see docs/datasets.md for the layouts)")
    opts["split_csv"] = check_path(name, "split_csv", opts["split_csv"])
    opts["image_size"] = check_int(name, "image_size", opts["image_size"], 8, 512)
    if "images_per_class" in opts:
        check_int(name, "images_per_class", opts["images_per_class"], 1, 1300)
    layout = check_choice(name, "layout", opts["layout"], layouts)
    auto = layout == "auto"
    if auto:
        layout = _mini_layout(root) if source == "miniimagenet" else _tiered_layout(root)
    if layout == "pickle":
        # Unpickling runs whatever code the file names: only ever on the user's explicit say-so.
        files = ", ".join(str(p) for p in _pickle_files(root, source))
        if auto:
            raise UserError(f"{root} holds {source}'s pickle layout ({files}); loading a pickle can run code "
                            f"from the file, so layout: auto never picks it. If you trust these files, set "
                            f"params key '{key(name, 'layout')}' to pickle")
        print(f"warning: dataset {name}: unpickling {files} (a pickle can run code when loaded; "
              f"use only files you trust)", file=sys.stderr, flush=True)
    if source == "miniimagenet" and layout != "ilsvrc":
        # The pre-split layouts carry their own image lists.
        if opts["split_csv"] is not None:
            raise UserError(f"params key '{key(name, 'split_csv')}' only applies to the ilsvrc layout; {root} "
                            f"has the {layout} layout, whose split is given by its own files")
        if opts["images_per_class"] != MINI_IMAGES_PER_CLASS:
            raise UserError(f"params key '{key(name, 'images_per_class')}' only applies to the ilsvrc layout "
                            f"without split_csv; {root} has the {layout} layout")
    elif source == "miniimagenet" and opts["split_csv"] is not None and opts["images_per_class"] != MINI_IMAGES_PER_CLASS:
        raise UserError(f"params key '{key(name, 'images_per_class')}' does not apply with "
                        f"'{key(name, 'split_csv')}': the CSVs list the images")
    return opts, root, layout


def _finish(name: str, source: str, col: Collected, opts: dict, root: Path, layout: str, info: dict,
            raw_dir: Path, out_dir: Path, complete: bool) -> None:
    meta = {"source": source, "dataset": name, "from": str(root), "layout": layout, **info,
            "options": json.loads(json.dumps(opts, default=str)), "complete": complete}
    col.decode_and_write(out_dir, opts["image_size"], f"decode {name}", meta, scratch_dir=raw_dir)


@declare(MINI_OPTIONS)
def prepare_mini(name: str, options: dict, raw_dir: Path, out_dir: Path, seed: int) -> None:
    opts, root, layout = _options(name, "miniimagenet", options)
    if layout == "ilsvrc":
        col, info = _mini_ilsvrc(name, root, opts)
    elif layout == "ravi":
        col, info = _mini_ravi(name, root)
    elif layout == "folders":
        col, info = _mini_folders(name, root)
    else:
        col, info = _mini_pickle(name, root)
    info["split_reference"] = "Ravi & Larochelle, ICLR 2017: 64/16/20 classes x 600 images"
    complete = all(c == MINI_IMAGES_PER_CLASS for c in col.counts)
    _finish(name, "miniimagenet", col, opts, root, layout, info, raw_dir, out_dir, complete)


@declare(TIERED_OPTIONS)
def prepare_tiered(name: str, options: dict, raw_dir: Path, out_dir: Path, seed: int) -> None:
    opts, root, layout = _options(name, "tieredimagenet", options)
    col, info = _tiered_pickle(name, root) if layout == "pickle" else _tiered_from_folders(name, root, opts, layout)
    info["split_reference"] = "Ren et al., ICLR 2018: 20/6/8 superclasses, 351/97/160 classes"
    per_split = {s: sum(n for c, n in zip(col.specs, col.counts) if c.split == s) for s in SPLITS}
    _finish(name, "tieredimagenet", col, opts, root, layout, info, raw_dir, out_dir,
            complete=per_split == TIERED_IMAGES)

