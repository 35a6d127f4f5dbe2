"""The Omniglot source: synthetic Omniglot-format zips (everywhere) and the real small1 zip
from ../shared (marked `shared`, skipped in a user's clone), served over loopback HTTP."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mtml.data import download, omniglot
from mtml.data.sources import load_sources
from mtml.data.storage import SPLITS, load_prepared
from mtml.errors import UserError

from http_fixture import serve

SMALL1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot" / "images_background_small1.zip"
SMALL1_NAME = "images_background_small1.zip"
SMALL1_SPLIT = {"train": ["Balinese", "Greek", "Korean"], "val": ["Early_Aramaic"], "test": ["Latin"]}


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(download, "DEFAULT_BACKOFF", 0.0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- synthetic Omniglot-format archives ---------------------------------------------------

def _png(rng: np.random.Generator, size: int = 105) -> bytes:
    """A 1-bit 105x105 image of a few black strokes on white, like Omniglot's."""
    im = Image.new("1", (size, size), 1)
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        draw.line([tuple(int(v) for v in rng.integers(5, size - 5, 2)) for _ in range(3)], fill=0, width=3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, layout: dict[str, int], drawers: int = 3, seed: int = 0) -> Path:
    """`<stem>/<alphabet>/characterNN/<id>_<drawer>.png` for alphabet -> number of characters."""
    rng = np.random.default_rng(seed)
    stem = path.name.removesuffix(".zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{stem}/", b"")
        for a, (alphabet, n_chars) in enumerate(sorted(layout.items())):
            for c in range(1, n_chars + 1):
                for d in range(1, drawers + 1):
                    zf.writestr(f"{stem}/{alphabet}/character{c:02d}/{a:02d}{c:02d}_{d:02d}.png", _png(rng))
        zf.writestr(f"__MACOSX/{stem}/._junk.png", b"not an image")
    return path


BACKGROUND = {"Latin": 3, "Greek": 2, "Tagalog": 2, "Korean": 1}  # Tagalog: a default val alphabet
EVALUATION = {"Angelic": 2, "Keble": 1}


@pytest.fixture
def synth(tmp_path) -> dict[str, Path]:
    return {
        "images_background.zip": make_zip(tmp_path / "zips" / "images_background.zip", BACKGROUND, seed=1),
        "images_evaluation.zip": make_zip(tmp_path / "zips" / "images_evaluation.zip", EVALUATION, seed=2),
    }


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _prepare(tmp_path: Path, options: dict, name: str = "omni", out: str = "out"):
    load_sources()["omniglot"](name, options, tmp_path / "raw" / name, tmp_path / out, 0)
    return load_prepared(tmp_path / out)


def _check_prepared(ds, split_alphabets: dict[str, list[str]], chars: Counter, drawers: int, size: int = 28):
    """Counts, shapes and splits against the alphabet -> characters counts of the archive."""
    n_classes = sum(chars[a] for alphabets in split_alphabets.values() for a in alphabets)
    assert len(ds.classes) == n_classes
    assert ds.images.dtype == np.uint8 and ds.images.shape == (n_classes * drawers, 1, size, size)
    assert (ds.classes["n_images"] == drawers).all()
    for s in SPLITS:
        rows = ds.classes[ds.classes["split"] == s]
        assert sorted(rows["group"].unique()) == sorted(split_alphabets.get(s, []))
        assert len(rows) == sum(chars[a] for a in split_alphabets.get(s, []))
    sets = [set(ds.split_classes(s)) for s in SPLITS]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert (ds.classes["name"].str.split("/").str[0] == ds.classes["group"]).all()
    # Strokes bright on a black background.
    assert ds.images.mean() < 80 and ds.images.max() == 255


def test_registered():
    assert load_sources()["omniglot"] is omniglot.prepare


def test_prepare_from_server_explicit_split(tmp_path, synth):
    zips = {n: p.read_bytes() for n, p in synth.items()}
    split = {"train": ["Latin", "Korean"], "val": ["Greek"], "test": ["Angelic"]}
    with serve(zips) as srv:
        ds = _prepare(tmp_path, {"base_url": srv.url(), "split": split,
                                 "md5": {n: hashlib.md5(b).hexdigest() for n, b in zips.items()}})
        assert sorted(r[0] for r in srv.requests) == sorted(zips)
    _check_prepared(ds, split, Counter({**BACKGROUND, **EVALUATION}), drawers=3)
    assert "Tagalog" not in set(ds.classes["group"]) and "Keble" not in set(ds.classes["group"])
    assert ds.meta["dropped_alphabets"] == ["Keble", "Tagalog"]
    assert list(ds.classes["name"][:3]) == ["Korean/character01", "Latin/character01", "Latin/character02"]
    assert [a["md5"] for a in ds.meta["archives"]] == [_md5(p) for p in synth.values()]
    # Class ids run train, val, test.
    assert list(ds.classes["split"]) == sorted(ds.classes["split"], key=SPLITS.index)


def test_download_is_verified_against_md5(tmp_path, synth):
    zips = {n: p.read_bytes() for n, p in synth.items()}
    with serve(zips) as srv, pytest.raises(UserError, match="checksum mismatch") as err:
        _prepare(tmp_path, {"base_url": srv.url(), "archives": ["images_background.zip"],
                            "md5": {"images_background.zip": "0" * 32}, "split": {"train": ["Latin"]}})
    assert "datasets.omni.options.local" in str(err.value)
    assert not (tmp_path / "raw" / "omni" / "images_background.zip").exists()


def test_default_split(tmp_path, synth):
    ds = _prepare(tmp_path, {"local": str(synth["images_background.zip"].parent)})
    expected = {"train": ["Greek", "Korean", "Latin"], "val": ["Tagalog"], "test": ["Angelic", "Keble"]}
    _check_prepared(ds, expected, Counter({**BACKGROUND, **EVALUATION}), drawers=3)
    assert ds.meta["split_alphabets"] == expected
    ds2 = _prepare(tmp_path, {"local": str(synth["images_background.zip"].parent),
                              "val_alphabets": ["Greek", "Korean"]}, out="out2")
    assert ds2.meta["split_alphabets"]["val"] == ["Greek", "Korean"]


def test_default_split_needs_evaluation_and_val(tmp_path, synth):
    with pytest.raises(UserError, match="leaves test empty.*images_evaluation"):
        _prepare(tmp_path, {"archives": ["images_background.zip"], "local": str(synth["images_background.zip"])})
    other = make_zip(tmp_path / "b" / "images_background.zip", {"Latin": 1, "Greek": 1})
    with pytest.raises(UserError, match="leaves val empty.*datasets.omni.options.val_alphabets"):
        _prepare(tmp_path, {"local": {"images_background.zip": str(other),
                                      "images_evaluation.zip": str(synth["images_evaluation.zip"])}})
    with pytest.raises(UserError, match="val_alphabets' lists 'Angelic'"):
        _prepare(tmp_path, {"local": str(synth["images_background.zip"].parent), "val_alphabets": ["Angelic"]})


def test_rotations(tmp_path, synth):
    opts = {"archives": ["images_background.zip"], "local": str(synth["images_background.zip"]),
            "split": {"train": ["Latin"], "test": ["Greek"]}}
    base = _prepare(tmp_path, opts, out="base")
    rot = _prepare(tmp_path, {**opts, "rotations": True}, out="rot")
    assert len(rot.classes) == 4 * len(base.classes) and len(rot.images) == 4 * len(base.images)
    assert list(rot.classes["name"][:4]) == ["Latin/character01", "Latin/character01/rot90",
                                             "Latin/character01/rot180", "Latin/character01/rot270"]
    assert (rot.classes.groupby("group")["split"].nunique() == 1).all()
    for k in range(4):
        got = rot.images[rot.labels == k]
        assert np.array_equal(got, np.rot90(base.images[base.labels == 0], k, axes=(2, 3)))


def test_local_variants(tmp_path, synth):
    folder = synth["images_background.zip"].parent
    extracted = download.extract(synth["images_background.zip"], tmp_path / "ex" / "images_background")
    extracted_eval = download.extract(synth["images_evaluation.zip"], tmp_path / "ex" / "images_evaluation")
    one = {"archives": ["images_background.zip"], "split": {"train": ["Latin", "Greek"], "test": ["Korean"]}}
    ref = _prepare(tmp_path, {**one, "local": str(synth["images_background.zip"])}, out="zip")
    for i, local in enumerate([
        str(folder),                                            # folder holding the zips
        str(extracted),                                         # an extracted archive
        str(extracted / "images_background"),                  # its inner folder
        str(tmp_path / "ex"),                                   # folder of extracted archives
        {"images_background.zip": str(extracted)},              # per archive
    ]):
        ds = _prepare(tmp_path, {**one, "local": local}, out=f"v{i}")
        assert ds.meta["content_md5"] == ref.meta["content_md5"], local
    both = _prepare(tmp_path, {"local": {"images_background.zip": str(synth["images_background.zip"]),
                                         "images_evaluation.zip": str(extracted_eval)}}, out="both")
    assert len(both.classes) == sum(BACKGROUND.values()) + sum(EVALUATION.values())
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").rglob("*.zip"))


def test_local_errors(tmp_path, synth):
    with pytest.raises(UserError, match="datasets.omni.options.local' is .*does not exist"):
        _prepare(tmp_path, {"local": str(tmp_path / "nowhere")})
    with pytest.raises(UserError, match="does not provide images_evaluation.zip"):
        _prepare(tmp_path, {"local": str(synth["images_background.zip"])})
    with pytest.raises(UserError, match="local.nope.zip' names an archive not in"):
        _prepare(tmp_path, {"local": {"nope.zip": str(synth["images_background.zip"])}})


def test_sizes_and_invert(tmp_path, synth):
    one = {"archives": ["images_background.zip"], "local": str(synth["images_background.zip"]),
           "split": {"train": ["Korean"]}}
    native = _prepare(tmp_path, {**one, "image_size": 105, "invert": False}, out="native")
    with zipfile.ZipFile(synth["images_background.zip"]) as zf:
        first = sorted(n for n in zf.namelist() if "/Korean/" in n)[0]
        original = np.asarray(Image.open(io.BytesIO(zf.read(first))).convert("L"))
    assert np.array_equal(native.images[0, 0], original)  # no resize, dark strokes on white
    inverted = _prepare(tmp_path, {**one, "image_size": 105}, out="inv")
    assert np.array_equal(inverted.images[0, 0], 255 - original)
    small = _prepare(tmp_path, {**one, "image_size": 14}, out="small")
    assert small.images.shape[2:] == (14, 14)


def test_deterministic(tmp_path, synth):
    opts = {"local": str(synth["images_background.zip"].parent)}
    a, b = _prepare(tmp_path, opts, out="a"), _prepare(tmp_path, opts, out="b")
    assert a.meta["content_md5"] == b.meta["content_md5"]
    assert (tmp_path / "a" / "classes.csv").read_bytes() == (tmp_path / "b" / "classes.csv").read_bytes()


@pytest.mark.parametrize(("options", "match"), [
    ({"colour": True}, "datasets.omni.options.colour' is unknown"),
    ({"split": {"train": ["Latin"], "test": ["Atlantis"]}}, "split.test' lists alphabet 'Atlantis'.*available: Angelic"),
    ({"split": {"train": ["Latin"], "test": ["Latin"]}}, "lists alphabet 'Latin' twice"),
    ({"split": {"train": ["Latin"], "holdout": ["Greek"]}}, "split.holdout' is unknown"),
    ({"split": {"train": "Latin"}}, "split.train' must be a list"),
    ({"split": {"train": ["Latin"]}, "val_alphabets": ["Greek"]}, "only applies to the default split"),
    ({"image_size": 0}, "image_size' must be an integer"),
    ({"rotations": "yes"}, "rotations' must be true or false"),
    ({"archives": []}, "archives' must be a non-empty list"),
    ({"archives": ["a/b.zip"]}, "give a file name"),
    ({"md5": {"images_background.zip": "xyz"}}, "md5' must map archive names"),
])
def test_option_errors(tmp_path, synth, options, match):
    with pytest.raises(UserError, match=match):
        _prepare(tmp_path, {"local": str(synth["images_background.zip"].parent), **options})


def test_alphabet_in_two_archives(tmp_path, synth):
    dup = make_zip(tmp_path / "d" / "images_background_small1.zip", {"Latin": 1})
    with pytest.raises(UserError, match="'Latin' is in both"):
        _prepare(tmp_path, {"archives": ["images_background.zip", "images_background_small1.zip"],
                            "local": {"images_background.zip": str(synth["images_background.zip"]),
                                      "images_background_small1.zip": str(dup)},
                            "split": {"train": ["Latin"]}})


@pytest.mark.parametrize("damage", ["truncate", "flip", "not_png"])
def test_corrupt_zip(tmp_path, synth, damage):
    data = bytearray(synth["images_background.zip"].read_bytes())
    bad = tmp_path / "bad" / "images_background.zip"
    bad.parent.mkdir()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":  # inside the first PNG's data: a CRC error on reading
        i = data.index(b"IDAT")
        data[i + 8: i + 16] = b"\xff" * 8
    else:
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("images_background/Latin/character01/0101_01.png", b"garbage")
        data = bytearray(bad.read_bytes())
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"images_background.zip.*(corrupt|not a readable PNG)") as err:
        _prepare(tmp_path, {"archives": ["images_background.zip"], "local": str(bad),
                            "split": {"train": ["Latin"]}})
    # The user's own file (options.local) is never offered for deletion.
    assert "delete it" not in str(err.value) and "datasets.omni.options.local' at a good copy" in str(err.value)


def test_missing_archive_without_network(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/python"
    with pytest.raises(UserError) as err:
        _prepare(tmp_path, {"base_url": url, "archives": ["images_background.zip"],
                            "split": {"train": ["Latin"]}})
    msg = str(err.value)
    assert "images_background.zip" in msg and f"{url}/images_background.zip" in msg
    assert "datasets.omni.options.local" in msg
    assert not (tmp_path / "out").exists()


def test_official_defaults():
    assert omniglot.DEFAULTS["archives"] == ["images_background.zip", "images_evaluation.zip"]
    assert omniglot.DEFAULTS["base_url"] == "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
    assert omniglot.MD5["images_background.zip"] == "68d2efa1b9178cc56df9314c21c6e718"
    assert omniglot.MD5["images_evaluation.zip"] == "6b91aef0f799c5bb55b94e3f2daec811"
    assert omniglot.MD5["images_background_small1.zip"] == "e704a628b5459e08445c13499850abc4"
    assert "images_background_small2.zip" in omniglot.MD5
    assert len(omniglot.DEFAULT_VAL_ALPHABETS) == 5


# -- the real small1 archive (../shared) --------------------------------------------------

@pytest.fixture(scope="module")
def small1() -> Path:
    if not SMALL1.is_file():
        pytest.skip(f"{SMALL1} is absent (a user's clone has no ../shared)")
    return SMALL1


@pytest.fixture(scope="module")
def small1_chars(small1) -> Counter:
    """alphabet -> number of characters, counted from the zip itself."""
    with zipfile.ZipFile(small1) as zf:
        pairs = {tuple(n.split("/")[1:3]) for n in zf.namelist() if n.endswith(".png")}
    return Counter(a for a, _ in pairs)


@pytest.mark.shared
def test_small1_from_server(tmp_path, small1, small1_chars):
    assert sorted(small1_chars) == sorted(a for s in SMALL1_SPLIT.values() for a in s)
    opts = {"archives": [SMALL1_NAME], "split": SMALL1_SPLIT}
    with serve({SMALL1_NAME: small1.read_bytes()}) as srv:
        t0 = time.perf_counter()
        ds = _prepare(tmp_path, {**opts, "base_url": srv.url()})  # the pinned md5 is checked
        elapsed = time.perf_counter() - t0
        assert len(srv.requests) == 1
        _prepare(tmp_path, {**opts, "base_url": srv.url()}, out="again")
        assert len(srv.requests) == 1  # the verified download is reused
    print(f"prepare small1 (download + decode + write): {elapsed:.2f}s")
    assert len(ds.classes) == 136 == sum(small1_chars.values())
    assert len(ds.images) == 2720
    _check_prepared(ds, SMALL1_SPLIT, small1_chars, drawers=20)
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["archives"][0]["md5"] == omniglot.MD5[SMALL1_NAME]


@pytest.mark.shared
def test_small1_rotations_local(tmp_path, small1, small1_chars):
    ds = _prepare(tmp_path, {"archives": [SMALL1_NAME], "split": SMALL1_SPLIT, "local": str(small1),
                             "rotations": True})
    assert len(ds.classes) == 4 * 136 and len(ds.images) == 4 * 2720
    _check_prepared_rot = ds.classes.groupby("split").size().to_dict()
    assert _check_prepared_rot == {s: 4 * sum(small1_chars[a] for a in SMALL1_SPLIT[s]) for s in SPLITS}
    assert not (tmp_path / "raw").exists()


@pytest.mark.shared
def test_small1_errors(tmp_path, small1):
    with pytest.raises(UserError, match="lists alphabet 'Tifinagh', which is not in images_background_small1.zip"):
        _prepare(tmp_path, {"archives": [SMALL1_NAME], "local": str(small1),
                            "split": {**SMALL1_SPLIT, "test": ["Tifinagh"]}})
    bad = tmp_path / SMALL1_NAME
    bad.write_bytes(small1.read_bytes()[:-2000])  # the central directory is gone
    with pytest.raises(UserError, match=f"{bad}.*corrupt"):
        _prepare(tmp_path, {"archives": [SMALL1_NAME], "local": str(bad), "split": SMALL1_SPLIT})
