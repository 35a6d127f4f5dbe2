"""Per-task results over training seeds (`mtml.analysis.seed_rows`): one seed is the run's
details.json as written; several fold every seed's subtasks into the mean and the CI."""

from __future__ import annotations

import pytest
from test_mtl_table import PARAMS, _study, _write_run

from mtml.analysis.multitask import results_table
from mtml.analysis.seed_rows import seed_rows
from mtml.errors import UserError
from mtml.layout import Layout


def _runs(layout, seeds_and_shifts):
    for seed, shift in seeds_and_shifts:
        _write_run(layout, "single", (50.0 + shift, 2.0), (0.20 + shift / 100, 0.01), 60.0, seed=seed)
        _write_run(layout, "hard-uncertainty", (55.0, 2.0), (0.18, 0.01), 60.0, seed=seed)
        _write_run(layout, "mmoe-pcgrad", (60.0, 1.0), (0.22, 0.01), 60.0, seed=seed)


def test_one_seed_gives_the_details_rows_as_written(tmp_path):
    study = _study()
    layout = Layout(tmp_path, study)
    _runs(layout, [(None, 0.0)])
    rows = seed_rows(study, layout, "mt", "single")
    assert [(r["task"], r["accuracy"], r["accuracy_ci95"], r["mse"], r["seeds"]) for r in rows] == [
        ("classification", 50.0, 2.0, None, 1), ("depth", 60.0, 3.0, 0.20, 1)]  # 'e7' rows are left out


def test_several_seeds_average_the_subtasks_and_widen_the_ci_by_the_seed_spread(tmp_path):
    same, spread = (Layout(tmp_path / d, _study({**PARAMS, "seeds": [0, 1]})) for d in ("same", "spread"))
    _runs(same, [(1, 0.0), (None, 0.0)])
    _runs(spread, [(1, 4.0), (None, 0.0)])  # seed 1 of `single`: +4 points accuracy, +0.04 MSE
    study = _study({**PARAMS, "seeds": [0, 1]})
    a = {r["task"]: r for r in seed_rows(study, same, "mt", "single")}
    b = {r["task"]: r for r in seed_rows(study, spread, "mt", "single")}
    assert a["classification"]["accuracy"] == pytest.approx(50.0)
    assert b["classification"]["accuracy"] == pytest.approx(52.0)
    assert b["depth"]["mse"] == pytest.approx(0.22) and b["depth"]["seeds"] == 2 and b["depth"]["subtasks"] == 10
    # identical seeds: about the subtasks' CI; seeds 4 points apart: the CI must cover that spread
    assert a["classification"]["accuracy_ci95"] < 5.0 < b["classification"]["accuracy_ci95"]
    assert b["depth"]["mse_ci95"] > a["depth"]["mse_ci95"]
    # the multitask-table analysis reads the same rows
    frame = results_table(study, spread)
    mine = frame[(frame["method"] == "single") & (frame["task"] == "classification")].iloc[0]
    assert mine["accuracy"] == pytest.approx(52.0) and mine["seeds"] == 2


def test_a_seed_without_its_episodes_names_the_file(tmp_path):
    study = _study({**PARAMS, "seeds": [0, 1]})
    layout = Layout(tmp_path, study)
    _runs(layout, [(None, 0.0)])
    with pytest.raises(UserError, match="seed-1/episodes.csv is missing; run the evaluate stage of mt/single seed 1"):
        seed_rows(study, layout, "mt", "single")
