"""Omniglot (Lake, Salakhutdinov & Tenenbaum, Science 2015), from its official archives.

Source name `omniglot`. The archives come from the dataset's own repository
(github.com/brendenlake/omniglot, folder python/) and are read straight from the zip:
`<archive_stem>/<alphabet>/<characterNN>/<id>_<drawer>.png`, 105x105, black strokes on
white. One class per (alphabet, character), named `<alphabet>/<character>`; its group is
the alphabet, so splits are by alphabet.

Options (`datasets.<name>.options`, defaults in DEFAULTS):

- `archives`: archive file names to use (default the full background + evaluation sets;
  `images_background_small1.zip` / `..._small2.zip` are the official small sets).
- `base_url`: where the archives are downloaded from (default the official repository).
- `md5`: {archive name: md5} overriding or adding the pinned checksums (mirrors, fixtures).
- `local`: use local copies and download nothing. A path to one archive file (when
  `archives` has one entry or the file name matches), a folder holding the zips or their
  extracted folders, or a dict {archive name: zip file or extracted folder}. Relative paths
  are taken from the directory the stage runs in (the repository root). Local copies are
  not checked against the pinned md5 (their actual md5 is recorded in meta.json).
- `image_size`: side of the square output images (default 28; 105 keeps the originals),
  resized by area averaging (PIL's BOX filter, like torch's `area` interpolation): antialiased
  and free of the ringing LANCZOS leaves around the binary strokes.
- `invert`: true (default) stores bright strokes on black, like the `glyphs` source.
- `rotations`: true adds each character rotated by 90, 180 and 270 degrees (counter-
  clockwise) as three more classes (`.../rot90` etc.), in the same alphabet and split.
- `split`: null (default) is the literature split: alphabets of images_background* train,
  except `val_alphabets` which validate, and alphabets of images_evaluation* test. Or an
  explicit {train: [alphabets], val: [...], test: [...]} over any Omniglot-format data;
  alphabets not listed are dropped.
- `val_alphabets`: background alphabets held out for validation under the default split.
  Default (null) DEFAULT_VAL_ALPHABETS, Meta-Dataset's choice (Triantafillou et al., ICLR
  2020): the five background alphabets with the fewest characters (14+14+16+17+20 = 81),
  leaving 25 alphabets / 883 characters to train on and the 20 evaluation alphabets / 659
  characters to test on.

- `character_split`: a class-level split ignoring alphabets, as MAML, ProtoNet and Matching
  Networks use Omniglot: {train: N, val: M} characters drawn from all archives' characters in
  a shuffle seeded by the data `seed`, the rest test. N and M are counts (1200 train of 1623
  in Vinyals et al.) or fractions in (0, 1) of the characters present; counts the archives
  cannot hold are an error naming this key (images_background_small1.zip has 136
  characters). Rotations of a character stay in its split; a class's group is then its
  character (`<alphabet>/<character>`), the unit of the split. Not with `split` or
  `val_alphabets`.

`seed` only draws the `character_split`; the alphabet splits are fixed by their lists.
Class ids run in order (split: train, val, test; alphabet; character; rotation), images of a
class in file-name order, so the prepared arrays are deterministic. Each image's file name
(`<alphabet>/<character>/<file>.png`) is kept as the per-image extra `files`, so external
episode lists can name items by file (mtml.episodes.external).
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from mtml.data.download import fetch, unsafe_member
from mtml.data.sources import check_options, declare
from mtml.data.storage import SPLITS, write_prepared
from mtml.errors import UserError
from mtml.options import Option, defaults
from mtml.utils import file_md5, progress

BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",   # 30 alphabets, 964 characters
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",    # 20 alphabets, 659 characters
    "images_background_small1.zip": "e704a628b5459e08445c13499850abc4",  # 5 alphabets, 136 characters
    # Not pinned here: without a checksum the download is checked for size and zip integrity
    # only. Pin it with options.md5: {images_background_small2.zip: <md5>}.
    "images_background_small2.zip": None,
}
FULL_ARCHIVES = ["images_background.zip", "images_evaluation.zip"]
DEFAULT_VAL_ALPHABETS = [
    "Alphabet_of_the_Magi",
    "Blackfoot_(Canadian_Aboriginal_Syllabics)",
    "Inuktitut_(Canadian_Aboriginal_Syllabics)",
    "Ojibwe_(Canadian_Aboriginal_Syllabics)",
    "Tagalog",
]
OPTIONS = {
    "archives": Option((str, list), FULL_ARCHIVES, "archive file names to read (the split is by "
                       "alphabet; evaluation alphabets are the test split)", items=str),
    "base_url": Option(str, BASE_URL, "where the archives are downloaded from"),
    "md5": Option(dict, None, "archive name -> md5, pinning (or overriding) the built-in checksums",
                  items=str),
    "local": Option((str, dict), None, "a folder holding the zips (or their extracted folders), a zip, "
                    "or archive name -> path; nothing is downloaded", items=str),
    "image_size": Option(int, 28, "images are resized to image_size x image_size (originals: 105)",
                         min=4, max=512),
    "invert": Option(bool, True, "strokes white on black (the originals are black on white)"),
    "rotations": Option(bool, False, "add 90/180/270-degree rotations as further classes"),
    "split": Option(dict, None, "{train: [alphabets], val: [...], test: [...]}; null: the default split"),
    "val_alphabets": Option(list, None, "default split: the background alphabets used for validation",
                            items=str),
    "character_split": Option(dict, None, "{train: N, val: M}: a split by character ignoring alphabets "
                              "(counts, or fractions in (0, 1)), seeded by the data seed; the rest test"),
}
DEFAULTS = defaults(OPTIONS)
ROTATIONS = (0, 90, 180, 270)
# Decoding threads (PIL releases the GIL while it inflates and resamples).
MAX_WORKERS = 8


def _key(name: str, key: str) -> str:
    return f"datasets.{name}.options.{key}"


def _check(name: str, options: dict) -> dict:
    opts = check_options(name, options, OPTIONS)
    archives = opts["archives"]
    if isinstance(archives, str):
        archives = [archives]
    if not isinstance(archives, list) or not archives or not all(isinstance(a, str) and a for a in archives):
        raise UserError(f"params key '{_key(name, 'archives')}' must be a non-empty list of archive "
                        f"file names, e.g. {FULL_ARCHIVES}; got {opts['archives']!r}")
    for a in archives:
        if "/" in a or "\\" in a or a in (".", ".."):
            raise UserError(f"params key '{_key(name, 'archives')}' lists {a!r}: give a file name "
                            f"(set '{_key(name, 'base_url')}' or '{_key(name, 'local')}' for its location)")
        if archives.count(a) > 1:
            raise UserError(f"params key '{_key(name, 'archives')}' lists {a!r} twice")
    opts["archives"] = archives
    if not isinstance(opts["base_url"], str) or not opts["base_url"]:
        raise UserError(f"params key '{_key(name, 'base_url')}' must be a URL; got {opts['base_url']!r}")
    md5 = opts["md5"] or {}
    if not isinstance(md5, dict) or not all(isinstance(v, str) and len(v) == 32 for v in md5.values()):
        raise UserError(f"params key '{_key(name, 'md5')}' must map archive names to 32-digit md5 "
                        f"strings; got {opts['md5']!r}")
    for a in md5:
        if a not in archives:
            raise UserError(f"params key '{_key(name, 'md5')}.{a}' names an archive not in "
                            f"'{_key(name, 'archives')}' ({', '.join(archives)})")
    opts["md5"] = {a: v.lower() for a, v in md5.items()}
    size = opts["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 4 <= size <= 512:
        raise UserError(f"params key '{_key(name, 'image_size')}' must be an integer in 4..512 "
                        f"(the originals are 105); got {size!r}")
    for k in ("invert", "rotations"):
        if not isinstance(opts[k], bool):
            raise UserError(f"params key '{_key(name, k)}' must be true or false; got {opts[k]!r}")
    if opts["split"] is not None:
        split = opts["split"]
        if not isinstance(split, dict):
            raise UserError(f"params key '{_key(name, 'split')}' must be null (the default split) or "
                            f"{{train: [alphabets], val: [...], test: [...]}}; got {split!r}")
        for s, alphabets in split.items():
            if s not in SPLITS:
                raise UserError(f"params key '{_key(name, 'split')}.{s}' is unknown; allowed: "
                                f"{', '.join(SPLITS)}")
            if not isinstance(alphabets, list) or not all(isinstance(a, str) for a in alphabets):
                raise UserError(f"params key '{_key(name, 'split')}.{s}' must be a list of alphabet "
                                f"names; got {alphabets!r}")
        if opts["val_alphabets"] is not None:
            raise UserError(f"params key '{_key(name, 'val_alphabets')}' only applies to the default "
                            f"split; with '{_key(name, 'split')}' set, list them under split.val")
    val = opts["val_alphabets"]
    if val is not None and (not isinstance(val, list) or not all(isinstance(a, str) for a in val)):
        raise UserError(f"params key '{_key(name, 'val_alphabets')}' must be a list of alphabet names; "
                        f"got {val!r}")
    cs = opts["character_split"]
    if cs is not None:
        what = (f"params key '{_key(name, 'character_split')}' must be {{train: N, val: M}} with counts "
                f"(integers >= 0) or fractions in (0, 1) of the characters; got {cs!r}")
        if not isinstance(cs, dict) or set(cs) - {"train", "val"} or "train" not in cs:
            raise UserError(what)
        for v in cs.values():
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (isinstance(v, float) and v >= 1):
                raise UserError(what)
        for k in ("split", "val_alphabets"):
            if opts[k] is not None:
                raise UserError(f"params key '{_key(name, 'character_split')}' splits by character; remove "
                                f"'{_key(name, k)}', which splits by alphabet")
    local = opts["local"]
    if local is not None and not isinstance(local, str | dict):
        raise UserError(f"params key '{_key(name, 'local')}' must be a path or {{archive: path}}; got {local!r}")
    return opts


# -- locating the archives ----------------------------------------------------------------

def _stem(archive: str) -> str:
    return archive[:-4] if archive.lower().endswith(".zip") else archive


def _resolve_local(name: str, archives: list[str], local) -> dict[str, Path]:
    """archive name -> a zip file or an extracted folder, from options.local."""
    key = _key(name, "local")
    found: dict[str, Path] = {}
    if isinstance(local, dict):
        for a, p in local.items():
            if a not in archives:
                raise UserError(f"params key '{key}.{a}' names an archive not in "
                                f"'{_key(name, 'archives')}' ({', '.join(archives)})")
            p = Path(os.path.expanduser(str(p)))
            if not p.exists():
                raise UserError(f"params key '{key}.{a}' is {str(p)!r}, which does not exist")
            found[a] = p / _stem(a) if p.is_dir() and (p / _stem(a)).is_dir() else p
    else:
        p = Path(os.path.expanduser(local))
        if not p.exists():
            raise UserError(f"params key '{key}' is {local!r}, which does not exist; set it to an "
                            f"archive file, or a folder holding {', '.join(archives)}")
        for a in archives:
            if p.is_file():
                if p.name == a or len(archives) == 1:
                    found[a] = p
            elif (p / a).is_file():
                found[a] = p / a
            elif (p / _stem(a)).is_dir():
                found[a] = p / _stem(a)
            elif p.name == _stem(a) or len(archives) == 1:
                found[a] = p
    missing = [a for a in archives if a not in found]
    if missing:
        raise UserError(f"params key '{key}' ({local!r}) does not provide {', '.join(missing)}; "
                        f"point it at a folder holding the zips (or their extracted folders), or "
                        f"map each archive to its file: {{{missing[0]}: /path/to/{missing[0]}}}")
    return found


def _locate(name: str, opts: dict, raw_dir: Path) -> dict[str, tuple[Path, str]]:
    """archive name -> (zip file or folder, where it came from)."""
    archives = opts["archives"]
    if opts["local"] is not None:
        return {a: (p, str(p)) for a, p in _resolve_local(name, archives, opts["local"]).items()}
    out = {}
    for a in archives:
        url = opts["base_url"].rstrip("/") + "/" + a
        md5 = opts["md5"].get(a, MD5.get(a))
        out[a] = (fetch(url, Path(raw_dir) / a, md5, local_key=_key(name, "local")), url)
    return out


# -- reading ------------------------------------------------------------------------------

def _parse(member: str) -> tuple[str, str, str] | None:
    """`.../<alphabet>/<character>/<file>.png` -> (alphabet, character, file)."""
    if not member.lower().endswith(".png"):
        return None
    parts = [p for p in member.replace("\\", "/").split("/") if p]
    if len(parts) < 3:
        return None
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return parts[-3], parts[-2], parts[-1]


def _fix(name: str, opts: dict) -> str:
    """What to do about a corrupt archive: never delete the user's own (options.local) file."""
    if opts["local"] is not None:
        return f"point params key '{_key(name, 'local')}' at a good copy"
    return "delete it and rerun to download it again, or replace it with a good copy"


def _read_archive(archive: str, path: Path, fix: str) -> list[tuple[str, str, str, bytes]]:
    """[(alphabet, character, file, png bytes)] of one zip or extracted folder; `fix` says
    what to do about a bad one."""
    import zipfile
    import zlib

    rows = []
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            rel = f.relative_to(path).as_posix()
            if f.is_file() and (parsed := _parse(rel)):
                rows.append((*parsed, f.read_bytes()))
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                # A member like ../x/y/z.png would otherwise be read as alphabet x, character y.
                bad = [i.filename for i in zf.infolist() if unsafe_member(i.filename)]
                if bad:
                    raise UserError(f"archive {path} ({archive}) has a member outside its folder "
                                    f"({bad[0]!r}); refusing it: {fix}")
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    if not info.is_dir() and (parsed := _parse(info.filename)):
                        rows.append((*parsed, zf.read(info)))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError) as err:
            raise UserError(f"archive {path} ({archive}) is corrupt or not a zip ({type(err).__name__}: "
                            f"{err}); {fix}") from None
    if not rows:
        raise UserError(f"{path} ({archive}) holds no images in the Omniglot layout "
                        f"{_stem(archive)}/<alphabet>/<characterNN>/<id>_<drawer>.png")
    return rows


def _decode_many(items: list[tuple[str, bytes]], size: int, invert: bool, fix: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(items), size, size), dtype=np.uint8)
    for i, (where, blob) in enumerate(items):
        try:
            with Image.open(io.BytesIO(blob)) as im:
                im = im.convert("L")
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise UserError(f"{where} is not a readable PNG ({err}); the archive is corrupt: {fix}") from None
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BOX)
        out[i] = np.asarray(im, dtype=np.uint8)
    if invert:
        np.subtract(255, out, out=out)
    return out


def _decode_all(items: list[tuple[str, bytes]], size: int, invert: bool, fix: str) -> np.ndarray:
    workers = max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else os.cpu_count() or 1))
    chunk = 512
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    bar, _ = progress("decode omniglot", len(items))
    with bar, ThreadPoolExecutor(workers) as pool:
        task = bar.add_task("decode omniglot", total=len(items))
        parts = []
        for arr in pool.map(_decode_many, chunks, [size] * len(chunks), [invert] * len(chunks),
                            [fix] * len(chunks)):
            parts.append(arr)
            bar.update(task, advance=len(arr))
    return np.concatenate(parts) if parts else np.empty((0, size, size), np.uint8)


# -- splits -------------------------------------------------------------------------------

def _assign_splits(name: str, opts: dict, alphabet_archive: dict[str, str]) -> dict[str, str]:
    """alphabet -> split, for the alphabets that are used."""
    present = sorted(alphabet_archive)
    if opts["split"] is not None:
        seen: dict[str, str] = {}
        for s in SPLITS:
            for a in opts["split"].get(s) or []:
                if a in seen:
                    raise UserError(f"params key '{_key(name, 'split')}' lists alphabet {a!r} twice "
                                    f"({seen[a]} and {s}); an alphabet belongs to one split")
                if a not in alphabet_archive:
                    raise UserError(f"params key '{_key(name, 'split')}.{s}' lists alphabet {a!r}, which "
                                    f"is not in {', '.join(opts['archives'])}; available: {', '.join(present)}")
                seen[a] = s
        if not seen:
            raise UserError(f"params key '{_key(name, 'split')}' lists no alphabets")
        return seen

    kind = {}
    for a, arch in alphabet_archive.items():
        if arch.startswith("images_background"):
            kind[a] = "background"
        elif arch.startswith("images_evaluation"):
            kind[a] = "evaluation"
        else:
            raise UserError(f"the default split of dataset {name!r} takes train/val alphabets from "
                            f"images_background* and test alphabets from images_evaluation*, but "
                            f"{arch} is neither; set '{_key(name, 'split')}' to "
                            f"{{train: [...], val: [...], test: [...]}}")
    background = sorted(a for a in present if kind[a] == "background")
    if opts["val_alphabets"] is None:
        val = [a for a in DEFAULT_VAL_ALPHABETS if a in background]
    else:
        val = list(opts["val_alphabets"])
        for a in val:
            if a not in background:
                raise UserError(f"params key '{_key(name, 'val_alphabets')}' lists {a!r}, which is not a "
                                f"background alphabet of {', '.join(opts['archives'])}; available: "
                                f"{', '.join(background) or 'none'}")
            if val.count(a) > 1:
                raise UserError(f"params key '{_key(name, 'val_alphabets')}' lists {a!r} twice")
    out = {a: ("val" if a in val else "train" if kind[a] == "background" else "test") for a in present}
    for s in SPLITS:
        if s not in out.values():
            why = {
                "train": "every background alphabet is a validation alphabet",
                "val": (f"none of the default validation alphabets ({', '.join(DEFAULT_VAL_ALPHABETS)}) is "
                        f"in {', '.join(opts['archives'])}; set '{_key(name, 'val_alphabets')}' to some of "
                        f"{', '.join(background) or '(no background alphabets)'}"),
                "test": "the archives hold no images_evaluation* alphabets (add images_evaluation.zip)",
            }[s]
            raise UserError(f"the default split of dataset {name!r} leaves {s} empty: {why}; or set "
                            f"'{_key(name, 'split')}' to {{train: [...], val: [...], test: [...]}}")
    return out


def _character_splits(name: str, opts: dict, characters: list[tuple[str, str]], seed: int) -> dict:
    """(alphabet, character) -> split under `character_split`: a seeded shuffle of all
    characters, the first N train, the next M val, the rest test."""
    cs, n = opts["character_split"], len(characters)
    sizes = {s: (int(round(v * n)) if isinstance(v, float) else v) for s, v in cs.items()}
    train, val = sizes["train"], sizes.get("val", 0)
    if train < 1 or train + val >= n:
        raise UserError(f"params key '{_key(name, 'character_split')}' asks for {train} train and {val} val "
                        f"characters, but {', '.join(opts['archives'])} hold {n} characters and the test split "
                        f"needs the rest; lower the counts, or give fractions (e.g. {{train: "
                        f"{round(1200 / 1623, 4)}, val: 0}} for the 1200/1623 proportion)")
    order = np.random.default_rng(seed).permutation(n)
    out = {}
    for rank, i in enumerate(order):
        out[characters[i]] = "train" if rank < train else "val" if rank < train + val else "test"
    return out


# -- the source ---------------------------------------------------------------------------

@declare(OPTIONS, check=lambda opts, name: _check(name, opts))
def prepare(name: str, options: dict, raw_dir: Path, out_dir: Path, seed: int) -> None:
    opts = _check(name, options)
    located = _locate(name, opts, Path(raw_dir))

    # (alphabet, character) -> [(file, png bytes)]; alphabet -> archive it came from
    chars: dict[tuple[str, str], list[tuple[str, bytes]]] = defaultdict(list)
    alphabet_archive: dict[str, str] = {}
    sources = []
    for archive in opts["archives"]:
        path, origin = located[archive]
        rows = _read_archive(archive, path, _fix(name, opts))
        for alphabet, character, fname, blob in rows:
            other = alphabet_archive.setdefault(alphabet, archive)
            if other != archive:
                raise UserError(f"alphabet {alphabet!r} is in both {other} and {archive}; list only one "
                                f"of them in '{_key(name, 'archives')}' (the small sets are subsets "
                                f"of images_background.zip)")
            chars[(alphabet, character)].append((f"{archive}:{alphabet}/{character}/{fname}", blob))
        sources.append({"archive": archive, "from": origin,
                        "md5": file_md5(path) if path.is_file() else None,
                        "alphabets": len({r[0] for r in rows}), "images": len(rows)})

    order = {s: i for i, s in enumerate(SPLITS)}
    if opts["character_split"] is not None:
        split_char = _character_splits(name, opts, sorted(chars), seed)
        split_of = {a: "mixed" for a in alphabet_archive}
        keys = sorted(chars, key=lambda k: (order[split_char[k]], k))
    else:
        split_of = _assign_splits(name, opts, alphabet_archive)
        split_char = {k: split_of[k[0]] for k in chars if k[0] in split_of}
        keys = sorted((k for k in chars if k[0] in split_of), key=lambda k: (order[split_char[k]], k))
    items = [item for k in keys for item in sorted(chars[k])]
    base = _decode_all(items, opts["image_size"], opts["invert"], _fix(name, opts))
    names = np.array([where.split(":", 1)[1] for where, _ in items])

    rotations = ROTATIONS if opts["rotations"] else (0,)
    by_character = opts["character_split"] is not None
    blocks, labels, rows, files = [], [], [], []
    start = 0
    for alphabet, character in keys:
        n = len(chars[(alphabet, character)])
        block = base[start:start + n]
        for deg in rotations:
            cid = len(rows)
            blocks.append(np.rot90(block, deg // 90, axes=(1, 2)) if deg else block)
            labels.append(np.full(n, cid, dtype=np.int64))
            files.append(names[start:start + n])
            rows.append({"class_id": cid,
                         "name": f"{alphabet}/{character}" + (f"/rot{deg}" if deg else ""),
                         "group": f"{alphabet}/{character}" if by_character else alphabet,
                         "split": split_char[(alphabet, character)], "n_images": n})
        start += n
    images = np.ascontiguousarray(np.concatenate(blocks)[:, None])
    classes = pd.DataFrame(rows, columns=["class_id", "name", "group", "split", "n_images"])
    split_alphabets = {s: sorted({k[0] for k in keys if split_char[k] == s}) for s in SPLITS}
    meta = {
        "source": "omniglot",
        "dataset": name,
        "options": json.loads(json.dumps(opts, default=str)),
        "archives": sources,
        "split_alphabets": split_alphabets,
        "classes_per_split": {s: int((classes["split"] == s).sum()) for s in SPLITS},
        "dropped_alphabets": sorted(set(alphabet_archive) - set(split_of)),
        "strokes": "bright on black" if opts["invert"] else "dark on white",
    }
    if by_character:
        meta["split_by"] = "character"
        meta["characters_per_split"] = {s: sum(v == s for v in split_char.values()) for s in SPLITS}
    write_prepared(out_dir, images, np.concatenate(labels), classes, meta, {"files": np.concatenate(files)})
