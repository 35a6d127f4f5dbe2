"""params.yaml validation: every mistake gives one message naming the key and the fix."""

import copy
from pathlib import Path

import pytest
import yaml

from mtml.errors import UserError
from mtml.params import deep_merge, load, study, validate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def _with(path, value):
    p = copy.deepcopy(DEFAULT)
    node = p
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return p


def test_default_params_are_valid_and_defaults_filled():
    p = validate(DEFAULT)
    assert p["evaluation"]["episodes"] == 600
    assert p["experiments"]["glyphs-5w1s"]["kind"] == "fewshot"


@pytest.mark.parametrize("path,value,pattern", [
    (["device"], "gpu", r"'device' is 'gpu'; allowed: auto, cpu, cuda"),
    (["experiments", "glyphs-5w1s", "ways"], "five", r"experiments.glyphs-5w1s.ways.*integer"),
    (["experiments", "glyphs-5w1s", "shots"], 0, r"experiments.glyphs-5w1s.shots"),
    (["experiments", "glyphs-5w1s", "dataset"], "omniglott", r"names dataset 'omniglott'; defined datasets: glyphs"),
    (["experiments", "glyphs-5w1s", "kind"], "fewshoot", r"kind' is 'fewshoot'; allowed: .*fewshot"),
    (["training", "iteratons"], 5, r"'training.iteratons' is unknown; allowed: iterations"),
    (["methods", "maml", "algorithm"], "mamll", r"methods.maml.algorithm' is 'mamll'; allowed: .*anil.*maml"),
    (["methods", "maml", "inner_lrr"], 0.1, r"methods.maml.inner_lrr' is not a maml hyperparameter; allowed: .*inner_lr"),
    (["methods", "new-method"], {}, r"methods.new-method.algorithm' is 'new-method'; allowed:"),
    (["analyses"], ["nope"], r"analyses\[0\]' is 'nope'; allowed"),
    (["seed"], -1, r"'seed'"),
    (["seeds"], [], r"params key 'seeds': \[\] should be non-empty"),
    (["seeds"], [0, 0], r"params key 'seeds': .*non-unique"),
    (["seeds"], 3, r"params key 'seeds': 3 is not of type 'array'"),
    (["seeds"], [0, -1], r"params key 'seeds.1'"),
    (["reference"], "protonett", r"params key 'reference' names method 'protonett'; defined methods: .*protonet"),
    (["published"], {"glyphs-5w1s": {"mamll": {"test": {"accuracy": 50, "source": {"paper": "p", "table": "t"}}}}},
     r"params key 'published.glyphs-5w1s.mamll' names no method"),
])
def test_bad_params_name_the_key(path, value, pattern):
    with pytest.raises(UserError, match=pattern):
        study(_with(path, value))


def test_seeds_default_to_the_data_seed_and_each_run_gets_one():
    one = study(DEFAULT)
    assert one.seeds == [one.seed] and {r.seed for r in one.runs()} == {one.seed}
    three = study({**DEFAULT, "seeds": [0, 1, 2]})
    runs = three.runs()
    assert len(runs) == 3 * len(one.runs()) and [r.seed for r in runs[:3]] == [0, 1, 2]
    # the fingerprint (what a checkpoint must match) covers the training seed
    e, m = three.experiments[0], three.methods[-1]
    assert three.run(e, m, 1).fingerprint({}) != three.run(e, m, 2).fingerprint({})
    assert three.run(e, m, 0).fingerprint({}) == one.run(e, m).fingerprint({})
    with pytest.raises(UserError, match=r"seed 5 is not in params 'seeds' \(0, 1, 2\)"):
        three.run(e, m, 5)


def test_unknown_top_level_key():
    p = copy.deepcopy(DEFAULT)
    p["method"] = {}
    with pytest.raises(UserError, match=r"params key 'method' is unknown; allowed: .*methods"):
        validate(p)


def test_load_merges_several_files_in_order(tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("training: {iterations: 7}\nmethods: {maml: {inner_lr: 0.1}}\n")
    s = load([ROOT / "params.yaml", over])
    assert s.name == "default"  # params.yaml names it; the over file changes no `study:`
    p = s.params
    assert p["training"]["iterations"] == 7
    assert p["training"]["meta_batch"] == DEFAULT["training"]["meta_batch"]
    assert p["methods"]["maml"]["inner_lr"] == 0.1 and "protonet" in p["methods"]
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load(bad)


def test_cli_reports_one_line_without_traceback(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump(_with(["device"], "gpu")))
    r = subprocess.run([sys.executable, "-m", "mtml", "validate", "--params", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "'device' is 'gpu'" in r.stderr


def test_cuda_without_gpu_is_a_clear_error():
    import torch

    from mtml.utils import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="no CUDA GPU.*device: auto"):
        resolve_device("cuda")


def _with_override(override: dict, methods: dict | None = None) -> dict:
    p = copy.deepcopy(DEFAULT)
    if methods is not None:
        p["methods"] = methods
    exp = next(iter(p["experiments"]))
    p["experiments"][exp]["methods"] = override
    return p, exp


def test_an_experiment_overrides_method_hyperparameters_for_itself_only():
    p, exp = _with_override({"maml": {"inner_steps": 2}})
    p["experiments"]["other"] = {k: v for k, v in p["experiments"][exp].items() if k != "methods"}
    s = study(p)
    assert s.run(exp, "maml").hparams["inner_steps"] == 2
    assert s.run("other", "maml").hparams["inner_steps"] == s.params["methods"]["maml"]["inner_steps"] != 2
    assert s.run(exp, "maml").hparams["inner_lr"] == s.params["methods"]["maml"]["inner_lr"]
    preset = load(ROOT / "configs/task_attention_miniimagenet.yaml")
    assert preset.run("mini-10w5s", "ta-maml").hparams["inner_steps"] == 2
    assert preset.run("tiered-10w5s", "ta-maml").hparams["eval_inner_steps"] == 2
    assert preset.run("mini-5w5s", "ta-maml").hparams["inner_steps"] == 5


@pytest.mark.parametrize("override,pattern", [
    ({"nope": {"inner_steps": 2}}, r"experiments\.[\w-]+\.methods\.nope' names method 'nope'; defined methods: "),
    ({"maml": {"algorithm": "anil"}}, r"not its algorithm"),
    ({"maml": {"inner_stpes": 2}}, r"inner_stpes.*as overridden by 'experiments\.[\w-]+\.methods\.maml'"),
    ({"maml": 3}, r"methods\.maml"),
])
def test_bad_method_overrides_name_the_key(override, pattern):
    p, _ = _with_override(override)
    with pytest.raises(UserError, match=pattern):
        study(p)


def test_task_attention_width_must_match_the_meta_batch_before_anything_runs():
    p, exp = _with_override({}, methods={"ta-maml": {"filters": 8, "meta_batch": 4}})
    p["training"]["meta_batch"] = 3
    with pytest.raises(UserError, match=r"methods\.ta-maml\.meta_batch' is 4 .* meta-batches of 3"):
        study(p)
    p["experiments"][exp]["methods"] = {"ta-maml": {"meta_batch": 3}}
    study(p)  # the experiment's override makes them agree
