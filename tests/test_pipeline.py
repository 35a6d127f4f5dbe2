"""The pipeline through both front doors on configs/tiny.yaml.

- Snakemake and `dvc repro` produce the same set of output files and identical metrics.
- Changing one method's hyperparameter reruns only that method's stages (+ aggregation).
- An interrupted training resumes and ends with the same files as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
# Timings are measured, hence differ between runs; everything else must be identical.
TIMING_FILES = {"timing_train.json", "timing_eval.json"}

pytestmark = pytest.mark.slow


def _workdir(tmp: Path, params: dict | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp / name)
    shutil.copytree(ROOT / "workflow", tmp / "workflow")
    p = params or yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    (tmp / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return tmp


def _run(cmd, cwd, **kw):
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _outputs(root: Path) -> set[str]:
    files = set()
    for top in ("data/processed", "data/episodes", "models", "metrics"):
        for f in (root / top).rglob("*"):
            if f.is_file() and f.name != ".snakemake_timestamp" and ".gitignore" not in f.name:
                files.add(str(f.relative_to(root)))
    return files


def _git_dvc_init(root: Path):
    _run(["git", "init", "-q"], root)
    _run(["git", "config", "user.email", "t@example.com"], root)
    _run(["git", "config", "user.name", "t"], root)
    _run(["dvc", "init", "-q"], root)
    _run(["dvc", "config", "core.analytics", "false"], root)
    _run(["dvc", "config", "core.check_update", "false"], root)


@pytest.fixture(scope="module")
def front_doors(tmp_path_factory):
    smk = _workdir(tmp_path_factory.mktemp("snakemake"))
    _run(["snakemake", "--cores", "2", "all", "--quiet"], smk)
    dvc = _workdir(tmp_path_factory.mktemp("dvc"))
    _git_dvc_init(dvc)
    _run(["dvc", "repro", "--quiet"], dvc)
    return smk, dvc


def test_both_front_doors_produce_the_same_files(front_doors):
    smk, dvc = front_doors
    files = _outputs(smk)
    assert files == _outputs(dvc)
    assert "metrics/summary.json" in files and "metrics/plots/accuracy.png" in files
    for f in sorted(files):
        if f.startswith("metrics/") and Path(f).suffix in (".json", ".csv", ".jsonl", ".md") \
                and Path(f).name not in TIMING_FILES and not f.endswith(("summary.json", "summary.md")):
            assert (smk / f).read_bytes() == (dvc / f).read_bytes(), f
    strip = lambda rows: {k: {c: v for c, v in r.items() if not c.endswith("_seconds")}  # noqa: E731
                          for k, r in rows.items()}
    a = json.loads((smk / "metrics/summary.json").read_text())
    assert strip(a) == strip(json.loads((dvc / "metrics/summary.json").read_text()))
    for row in a.values():
        assert row["episodes"] == 10 and 0 <= row["accuracy"] <= 100 and row["ci95"] >= 0
        assert {"experiment", "dataset", "split", "method", "ways", "shots", "train_seconds",
                "eval_seconds", "nil_accuracy"} <= set(row)


def test_changing_one_method_reruns_only_that_method(front_doors):
    smk, dvc = front_doors
    for root in (smk, dvc):
        p = yaml.safe_load((root / "params.yaml").read_text())
        p["methods"]["maml"]["inner_lr"] = 0.1
        (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    dry = _run(["snakemake", "--cores", "1", "all", "-n", "--printshellcmds"], smk).stdout
    cmds = [line[line.index("python -m mtml"):] for line in dry.splitlines() if "python -m mtml" in line]
    stages = sorted(c.split()[3] for c in cmds)
    assert stages == ["aggregate", "evaluate", "train"], cmds
    assert all("--method maml" in c for c in cmds if " train " in c or " evaluate " in c)
    status = _run(["dvc", "status"], dvc).stdout
    changed = sorted(line.rstrip(":") for line in status.splitlines() if line and not line[0].isspace())
    assert changed == ["aggregate", "evaluate@tiny-maml", "train@tiny-maml"], status


def test_interrupted_training_resumes_to_the_same_result(tmp_path):
    p = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    p["methods"] = {"protonet": {"filters": 8}}
    p["training"].update(iterations=60, val_interval=5)
    roots = [_workdir(tmp_path / "whole", p), _workdir(tmp_path / "killed", p)]
    for root in roots:
        _run([sys.executable, "-m", "mtml", "prepare", "--dataset", "glyphs"], root)
        _run([sys.executable, "-m", "mtml", "prepare", "--dataset", "glyphs-shifted"], root)
        _run([sys.executable, "-m", "mtml", "episodes", "--experiment", "tiny"], root)
    train = [sys.executable, "-m", "mtml", "train", "--experiment", "tiny", "--method", "protonet"]
    _run(train, roots[0])
    ckpt = roots[1] / "models/tiny/protonet/checkpoint.pt"
    proc = subprocess.Popen(train, cwd=roots[1], env=ENV)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (roots[1] / "models/tiny/protonet/model.pt").exists()
    import torch

    assert 0 < torch.load(ckpt, weights_only=True)["iteration"] < 60
    _run(train, roots[1])
    for f in ("metrics/runs/tiny/protonet/train_log.csv", "metrics/runs/tiny/protonet/train.json"):
        assert (roots[0] / f).read_bytes() == (roots[1] / f).read_bytes(), f
    a, b = (torch.load(r / "models/tiny/protonet/model.pt", weights_only=True)["state"] for r in roots)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_preset_named_with_configfile_replaces_params_yaml(tmp_path):
    """`--configfile preset.yaml` runs the preset's experiments and methods only (presets are
    whole params files), and every stage reads the preset, not params.yaml."""
    root = _workdir(tmp_path / "w")
    preset = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    preset["experiments"] = {"other": {**preset["experiments"]["tiny"], "shots": 2}}
    preset["methods"] = {"protonet": {"filters": 8}}
    (root / "preset.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))
    dry = _run(["snakemake", "--cores", "1", "all", "-n", "--printshellcmds", "--configfile", "preset.yaml"],
               root).stdout
    cmds = [line[line.index("python -m mtml"):] for line in dry.splitlines() if "python -m mtml" in line]
    runs = sorted(c for c in cmds if " train " in c or " evaluate " in c)
    assert len(runs) == 2 and all("--experiment other --method protonet" in c for c in runs), cmds
    # (Snakemake passes the --configfile path made absolute.)
    assert all(f"--params {root / 'preset.yaml'} " in c for c in cmds), cmds
