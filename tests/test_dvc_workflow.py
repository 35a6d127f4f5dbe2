"""The DVC session of docs/dvc.md on the tiny params, in a temporary git repository.

- dvc.yaml keeps large outputs (data, models, traces) in the DVC cache, small metrics in git,
  and persists the training checkpoints (DVC does not delete them before a rerun).
- In this repository no cached output is tracked by git and all are git-ignored (else
  `dvc repro` in a fresh clone stops), and .dvc/config turns off analytics and update checks.
- Changing one method's hyperparameter makes `dvc status` list only that method's train and
  evaluate stages plus aggregate; `dvc exp run -S` reruns exactly those, `dvc exp show` lists
  the experiment with its params and metrics.
- `dvc metrics diff` / `dvc plots diff` between two git branches show the changed numbers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
# inner_lr listed (as in params.yaml): `-S key=value` only sets keys the file has.
METHODS = {"pixel-nn": {}, "maml": {"filters": 8, "inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 2}}

pytestmark = pytest.mark.slow


def _run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def _write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC repository with the pipeline reproduced and committed on `main`."""
    root = tmp_path_factory.mktemp("dvc")
    shutil.copy(ROOT / ".gitignore", root / ".gitignore")
    params = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    params["methods"] = METHODS
    _write_params(root, params)
    _run([sys.executable, "-m", "mtml", "dvc-yaml"], root)  # dvc.yaml of these params
    _run(["git", "init", "-q", "-b", "main"], root)
    _run(["git", "config", "user.email", "t@example.com"], root)
    _run(["git", "config", "user.name", "t"], root)
    _run(["dvc", "init", "-q"], root)
    _run(["dvc", "config", "core.analytics", "false"], root)
    _run(["dvc", "config", "core.check_update", "false"], root)
    _run(["dvc", "repro", "--quiet"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "baseline"], root)
    return root


def test_large_outputs_in_the_dvc_cache_metrics_in_git(repo):
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        outs = {str(Path(o.fs_path).relative_to(repo)): o for s in dvc.index.stages for o in s.outs}
    assert outs, "no stage outputs"
    for path, out in outs.items():
        if path.endswith("checkpoint.pt"):
            # Kept across reruns so an interrupted training resumes; never in git (/models/).
            assert out.persist and not out.use_cache, path
        elif path.startswith(("data/", "models/")) or path.endswith("trace.jsonl"):
            assert out.use_cache and not out.persist, path
        else:
            assert path.startswith("metrics/") and not out.use_cache, path
    tracked = set(_run(["git", "ls-files"], repo).split())
    assert not [f for f in tracked if f.startswith(("data/", "models/")) or f.endswith((".pt", "trace.jsonl"))]
    for meth in METHODS:
        for name in ("eval.json", "episodes.csv", "train_log.csv", "train.json"):
            assert f"metrics/default/runs/tiny/{meth}/seed-0/{name}" in tracked
        assert (repo / f"models/default/tiny/{meth}/seed-0/checkpoint.pt").exists()
    assert {"metrics/default/summary.json", "metrics/default/summary.md", "metrics/default/plots/accuracy.png",
            "dvc.lock"} <= tracked
    # The repository's .gitignore already ignores every cached output: DVC needed no .gitignore of
    # its own (else a Snakemake run, which writes the same files, then `git add -A` would commit them).
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob(".gitignore")) == [".dvc/.gitignore", ".gitignore"]
    # The lock file names the cached model, and the cache holds it.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = next(o["md5"] for o in lock["stages"]["train.tiny.maml.0"]["outs"] if o["path"].endswith("model.pt"))
    assert list((repo / ".dvc/cache").rglob(md5[2:])), md5
    assert _run(["git", "status", "--porcelain"], repo) == ""


def test_no_cached_output_is_tracked_or_unignored_in_this_repository():
    """`dvc repro` in a clone of this repository stops at any DVC-cached output that git tracks
    ("output ... is already tracked by SCM"), and one that git does not ignore would be committed
    by the first `git add -A` after a Snakemake run. Checked on the repository's own dvc.yaml,
    params.yaml, .gitignore and git index."""
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout: nothing is tracked")
    from dvc.repo import Repo

    with Repo(str(ROOT)) as dvc:
        cached = sorted({str(Path(o.fs_path).relative_to(ROOT)) for s in dvc.index.stages for o in s.outs
                         if o.use_cache})
    assert any(p.endswith("trace.jsonl") for p in cached) and any(p.endswith("model.pt") for p in cached), cached
    tracked = _run(["git", "ls-files", "-z", "--", *cached], ROOT).split("\0")
    tracked = [t for t in tracked if t]
    assert not tracked, f"git tracks DVC-cached outputs; untrack them: git rm --cached {' '.join(tracked)}"
    # (exit status 1 when none is ignored)
    check = subprocess.run(["git", "check-ignore", "--no-index", "--", *cached], cwd=ROOT, capture_output=True,
                           text=True)
    assert check.returncode in (0, 1), check.stderr
    ignored = set(check.stdout.split())
    unignored = [p for p in cached if p not in ignored]
    assert not unignored, f"DVC-cached outputs that .gitignore does not ignore: {unignored}"


def test_dvc_config_sends_nothing_home():
    """A clone's .dvc/config turns off DVC's usage analytics and update check (offline runs, CI)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    assert config.get("core", "analytics") == "false" and config.get("core", "check_update") == "false"


def test_experiment_reruns_one_method_and_branches_diff(repo):
    params = _params(repo)
    params["methods"]["maml"]["inner_lr"] = 0.1
    _write_params(repo, params)
    status = _run(["dvc", "status"], repo)
    changed = sorted(line.rstrip(":") for line in status.splitlines() if line and not line[0].isspace())
    assert changed == ["aggregate", "evaluate.tiny.maml.0", "train.tiny.maml.0"], status
    _run(["git", "checkout", "params.yaml"], repo)

    out = _run(["dvc", "exp", "run", "-S", "methods.maml.inner_lr=0.1", "-n", "maml-lr01"], repo)
    assert sorted(re.findall(r"Running stage '([^']+)'", out)) == ["aggregate", "evaluate.tiny.maml.0", "train.tiny.maml.0"]
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo))
    exps = {r["name"]: r["data"] for base in shown for e in base.get("experiments") or [] for r in e["revs"]}
    assert "maml-lr01" in exps, shown
    exp = exps["maml-lr01"]
    assert exp["params"]["params.yaml"]["data"]["methods"]["maml"]["inner_lr"] == 0.1
    summary = exp["metrics"]["metrics/default/summary.json"]["data"]
    assert summary == json.loads((repo / "metrics/default/summary.json").read_text())

    # The experiment becomes a git branch; diff it against main.
    _run(["dvc", "exp", "branch", "maml-lr01", "maml-lr"], repo)
    diff = json.loads(_run(["dvc", "metrics", "diff", "main", "maml-lr", "--json"], repo))["metrics/default/summary.json"]
    assert diff, "no metric changed"
    assert {key.split("/")[1] for key in diff} == {"maml"}, diff  # pixel-nn did not rerun
    base = json.loads(_run(["git", "show", "main:metrics/default/summary.json"], repo))
    for key, change in diff.items():
        row, field = key.rsplit(".", 1)
        assert change["old"] == base[row][field] and change["new"] == summary[row][field], key
    assert any(k.endswith(".accuracy") and c["diff"] != 0 for k, c in diff.items()), diff

    plots = json.loads(_run(["dvc", "plots", "diff", "main", "maml-lr", "--json"], repo))["data"]
    assert plots["metrics/default/runs/tiny/pixel-nn/seed-0/train_log.csv"] == []  # unchanged: nothing to show
    (vega,) = plots["metrics/default/runs/tiny/maml/seed-0/train_log.csv"]
    assert vega["revisions"] == ["main", "maml-lr"]
    rows = vega["content"]["data"]["values"]
    curves = {rev: [(r["iteration"], r["loss"], r["val_accuracy"]) for r in rows if r["rev"] == rev]
              for rev in ("main", "maml-lr")}
    assert len(curves["main"]) == len(curves["maml-lr"]) == params["training"]["iterations"]
    assert curves["main"] != curves["maml-lr"]
    assert {p["revisions"][0] for p in plots["metrics/default/plots/accuracy.png"]} == {"main", "maml-lr"}


def test_committed_dvc_yaml_is_generated_from_params_yaml():
    """dvc.yaml is `python -m mtml dvc-yaml` of params.yaml (the same Layout as the Snakemake
    rules), and a DVC stage run with stale paths says how to regenerate it."""
    from mtml.errors import UserError
    from mtml.layout import Layout
    from mtml.params import load, read, study
    from mtml.workflow_dvc import check_dvc_yaml, dvc_yaml_text

    default = load(ROOT / "params.yaml")
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml_text(Layout(".", default), ["params.yaml"]), \
        "dvc.yaml is stale: run `python -m mtml dvc-yaml`"
    check_dvc_yaml(Layout(ROOT, default))
    changed = read(ROOT / "params.yaml")
    changed["datasets"]["glyphs"]["options"] = {"drawers": 3}
    with pytest.raises(UserError, match=r"dvc.yaml does not match the params.*python -m mtml dvc-yaml"):
        check_dvc_yaml(Layout(ROOT, study(changed, ["params.yaml"])))


def test_aggregate_stage_depends_on_the_keys_that_choose_its_pairs():
    """DVC reruns aggregate when `reference` or `comparisons` change, and lists a key only
    when the params file has it (DVC stops on a params key the file lacks)."""
    from mtml.layout import Layout
    from mtml.params import load, read, study
    from mtml.workflow_dvc import dvc_stages

    default = read(ROOT / "params.yaml")
    assert dvc_stages(Layout(".", load(ROOT / "params.yaml")))["aggregate"]["params"] == ["experiments", "methods"]
    planned = study({**default, "comparisons": [["anil", "maml"]]}, ["params.yaml"])
    assert dvc_stages(Layout(".", planned))["aggregate"]["params"] == ["experiments", "methods", "comparisons"]
