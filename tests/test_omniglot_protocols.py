"""Omniglot's class-level split and presets (issue 15, item 9) and external test episodes
(item 14): synthetic Omniglot-format zips everywhere, the real small1 zip from ../shared
(skipped in a user's clone)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtml.data.storage import SPLITS
from mtml.episodes.external import external_manifest
from mtml.episodes.manifest import manifest_arrays
from mtml.errors import UserError
from mtml.params import load

from test_omniglot import SMALL1, SMALL1_NAME, _prepare, make_zip

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = {f"Alpha{a}": 6 for a in range(5)}  # 5 alphabets x 6 characters, 4 drawers


@pytest.fixture
def zips(tmp_path) -> Path:
    make_zip(tmp_path / "zips" / "images_background.zip", dict(list(LAYOUT.items())[:3]), drawers=4, seed=1)
    make_zip(tmp_path / "zips" / "images_evaluation.zip", dict(list(LAYOUT.items())[3:]), drawers=4, seed=2)
    return tmp_path / "zips"


def _split(tmp_path, zips, out="out", seed=0, **opts):
    from mtml.data.sources import load_sources
    from mtml.data.storage import load_prepared

    options = {"local": str(zips), "rotations": True, "image_size": 16, **opts}
    load_sources()["omniglot"]("omni", options, tmp_path / "raw", tmp_path / out, seed)
    return load_prepared(tmp_path / out, name="omni")


# -- item 9: the class-level split ------------------------------------------------------------

def test_character_split_ignores_alphabets_and_keeps_rotations_together(tmp_path, zips):
    ds = _split(tmp_path, zips, character_split={"train": 18, "val": 4})
    c = ds.classes
    chars = c["name"].str.split("/").str[:2].str.join("/")
    per_split = chars.groupby(c["split"]).nunique().to_dict()
    assert per_split == {"train": 18, "val": 4, "test": 8}                 # 30 characters in all
    assert c.groupby("split").size().to_dict() == {"train": 72, "val": 16, "test": 32}  # x4 rotations
    assert (chars.groupby(chars).apply(lambda s: c.loc[s.index, "split"].nunique()) == 1).all()
    assert (c["group"] == chars).all()
    # alphabets are ignored: some alphabet feeds two splits (30 characters over 3 splits)
    alphabets = c["name"].str.split("/").str[0]
    assert (c.groupby(alphabets)["split"].nunique() > 1).any()
    # test characters come from background and evaluation archives alike: no alphabet rule
    assert ds.meta["split_by"] == "character"
    assert ds.meta["characters_per_split"] == {"train": 18, "val": 4, "test": 8}


def test_character_split_is_seeded(tmp_path, zips):
    a = _split(tmp_path, zips, "a", 0, character_split={"train": 18, "val": 4})
    b = _split(tmp_path, zips, "b", 0, character_split={"train": 18, "val": 4})
    c = _split(tmp_path, zips, "c", 1, character_split={"train": 18, "val": 4})
    assert a.meta["content_md5"] == b.meta["content_md5"]
    assert not a.classes["name"].equals(c.classes["name"])


def test_character_split_fractions_and_errors(tmp_path, zips):
    ds = _split(tmp_path, zips, character_split={"train": 0.6, "val": 0.1})
    assert ds.meta["characters_per_split"] == {"train": 18, "val": 3, "test": 9}
    with pytest.raises(UserError, match=r"'datasets\.omni\.options\.character_split' asks for 25 train and 5 "
                                        r"val characters, but .* hold 30 characters"):
        _split(tmp_path, zips, "e", character_split={"train": 25, "val": 5})
    with pytest.raises(UserError, match=r"character_split' splits by character; remove 'datasets\.omni\."
                                        r"options\.val_alphabets'"):
        _split(tmp_path, zips, "f", character_split={"train": 10}, val_alphabets=["Alpha0"])
    with pytest.raises(UserError, match=r"character_split' must be \{train: N, val: M\}"):
        _split(tmp_path, zips, "g", character_split={"train": 1.5})


def test_prepared_omniglot_records_each_images_file(tmp_path, zips):
    ds = _split(tmp_path, zips, character_split={"train": 18, "val": 4})
    files = ds.extras["files"]
    assert len(files) == len(ds.labels)
    first = ds.classes.iloc[0]
    rows = np.flatnonzero(ds.labels == first["class_id"])
    assert [Path(f).parent.as_posix() for f in files[rows]] == ["/".join(first["name"].split("/")[:2])] * 4
    assert list(files[rows]) == sorted(files[rows])  # images of a class in file-name order


# -- the presets ---------------------------------------------------------------------------------

def test_presets_state_the_papers_protocols():
    maml = load(ROOT / "configs" / "omniglot_maml.yaml")
    opts = maml.dataset("omniglot")["options"]
    assert opts["rotations"] and opts["image_size"] == 28
    assert opts["character_split"]["train"] + opts["character_split"]["val"] == 1200
    for name in maml.experiments:
        exp = maml.experiment(name)
        run = maml.run(name, "maml")
        assert exp.training["meta_batch"] == (32 if exp.ways == 5 else 16)
        assert (run.hparams["inner_lr"], run.hparams["inner_steps"]) == ((0.4, 1) if exp.ways == 5 else (0.1, 5))
        assert maml.run(name, "protonet").hparams["batch_norm"] == "running"
        for entry in maml.published[name].values():
            assert entry["test"]["source"]["table"] == "Table 1"
    assert maml.published["omni-20w1s"]["maml"]["test"]["accuracy"] == 95.8
    pn = load(ROOT / "configs" / "omniglot_protonet.yaml")
    for name in pn.experiments:
        exp = pn.experiment(name)
        assert (exp.train_ways, exp.train_shots, exp.train_queries) == (60, exp.shots, 5)
    ta = load(ROOT / "configs" / "omniglot_ta.yaml")
    assert ta.dataset("omniglot")["options"]["character_split"] == {"train": 980, "val": 220}
    assert {ta.experiment(e).ways for e in ta.experiments} == {20}
    assert ta.params["training"]["meta_batch"] == 16


@pytest.fixture(scope="module")
def small1() -> Path:
    if not SMALL1.is_file():
        pytest.skip(f"{SMALL1} is absent (a user's clone has no ../shared)")
    return SMALL1


@pytest.mark.shared
@pytest.mark.parametrize("preset", ["omniglot_maml", "omniglot_ta"])
def test_presets_on_the_real_small1_archive(tmp_path, small1, preset):
    """The presets' split needs more characters than small1 holds: one clear error; the
    fractions their comments give prepare it."""
    study = load(ROOT / "configs" / f"{preset}.yaml")
    opts = {**study.dataset("omniglot")["options"], "archives": [SMALL1_NAME], "local": str(small1)}
    with pytest.raises(UserError, match=r"'datasets\.omni\.options\.character_split' asks for .* hold 136 "
                                        r"characters"):
        _prepare(tmp_path, opts, out="counts")
    fractions = {"omniglot_maml": {"train": 0.6777, "val": 0.0616},
                 "omniglot_ta": {"train": 0.6038, "val": 0.1356}}[preset]
    ds = _prepare(tmp_path, {**opts, "character_split": fractions})
    expect = {"omniglot_maml": {"train": 92, "val": 8, "test": 36},
              "omniglot_ta": {"train": 82, "val": 18, "test": 36}}[preset]
    assert ds.meta["characters_per_split"] == expect
    assert ds.classes.groupby("split").size().to_dict() == {s: 4 * n for s, n in expect.items()}
    assert ds.images.shape[1:] == (1, 28, 28)


# -- item 14: external test episodes --------------------------------------------------------

def _episode_rows(ds, episodes=2, ways=3, shots=1, queries=2, by="file", seed=0):
    """A hand-written episode list from the prepared test classes, as another library would
    publish it: class names, items by file name or by index in the class."""
    rng = np.random.default_rng(seed)
    test = ds.classes[ds.classes["split"] == "test"]
    rows = []
    for e in range(episodes):
        for _, cls in test.sample(ways, random_state=int(rng.integers(1 << 30))).iterrows():
            items = np.flatnonzero(ds.labels == cls["class_id"])
            pick = rng.permutation(len(items))[:shots + queries]
            for k, i in enumerate(pick):
                row = {"episode": f"ep{e}", "role": "support" if k < shots else "query", "class": cls["name"]}
                row["file" if by == "file" else "index"] = (Path(ds.extras["files"][items[i]]).name if by == "file"
                                                            else str(i))
                rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("by", ["file", "index"])
def test_external_episodes_become_a_manifest_of_the_same_items(tmp_path, zips, by):
    ds = _split(tmp_path, zips, character_split={"train": 18, "val": 4})
    rows = _episode_rows(ds, by=by)
    path = tmp_path / "episodes.csv"
    rows.to_csv(path, index=False)
    m = external_manifest(path, ds, "test", 3, 1, 2, "experiments.x.test_episodes")
    assert sorted(m["episode"].unique()) == [0, 1]
    by_class = dict(zip(ds.classes["name"], ds.classes["class_id"]))
    for e, ep in enumerate(["ep0", "ep1"]):
        want = rows[rows["episode"] == ep]
        got = m[m["episode"] == e]
        assert sorted(got["class_id"]) == sorted(want["class"].map(by_class))
        # labels: classes in order of first appearance
        first = list(dict.fromkeys(want["class"].map(by_class)))
        assert [int(got[got["class_id"] == c]["label"].iloc[0]) for c in first] == [0, 1, 2]
        files = [Path(f).name for f in ds.extras["files"][got["item"]]]
        if by == "file":
            assert sorted(files) == sorted(want["file"])
    arrays = manifest_arrays(m)
    assert arrays.support.shape == (2, 3, 1) and arrays.query.shape == (2, 3, 2)


def test_external_episode_errors_name_the_episode_and_item(tmp_path, zips):
    ds = _split(tmp_path, zips, character_split={"train": 18, "val": 4})
    key = "experiments.x.test_episodes"
    path = tmp_path / "episodes.csv"

    def fails(frame, match, **sizes):
        frame.to_csv(path, index=False)
        with pytest.raises(UserError, match=match) as err:
            external_manifest(path, ds, "test", sizes.get("ways", 3), 1, 2, key)
        assert "\n" not in str(err.value)

    rows = _episode_rows(ds)
    bad = rows.copy()
    bad.loc[4, "file"] = "9999_99.png"
    cls = bad.loc[4, "class"]
    fails(bad, rf"episode ep0, (support|query) item '9999_99.png' of class '{cls}' is not in prepared "
               rf"dataset omni")
    by_index = _episode_rows(ds, by="index")
    by_index.loc[0, "index"] = "4"
    fails(by_index, r"episode ep0, support item index '4' of class .* has 4 images, indices 0\.\.3")
    unknown = rows.copy()
    unknown.loc[2, "class"] = "Nowhere/character01"
    fails(unknown, r"episode ep0 names class 'Nowhere/character01', which is not a class")
    fails(rows, r"episode 0 does not have exactly 4 classes", ways=4)
    twice = rows.copy()
    twice.loc[1, "file"] = twice.loc[0, "file"]   # the support item reused as a query
    fails(twice, r"support and query overlap in episode 0")
    train_cls = ds.classes[ds.classes["split"] == "train"].iloc[0]
    leak = rows.copy()
    leak.loc[leak["class"] == leak.loc[0, "class"], "class"] = train_cls["name"]
    leak.loc[leak["class"] == train_cls["name"], "file"] = [Path(f).name for f in
                                                            ds.extras["files"][ds.labels == train_cls["class_id"]][:3]]
    fails(leak, rf"episode ep0 uses class '{train_cls['name']}', which is in the train split of prepared "
                rf"dataset omni, not test")
    fails(rows.drop(columns=["file"]), r"lacks column\(s\) file or index")


def test_an_experiment_evaluates_on_the_external_episodes(tmp_path, zips):
    """Through the fewshot kind: the test manifest is the file's, the sources record its md5."""
    from pipeline_helpers import TINY, tiny_params

    ds = _split(tmp_path, zips, character_split={"train": 18, "val": 4})
    path = tmp_path / "episodes.csv"
    _episode_rows(ds, episodes=3, ways=5, shots=1, queries=2).to_csv(path, index=False)
    exps = copy.deepcopy(TINY["experiments"])
    exps["tiny"].update(queries=2, test_episodes=str(path))
    study = tiny_params(experiments=exps, methods={"protonet": {"filters": 4}})
    exp = study.experiment("tiny")
    specs = {s.role: s for s in exp.kind.manifests(study, exp)}
    assert specs["test"].episodes == 3 and specs["val"].episodes == TINY["training"]["val_episodes"]
    m = exp.kind.build_manifest(exp, specs["test"], ds)
    assert m["episode"].nunique() == 3 and set(m["class_id"]) <= set(ds.split_classes("test"))
    assert exp.kind.sources(exp)["test_episodes"]["md5"]
    # the episodes folder is keyed by the file's content: an edited list gets new manifests
    from mtml.layout import Layout

    key = Layout(tmp_path, study).episodes_key("tiny")
    path.write_text(path.read_text() + "\n")  # same episodes, other bytes
    assert Layout(tmp_path, tiny_params(experiments=exps, methods={"protonet": {"filters": 4}})).episodes_key("tiny") != key
    bad = copy.deepcopy(exps)
    bad["tiny"].update(kind="multimodal", cross_domain=[])
    with pytest.raises(UserError, match=r"'experiments\.tiny\.test_episodes' is for experiments of kind fewshot"):
        tiny_params(experiments=bad, methods={"protonet": {"filters": 4}})
    assert SPLITS == ("train", "val", "test")


# -- the presets end to end on fixture data ---------------------------------------------------

FRACTIONS = {"omniglot_maml": {"train": 0.6777, "val": 0.0616}, "omniglot_protonet": {"train": 0.6777, "val": 0.0616},
             "omniglot_ta": {"train": 0.6038, "val": 0.1356}}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(FRACTIONS))
def test_presets_run_end_to_end_on_synthetic_archives(tmp_path, preset, one_thread):
    """Each Omniglot preset, shrunk (2 iterations, 4 filters, 2 test episodes) but with its
    episode sizes, meta-batches and inner loops, through prepare -> episodes -> train ->
    evaluate on synthetic archives of 91 characters x 20 drawers, split by the fractions its
    comments give for small archives."""
    from mtml.params import read
    from mtml.params import study as make_study

    from pipeline_helpers import run_pipeline

    make_zip(tmp_path / "zips" / "images_background.zip", {f"Bg{a}": 13 for a in range(4)}, drawers=20, seed=1)
    make_zip(tmp_path / "zips" / "images_evaluation.zip", {f"Ev{a}": 13 for a in range(3)}, drawers=20, seed=2)
    params = read([ROOT / "configs" / f"{preset}.yaml"])
    params["datasets"]["omniglot"]["options"].update(local=str(tmp_path / "zips"), character_split=FRACTIONS[preset])
    for hp in params["methods"].values():
        hp["filters"] = 4
    params["training"].update(iterations=2, val_interval=2, val_episodes=2)
    params["evaluation"]["episodes"] = 2
    params["device"] = "cpu"
    study = make_study(params, [f"{preset}.yaml"])
    results = run_pipeline(study, tmp_path / "run")
    assert set(results) == {(e, m) for e in study.experiments for m in study.methods}
    for (e, _), rows in results.items():
        (row,) = rows
        exp = study.experiment(e)
        assert (row["split"], row["ways"], row["shots"], row["episodes"]) == ("test", exp.ways, exp.shots, 2)
