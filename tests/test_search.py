"""Hyperparameter search (params `search`, mtml.search): seeded draws, selection, the stage
graph of both front doors, and a tiny search end to end."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import yaml

from mtml.errors import UserError
from mtml.layout import Layout
from mtml.params import load, study
from mtml.search import read_selection, resolve_run, run_select, select
from mtml.workflow_dvc import dvc_stages

from pipeline_helpers import ENV, ROOT, TINY, project_dir, run_command

SPACE = {"training.meta_lr": {"log_uniform": [1.0e-4, 1.0e-2]},
         "inner_lr": {"uniform": [0.1, 0.5]},
         "inner_steps": {"choice": [1, 2]}}


def _params(trials=4, iterations=6, space=SPACE, seed=0, **extra) -> dict:
    p = copy.deepcopy(TINY)
    p["search"] = {"maml": {"trials": trials, "iterations": iterations, "seed": seed,
                            "space": copy.deepcopy(space), **extra}}
    return p


def test_trial_configs_are_the_same_on_every_load_and_inside_their_ranges(tmp_path):
    configs = study(_params(trials=200)).trial_configs("maml")
    assert configs == study(_params(trials=200)).trial_configs("maml")
    # another process (no state shared with this one) draws the same values
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(_params(trials=200)))
    code = ("import json,sys; from mtml.params import load; "
            "print(json.dumps(load(sys.argv[1]).trial_configs('maml')))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.yaml")], env=ENV, check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == configs
    assert study(_params(trials=200, seed=1)).trial_configs("maml") != configs
    assert all(set(c) == set(SPACE) for c in configs)
    lrs = [c["training.meta_lr"] for c in configs]
    assert all(1e-4 <= v <= 1e-2 for v in lrs)
    assert all(0.1 <= c["inner_lr"] <= 0.5 for c in configs)
    assert {c["inner_steps"] for c in configs} == {1, 2}
    # log-uniform: about half below the geometric mean 1e-3 (uniform would put ~9% there)
    below = sum(v < 1e-3 for v in lrs) / len(lrs)
    assert 0.38 < below < 0.62, below
    below = sum(c["inner_lr"] < 0.3 for c in configs) / len(configs)
    assert 0.38 < below < 0.62, below   # uniform: half below the midpoint


def test_a_trial_trains_its_configuration_for_the_search_iterations():
    s = study(_params())
    config = s.trial_configs("maml")[2]
    trial = s.trial("tiny", "maml", 2)
    assert trial.hparams["inner_lr"] == config["inner_lr"] and trial.hparams["inner_steps"] == config["inner_steps"]
    assert trial.training["meta_lr"] == config["training.meta_lr"] and trial.training["iterations"] == 6
    assert trial.hparams["filters"] == 16 and trial.seed == s.seeds[0] and trial.label == "tiny/maml/trial-2"
    assert s.run("tiny", "maml").training["iterations"] == 30   # the final run trains in full
    # unsearched methods and experiments are untouched
    assert not s.searched("tiny", "protonet") and s.searched("tiny", "maml")
    with pytest.raises(UserError, match="not searched"):
        s.trial("tiny", "protonet", 0)


def test_select_picks_the_best_validation_score_and_the_final_run_uses_it(tmp_path):
    assert select([50.0, 71.5, 60.0, 71.5]) == 1     # ties: the lower trial
    s = study(_params())
    layout = Layout(tmp_path, s)
    scores = [55.0, 62.5, 48.0, 61.0]
    for t, score in enumerate(scores):
        (layout.trial_dir("tiny", "maml", t)).mkdir(parents=True)
        (layout.trial_dir("tiny", "maml", t) / "train.json").write_text(
            json.dumps({"iterations": 6, "best_iteration": 6, "best_val_accuracy": score}))
    with pytest.raises(UserError, match="selection.json is missing.*mtml select"):
        resolve_run(s, layout, "tiny", "maml")
    record = run_select(s, layout, "tiny", "maml")
    best = s.trial_configs("maml")[1]
    assert record["selected"] == 1 and record["config"] == best
    assert read_selection(layout.selection("tiny", "maml"), "tiny", "maml") == best
    final = resolve_run(s, layout, "tiny", "maml")
    assert final.hparams["inner_lr"] == best["inner_lr"] and final.training["meta_lr"] == best["training.meta_lr"]
    assert final.training["iterations"] == 30 and final.trial is None
    assert resolve_run(s, layout, "tiny", "protonet").hparams == s.run("tiny", "protonet").hparams
    table = layout.search_table("tiny", "maml").read_text().splitlines()
    rows = [r for r in table if r.startswith("| ") and r[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [1, 3, 0, 2]   # best first
    assert rows[0].endswith("| **yes** |") and not any("yes" in r for r in rows[1:])


@pytest.mark.parametrize("change,pattern", [
    ({"space": {"inner_lr": {"log_uniform": [0, 0.5]}}}, r"'search\.maml\.space\.inner_lr\.log_uniform' needs low > 0"),
    ({"space": {"inner_lr": {"uniform": [0.5, 0.1]}}}, r"'search\.maml\.space\.inner_lr\.uniform' must be \[low, high\]"),
    ({"space": {"inner_lr": {"normal": [0, 1]}}}, r"'search\.maml\.space\.inner_lr' must be one range"),
    ({"space": {"inner_stpes": {"choice": [1]}}}, r"'methods\.maml\.inner_stpes' is not a maml hyperparameter.*search\.maml\.space"),
    ({"space": {"inner_steps": {"choice": [1, -1]}}}, r"'methods\.maml\.inner_steps' must be .* got -1 .*bound of its 'inner_steps'"),
    ({"space": {"training.iterations": {"choice": [5]}}}, r"'search\.maml\.space\.training\.iterations' cannot be searched"),
    ({"space": {}}, r"'search\.maml\.space' is empty"),
    ({"experiments": ["nope"]}, r"'search\.maml\.experiments' names experiment 'nope'"),
    ({"trails": 3}, r"'search\.maml\.trails' is unknown"),
])
def test_a_bad_search_block_is_one_line_naming_its_key(change, pattern):
    p = _params()
    p["search"]["maml"].update(change)
    with pytest.raises(UserError, match=pattern):
        study(p)
    p = _params()
    p["search"]["nope"] = p["search"].pop("maml")
    with pytest.raises(UserError, match=r"'search\.nope' names method 'nope'"):
        study(p)


def test_dvc_yaml_lists_trials_then_select_then_the_final_runs():
    s = study(_params(trials=3))
    layout = Layout(".", s)
    names = list(dvc_stages(layout))
    order = [n for n in names if n.split(".")[0] in ("trial", "select", "train", "evaluate") and ".maml" in n]
    assert order == ["trial.tiny.maml.0", "trial.tiny.maml.1", "trial.tiny.maml.2", "select.tiny.maml",
                     "train.tiny.maml.0", "evaluate.tiny.maml.0"]
    stages = dvc_stages(layout)
    trial_outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["trial.tiny.maml.1"]["outs"]]
    assert "metrics/default/search/tiny/maml/trial-1/train.json" in trial_outs
    assert stages["select.tiny.maml"]["deps"] == [f"metrics/default/search/tiny/maml/trial-{t}/train.json" for t in range(3)]
    selection = "metrics/default/search/tiny/maml/selection.json"
    assert selection in stages["train.tiny.maml.0"]["deps"] and selection in stages["evaluate.tiny.maml.0"]["deps"]
    assert not any(selection in d for d in stages["train.tiny.protonet.0"]["deps"])
    assert "search.maml" in stages["trial.tiny.maml.0"]["params"]


def test_snakemake_schedules_one_job_per_trial_then_select_then_the_final_run(tmp_path):
    smk = project_dir(tmp_path, _params(trials=3))
    dry = run_command(["snakemake", "--cores", "1", "all", "-n", "--printshellcmds"], smk).stdout
    cmds = [line[line.index("python -m mtml"):] for line in dry.splitlines() if "python -m mtml" in line]
    maml = [c for c in cmds if "--method maml" in c]
    assert [c.split()[3] for c in maml] == ["train"] * 3 + ["select", "train", "evaluate"], maml
    assert sorted(c.split("--trial ")[1].split()[0] for c in maml[:3]) == ["0", "1", "2"]
    assert "--trial" not in maml[4]
    assert not any("--trial" in c or " select " in c for c in cmds if "--method protonet" in c)


def test_the_task_attention_preset_states_the_papers_search():
    preset = load(ROOT / "configs/task_attention_miniimagenet.yaml")
    for method, search in preset.searches.items():
        assert search.trials == 30 and search.iterations == 5000
        assert search.space["training.meta_lr"] == ("log_uniform", (1e-4, 1e-2))
        assert search.space["inner_lr"] == ("log_uniform", (1e-2, 0.5))
        assert ("attention_lr" in search.space) == method.startswith("ta-")
        if method.startswith("ta-"):
            assert search.space["attention_lr"] == ("log_uniform", (1e-4, 1e-2))
        assert ("lambda" in search.space) == (method == "taml")
    assert set(preset.searches) == set(preset.methods)
    assert preset.params["training"]["iterations"] == 55000 and preset.params["evaluation"]["episodes"] == 300
    assert preset.params["training"]["meta_batch"] == 4
    assert preset.run("mini-5w1s", "maml").hparams["inner_steps"] == 5
    assert preset.trial("mini-10w5s", "maml", 0).hparams["inner_steps"] == 2
    assert math.isclose(preset.searches["taml"].space["lambda"][1][0], 1e-2)


def _tiny_search() -> dict:
    p = _params(trials=2, iterations=4)
    p["methods"] = {"maml": {"filters": 8}}
    p["training"].update(iterations=6, val_interval=3, val_episodes=6)
    p["evaluation"]["episodes"] = 10
    return p


@pytest.mark.slow
def test_a_tiny_search_runs_end_to_end_through_snakemake(tmp_path):
    smk = project_dir(tmp_path, _tiny_search())
    run_command(["snakemake", "--cores", "2", "all", "--quiet"], smk)
    s = load(smk / "params.yaml")
    layout = Layout(smk, s)
    scores = [json.loads((layout.trial_dir("tiny", "maml", t) / "train.json").read_text()) for t in range(2)]
    assert [r["iterations"] for r in scores] == [4, 4]
    record = json.loads(layout.selection("tiny", "maml").read_text())
    assert record["selected"] == select([r["best_val_accuracy"] for r in scores])
    assert record["config"] == s.trial_configs("maml")[record["selected"]]
    assert json.loads((layout.run_dir("tiny", "maml") / "train.json").read_text())["iterations"] == 6
    # the final run trained with the selected configuration: its checkpoint's fingerprint is that
    # run's, not the one of the method's params as given
    from mtml.stages import input_hashes
    from mtml.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(layout.checkpoint("tiny", "maml"), "cpu")
    inputs = input_hashes(s.experiment("tiny"), layout)
    assert ckpt["fingerprint"] == resolve_run(s, layout, "tiny", "maml").fingerprint(inputs)
    assert ckpt["fingerprint"] != s.run("tiny", "maml").fingerprint(inputs)
    assert (layout.run_dir("tiny", "maml") / "eval.json").exists()
    assert "**yes**" in layout.search_table("tiny", "maml").read_text()
    run_command(["snakemake", "--report", "report.html"], smk)   # the trials table is in the report
    html = (smk / "report.html").read_text()
    assert "Hyperparameter search of" in html and "**yes**" in html


@pytest.mark.slow
def test_dvc_repro_runs_the_same_search(tmp_path):
    """dvc repro schedules the trials, the selection and the final run like Snakemake, with
    the same results (a stage of its own per trial; `search.<method>` as a params key)."""
    roots = {door: project_dir(tmp_path / door, _tiny_search()) for door in ("smk", "dvc")}
    run_command(["snakemake", "--cores", "2", "all", "--quiet"], roots["smk"])
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "--quiet"]):
        run_command(cmd, roots["dvc"])
    s = load(roots["dvc"] / "params.yaml")
    for root in roots.values():
        assert Layout(root, s).selection("tiny", "maml").exists()
    files = [Layout(".", s).selection("tiny", "maml"), Layout(".", s).search_table("tiny", "maml"),
             *[Layout(".", s).trial_dir("tiny", "maml", t) / "train_log.csv" for t in range(2)],
             Layout(".", s).run_dir("tiny", "maml") / "eval.json"]
    for f in files:
        assert (roots["smk"] / f).read_bytes() == (roots["dvc"] / f).read_bytes(), f
    status = run_command(["dvc", "status"], roots["dvc"]).stdout
    assert "changed" not in status, status
