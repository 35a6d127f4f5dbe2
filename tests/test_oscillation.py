"""metalstm-oscillation (Aimen et al. 2021, Fig. 1): the measures, the per-update losses
MetaLSTM records, and the analysis on run files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mtml.analysis.oscillation import metalstm_oscillation, oscillation_measures
from mtml.errors import UserError
from mtml.layout import Layout
from mtml.methods import build

from pipeline_helpers import random_episode, run_pipeline, tiny_params


def test_measures_on_hand_sequences():
    zigzag = oscillation_measures([0, 1, 0, 1, 0], window=3)
    # trend at steps 1..3: 1/3, 2/3, 1/3 -> residuals 2/3, -2/3, 2/3
    assert zigzag["mean_abs_change"] == 1.0 and zigzag["reversal_rate"] == 1.0
    assert math.isclose(zigzag["detrended_sd"], np.std([2 / 3, -2 / 3, 2 / 3]))
    line = oscillation_measures(np.linspace(2.0, 1.0, 101), window=25)
    assert line["reversal_rate"] == 0.0 and line["detrended_sd"] < 1e-12
    assert math.isclose(line["mean_abs_change"], 0.01)
    assert oscillation_measures([3, 1, 2, 0], window=4)["steps"] == 4   # an even window shrinks to odd
    rng = np.random.default_rng(0)
    noise = oscillation_measures(rng.normal(size=20000))
    assert abs(noise["reversal_rate"] - 2 / 3) < 0.02                   # independent noise: 2/3
    with pytest.raises(ValueError):
        oscillation_measures([1.0, 2.0])


def test_metalstm_records_one_loss_per_task_and_metalstm_pp_one_per_batch():
    torch.manual_seed(0)
    batch = [random_episode(3, 2, 2, (1, 28, 28)) for _ in range(3)]
    for name, n in (("metalstm", 3), ("metalstm++", 1)):
        torch.manual_seed(0)
        learner = build(name, {"filters": 4, "inner_steps": 1}, (1, 28, 28), 3)
        stats = learner.train_step(batch, learner.make_optimizer(1e-3), lambda: batch)
        losses = stats["trace"]["update_losses"]
        assert len(losses) == n and math.isclose(np.mean(losses), stats["loss"], rel_tol=1e-5), name


def _study():
    return tiny_params(methods={"metalstm": {"filters": 4}, "metalstm++": {"filters": 4}, "protonet": {"filters": 4}})


def _write_run(layout, meth, per_update, seed=None):
    """A run folder with the given per-update losses (a list per iteration)."""
    d = layout.run_dir("tiny", meth, seed)
    d.mkdir(parents=True)
    (d / "trace.jsonl").write_text("".join(json.dumps({"iteration": i + 1, "update_losses": u}) + "\n"
                                           for i, u in enumerate(per_update)))
    pd.DataFrame({"iteration": range(1, len(per_update) + 1), "loss": [np.mean(u) for u in per_update],
                  "train_accuracy": 50.0, "val_accuracy": np.nan}).to_csv(d / "train_log.csv", index=False)


def test_the_analysis_measures_each_method_in_both_views(tmp_path):
    study = _study()
    layout = Layout(tmp_path, study)
    updates = np.linspace(1.6, 1.0, 180) + 0.3 * (-1.0) ** np.arange(180)      # zigzag between updates
    _write_run(layout, "metalstm", updates.reshape(60, 3).tolist())
    _write_run(layout, "metalstm++", [[t] for t in np.linspace(1.6, 1.0, 60)])   # smooth
    out = tmp_path / "out"
    out.mkdir()
    metalstm_oscillation(study, layout, out)
    table = pd.read_csv(out / "oscillation.csv").set_index(["method", "view"])
    assert set(table.index) == {(m, v) for m in ("metalstm", "metalstm++") for v in ("update", "iteration")}
    assert table.loc[("metalstm", "update"), "steps"] == 180 and table.loc[("metalstm++", "update"), "steps"] == 60
    assert math.isclose(table.loc[("metalstm", "update"), "mean_abs_change"], 0.6, rel_tol=0.01)
    assert table.loc[("metalstm", "update"), "reversal_rate"] == 1.0
    assert table.loc[("metalstm++", "update"), "reversal_rate"] == 0.0
    assert table.loc[("metalstm++", "update"), "detrended_sd"] < 1e-9
    assert (out / "oscillation.png").read_bytes()[:4] == b"\x89PNG"
    assert "| tiny | metalstm | update | 180 |" in (out / "oscillation.md").read_text()


def test_with_several_seeds_the_table_is_the_mean_of_the_seeds(tmp_path):
    from mtml.params import study as make_study

    study = make_study({**_study().params, "seeds": [0, 1]}, ["tiny.yaml"])
    layout = Layout(tmp_path, study)
    for seed, amplitude in ((0, 0.3), (1, 0.1)):
        updates = np.linspace(1.6, 1.0, 180) + amplitude * (-1.0) ** np.arange(180)
        _write_run(layout, "metalstm", updates.reshape(60, 3).tolist(), seed)
        _write_run(layout, "metalstm++", [[t] for t in np.linspace(1.6, 1.0, 60)], seed)
    out = tmp_path / "out"
    out.mkdir()
    metalstm_oscillation(study, layout, out)
    per_seed = pd.read_csv(out / "oscillation.csv").set_index(["method", "view", "seed"])
    assert math.isclose(per_seed.loc[("metalstm", "update", 0), "mean_abs_change"], 0.6, rel_tol=0.01)
    assert math.isclose(per_seed.loc[("metalstm", "update", 1), "mean_abs_change"], 0.2, rel_tol=0.03)
    md = (out / "oscillation.md").read_text()
    assert "Over 2 training seeds (0, 1): each measure is the mean" in md and "| tiny | metalstm | update | 180 | " in md
    mean = (per_seed.loc[("metalstm", "update", 0), "mean_abs_change"] + per_seed.loc[("metalstm", "update", 1),
                                                                                    "mean_abs_change"]) / 2
    assert f"| {mean:.4f} |" in md


def test_the_analysis_names_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="needs a method with algorithm metalstm"):
        metalstm_oscillation(tiny_params(), Layout(tmp_path, tiny_params()), tmp_path)
    study = _study()
    layout = Layout(tmp_path, study)
    _write_run(layout, "metalstm", [[1.0, 2.0]] * 5)
    (layout.run_dir("tiny", "metalstm") / "trace.jsonl").write_text('{"iteration": 1}\n')
    with pytest.raises(UserError, match="no update_losses.*rerun the train stage"):
        metalstm_oscillation(study, layout, tmp_path)


@pytest.mark.slow
def test_the_analysis_draws_from_trained_runs(tmp_path):
    from mtml import stages

    study = tiny_params(methods={"metalstm": {"filters": 4}, "metalstm++": {"filters": 4}},
                        training={"iterations": 12, "meta_batch": 2, "meta_lr": 0.003, "val_interval": 6,
                                  "val_episodes": 4}, evaluation={"episodes": 4}, analyses=["metalstm-oscillation"])
    run_pipeline(study, tmp_path)
    out = stages.analyse(study, Layout(tmp_path, study), "metalstm-oscillation")
    table = pd.read_csv(out / "oscillation.csv").set_index(["method", "view"])
    assert table.loc[("metalstm", "update"), "steps"] == 24 and table.loc[("metalstm++", "update"), "steps"] == 12
    assert (table["steps"].xs("iteration", level="view") == 12).all()
