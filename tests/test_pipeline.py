"""The pipeline through both front doors on configs/tiny.yaml.

- Snakemake and `dvc repro` produce the same set of output files and identical metrics, with
  two training seeds: every run once per seed, summary rows per seed and aggregated, the
  paired comparisons.
- Changing one method's hyperparameter reruns only that method's stages (+ aggregation).
- Adding a seed runs only the new seed's stages (+ aggregation).
- An interrupted training resumes and ends with the same files as an uninterrupted one.
- Trainings are scheduled longest first, from the times their last runs recorded.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline_helpers import ENV, ROOT, project_dir, run_command

# Timings are measured, hence differ between runs; everything else must be identical.
TIMING_FILES = {"timing_train.json", "timing_eval.json"}

pytestmark = pytest.mark.slow


def _outputs(root: Path) -> set[str]:
    files = set()
    for top in ("data/processed", "data/episodes", "models", "metrics"):
        for f in (root / top).rglob("*"):
            if f.is_file() and f.name != ".snakemake_timestamp" and ".gitignore" not in f.name:
                files.add(str(f.relative_to(root)))
    return files


def _git_dvc_init(root: Path):
    run_command(["git", "init", "-q"], root)
    run_command(["git", "config", "user.email", "t@example.com"], root)
    run_command(["git", "config", "user.name", "t"], root)
    run_command(["dvc", "init", "-q"], root)
    run_command(["dvc", "config", "core.analytics", "false"], root)
    run_command(["dvc", "config", "core.check_update", "false"], root)


def _seeded() -> dict:
    """configs/tiny.yaml with two training seeds (and fewer iterations: two runs per method)."""
    p = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    p["seeds"] = [0, 1]
    p["training"].update(iterations=6, val_interval=3)
    return p


@pytest.fixture(scope="module")
def front_doors(tmp_path_factory):
    smk = project_dir(tmp_path_factory.mktemp("snakemake"), _seeded())
    run_command(["snakemake", "--cores", "2", "all", "--quiet"], smk)
    dvc = project_dir(tmp_path_factory.mktemp("dvc"), _seeded())
    _git_dvc_init(dvc)
    run_command(["dvc", "repro", "--quiet"], dvc)
    return smk, dvc


def test_both_front_doors_produce_the_same_files(front_doors):
    smk, dvc = front_doors
    files = _outputs(smk)
    assert files == _outputs(dvc)
    assert "metrics/default/summary.json" in files and "metrics/default/plots/accuracy.png" in files
    assert {"metrics/default/compare.json", "metrics/default/compare.md", "metrics/default/plots/compare.png"} <= files
    for seed in (0, 1):  # every run once per training seed
        assert f"models/default/tiny/maml/seed-{seed}/model.pt" in files
        assert f"metrics/default/runs/tiny/pixel-nn/seed-{seed}/episodes.csv" in files
    # one set of manifests (keyed by the data seed) for both training seeds
    assert len({f.split("/")[3] for f in files if f.startswith("data/episodes/tiny/")}) == 1
    assert {f.split("/")[2] for f in files if f.startswith("data/processed/")} == {"glyphs", "glyphs-shifted"}
    for f in sorted(files):
        if f.startswith("metrics/") and Path(f).suffix in (".json", ".csv", ".jsonl", ".md") \
                and Path(f).name not in TIMING_FILES and not f.endswith(("summary.json", "summary.md")):
            assert (smk / f).read_bytes() == (dvc / f).read_bytes(), f
    strip = lambda rows: {k: {c: v for c, v in r.items() if not c.endswith("_seconds")}  # noqa: E731
                          for k, r in rows.items()}
    a = json.loads((smk / "metrics/default/summary.json").read_text())
    assert strip(a) == strip(json.loads((dvc / "metrics/default/summary.json").read_text()))
    for row in a.values():
        assert row["episodes"] == 10 and 0 <= row["accuracy"] <= 100 and row["ci95"] >= 0
        assert {"experiment", "dataset", "split", "method", "ways", "shots", "train_seconds",
                "eval_seconds", "nil_accuracy", "seed", "seeds", "ci_low", "ci_high"} <= set(row)
    # one row per seed and one aggregated row (the key `dvc metrics diff` compares), schema-valid
    assert {k for k in a if k.startswith("tiny/maml/test/glyphs")} == {
        "tiny/maml/test/glyphs", "tiny/maml/test/glyphs/seed-0", "tiny/maml/test/glyphs/seed-1"}
    agg, seeds = a["tiny/maml/test/glyphs"], [a[f"tiny/maml/test/glyphs/seed-{k}"] for k in (0, 1)]
    assert agg["seed"] == "all" and agg["seeds"] == 2
    assert agg["accuracy"] == pytest.approx(sum(r["accuracy"] for r in seeds) / 2, abs=1e-4)
    import pandas as pd

    from mtml.analysis.aggregate import SummaryRows
    from mtml.analysis.compare import CompareRows

    SummaryRows.validate(pd.DataFrame(list(a.values())).reindex(columns=list(SummaryRows.to_schema().columns)))
    compared = pd.DataFrame(list(json.loads((smk / "metrics/default/compare.json").read_text()).values()))
    CompareRows.validate(compared)
    # every pair of the 3 methods, on test and cross-domain, over both seeds
    assert len(compared) == 6 and set(compared["seeds"]) == {2}


def test_changing_one_method_reruns_only_that_method(front_doors):
    smk, dvc = front_doors
    for root in (smk, dvc):
        p = yaml.safe_load((root / "params.yaml").read_text())
        p["methods"]["maml"]["inner_lr"] = 0.1
        (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    dry = run_command(["snakemake", "--cores", "1", "all", "-n", "--printshellcmds"], smk).stdout
    cmds = [line[line.index("python -m mtml"):] for line in dry.splitlines() if "python -m mtml" in line]
    stages = sorted(c.split()[3] for c in cmds)
    assert stages == ["aggregate", "evaluate", "evaluate", "train", "train"], cmds  # maml, both seeds
    assert all("--method maml" in c for c in cmds if " train " in c or " evaluate " in c)
    status = run_command(["dvc", "status"], dvc).stdout
    changed = sorted(line.rstrip(":") for line in status.splitlines() if line and not line[0].isspace())
    assert changed == ["aggregate", "evaluate.tiny.maml.0", "evaluate.tiny.maml.1",
                       "train.tiny.maml.0", "train.tiny.maml.1"], status


def test_adding_a_seed_runs_only_the_new_seed(front_doors):
    smk, dvc = front_doors
    p = _seeded()
    p["seeds"] = [0, 1, 2]
    for root in (smk, dvc):
        (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    dry = run_command(["snakemake", "--cores", "1", "all", "-n", "--printshellcmds"], smk).stdout
    cmds = [line[line.index("python -m mtml"):] for line in dry.splitlines() if "python -m mtml" in line]
    runs = [c for c in cmds if " train " in c or " evaluate " in c]
    assert len(runs) == 6 and all("--seed 2 " in c for c in runs), cmds
    assert sorted(c.split()[3] for c in cmds if c not in runs) == ["aggregate"], cmds
    # dvc.yaml lists stages per seed: a stage first says to regenerate it
    stale = subprocess.run([sys.executable, "-m", "mtml", "train", "--experiment", "tiny", "--method", "maml",
                            "--seed", "2", "--dvc"], cwd=dvc, env=ENV, capture_output=True, text=True)
    assert stale.returncode == 2 and "run `python -m mtml dvc-yaml`" in stale.stderr, stale.stderr
    run_command([sys.executable, "-m", "mtml", "dvc-yaml"], dvc)
    status = run_command(["dvc", "status"], dvc).stdout
    changed = sorted(line.rstrip(":") for line in status.splitlines() if line and not line[0].isspace())
    assert changed == sorted(f"{stage}.tiny.{m}.2" for stage in ("train", "evaluate")
                             for m in ("pixel-nn", "protonet", "maml")), status


def test_trainings_start_longest_first_by_their_recorded_times(tmp_path):
    """The train rule's priority is the shortest recorded training of the method over its
    seeds (one slowed run does not count), 0 without a record; evaluations keep 0."""
    from mtml.training.trainer import recorded_train_seconds

    p = _seeded()
    smk = project_dir(tmp_path / "p", p)
    runs = smk / "metrics" / "default" / "runs" / "tiny"  # (params.yaml is the study `default`)
    for method, seed, seconds in (("maml", 0, 50.5), ("maml", 1, 9.25), ("protonet", 1, 20.0)):
        (runs / method / f"seed-{seed}").mkdir(parents=True)
        (runs / method / f"seed-{seed}" / "timing_train.json").write_text(json.dumps({"train_seconds": seconds}))
    (runs / "protonet" / "seed-0").mkdir()
    (runs / "protonet" / "seed-0" / "timing_train.json").write_text("{not json")  # unreadable: skipped
    assert recorded_train_seconds([runs / "maml" / "seed-0", runs / "maml" / "seed-1"]) == 9.25
    assert recorded_train_seconds([runs / "pixel-nn" / "seed-0"]) == 0.0
    dry = run_command(["snakemake", "--cores", "1", "all", "-n"], smk).stdout
    jobs = re.split(r"\n(?=(?:local)?rule \w+:)", dry)  # a block per job
    priority = {}
    for job in jobs:
        if "rule train:" in job:
            method = job.split("method=")[1].split(",")[0]
            line = [ln for ln in job.splitlines() if "priority:" in ln]
            priority.setdefault(method, set()).add(float(line[0].split(":")[1]) if line else 0.0)
        elif "rule evaluate:" in job:
            assert "priority:" not in job, job
    assert priority == {"maml": {9.25}, "protonet": {20.0}, "pixel-nn": {0.0}}, dry


def test_interrupted_training_resumes_to_the_same_result(tmp_path):
    p = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    p["methods"] = {"protonet": {"filters": 8}}
    p["training"].update(iterations=60, val_interval=5)
    roots = [project_dir(tmp_path / "whole", p), project_dir(tmp_path / "killed", p)]
    for root in roots:
        run_command([sys.executable, "-m", "mtml", "prepare", "--dataset", "glyphs"], root)
        run_command([sys.executable, "-m", "mtml", "prepare", "--dataset", "glyphs-shifted"], root)
        run_command([sys.executable, "-m", "mtml", "episodes", "--experiment", "tiny"], root)
    train = [sys.executable, "-m", "mtml", "train", "--experiment", "tiny", "--method", "protonet"]
    run_command(train, roots[0])
    ckpt = roots[1] / "models/default/tiny/protonet/seed-0/checkpoint.pt"
    proc = subprocess.Popen(train, cwd=roots[1], env=ENV)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (roots[1] / "models/default/tiny/protonet/seed-0/model.pt").exists()
    import torch

    assert 0 < torch.load(ckpt, weights_only=True)["iteration"] < 60
    run_command(train, roots[1])
    for f in ("metrics/default/runs/tiny/protonet/seed-0/train_log.csv",
              "metrics/default/runs/tiny/protonet/seed-0/train.json"):
        assert (roots[0] / f).read_bytes() == (roots[1] / f).read_bytes(), f
    a, b = (torch.load(r / "models/default/tiny/protonet/seed-0/model.pt", weights_only=True)["state"]
            for r in roots)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_preset_named_with_configfile_replaces_params_yaml(tmp_path):
    """`--configfile preset.yaml` runs the preset's experiments and methods only (presets are
    whole params files), and every stage reads the preset, not params.yaml."""
    root = project_dir(tmp_path / "w")
    preset = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    preset["experiments"] = {"other": {**preset["experiments"]["tiny"], "shots": 2}}
    preset["methods"] = {"protonet": {"filters": 8}}
    (root / "preset.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))
    dry = run_command(["snakemake", "--cores", "1", "all", "-n", "--printshellcmds", "--configfile", "preset.yaml"],
               root).stdout
    cmds = [line[line.index("python -m mtml"):] for line in dry.splitlines() if "python -m mtml" in line]
    runs = sorted(c for c in cmds if " train " in c or " evaluate " in c)
    assert len(runs) == 2 and all("--experiment other --method protonet" in c for c in runs), cmds
    # The jobs get the preset in MTML_PARAMS (Snakemake passes the --configfile path made
    # absolute), not in their command: their code stays the same for every study.
    assert not any("--params" in c for c in cmds), cmds
    env = {**ENV, "MTML_PARAMS": str(root / "preset.yaml")}
    r = subprocess.run([sys.executable, "-m", "mtml", "validate"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "study 'preset'" in r.stdout, r.stderr


def _digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(f.relative_to(folder)): hashlib.md5(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_a_preset_runs_from_a_fresh_clone_beside_the_committed_default(tmp_path):
    """The README's run, then a preset, then the README's run again, in a fresh clone whose
    default study's metrics are committed: the preset runs (sharing the identical prepared
    data), leaves the default's metrics untouched, and the second default run has nothing to do."""
    default = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    default["study"] = "default"
    default["methods"] = {"protonet": {"filters": 8}}
    default["training"].update(iterations=4, val_interval=2)
    origin = project_dir(tmp_path / "origin", default)
    preset = {**default, "study": None, "experiments": {"tiny": {**default["experiments"]["tiny"], "shots": 2}}}
    del preset["study"]
    (origin / "configs").mkdir()
    (origin / "configs" / "tiny-2shot.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))
    shutil.copy(ROOT / ".gitignore", origin / ".gitignore")
    _git_dvc_init(origin)
    run_command(["snakemake", "--cores", "2", "all", "--quiet"], origin)
    run_command(["git", "add", "-A"], origin)
    run_command(["git", "commit", "-qm", "default results"], origin)

    clone = tmp_path / "clone"
    run_command(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    run_command(["snakemake", "--cores", "2", "all", "--quiet"], clone)  # the README's command
    before = _digests(clone / "metrics/default")
    run_command(["snakemake", "--cores", "2", "all", "--quiet", "--configfile", "configs/tiny-2shot.yaml"], clone)
    assert json.loads((clone / "metrics/tiny-2shot/summary.json").read_text())["tiny/protonet/test/glyphs"]["shots"] == 2
    assert _digests(clone / "metrics/default") == before  # the preset wrote into its own study
    assert len(list((clone / "data/processed/glyphs").iterdir())) == 1  # identical inputs: shared
    assert len(list((clone / "data/episodes/tiny").iterdir())) == 2  # other shots: its own manifests
    again = run_command(["snakemake", "--cores", "2", "all", "-n"], clone)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]
