"""Studies and their layout: names, where each file lives, what studies share, and an
experiment kind added as a plug-in (defined here) running through both front doors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mtml.errors import UserError
from mtml.kinds import KINDS, Kind, ManifestSpec, get_kind
from mtml.layout import Layout
from mtml.params import load, study
from mtml.utils import derive_seed

from pipeline_helpers import ENV, ROOT, TINY, project_dir, run_command, tiny_params


# --------------------------------------------------------------------------- a toy kind
class Rotated(Kind):
    """N-way K-shot tasks on the dataset's images turned upside down: a kind that differs from
    few-shot in its data only, written against the Kind interface alone."""

    name = "rotated"

    def manifests(self, study, exp):
        return [ManifestSpec(f"{role}.parquet", exp.dataset, role, role, n,
                             derive_seed(study.seed, exp.name, role, exp.ways, exp.shots))
                for role, n in (("val", exp.training["val_episodes"]), ("test", exp.evaluation["episodes"]))]

    def build_manifest(self, exp, spec, data):
        from mtml.episodes.manifest import build_manifest

        return build_manifest(data, spec.split, exp.ways, exp.shots, exp.queries, spec.episodes, spec.seed)

    def load(self, exp, path, dataset):
        from dataclasses import replace

        data = super().load(exp, path, dataset)
        return replace(data, images=np.ascontiguousarray(data.images[:, :, ::-1, ::-1]))

    def context(self, exp, banks):
        from mtml.methods.base import LearnerContext

        return LearnerContext(banks[exp.dataset].image_shape, exp.ways)

    def stream(self, exp, banks, seed):
        from mtml.episodes.sampler import EpisodeStream

        return EpisodeStream(banks[exp.dataset], "train", exp.ways, exp.shots, exp.queries, seed)

    def validate(self, exp, learner, banks, val):
        from mtml.training.trainer import episodes_accuracy

        return float(np.mean([episodes_accuracy(learner, banks[s.dataset], m) for s, m in val]))

    def score(self, exp, learner, bank, spec, manifest, label):
        from mtml.evaluation.evaluate import evaluate_manifest

        return evaluate_manifest(learner, bank, manifest, label)

    def summarise(self, run, learner, scored):
        from mtml.evaluation.evaluate import summary_row

        return [summary_row(run, s.role, s.dataset, f) for s, f in scored], {"rows": [], "rotated": 180}


TOY = "test_study_layout:Rotated"


def _toy_params(kind=TOY) -> dict:
    p = copy.deepcopy(TINY)
    p["experiments"] = {"upside-down": {"kind": kind, "dataset": "glyphs", "ways": 3, "shots": 1, "queries": 3}}
    p["methods"] = {"protonet": {"filters": 8}}
    p["training"].update(iterations=4, val_interval=2, val_episodes=4)
    p["evaluation"]["episodes"] = 6
    return p


# --------------------------------------------------------------------------- names and paths
def test_a_study_is_named_by_its_key_else_its_file():
    assert load(ROOT / "params.yaml").name == "default"
    assert load(ROOT / "configs/tiny.yaml").name == "tiny"
    assert study({**TINY, "study": "mine"}, ["configs/tiny.yaml"]).name == "mine"
    assert study(TINY, ["params.yaml"]).name == "default"
    with pytest.raises(UserError, match=r"params key 'study'"):
        study({**TINY, "study": "../up"}, [])


def test_outputs_live_in_the_studys_folders_and_inputs_are_keyed_by_content(tmp_path):
    a = Layout(tmp_path, tiny_params())                      # study "tiny"
    b = Layout(tmp_path, study({**TINY, "study": "other"}))
    assert a.model("tiny", "maml") == tmp_path / "models/tiny/tiny/maml/seed-0/model.pt"
    assert a.run_dir("tiny", "maml") == tmp_path / "metrics/tiny/runs/tiny/maml/seed-0"
    # training seeds: one level per seed; the data and the manifests stay those of `seed`
    seeded = Layout(tmp_path, study({**TINY, "seeds": [3, 1]}, ["configs/tiny.yaml"]))
    assert seeded.run_dir("tiny", "maml", 1) == tmp_path / "metrics/tiny/runs/tiny/maml/seed-1"
    assert seeded.model("tiny", "maml") == tmp_path / "models/tiny/tiny/maml/seed-3/model.pt"
    assert seeded.episodes("tiny") == a.episodes("tiny") and seeded.prepared("glyphs") == a.prepared("glyphs")
    assert [r.seed for r in seeded.study.runs()][:2] == [3, 1]
    assert a.summary() == tmp_path / "metrics/tiny/summary.json"
    assert b.summary() == tmp_path / "metrics/other/summary.json"
    # identical settings: the same prepared data and manifests
    assert a.prepared("glyphs") == b.prepared("glyphs") and a.episodes("tiny") == b.episodes("tiny")
    assert a.prepared("glyphs").parent == tmp_path / "data/processed/glyphs"
    changed = copy.deepcopy(TINY)
    changed["datasets"]["glyphs"]["options"]["drawers"] = 10
    c = Layout(tmp_path, study(changed))
    assert c.prepared("glyphs") != a.prepared("glyphs") and c.prepared("glyphs-shifted") == a.prepared("glyphs-shifted")
    assert c.episodes("tiny") != a.episodes("tiny")  # built from other data
    # a method's hyperparameters move no input
    d = Layout(tmp_path, study({**TINY, "methods": {"maml": {"filters": 4}}}))
    assert d.episodes("tiny") == a.episodes("tiny")
    shots = copy.deepcopy(TINY)
    shots["experiments"]["tiny"]["shots"] = 2
    e = Layout(tmp_path, study(shots))
    assert e.prepared("glyphs") == a.prepared("glyphs") and e.episodes("tiny") != a.episodes("tiny")


def test_a_run_resolves_its_kind_method_and_training_once():
    p = copy.deepcopy(TINY)
    p["experiments"]["tiny"]["training"] = {"meta_batch": 3}
    p["experiments"]["tiny"]["methods"] = {"maml": {"inner_steps": 2}}
    run = study(p).run("tiny", "maml")
    assert run.experiment.kind.name == "fewshot" and run.cls.algorithm == "maml"
    assert run.hparams["inner_steps"] == 2 and run.hparams["filters"] == 16
    assert run.training["meta_batch"] == 3 and run.training["iterations"] == TINY["training"]["iterations"]
    assert run.fingerprint({"data": 1}) != run.fingerprint({"data": 2})  # inputs are part of it


def test_kinds_resolve_by_name_or_module_reference():
    assert set(KINDS) == {"fewshot", "multimodal", "multitask"}
    assert get_kind("fewshot").name == "fewshot"
    assert isinstance(get_kind(TOY), Rotated)
    with pytest.raises(UserError, match=r"kind' is 'nope'; allowed: fewshot, multimodal, multitask"):
        study(_toy_params("nope"))
    with pytest.raises(UserError, match=r"cannot be imported"):
        study(_toy_params("no_such_module:Kind"))


# --------------------------------------------------------------------------- the toy kind end to end
def test_a_kind_registered_by_one_line_runs_in_process(tmp_path, monkeypatch):
    from pipeline_helpers import run_pipeline

    monkeypatch.setitem(KINDS, "rotated", TOY)  # the one registry line a new kind adds
    s = study(_toy_params("rotated"))
    rows = run_pipeline(s, tmp_path)[("upside-down", "protonet")]
    assert [(r["split"], r["episodes"]) for r in rows] == [("test", 6)]
    details = json.loads((Layout(tmp_path, s).run_dir("upside-down", "protonet") / "details.json").read_text())
    assert details == {"kind": "rotated", "rows": [], "rotated": 180}


@pytest.mark.slow
def test_a_plugin_kind_runs_through_both_front_doors(tmp_path):
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), ENV.get("PYTHONPATH")]))}
    smk = project_dir(tmp_path / "smk", _toy_params(), env)
    run_command(["snakemake", "--cores", "2", "all", "--quiet"], smk, env=env)
    dvc = project_dir(tmp_path / "dvc", _toy_params(), env)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "--quiet"]):
        run_command(cmd, dvc, env=env)
    files = {}
    for root in (smk, dvc):
        files[root] = sorted(str(f.relative_to(root)) for top in ("data/episodes", "models", "metrics")
                             for f in (root / top).rglob("*") if f.is_file() and f.name != ".snakemake_timestamp")
    assert files[smk] == files[dvc]
    for f in files[smk]:
        if Path(f).name in ("eval.json", "episodes.csv", "details.json", "train_log.csv"):  # (not timings)
            assert (smk / f).read_bytes() == (dvc / f).read_bytes(), f
    summary = json.loads((smk / "metrics/default/summary.json").read_text())
    assert list(summary) == ["upside-down/protonet/test/glyphs/seed-0", "upside-down/protonet/test/glyphs"]


def test_cli_names_a_missing_params_file_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mtml", "validate", "--params", str(tmp_path / "nope.yaml")],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(TINY))
    r = run_command([sys.executable, "-m", "mtml", "validate", "--params", str(p)], tmp_path)
    assert "study 'p'" in r.stdout


def test_a_checkpoint_of_other_data_is_discarded_not_resumed(tmp_path, capsys):
    """Issue 13, fault 1: a finished run's checkpoint must not be reused after its data changed."""
    from pipeline_helpers import run_pipeline

    p = copy.deepcopy(TINY)
    p["methods"] = {"protonet": {"filters": 4}}
    p["training"].update(iterations=4, val_interval=2)
    run_pipeline(study(p), tmp_path / "shared")
    p["datasets"]["glyphs"]["options"]["drawers"] = 10  # other data, same run folder
    changed = study(p)
    capsys.readouterr()
    again = run_pipeline(changed, tmp_path / "shared")
    assert "discarding" in capsys.readouterr().out
    fresh = run_pipeline(changed, tmp_path / "fresh")
    assert again == fresh
    layouts = [Layout(tmp_path / r, changed) for r in ("shared", "fresh")]
    logs = [(lay.run_dir("tiny", "protonet") / "train_log.csv").read_text() for lay in layouts]
    assert logs[0] == logs[1]
