"""Fault injection: every fault of issue 13 planted into a tiny run, the stages run as
`python -m mtml ...` subprocesses (and Snakemake for its own front-door checks).

For each fault: the exit code; one error line naming the file or params key (no traceback);
no complete-looking wrong output; and, after the fix the message asks for, a rerun that gives
the same files as the run that never saw the fault. A fault that a rerun alone recovers from
(kill -9, a download cut once, an unreadable checkpoint) must leave nothing complete-looking
and rerun to the identical result.

The last test prints the count ("N planted faults: ...") that the README quotes.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from http_fixture import serve
from pipeline_helpers import TINY
from test_omniglot import make_zip

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
EXP, METH = "tiny", "protonet"


def paths(root: Path) -> SimpleNamespace:
    """Where the stages read and write under `root` for its params.yaml (the study's Layout)."""
    from mtml.layout import Layout
    from mtml.params import read, study

    lay = Layout(root, study(read(root / "params.yaml"), ["params.yaml"]))
    return SimpleNamespace(
        params=root / "params.yaml",
        raw=root / "data/raw",
        processed=root / "data/processed",
        prepared=lay.prepared,
        episodes=lay.episodes(EXP),
        model_dir=lay.model_dir(EXP, METH),
        metrics=lay.run_dir(EXP, METH),
        summary=lay.summary(),
    )


PARAMS = {**copy.deepcopy(TINY), "methods": {METH: {"filters": 8}},
          "training": {"iterations": 40, "meta_batch": 2, "meta_lr": 0.003, "val_interval": 5, "val_episodes": 5},
          "evaluation": {"episodes": 10}}
# A synthetic Omniglot zip (4 alphabets) for the archive and download faults.
OMNI_LAYOUT = {"Latin": 3, "Greek": 2, "Tagalog": 2, "Korean": 2}
OMNI_SPLIT = {"train": ["Latin", "Greek"], "val": ["Tagalog"], "test": ["Korean"]}
ZIP = "images_background.zip"

# fault -> how it ended: "one line" (rejected with one error line), "recovered" (a rerun gave
# the identical result, nothing complete-looking was left), "silent" or "traceback".
RESULTS: dict[str, str] = {}


# -- helpers ------------------------------------------------------------------------------

def mtml(root: Path, *args: str, params: dict | None = None) -> subprocess.CompletedProcess:
    if params is not None:
        write_params(root, params)
    return subprocess.run([sys.executable, "-m", "mtml", *args], cwd=root, env=ENV,
                          capture_output=True, text=True, timeout=900)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"{r.args} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage(name: str, **kw) -> list[str]:
    args = {"prepare": ["--dataset", kw.get("dataset", "glyphs")], "episodes": ["--experiment", EXP],
            "train": ["--experiment", EXP, "--method", METH], "evaluate": ["--experiment", EXP, "--method", METH],
            "aggregate": []}[name]
    return [name, *args]


def rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def rejected(fault: str, r: subprocess.CompletedProcess, *names: str, rc: int = 2) -> str:
    """`r` failed with `rc` and one `mtml <stage>: error:` line naming each of `names`, no
    traceback; record the outcome and return the line."""
    errors = [line for line in r.stderr.splitlines() if line.startswith("mtml ") and ": error: " in line]
    RESULTS[fault] = ("silent" if r.returncode == 0 else
                      "traceback" if "Traceback" in r.stderr or len(errors) != 1 else "one line")
    assert r.returncode == rc, f"{fault}: rc {r.returncode}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
    assert RESULTS[fault] == "one line", f"{fault}:\n{r.stderr[-3000:]}"
    for name in names:
        assert name in errors[0], f"{fault}: {name!r} not in {errors[0]!r}"
    return errors[0]


def recovered(fault: str) -> None:
    RESULTS[fault] = "recovered"


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def state(model: Path) -> dict:
    return torch.load(model, weights_only=True)["state"]


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def workdir(base: Path, tmp_path: Path) -> Path:
    """A copy of the finished base run to plant one fault in."""
    root = tmp_path / "w"
    shutil.copytree(base, root, symlinks=True)
    return root


class RunsCode:
    """Unpickling this runs `touch <marker>`: what a crafted model or checkpoint can do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def assert_would_run_code(path: Path, marker: Path) -> None:
    """The planted file is a real exploit: an unsafe load (weights_only=False) runs it."""
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                   env=ENV, capture_output=True, timeout=300)
    assert marker.exists()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The whole tiny pipeline once: prepare, episodes, train, evaluate, aggregate."""
    root = tmp_path_factory.mktemp("base")
    write_params(root, PARAMS)
    for ds in PARAMS["datasets"]:
        ok(mtml(root, *stage("prepare", dataset=ds)))
    for name in ("episodes", "train", "evaluate", "aggregate"):
        ok(mtml(root, *stage(name)))
    return root


@pytest.fixture(scope="module")
def omni(tmp_path_factory) -> SimpleNamespace:
    """A synthetic Omniglot zip, its options, and the content_md5 of its prepared form."""
    root = tmp_path_factory.mktemp("omni")
    good = make_zip(root / "zips" / ZIP, OMNI_LAYOUT, drawers=3, seed=1)
    options = {"archives": [ZIP], "split": OMNI_SPLIT}
    write_params(root, omni_params(**options, local=str(good)))
    ok(mtml(root, *stage("prepare", dataset="omni")))
    meta = json.loads((paths(root).prepared("omni") / "meta.json").read_text())
    return SimpleNamespace(zip=good, options=options, content_md5=meta["content_md5"])


def omni_params(**options) -> dict:
    return {**PARAMS, "datasets": {**PARAMS["datasets"], "omni": {"source": "omniglot", "options": options}}}


def prepared_md5(root: Path, dataset: str) -> str:
    return json.loads((paths(root).prepared(dataset) / "meta.json").read_text())["content_md5"]


# -- prepared data ------------------------------------------------------------------------

def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("fault,file,plant,says", [
    ("flipped byte in images.npy", "images.npy", _flip, "content_md5"),
    ("truncated images.npy", "images.npy", _truncate, "images.npy is unreadable"),
    ("invalid JSON in meta.json", "meta.json", lambda p: p.write_text("{"), "meta.json is not valid JSON"),
])
def test_damaged_prepared_data(base, tmp_path, fault, file, plant, says):
    root = workdir(base, tmp_path)
    p = paths(root)
    for f in ("eval.json", "episodes.csv"):
        (p.metrics / f).unlink()
    plant(p.prepared("glyphs") / file)
    line = rejected(fault, mtml(root, *stage("evaluate")), rel(p.prepared("glyphs"), root), says,
                    "rerun the prepare stage")
    assert not (p.metrics / "eval.json").exists() and not (p.metrics / "episodes.csv").exists()
    shutil.rmtree(p.prepared("glyphs"))  # the fix the line asks for
    assert f"delete {rel(p.prepared('glyphs'), root)}" in line
    ok(mtml(root, *stage("prepare")))
    assert tree(p.prepared("glyphs")) == tree(paths(base).prepared("glyphs"))
    ok(mtml(root, *stage("evaluate")))
    assert (p.metrics / "eval.json").read_bytes() == (paths(base).metrics / "eval.json").read_bytes()


# -- episode manifests --------------------------------------------------------------------

def _class_rows(df: pd.DataFrame) -> pd.Series:
    return (df["episode"] == 0) & (df["label"] == 0)


def _overlap(df, labels, classes):
    ep = df[(df["episode"] == 0) & (df["label"] == 0)]
    df.loc[ep.index[ep["role"] == "query"][0], "item"] = ep.loc[ep["role"] == "support", "item"].iloc[0]
    return "support and query overlap in episode 0"


def _train_class(df, labels, classes):
    rows = _class_rows(df)
    c = int(classes.loc[classes["split"] == "train", "class_id"].iloc[0])
    df.loc[rows, "class_id"] = c
    df.loc[rows, "item"] = np.flatnonzero(labels == c)[: rows.sum()]
    return "not in the test split"


def _other_class(df, labels, classes):
    rows = _class_rows(df)
    used = set(df.loc[df["episode"] == 0, "class_id"])
    c = next(int(c) for c in classes.loc[classes["split"] == "test", "class_id"] if c not in used)
    df.loc[rows, "class_id"] = c  # the items stay of their own class
    return f"not {c}"


def _out_of_range(df, labels, classes):
    df.loc[df.index[0], "item"] = 10**6
    return "uses item 1000000"


@pytest.mark.parametrize("fault,plant", [
    ("test manifest: support and query overlap", _overlap),
    ("test manifest: a class of the training split", _train_class),
    ("test manifest: disagrees with the class table", _other_class),
    ("test manifest: item out of range", _out_of_range),
])
def test_edited_manifest(base, tmp_path, fault, plant):
    root = workdir(base, tmp_path)
    p = paths(root)
    (p.metrics / "eval.json").unlink()
    manifest = p.episodes / "test.parquet"
    df = pd.read_parquet(manifest)
    data = p.prepared("glyphs")
    says = plant(df, np.load(data / "labels.npy"), pd.read_csv(data / "classes.csv"))
    df.to_parquet(manifest, index=False)
    line = rejected(fault, mtml(root, *stage("evaluate")), rel(manifest, root), "episode 0", says,
                    f"delete {rel(p.episodes, root)} and rerun the episodes stage")
    assert not (p.metrics / "eval.json").exists(), line
    shutil.rmtree(p.episodes)
    ok(mtml(root, *stage("episodes")))
    assert tree(p.episodes) == tree(paths(base).episodes)


@pytest.mark.parametrize("fault,key,value,says", [
    ("ways above a split's classes", "ways", 17, "its val split has 16 classes"),
    ("shots + queries above a class's images", "queries", 12, "has 12 images"),
])
def test_episode_sizes_the_data_cannot_give(base, tmp_path, fault, key, value, says):
    root = workdir(base, tmp_path)
    p = paths(root)
    shutil.rmtree(p.episodes)
    bad = copy.deepcopy(PARAMS)
    bad["experiments"][EXP][key] = value
    rejected(fault, mtml(root, *stage("episodes"), params=bad), "dataset glyphs", says,
             f"experiments.{EXP}.{key}")
    assert not p.episodes.exists()
    ok(mtml(root, *stage("episodes"), params=PARAMS))
    assert tree(p.episodes) == tree(paths(base).episodes)


# -- models and checkpoints ---------------------------------------------------------------

def _foreign_shapes(path: Path, marker: Path) -> None:
    torch.save({"state": {"conv.weight": torch.zeros(3)}, "image_shape": [1, 28, 28], "ways": 5}, path)


@pytest.mark.parametrize("fault,plant,says", [
    ("truncated model.pt", lambda p, m: _truncate(p), "not a model saved by mtml"),
    ("model.pt of random bytes", lambda p, m: p.write_bytes(os.urandom(4096)), "not a model saved by mtml"),
    ("model.pt that is not a model", lambda p, m: torch.save({"weights": [1, 2]}, p), "lacks state"),
    ("model.pt of another network", _foreign_shapes, "other settings"),
    ("model.pt that runs code when unpickled",
     lambda p, m: torch.save({"state": RunsCode(m), "image_shape": [1, 28, 28], "ways": 5}, p), "could run code"),
])
def test_bad_model(base, tmp_path, fault, plant, says):
    root = workdir(base, tmp_path)
    p = paths(root)
    (p.metrics / "eval.json").unlink()
    model, marker = p.model_dir / "model.pt", tmp_path / "code-ran"
    plant(model, marker)
    rejected(fault, mtml(root, *stage("evaluate")), rel(model, root), says, "rerun the train stage")
    assert not marker.exists() and not (p.metrics / "eval.json").exists()
    if "runs code" in fault:
        assert_would_run_code(model, marker)
    model.unlink()
    ok(mtml(root, *stage("train")))  # from the finished checkpoint: no retraining
    assert same_state(state(model), state(paths(base).model_dir / "model.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("fault,plant", [
    ("truncated checkpoint.pt", lambda p, m: _truncate(p)),
    ("checkpoint.pt that runs code when unpickled", lambda p, m: torch.save({"fingerprint": RunsCode(m)}, p)),
])
def test_bad_checkpoint_is_discarded_and_training_restarts(base, tmp_path, fault, plant):
    root = workdir(base, tmp_path)
    p = paths(root)
    ckpt, marker = p.model_dir / "checkpoint.pt", tmp_path / "code-ran"
    (p.model_dir / "model.pt").unlink()
    for f in ("train.json", "train_log.csv"):
        (p.metrics / f).unlink()
    plant(ckpt, marker)
    r = ok(mtml(root, *stage("train")))
    notices = [line for line in r.stderr.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and rel(ckpt, root) in notices[0] and "starts from iteration 0" in notices[0], r.stderr
    assert "Traceback" not in r.stderr and not marker.exists()
    recovered(fault)
    for f in ("train.json", "train_log.csv"):
        assert (p.metrics / f).read_bytes() == (paths(base).metrics / f).read_bytes(), f
    assert same_state(state(p.model_dir / "model.pt"), state(paths(base).model_dir / "model.pt"))


# -- metrics --------------------------------------------------------------------------------

def test_invalid_eval_json(base, tmp_path):
    root = workdir(base, tmp_path)
    p = paths(root)
    p.summary.unlink()
    (p.metrics / "eval.json").write_text('[{"experiment": "tiny", ')
    rejected("invalid JSON in eval.json", mtml(root, *stage("aggregate")),
             rel(p.metrics / "eval.json", root), "not valid JSON", "rerun")
    assert not p.summary.exists()
    ok(mtml(root, *stage("evaluate")))
    ok(mtml(root, *stage("aggregate")))
    strip = lambda s: {k: {c: v for c, v in row.items() if not c.endswith("_seconds")}  # noqa: E731
                       for k, row in json.loads(s.read_text()).items()}
    assert strip(p.summary) == strip(paths(base).summary)


# -- Snakemake front door -------------------------------------------------------------------

def test_unknown_params_key_under_snakemake(tmp_path):
    for name in ("Snakefile", "workflow"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    write_params(tmp_path, {**PARAMS, "bogus": 1})
    cmd = ["snakemake", "-n", "--cores", "1", "--quiet"]
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    out = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    lines = [line for line in out if "bogus" in line]
    RESULTS["unknown top-level params key under Snakemake"] = (
        "silent" if r.returncode == 0 else "one line" if len(lines) == 1 and len(out) <= 4 else "traceback")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(lines) == 1 and "params key 'bogus' is unknown" in lines[0] and len(out) <= 4, out
    write_params(tmp_path, PARAMS)
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


# -- archives and downloads -----------------------------------------------------------------

def _with_member(good: Path, dest: Path, member: str) -> Path:
    shutil.copy(good, dest)
    with zipfile.ZipFile(dest, "a") as zf:
        zf.writestr(member, zf.read(next(n for n in zf.namelist() if n.endswith(".png"))))
    return dest


@pytest.mark.parametrize("fault,member", [
    ("zip member above the archive's folder", "images_background/../Evil/character01/0101_01.png"),
    ("zip member with an absolute path", "/tmp/Evil/character01/0101_01.png"),
])
def test_zip_member_outside_the_archive(base, omni, tmp_path, fault, member):
    root = workdir(base, tmp_path)
    bad = _with_member(omni.zip, tmp_path / ZIP, member)
    rejected(fault, mtml(root, *stage("prepare", dataset="omni"), params=omni_params(**omni.options, local=str(bad))),
             repr(member), "outside its folder", "datasets.omni.options.local")
    assert not paths(root).prepared("omni").exists() and bad.exists()
    ok(mtml(root, *stage("prepare", dataset="omni"), params=omni_params(**omni.options, local=str(omni.zip))))
    assert prepared_md5(root, "omni") == omni.content_md5


def test_local_file_that_is_no_archive_is_not_offered_for_deletion(base, omni, tmp_path):
    root = workdir(base, tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a zip\n")
    line = rejected("local: path that is not an archive",
                    mtml(root, *stage("prepare", dataset="omni"), params=omni_params(**omni.options, local=str(notes))),
                    str(notes), "datasets.omni.options.local")
    assert "delete" not in line and notes.read_text() == "my notes, not a zip\n"
    assert not paths(root).prepared("omni").exists()
    ok(mtml(root, *stage("prepare", dataset="omni"), params=omni_params(**omni.options, local=str(omni.zip))))
    assert prepared_md5(root, "omni") == omni.content_md5


def _downloaded(root: Path) -> list[Path]:
    return sorted(paths(root).raw.rglob(f"{ZIP}*")) if paths(root).raw.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["download with a wrong md5", "HTML page instead of the archive",
                                   "download cut once"])
def test_download_faults(base, omni, tmp_path, fault):
    import hashlib

    root = workdir(base, tmp_path)
    data = omni.zip.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    with serve({ZIP: data}) as srv:
        good = omni_params(**omni.options, base_url=srv.url(), md5={ZIP: md5})
        if fault == "download cut once":
            srv.truncate_after, srv.truncate_times = len(data) // 3, 1
            ok(mtml(root, *stage("prepare", dataset="omni"), params=good))
            assert len(srv.range_requests) == 1  # resumed, not restarted
            recovered(fault)
        else:
            if fault.startswith("HTML"):
                srv.html = True
                params, says = good, "HTML page instead of the archive"
            else:
                params, says = omni_params(**omni.options, base_url=srv.url(), md5={ZIP: "0" * 32}), "checksum mismatch"
            rejected(fault, mtml(root, *stage("prepare", dataset="omni"), params=params), ZIP, says,
                     "datasets.omni.options.local")
            assert _downloaded(root) == [] and not paths(root).prepared("omni").exists()
            srv.html = False
            ok(mtml(root, *stage("prepare", dataset="omni"), params=good))
    assert prepared_md5(root, "omni") == omni.content_md5


def test_pickle_layout_is_never_picked_by_auto(base, tmp_path):
    root = workdir(base, tmp_path)
    folder, marker = tmp_path / "mini", tmp_path / "code-ran"
    folder.mkdir()
    import pickle

    (folder / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps(RunsCode(marker)))
    params = {**PARAMS, "datasets": {**PARAMS["datasets"],
                                     "mini": {"source": "miniimagenet", "options": {"local": str(folder)}}}}
    rejected("miniImageNet pickle picked by layout: auto", mtml(root, *stage("prepare", dataset="mini"), params=params),
             str(folder / "mini-imagenet-cache-train.pkl"), "datasets.mini.options.layout")
    assert not marker.exists() and not paths(root).prepared("mini").exists()
    # (With layout: pickle the files are read, with a warning: tests/test_real_datasets.py.)


# -- interrupted stages ---------------------------------------------------------------------

def _start(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mtml", *args], cwd=root, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """SIGKILL `proc` as soon as `ready(proc)`; False when it ended first."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready(proc):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.wait()
    return False


def _temporaries(root: Path, name: str) -> list[Path]:
    final = paths(root).prepared(name)
    return sorted(final.parent.glob(f".{final.name}.*.tmp"))


@pytest.mark.slow
def test_killed_prepare_leaves_no_dataset_and_no_temporaries(base, tmp_path):
    root = workdir(base, tmp_path)
    p = paths(root)
    shutil.rmtree(p.prepared("glyphs"))
    # `python -m mtml prepare`, killed as soon as its temporary appears (its write is short:
    # when the kill comes too late, the dataset it wrote must be complete and right).
    own_temp = lambda proc: any(f".{proc.pid}-" in t.name for t in _temporaries(root, "glyphs"))  # noqa: E731
    if not _kill_when(_start(root, *stage("prepare")), own_temp):
        assert tree(p.prepared("glyphs")) == tree(paths(base).prepared("glyphs"))
        shutil.rmtree(p.prepared("glyphs"))
    # A writer killed inside its atomic write, where a kill -9 of a long prepare lands.
    code = ("import os; from mtml.utils import atomic_path; "
            f"w = atomic_path({str(p.prepared('glyphs').relative_to(root))!r}); "
            "t = w.__enter__(); t.mkdir(); (t / 'images.npy').write_bytes(bytes(10**6)); "
            "os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code], cwd=root, env=ENV, timeout=300)
    assert _temporaries(root, "glyphs") and not p.prepared("glyphs").exists()
    ok(mtml(root, *stage("prepare")))
    assert _temporaries(root, "glyphs") == []
    assert tree(p.prepared("glyphs")) == tree(paths(base).prepared("glyphs"))
    recovered("kill -9 in prepare (stale temporaries)")


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_result(base, tmp_path):
    root = workdir(base, tmp_path)
    p = paths(root)
    shutil.rmtree(p.model_dir)
    shutil.rmtree(p.metrics)
    ckpt = p.model_dir / "checkpoint.pt"
    assert _kill_when(_start(root, *stage("train")), lambda proc: ckpt.exists()), \
        "training ended before it could be killed"
    assert not (p.model_dir / "model.pt").exists() and not (p.metrics / "train.json").exists()
    assert 0 < torch.load(ckpt, weights_only=True)["iteration"] < PARAMS["training"]["iterations"]
    ok(mtml(root, *stage("train")))
    for f in ("train.json", "train_log.csv"):
        assert (p.metrics / f).read_bytes() == (paths(base).metrics / f).read_bytes(), f
    assert same_state(state(p.model_dir / "model.pt"), state(paths(base).model_dir / "model.pt"))
    recovered("kill -9 in train")


@pytest.mark.slow
def test_killed_evaluation_leaves_nothing_complete_looking(base, tmp_path):
    root = workdir(base, tmp_path)
    p = paths(root)
    for f in ("eval.json", "episodes.csv", "timing_eval.json"):
        (p.metrics / f).unlink()
    want = (paths(base).metrics / "eval.json").read_bytes()
    # Killed once its first output exists: the summary written after it must not exist.
    killed = _kill_when(_start(root, *stage("evaluate")), lambda proc: (p.metrics / "episodes.csv").exists())
    if killed:
        assert not (p.metrics / "eval.json").exists() or (p.metrics / "eval.json").read_bytes() == want
    ok(mtml(root, *stage("evaluate")))
    assert (p.metrics / "eval.json").read_bytes() == want
    recovered("kill -9 in evaluate")


# -- the count ------------------------------------------------------------------------------

def test_count_of_planted_faults(capsys):
    """Runs last: every fault planted above was rejected with one line or recovered."""
    silent = sorted(f for f, how in RESULTS.items() if how not in ("one line", "recovered"))
    one_line = sum(how == "one line" for how in RESULTS.values())
    recovered_n = sum(how == "recovered" for how in RESULTS.values())
    with capsys.disabled():
        print(f"\n{len(RESULTS)} planted faults: {one_line} rejected with one line, "
              f"{recovered_n} recovered by a rerun to the identical result, {len(silent)} silent")
    assert not silent, silent
