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
    (["training", "iteratons"], 5, r"'training.iteratons' is unknown; allowed: amp, channels_last, iterations"),
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
    (["comparisons"], [["anil", "mamll"]], r"params key 'comparisons\[0\]' names method 'mamll'; defined methods"),
    (["comparisons"], [["anil", "anil"]], r"params key 'comparisons\[0\]' compares 'anil' with itself"),
    (["comparisons"], [["anil"]], r"params key 'comparisons.0'"),
    (["published"], {"glyphs-5w1s": {"mamll": {"test": {"accuracy": 50, "source": {"paper": "p", "table": "t"}}}}},
     r"params key 'published.glyphs-5w1s.mamll' names no method"),
])
def test_bad_params_name_the_key(path, value, pattern):
    with pytest.raises(UserError, match=pattern):
        study(_with(path, value))


def test_seeds_default_to_the_data_seed_and_each_run_gets_one():
    one = study({k: v for k, v in DEFAULT.items() if k != "seeds"})  # no `seeds`: [seed]
    assert one.seeds == [one.seed] and {r.seed for r in one.runs()} == {one.seed}
    assert study(DEFAULT).seeds == [0, 1, 2]  # the embedded default trains three seeds
    three = study({**DEFAULT, "seeds": [0, 1, 2]})
    runs = three.runs()
    assert len(runs) == 3 * len(one.runs()) and [r.seed for r in runs[:3]] == [0, 1, 2]
    # the fingerprint (what a checkpoint must match) covers the training seed
    e, m = three.experiments[0], three.methods[-1]
    assert three.run(e, m, 1).fingerprint({}) != three.run(e, m, 2).fingerprint({})
    assert three.run(e, m, 0).fingerprint({}) == one.run(e, m).fingerprint({})
    with pytest.raises(UserError, match=r"seed 5 is not in params 'seeds' \(0, 1, 2\)"):
        three.run(e, m, 5)


def test_planned_comparisons_are_pairs_of_methods_instead_of_a_reference():
    pairs = study({**DEFAULT, "comparisons": [["anil", "maml"], ["protonet", "maml"]]})
    assert pairs.comparisons == [("anil", "maml"), ("protonet", "maml")] and pairs.reference is None
    assert study(DEFAULT).comparisons is None
    with pytest.raises(UserError, match="'reference' and 'comparisons' both choose"):
        study({**DEFAULT, "reference": "maml", "comparisons": [["anil", "maml"]]})


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


# --------------------------------------------------------------------------- declared options

from mtml.options import Option, check_options, check_value  # noqa: E402


@pytest.mark.parametrize("opt,value,message", [
    (Option(int, 1, "", min=0), -1, "must be an integer >= 0; got -1"),
    (Option(int, 1, "", min=0), 1.5, "must be an integer >= 0; got 1.5"),
    (Option(int, 1, "", min=0), True, "must be an integer >= 0; got True"),
    (Option(int, 1, "", min=0), "8", "must be an integer >= 0; got '8'"),
    (Option(int, 8, "", min=8, max=512), 513, "must be an integer in 8..512; got 513"),
    (Option(float, 0.1, "", min=0), "x", "must be a number >= 0; got 'x'"),
    (Option(float, 0.1, "", min=0), float("nan"), "must be a number >= 0; got nan"),
    (Option(float, 0.1, "", min=0, above=True, max=1, below=True), 1, "must be a number > 0 and < 1; got 1"),
    (Option(float, 0.1, ""), False, "must be a number; got False"),
    (Option(bool, False, ""), "false", "must be true or false; got 'false'"),
    (Option(bool, False, ""), 0, "must be true or false; got 0"),
    (Option(str, "a", "", choices=("a", "b")), "c", "is 'c'; allowed: a, b"),
    (Option(str, "a", ""), 3, "must be a string; got 3"),
    (Option(str, None, "", pattern="[0-9a-f]{32}", what="a 32-digit hex md5"), "xyz",
     "must be a 32-digit hex md5 or null; got 'xyz'"),
    (Option(int, None, "", min=1), 0, "must be an integer >= 1 or null; got 0"),
    (Option(list, [1, 2, 3], "", items=int, min=0, length=3), [1, 2], "must be a list of 3 integers >= 0; got [1, 2]"),
    (Option(list, [1, 2, 3], "", items=int, min=0, length=3), [1, -2, 3], "must be a list of 3 integers >= 0"),
    (Option(list, [1, 2, 3], "", items=int, min=0, length=3), "1,2,3", "must be a list of 3 integers >= 0"),
    (Option(list, [], "", items=str, choices=("x", "y")), ["x", "z"], "must be a list of values from x, y"),
    (Option(dict, {}, "", items=float, min=0), {"a": -1}, "must be a mapping name -> number >= 0; got {'a': -1}"),
    (Option(dict, {}, "", items=float, min=0), [1], "must be a mapping name -> number >= 0; got [1]"),
    (Option(float, {}, "", min=0, per_key=True), "x",
     "must be a number >= 0 or a mapping name -> number >= 0; got 'x'"),
    (Option(float, {}, "", min=0, per_key=True), {"depth": "x"}, "must be a number >= 0 or a mapping"),
    (Option((str, dict), None, "", items=str), 3, "must be a string or a mapping name -> string or null; got 3"),
])
def test_every_option_type_rejects_a_planted_bad_value_in_one_line(opt, value, message):
    with pytest.raises(UserError) as err:
        check_value(opt, value, "a.b")
    text = str(err.value)
    assert text.startswith("params key 'a.b' ") and message in text and "\n" not in text


@pytest.mark.parametrize("opt,value", [
    (Option(float, 0.1, "", min=0), 1),  # an int is a number
    (Option(float, None, "", min=0), None),
    (Option(bool, False, ""), True),
    (Option(int, 8, "", min=8, max=512), 512),
    (Option(float, {}, "", min=0, per_key=True), 0.5),
    (Option(float, {}, "", min=0, per_key=True), {"depth": 0.5, "normals": 1}),
    (Option((list, dict), [1, 1, 1], "", items=float, min=0, length=3), {"train": 2, "test": 0.5}),
    (Option((str, dict), None, "", items=str), {"a.zip": "/x"}),
])
def test_declared_options_accept_good_values(opt, value):
    assert check_value(opt, value, "a.b") == value


def test_check_options_fills_defaults_and_names_unknown_keys():
    declared = {"n": Option(int, 3, "", min=1), "xs": Option(list, [1], "", items=int)}
    out = check_options({"n": 5}, declared, "datasets.d.options")
    assert out == {"n": 5, "xs": [1]}
    out["xs"].append(2)
    assert declared["xs"].default == [1]  # defaults are copies
    with pytest.raises(UserError, match=r"^params key 'datasets\.d\.options\.m' is unknown; allowed: n, xs$"):
        check_options({"m": 1}, declared, "datasets.d.options")


# The issue's examples (issue 13, item 4): each rejected at validate time, in one line.
ISSUE_EXAMPLES = [
    (["methods", "maml", "first_order"], "false", "params key 'methods.maml.first_order' must be true or false; got 'false'"),
    (["methods", "maml", "inner_steps"], -1, "params key 'methods.maml.inner_steps' must be an integer >= 0; got -1"),
    (["methods", "maml", "inner_lr"], "x", "params key 'methods.maml.inner_lr' must be a number >= 0; got 'x'"),
    (["datasets", "glyphs", "options", "drawers"], "8",
     "params key 'datasets.glyphs.options.drawers' must be an integer >= 1; got '8'"),
    (["methods", "maml", "filters"], "8", "params key 'methods.maml.filters' must be an integer >= 1; got '8'"),
    (["methods", "maml", "filters"], 0, "params key 'methods.maml.filters' must be an integer >= 1; got 0"),
]


@pytest.mark.parametrize("path,value,message", ISSUE_EXAMPLES)
def test_issue_examples_are_rejected_at_validate_time(path, value, message):
    with pytest.raises(UserError) as err:
        validate(_with(path, value))
    assert str(err.value) == message


def test_issue_examples_are_rejected_by_the_cli_in_one_line(tmp_path):
    import subprocess
    import sys

    for i, (path, value, message) in enumerate(ISSUE_EXAMPLES):
        bad = tmp_path / f"p{i}.yaml"
        bad.write_text(yaml.safe_dump(_with(path, value)))
        r = subprocess.run([sys.executable, "-m", "mtml", "validate", "--params", str(bad)],
                           capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.strip() == f"mtml validate: error: {message}", r.stderr


def test_experiment_overrides_and_kind_options_are_checked_by_the_declarations():
    p, exp = _with_override({"maml": {"eval_inner_steps": "3"}})
    with pytest.raises(UserError, match=r"params key 'methods\.maml\.eval_inner_steps' must be an integer "
                                        r">= 0; got '3'.*experiments\.[\w-]+\.methods\.maml"):
        study(p)
    p = copy.deepcopy(DEFAULT)
    p["datasets"]["glyphs"]["options"] = {"style": "bold"}
    with pytest.raises(UserError, match=r"datasets\.glyphs\.options\.style' is 'bold'; allowed: standard, shifted"):
        validate(p)


def test_dataset_cross_option_checks_run_at_validate_time():
    p = copy.deepcopy(DEFAULT)
    p["datasets"]["glyphs"]["options"] = {"alphabets": 2, "split": [4, 1, 1]}
    with pytest.raises(UserError, match=r"datasets\.glyphs\.options\.split' asks for 3 non-empty splits"):
        validate(p)
    p["datasets"]["glyphs"] = {"source": "omniglot", "options": {"md5": {"other.zip": "0" * 32}}}
    with pytest.raises(UserError, match=r"datasets\.glyphs\.options\.md5\.other\.zip' names an archive"):
        validate(p)


def test_validate_keeps_the_users_dataset_options_as_given():
    p = copy.deepcopy(DEFAULT)
    p["datasets"]["glyphs"]["options"] = {"drawers": 5}
    assert validate(p)["datasets"]["glyphs"]["options"] == {"drawers": 5}


# --------------------------------------------------------------------------- duplicate keys


def test_duplicate_keys_are_rejected_with_both_line_numbers(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("seed: 0\nmethods:\n  maml:\n    inner_steps: 2\n  protonet: {}\n"
                 "  maml:\n    filters: 8\n")
    with pytest.raises(UserError) as err:
        load(f)
    assert str(err.value) == (f"params file {f} gives key 'methods.maml' twice (lines 3 and 6); "
                              "YAML would keep only the second: delete one")
    f.write_text("seed: 0\nexperiments: {a: {dataset: g, ways: 2, shots: 1, ways: 3}}\n")
    with pytest.raises(UserError, match=r"key 'experiments\.a\.ways' twice \(lines 2 and 2\)"):
        load(f)
    f.write_text("- a\n- {x: 1, x: 2}\n")
    with pytest.raises(UserError, match=r"key '\[1\]\.x' twice"):
        load(f)


def test_a_file_without_duplicates_loads_as_before(tmp_path):
    f = tmp_path / "ok.yaml"
    f.write_text("base: &b {inner_steps: 2}\n")
    from mtml.params import read_file

    assert read_file(f) == {"base": {"inner_steps": 2}}
    assert read_file(ROOT / "params.yaml") == DEFAULT


# --------------------------------------------------------------------------- generated schema

PRESETS = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "params.yaml"]


def _schema_validator():
    import jsonschema

    from mtml.params import params_schema

    schema = params_schema()
    return jsonschema.validators.validator_for(schema)(schema)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_generated_schema_accepts_every_preset(path):
    v = _schema_validator()
    raw = yaml.safe_load(path.read_text())
    assert not list(v.iter_errors(raw))
    assert not list(v.iter_errors(load(path).params))  # with defaults filled


def test_generated_schema_states_the_declared_options():
    from mtml.data.sources import SOURCES
    from mtml.methods import METHODS
    from mtml.options import option_schema

    v = _schema_validator()
    p = copy.deepcopy(DEFAULT)
    p["methods"] = {"m": {"algorithm": "maml", "inner_steps": -1}}
    assert any("minimum" in e.message or "less than" in e.message for e in v.iter_errors(p))
    p["methods"] = {"m": {"algorithm": "maml", "first_order": "false"}}
    assert list(v.iter_errors(p))
    p["methods"] = {"m": {"algorithm": "mt-anil", "inner_lr": {"depth": 0.1}}}
    assert not list(v.iter_errors(p))  # per-task inner_lr is only a mt-* hyperparameter
    p["methods"] = {"m": {"algorithm": "maml", "inner_lr": {"depth": 0.1}}}
    assert list(v.iter_errors(p))
    p = copy.deepcopy(DEFAULT)
    p["datasets"]["glyphs"]["options"] = {"filters": 0}
    assert list(v.iter_errors(p))  # an unknown option of the source
    # every declaration is in the schema, with its default and description
    schema = _schema_validator().schema
    methods = schema["properties"]["methods"]["additionalProperties"]["allOf"]
    assert len(methods) == len(METHODS)
    for branch in methods:
        name = branch["if"]["properties"]["algorithm"]["const"]
        props = branch["then"]["properties"]
        assert props == {k: option_schema(o) for k, o in METHODS[name].options.items()}
    datasets = schema["properties"]["datasets"]["additionalProperties"]["allOf"]
    assert {b["if"]["properties"]["source"]["const"] for b in datasets} == set(SOURCES)


def test_the_schema_ships_in_the_package():
    from importlib import resources

    assert resources.files("mtml").joinpath("params.schema.yaml").is_file()
    assert 'params.schema.yaml' in (ROOT / "pyproject.toml").read_text()
    assert not (ROOT / "workflow" / "schemas" / "params.schema.yaml").exists()  # one copy only


# --------------------------------------------------------------------------- registries


def test_names_are_checked_without_importing_torch_or_the_analyses():
    import subprocess
    import sys

    code = (
        "import sys, mtml.params\n"
        "from mtml.methods import METHODS\n"
        "from mtml.data.sources import SOURCES\n"
        "from mtml.analysis.registry import ANALYSES\n"
        "from mtml.errors import UserError\n"
        "assert 'mt-am' in METHODS and 'glyphs' in SOURCES and 'transference' in ANALYSES\n"
        "METHODS.check('maml', 'methods.maml.algorithm')\n"
        "try:\n"
        "    SOURCES.check('glyph', 'datasets.g.source')\n"
        "except UserError as err:\n"
        "    print(err)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'\n"
        "             or m.startswith('mtml.analysis.') and m != 'mtml.analysis.registry'))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.splitlines() == [
        "params key 'datasets.g.source' is 'glyph'; allowed: aircraft, cifar-fs, cub, fc100, glyphs, "
        "miniimagenet, miniplaces, omniglot, scenes, shapes, tieredimagenet", "[]"]


def test_every_registry_entry_resolves_to_a_declared_component():
    from mtml.analysis.registry import ANALYSES
    from mtml.data.sources import SOURCES
    from mtml.methods import ALGORITHMS, METHODS, MetaLearner
    from mtml.options import Option

    assert {"mt-anil", "mt-am", "mt-pam", "mt-maml"} <= set(ALGORITHMS)
    for name in METHODS:
        cls = METHODS[name]
        assert issubclass(cls, MetaLearner) and cls.algorithm == name
        assert all(isinstance(o, Option) and o.help for o in cls.options.values())
        assert cls.defaults == {k: o.default for k, o in cls.options.items() if o.recorded}
    for name in SOURCES:
        assert callable(SOURCES[name]) and all(isinstance(o, Option) and o.help
                                               for o in SOURCES[name].options.values())
    assert all(callable(ANALYSES[name]) for name in ANALYSES)
    with pytest.raises(KeyError):
        METHODS["nope"]


def test_an_algorithm_outside_the_table_cannot_register():
    from mtml.methods.base import MetaLearner, register

    with pytest.raises(RuntimeError, match="not listed so in mtml.methods.ALGORITHMS"):
        register("maml")(type("Other", (MetaLearner,), {}))


def test_a_legacy_method_with_plain_defaults_still_checks_its_keys():
    from mtml.methods.base import MetaLearner

    class Legacy(MetaLearner):
        defaults = {"width": 3}

    assert Legacy.defaults == {"width": 3} and set(Legacy.options) == {"width"}
    assert check_options({"width": "any"}, Legacy.options, "methods.x") == {"width": "any"}
    with pytest.raises(UserError, match="methods.x.depth' is unknown; allowed: width"):
        check_options({"depth": 1}, Legacy.options, "methods.x")


def test_snakemake_front_door_rejects_the_same_mistakes_in_one_line(tmp_path):
    """Snakemake reads the configfile itself: repeated keys and bad values stop it with our line."""
    import os
    import shutil
    import subprocess
    import sys

    shutil.copy(ROOT / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    (tmp_path / "params.yaml").write_text((ROOT / "configs" / "tiny.yaml").read_text())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    bad = tmp_path / "bad.yaml"
    cases = [
        ("seed: 0\nseed: 1\n", f"params: params file {bad} gives key 'seed' twice (lines 1 and 2); "
                                "YAML would keep only the second: delete one"),
        (yaml.safe_dump(_with(*ISSUE_EXAMPLES[0][:2])), f"params: {ISSUE_EXAMPLES[0][2]}"),
    ]
    for text, line in cases:
        bad.write_text(text)
        r = subprocess.run(["snakemake", "-n", "--cores", "1", "--configfile", str(bad)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and line in (r.stdout + r.stderr).splitlines(), r.stdout + r.stderr
    # the generated schema validates the tiny preset under Snakemake too
    r = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
