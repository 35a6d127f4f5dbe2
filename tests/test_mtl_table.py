"""The mtl-table analysis (issue 16): Delta-MTL against the single-task baseline, the
reference comparison with CIs, the Pareto front, and its files on a tiny trained study."""

from __future__ import annotations

import copy
import json

import pytest

from mtml.analysis.mtl_table import mtl_table, pareto_front
from mtml.errors import UserError
from mtml.layout import Layout
from mtml.utils import write_json

SCENES = {"image_size": 16, "room_types": [8, 3, 3], "images_per_class": 8}
HP = {"algorithm": "mt-anil", "filters": 8, "inner_steps": 2, "eval_inner_steps": 4, "inner_lr": {"classification": 0.4}}
PARAMS = {
    "seed": 0, "device": "cpu", "threads": 1,
    "datasets": {"scenes": {"source": "scenes", "options": {**SCENES, "environments": [4, 1, 2]}}},
    "experiments": {"mt": {"kind": "multitask", "dataset": "scenes", "ways": 3, "shots": 2, "queries": 3,
                           "options": {"tasks": ["classification", "depth"], "dense_shots": 3, "dense_queries": 3}}},
    "methods": {"single": {**HP, "tasks": "single"},
                "hard-uncertainty": {**HP, "loss_weighting": "uncertainty"},
                "mmoe-pcgrad": {**HP, "architecture": "mmoe", "experts": 2, "optimiser": "pcgrad"}},
    "training": {"iterations": 6, "meta_batch": 1, "meta_lr": 0.005, "val_interval": 6, "val_episodes": 2},
    "evaluation": {"episodes": 4},
    "analyses": ["mtl-table"],
}


def _study(params=PARAMS):
    from mtml.params import study

    return study(copy.deepcopy(params))


def _write_run(layout, meth, cls, depth_mse, depth_acc, rss=100.0):
    rows = [{"split": "test", "dataset": "scenes", "task": "classification", "environment": "all", "subtasks": 10,
             "accuracy": cls[0], "accuracy_ci95": cls[1], "mse": None, "mse_ci95": None},
            {"split": "test", "dataset": "scenes", "task": "depth", "environment": "all", "subtasks": 10,
             "accuracy": depth_acc, "accuracy_ci95": 3.0, "mse": depth_mse[0], "mse_ci95": depth_mse[1]},
            {"split": "test", "dataset": "scenes", "task": "depth", "environment": "e7", "subtasks": 5,
             "accuracy": 0.0, "accuracy_ci95": 3.0, "mse": 9.0, "mse_ci95": 1.0}]  # per environment: not read
    write_json(layout.run_dir("mt", meth) / "details.json", {"kind": "multitask", "rows": rows})
    write_json(layout.run_dir("mt", meth) / "timing_train.json",
               {"train_seconds": 1.0, "seconds_per_iteration": 0.25, "peak_rss_mib": rss})


def test_pareto_front_keeps_the_non_dominated_points():
    pts = {"a": (50, 0.20), "b": (55, 0.18), "c": (60, 0.22), "d": (55, 0.18)}
    assert pareto_front(pts, (True, False)) == ["b", "c", "d"]   # ties do not dominate each other
    assert pareto_front(pts, (False, True)) == ["a", "c"]


def test_delta_mtl_reference_comparison_and_files(tmp_path):
    study = _study()
    layout = Layout(tmp_path, study)
    _write_run(layout, "single", (50.0, 2.0), (0.20, 0.01), 40.0)
    _write_run(layout, "hard-uncertainty", (55.0, 2.0), (0.18, 0.01), 44.0)
    _write_run(layout, "mmoe-pcgrad", (60.0, 1.0), (0.22, 0.01), 30.0)
    out = tmp_path / "out"
    out.mkdir()
    mtl_table(study, layout, out)
    (summary,) = json.loads((out / "table.json").read_text())
    rows = {r["method"]: r for r in summary["methods"]}
    assert summary["baseline"] == "single" and summary["reference"] == "hard-uncertainty"
    # 100/2 [(55 - 50)/50 - (0.18 - 0.20)/0.20] = 10; mmoe: 100/2 [0.2 - 0.1] = 5; its Acc: 100/2 [0.2 - 0.25]
    assert rows["hard-uncertainty"]["delta_mtl"]["test"] == pytest.approx(10.0)
    assert rows["mmoe-pcgrad"]["delta_mtl"]["test"] == pytest.approx(5.0)
    assert rows["mmoe-pcgrad"]["delta_mtl_acc"]["test"] == pytest.approx(-2.5)
    assert rows["single"]["delta_mtl"]["test"] == 0
    # 60 - 1 > 55 + 2 (CIs apart) on classification; worse on depth
    assert rows["mmoe-pcgrad"]["beats_reference"]["test"] == ["classification"]
    assert rows["single"]["beats_reference"]["test"] == []
    assert summary["pareto_front"]["test"] == ["hard-uncertainty", "mmoe-pcgrad"]
    md = (out / "table.md").read_text()
    assert "| mmoe-pcgrad* | mmoe | pcgrad | fixed | all | - | 60.0 ± 1.0 | 0.2200 ± 0.0100 | +5.00 | -2.50 |" in md
    assert (out / "pareto-mt-test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_a_single_task_method_the_error_names_the_fix(tmp_path):
    p = copy.deepcopy(PARAMS)
    del p["methods"]["single"]
    study = _study(p)
    layout = Layout(tmp_path, study)
    for m in study.methods:
        _write_run(layout, m, (50.0, 1.0), (0.2, 0.01), 40.0)
    with pytest.raises(UserError, match="add a method with 'tasks: single'"):
        mtl_table(study, layout, tmp_path)


@pytest.mark.slow
def test_mtl_table_on_a_tiny_trained_study(tmp_path, small_ops):
    import torch

    from mtml import stages

    study = _study()
    layout = Layout(tmp_path, study)
    stages.prepare(study, layout, "scenes")
    stages.build_episodes(study, layout, "mt")
    for m in study.methods:
        run = study.run("mt", m)
        stages.train(run, layout, torch.device("cpu"))
        stages.evaluate(run, layout, torch.device("cpu"))
        timing = json.loads((layout.run_dir("mt", m) / "timing_train.json").read_text())
        assert timing["timed_iterations"] == 6 and timing["seconds_per_iteration"] > 0 and timing["peak_rss_mib"] > 10
    out = stages.analyse(study, layout, "mtl-table")
    assert out == layout.analysis("mtl-table")
    (summary,) = json.loads((out / "table.json").read_text())
    assert [r["method"] for r in summary["methods"]] == list(PARAMS["methods"])
    assert all(r["results"]["test"]["depth"]["mse_ci95"] is not None for r in summary["methods"])
    assert "## mt: test" in (out / "table.md").read_text()
    assert (out / "pareto-mt-test.png").stat().st_size > 1000


def test_the_mtl_overview_preset_has_its_baseline_reference_and_teacher():
    from pathlib import Path

    from mtml.analysis.mtl_table import baseline_method
    from mtml.params import load
    from mtml.workflow_dvc import dvc_stages

    root = Path(__file__).resolve().parents[1]
    study = load([root / "configs/mtl_overview.yaml"])
    assert study.name == "mtl_overview" and "mtl-table" in study.analyses
    assert baseline_method(study, "scenes-mt") == "single"
    ref = study.run("scenes-mt", study.reference).hparams
    assert (ref["architecture"], ref["loss_weighting"], ref["optimiser"]) == ("hard", "uncertainty", "sum")
    layout = Layout(Path("."), study)
    teacher = str(layout.model("scenes-mt", "single"))
    assert teacher in dvc_stages(layout)["train.scenes-mt.hard-distill.0"]["deps"]
    quick = load([root / "configs/mtl_overview.yaml", root / "configs/quick/mtl_overview_quick.yaml"])
    assert quick.name == "mtl_overview_quick" and quick.methods == study.methods
