"""Multimodal experiments: options and presets, one image shape for all modes, the mode-aware
sampler (independent and balanced meta-batches), per-mode learners, the benchmark's counts,
the `shapes` dataset, every multimodal method trained on three tiny modes, the results table
with paired differences, and the stages through the CLI."""

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtml.data.shapes import generate as generate_shapes
from mtml.data.storage import PreparedDataset
from mtml.data.storage import validate as validate_classes
from mtml.errors import UserError
from mtml.multimodal.data import to_image_shape
from mtml.multimodal.sampler import ModeImageBank, MultimodalStream
from mtml.params import study as make_study

MODES = ["glyphs", "glyphs-shifted", "shapes"]
DATASETS = {
    "glyphs": {"source": "glyphs", "options": {"alphabets": 12, "characters_per_alphabet": 8,
                                               "drawers": 12, "split": [8, 2, 2]}},
    "glyphs-shifted": {"source": "glyphs", "options": {"style": "shifted", "alphabets": 6,
                                                       "characters_per_alphabet": 8, "drawers": 12,
                                                       "split": [4, 1, 1]}},
    "shapes": {"source": "shapes", "options": {"groups": 6, "shapes_per_group": 3, "schemes_per_group": 2,
                                               "samples": 12, "split": [4, 1, 1]}},
}
SMALL = {"filters": 8}
COND = {"filters": 8, "encoder_filters": 8, "embed_dim": 16, "generator_hidden": 8}
METHODS = {"maml": SMALL, "multi-maml": SMALL, "mmaml": COND, "mmaml-kml": COND,
           "protonet": SMALL, "multi-protonet": SMALL, "mprotonet": {**COND, "film_at": "norm"},
           "mprotonet-kml": COND}


def tiny_multimodal(options=None, methods=None, **exp):
    params = {
        "seed": 0, "device": "cpu", "threads": 1, "datasets": copy.deepcopy(DATASETS),
        "experiments": {"mm": {"kind": "multimodal", "dataset": MODES[0], "modes": MODES[1:], "ways": 5,
                               "shots": 1, "queries": 5,
                               "options": {"image_shape": [3, 28, 28], **(options or {})}, **exp}},
        "methods": copy.deepcopy(methods or METHODS),
        "training": {"iterations": 30, "meta_batch": 3, "meta_lr": 0.003, "val_interval": 15,
                     "val_episodes": 8},
        "evaluation": {"episodes": 24},
    }
    return make_study(params, ["mm.yaml"])


def multimodal_config(study, exp="mm"):
    return study.experiment(exp).settings


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- options


def test_defaults_and_mode_mix_forms():
    mm = multimodal_config(tiny_multimodal(), "mm")
    assert mm.modes == tuple(MODES) and mm.image_shape == (3, 28, 28)
    assert mm.mode_mix == pytest.approx([1 / 3] * 3)
    mm = multimodal_config(tiny_multimodal({"mode_mix": [2, 1, 1]}), "mm")
    assert mm.mode_mix == pytest.approx([0.5, 0.25, 0.25])
    mm = multimodal_config(tiny_multimodal({"mode_mix": {"shapes": 3, "glyphs": 1}}), "mm")
    assert mm.mode_mix == pytest.approx([0.25, 0.0, 0.75])
    assert mm.batch_mix == "independent"
    params = tiny_multimodal({"batch_mix": "balanced"})
    mm = multimodal_config(params, "mm")
    assert mm.batch_mix == "balanced"
    from mtml.stages import training_stream

    banks = dict(zip(mm.modes, _banks()))
    assert training_stream(params.run("mm", "maml"), banks).batch_mix == "balanced"  # training uses it


@pytest.mark.parametrize("options,exp,match", [
    ({"size": 28}, {}, r"experiments\.mm\.options\.size' is unknown.*allowed: batch_mix, image_shape, mode_mix"),
    ({"batch_mix": "stratified"}, {}, r"options\.batch_mix' is 'stratified'; allowed: independent, balanced"),
    ({"image_shape": [2, 28, 28]}, {}, r"options\.image_shape' must be \[channels"),
    ({"image_shape": [3, 8, 8]}, {}, r"options\.image_shape'.*>= 16"),
    ({"mode_mix": [1, 1]}, {}, r"options\.mode_mix' must give one weight per mode \(3"),
    ({"mode_mix": [1, -1, 1]}, {}, r"options\.mode_mix' must hold numbers >= 0"),
    ({"mode_mix": {"cifar": 1}}, {}, r"options\.mode_mix' names 'cifar', not a mode"),
    ({"transference": {"source": 3}}, {}, r"options\.transference\.source' is unknown"),
    ({"transference": {"methods": ["nope"]}}, {}, r"transference\.methods' names 'nope'"),
    ({"transference": {"step_size": -1}}, {}, r"transference\.step_size' must be a number >= 0"),
    ({}, {"modes": ["glyphs-shifted", "glyphs"]}, r"experiments\.mm\.modes' repeats dataset 'glyphs'"),
    ({}, {"cross_domain": ["shapes"]}, r"experiments\.mm\.cross_domain' is not supported"),
])
def test_bad_options_name_the_key(options, exp, match):
    with pytest.raises(UserError, match=match):
        tiny_multimodal(options, **exp)


PAPER_ALGORITHMS = {"maml", "multi-maml", "mmaml", "mmaml-kml", "protonet", "multi-protonet", "mprotonet",
                    "mprotonet-kml"}


@pytest.mark.parametrize("preset,modes,shape,batch_mix", [
    ("multimodal", ("glyphs", "glyphs-shifted", "shapes"), (3, 28, 28), "independent"),
    ("multimodal_2mode", ("omniglot", "miniimagenet"), (3, 84, 84), "balanced"),
    ("multimodal_2mode_dagger", ("miniimagenet", "fc100"), (3, 84, 84), "balanced"),
    ("multimodal_3mode", ("omniglot", "miniimagenet", "fc100"), (3, 84, 84), "balanced"),
    ("multimodal_5mode", ("omniglot", "miniimagenet", "fc100", "cub", "aircraft"), (3, 84, 84), "balanced"),
])
def test_presets_are_whole_valid_params_files_with_the_papers_methods(preset, modes, shape, batch_mix):
    from mtml.methods import resolve_hparams
    from mtml.params import load

    # A preset replaces params.yaml (`--configfile`, `--params configs/<preset>.yaml`): load it alone.
    study = load(Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml")
    params = study.params
    assert study.name == preset
    assert {resolve_hparams(m, hp or {})[0].algorithm for m, hp in params["methods"].items()} == PAPER_ALGORITHMS
    assert "multimodal-table" in params["analyses"]
    exps = [e for e, c in params["experiments"].items() if c["kind"] == "multimodal"]
    assert exps and len(exps) == len(params["experiments"])
    for exp in exps:
        mm = multimodal_config(study, exp)
        assert mm.modes == modes and mm.image_shape == shape and mm.batch_mix == batch_mix
        assert mm.mode_mix == pytest.approx([1 / len(modes)] * len(modes))


def test_per_mode_method_with_a_wrong_mode_count_is_rejected():
    with pytest.raises(UserError, match=r"methods\.multi-maml\.modes' is 2 but experiment 'mm' has 3 modes"):
        tiny_multimodal(methods={"multi-maml": {"modes": 2}})


# --------------------------------------------------------------------------- image shape


def test_grayscale_becomes_rgb_and_area_resize_averages_blocks():
    img = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4) * 10
    out = to_image_shape(img, (3, 2, 2))
    assert out.dtype == np.uint8 and out.shape == (1, 3, 2, 2)
    blocks = img[0, 0].reshape(2, 2, 2, 2).mean((1, 3))  # 2x2 block means
    for c in range(3):
        assert (out[0, c] == np.rint(blocks)).all()
    same = to_image_shape(out, (3, 2, 2))
    assert same is out  # already in shape: no copy
    rgb = np.zeros((1, 3, 4, 4), np.uint8)
    rgb[:, 1] = 200
    assert (to_image_shape(rgb, (1, 4, 4)) == round(0.587 * 200)).all()
    up = to_image_shape(np.full((2, 1, 8, 8), 77, np.uint8), (3, 20, 20))
    assert (up == 77).all()


# --------------------------------------------------------------------------- sampler


def _toy_mode(name, channels, classes_per_split, per_class, seed):
    rows, labels = [], []
    for split in ("train", "val", "test"):
        for _ in range(classes_per_split):
            rows.append({"class_id": len(rows), "name": f"c{len(rows)}", "group": f"{split}-g",
                         "split": split, "n_images": per_class})
            labels += [len(rows) - 1] * per_class
    labels = np.array(labels)
    images = np.random.default_rng(seed).integers(0, 255, (len(labels), channels, 16, 16), dtype=np.uint8)
    classes = validate_classes(images, labels, pd.DataFrame(rows), name)
    return PreparedDataset(name, to_image_shape(images, (3, 16, 16)), labels, classes, {})


def _banks():
    modes = [_toy_mode("a", 1, 6, 4, 0), _toy_mode("b", 3, 7, 5, 1), _toy_mode("c", 1, 5, 6, 2)]
    return [ModeImageBank(d, torch.device("cpu"), i) for i, d in enumerate(modes)]


def test_tasks_use_only_their_own_mode_and_the_mix_follows_params():
    banks, mix = _banks(), [0.6, 0.3, 0.1]
    stream = MultimodalStream(banks, mix, "train", ways=3, shots=1, queries=2, seed=0)
    counts = np.zeros(3)
    for _ in range(3000):
        mode, chosen, support, query = stream.draw()
        counts[mode] += 1
        data = banks[mode].data
        assert set(chosen) <= set(data.split_classes("train"))
        # every item belongs to its class in this mode's dataset
        assert (data.labels[support] == chosen[:, None]).all() and (data.labels[query] == chosen[:, None]).all()
    assert np.abs(counts / 3000 - mix).max() < 0.03

    ep = stream.sample()
    assert ep.support_x.shape == (3, 3, 16, 16)
    state, a, b = _replayed_batches(stream, 5)
    assert [e.mode for e in a] == [e.mode for e in b]
    assert all(torch.equal(x.support_x, y.support_x) for x, y in zip(a, b))
    # the images of an episode are those of its mode's bank
    stream.set_state(state)
    mode, _, support, query = stream.draw()
    assert torch.equal(b[0].query_x, banks[mode].gather(query)) and b[0].mode == mode


def _replayed_batches(stream, size):
    """(state, a batch drawn from `state`, the batch drawn again after restoring `state`)."""
    state = stream.state()
    first = stream.batch(size)
    stream.set_state(state)
    return state, first, stream.batch(size)


def test_a_meta_batch_mixes_modes_and_a_zero_weight_mode_never_appears():
    stream = MultimodalStream(_banks(), [0.5, 0.0, 0.5], "train", 3, 1, 2, seed=1)
    modes = [ep.mode for _ in range(50) for ep in stream.batch(4)]
    assert set(modes) == {0, 2}


@pytest.mark.parametrize("mix,size", [([1, 1, 1], 4), ([0.6, 0.3, 0.1], 10), ([0.5, 0.0, 0.5], 3),
                                      ([0.2, 0.3, 0.5], 7), ([1, 0, 0], 5), ([1, 1, 1], 2)])
def test_balanced_meta_batches_hold_the_modes_in_the_proportions_of_params(mix, size):
    p = np.array(mix) / sum(mix)
    stream = MultimodalStream(_banks(), mix, "train", ways=3, shots=1, queries=2, seed=2, batch_mix="balanced")
    totals, batches = np.zeros(3), 400
    for _ in range(batches):
        counts = np.bincount([ep.mode for ep in stream.batch(size)], minlength=3)
        # every meta-batch: floor(B p_m) or ceil(B p_m) tasks of mode m, none of a zero-weight mode
        assert (counts >= np.floor(size * p + 1e-9)).all() and (counts <= np.ceil(size * p - 1e-9)).all(), counts
        totals += counts
    assert np.abs(totals / (batches * size) - p).max() < 0.02  # and exactly p on average


def test_balanced_batches_mix_every_time_independent_ones_do_not():
    bal = MultimodalStream(_banks(), [1, 1, 1], "train", 3, 1, 2, seed=0, batch_mix="balanced")
    batches = [bal.batch(3) for _ in range(60)]
    assert all(sorted(ep.mode for ep in b) == [0, 1, 2] for b in batches)
    assert {b[0].mode for b in batches} == {0, 1, 2}  # in shuffled order
    ind = MultimodalStream(_banks(), [1, 1, 1], "train", 3, 1, 2, seed=0)
    assert any(sorted(ep.mode for ep in ind.batch(3)) != [0, 1, 2] for _ in range(60))
    # a balanced stream resumes exactly from its state, as the trainer's checkpoint needs
    _, a, b = _replayed_batches(bal, 4)
    assert [e.mode for e in a] == [e.mode for e in b]
    assert all(torch.equal(x.query_x, y.query_x) for x, y in zip(a, b))


def test_a_mode_with_too_few_classes_is_a_user_error():
    with pytest.raises(UserError, match="dataset c has 5 train classes but episodes need ways=6"):
        MultimodalStream(_banks(), [1, 1, 1], "train", 6, 1, 1, seed=0)


# --------------------------------------------------------------------------- shapes


def test_shapes_are_rgb_deterministic_and_split_by_group():
    opts = {"groups": 5, "shapes_per_group": 2, "schemes_per_group": 3, "samples": 4, "split": [3, 1, 1]}
    images, labels, classes, meta = generate_shapes(opts, seed=3)
    assert images.dtype == np.uint8 and images.shape == (5 * 6 * 4, 3, 28, 28)
    validate_classes(images, labels, classes, "shapes")
    assert classes.groupby("group")["split"].nunique().max() == 1
    assert classes["split"].value_counts().to_dict() == {"train": 18, "val": 6, "test": 6}
    again, *_ = generate_shapes(opts, seed=3)
    assert np.array_equal(images, again)
    other, *_ = generate_shapes(opts, seed=4)
    assert not np.array_equal(images, other)
    prefix, *_ = generate_shapes({**opts, "groups": 2, "split": [1, 1, 0]}, seed=3)
    assert np.array_equal(prefix, images[: len(prefix)])  # fewer groups: a prefix
    # classes differ more between than within: nearest class mean classifies most images
    x = images.reshape(len(images), -1).astype(float)
    means = np.stack([x[labels == c].mean(0) for c in range(len(classes))])
    nearest = ((x[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == labels).mean() > 0.8


@pytest.mark.parametrize("options,match", [
    ({"colour": 1}, r"datasets\.shapes\.options\.colour' is unknown"),
    ({"groups": 0}, r"options\.groups' must be an integer >= 1"),
    ({"image_size": 8}, r"options\.image_size' must be an integer >= 16"),
    ({"groups": 2, "split": [1, 1, 1]}, r"options\.split' asks for 3 non-empty splits"),
    ({"noise": -1}, r"options\.noise' must be a number >= 0"),
])
def test_shapes_options_name_the_key(options, match):
    with pytest.raises(UserError, match=match):
        generate_shapes(options, seed=0)


# --------------------------------------------------------------------------- per-mode methods, benchmark


def test_per_mode_learners_are_independent_and_routed_by_the_mode():
    from mtml.methods import build

    from pipeline_helpers import random_episode

    shape = (3, 16, 16)
    torch.manual_seed(0)
    learner = build("multi-maml", {"filters": 4, "modes": 3}, shape, 3)
    batch = [random_episode(3, 1, 2, shape, "cpu", mode=m) for m in (0, 2, 0)]
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    grads = [[p.grad for p in sub.parameters()] for sub in learner.learners]
    assert all(g is not None for g in grads[0] + grads[2])
    assert all(g is None for g in grads[1])  # no task of mode 1: its learner is untouched
    with torch.no_grad():  # the loss is the batch mean over each task's own-mode learner
        expected = torch.stack([learner.learners[ep.mode].meta_loss([ep])[0] for ep in batch]).mean()
        assert float(loss) == pytest.approx(float(expected), rel=1e-6)
        ep = random_episode(3, 1, 2, shape, "cpu", mode=1)
        assert torch.equal(learner.predict(ep), learner.learners[1].predict(ep))
        assert not torch.equal(learner.predict(ep), learner.learners[0].predict(ep))
    with pytest.raises(ValueError, match="has 3 modes; got an episode of mode 3"):
        learner.predict(random_episode(3, 1, 2, shape, "cpu", mode=3))


def test_benchmark_reports_generators_and_one_learner_per_mode(tmp_path):
    from mtml.benchmark import benchmark
    from mtml.layout import Layout
    from mtml.models.conv4 import Conv4
    from mtml.models.modulation import conv_kernels, factorised_kml_parameters

    study = tiny_multimodal(methods={"maml": SMALL, "multi-maml": SMALL, "mmaml": COND, "mmaml-kml": COND})
    rows = {r["method"]: r for r in benchmark(study, Layout(tmp_path, study), "mm", iterations=1, episodes=1)["rows"]}
    assert rows["multi-maml"]["parameters"] == 3 * rows["maml"]["parameters"]  # three modes
    assert "generator_parameters" not in rows["maml"] and rows["multi-maml"]["generator_parameters"] == 0
    kernels = conv_kernels(Conv4(3, 8)).values()
    assert rows["mmaml-kml"]["generator_parameters"] == factorised_kml_parameters(16, 8, kernels)
    assert rows["mmaml"]["generator_parameters"] == 4 * (16 + 1) * 2 * 8  # a linear map per block to gamma, beta


def test_paired_difference_pairs_episodes_by_mode_and_id():
    from mtml.analysis.multimodal import paired_difference

    rng = np.random.default_rng(0)
    base = pd.DataFrame({"dataset": ["a"] * 5 + ["b"] * 5, "episode": list(range(5)) * 2,
                         "accuracy": rng.uniform(0, 100, 10)})
    better = base.assign(accuracy=base["accuracy"] + 5).iloc[::-1]  # same episodes, other order
    mean, ci, n = paired_difference(better, base)
    assert mean == pytest.approx(5) and ci == pytest.approx(0, abs=1e-9) and n == 10
    two = pd.DataFrame({"dataset": ["a", "a"], "episode": [0, 1], "accuracy": [100.0, 0.0]})
    mean, ci, _ = paired_difference(two, two.assign(accuracy=0.0))
    assert mean == 50 and ci == pytest.approx(1.96 * np.std([100, 0], ddof=1) / np.sqrt(2))
    with pytest.raises(UserError, match="same test episodes"):
        paired_difference(base.iloc[1:], base)


# --------------------------------------------------------------------------- pipeline


def _run_all(study, root):
    from pipeline_helpers import run_pipeline

    return {meth: rows for (_, meth), rows in run_pipeline(study, root).items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("multimodal")
    params = tiny_multimodal({"transference": {"sources": 6, "targets": 1, "retrain_iterations": 4,
                                               "snapshots": 2}})
    try:
        yield params, root, _run_all(params, root)
    finally:
        torch.set_num_threads(old)


@pytest.mark.slow  # shares one end-to-end run of all 8 methods (about 30 s of CPU)
def test_every_method_beats_chance_in_every_mode(trained):
    params, root, results = trained
    chance = 100 / 5
    for meth, rows in results.items():
        by_dataset = {r["dataset"]: r for r in rows}
        assert list(by_dataset) == [*MODES, "all"], meth
        for ds, r in by_dataset.items():
            assert r["episodes"] == 24 * (3 if ds == "all" else 1)
            assert r["accuracy"] - r["ci95"] > chance, (meth, ds, r["accuracy"], r["ci95"])


@pytest.mark.slow  # shares one end-to-end run of all 8 methods (about 30 s of CPU)
def test_runs_write_the_fewshot_files_and_aggregate_reads_them(trained):
    from mtml.analysis.aggregate import collect
    from mtml.layout import Layout

    study, root, results = trained
    layout = Layout(root, study)
    for meth in study.methods:
        run, models = layout.run_dir("mm", meth), layout.model_dir("mm", meth)
        for f in ("eval.json", "episodes.csv", "details.json", "timing_eval.json", "train_log.csv", "train.json",
                  "timing_train.json", "trace.jsonl"):
            assert (run / f).exists(), (meth, f)
        assert (models / "model.pt").exists() and (models / "checkpoint.pt").exists()
        saved = torch.load(models / "model.pt", weights_only=True)
        assert saved["modes"] == MODES and saved["image_shape"] == [3, 28, 28]
        per_episode = pd.read_csv(run / "episodes.csv")
        assert set(per_episode["mode"]) == {0, 1, 2} and set(per_episode["dataset"]) == set(MODES)
        log = pd.read_csv(run / "train_log.csv")
        assert len(log) == 30 and log["val_accuracy"].notna().sum() == 2
    assert json.loads((layout.episodes("mm") / "sources.json").read_text())["modes"] == MODES
    frame = collect(study, layout)
    assert len(frame) == len(study.methods) * 4
    assert set(frame["dataset"]) == {*MODES, "all"}


@pytest.mark.slow  # shares one end-to-end run of all 8 methods (about 30 s of CPU)
def test_per_mode_method_keeps_one_learner_per_mode(trained):
    from mtml.layout import Layout

    study, root, _ = trained
    saved = torch.load(Layout(root, study).model("mm", "multi-maml"), weights_only=True)["state"]
    assert {k.split(".")[1] for k in saved} == {"0", "1", "2"}


@pytest.mark.slow  # shares one end-to-end run of all 8 methods (about 30 s of CPU)
def test_transference_analysis_writes_its_figures(trained):
    from mtml.analysis.registry import get_analysis
    from mtml.layout import Layout

    study, root, _ = trained
    out = root / "analysis-transference"
    get_analysis("transference")(study, Layout(root, study), out)
    for f in ("ratios.csv", "summary.json", "histograms-mm.png", "modes-mm.png", "transference.md"):
        assert (out / f).exists(), f
    ratios = pd.read_csv(out / "ratios.csv")
    assert set(ratios["method"]) == {"maml", "mmaml-kml"}  # the default comparison
    # snapshots: retrain iterations 0 and 4, then the trained model
    assert list(dict.fromkeys(ratios["snapshot"])) == ["iteration 0", "iteration 4", "trained"]
    assert len(ratios) == 2 * 3 * 6 * 3  # methods x snapshots x sources x targets (1 per mode)
    assert (ratios["ratio"] > 0).all() and np.isfinite(ratios["ratio"]).all()
    summary = json.loads((out / "summary.json").read_text())["mm"]
    assert np.array(summary["mode_matrix"]["maml"]["mean_ratio"]).shape == (3, 3)


def test_transference_folds_the_training_seeds(tmp_path):
    """With several seeds every seed's run is retrained and analysed: seed 0's ratios are those
    of a one-seed study, seed 1's differ (its own initialisation and stream), the shares pool
    both seeds' pairs and list each seed's, and the mode matrix averages each pair over seeds."""
    from mtml import stages
    from mtml.analysis.transference import transference
    from mtml.layout import Layout

    options = {"transference": {"sources": 4, "targets": 1, "retrain_iterations": 2, "snapshots": 2}}
    one = tiny_multimodal(options, methods={"maml": SMALL})
    two = make_study({**one.params, "seeds": [0, 1]}, ["mm.yaml"])
    layout = Layout(tmp_path, two)
    for name in MODES:
        stages.prepare(two, layout, name)
    stages.build_episodes(two, layout, "mm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        transference(one, Layout(tmp_path, one), tmp_path / "one")
        transference(two, layout, tmp_path / "two")
    finally:
        torch.set_num_threads(threads)
    first, both = (pd.read_csv(tmp_path / d / "ratios.csv") for d in ("one", "two"))
    assert sorted(both["seed"].unique()) == [0, 1] and len(both) == 2 * len(first)
    seed0 = both[both["seed"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(seed0, first)
    seed1 = both[both["seed"] == 1].reset_index(drop=True)
    assert not np.allclose(seed0["ratio"], seed1["ratio"])
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())["mm"]
    assert summary["seeds"] == [0, 1]
    for snap in dict.fromkeys(both["snapshot"]):
        cell = summary["snapshots"][f"maml/{snap}"]
        per = {str(k): float((g["ratio"] < 1).mean()) for k, g in both[both["snapshot"] == snap].groupby("seed")}
        assert cell["positive_transfer_per_seed"] == pytest.approx(per, abs=1e-4)
        assert cell["positive_transfer"] == pytest.approx(np.mean(list(per.values())), abs=1e-4)
        assert cell["pairs"] == 2 * 4 * 3
    last = both[both["snapshot"] == both["snapshot"].iloc[-1]]
    mean = last.groupby(["source", "target"])["ratio"].mean().unstack().to_numpy()
    modes = (last.drop_duplicates("source").sort_values("source")["source_mode"],
             last.drop_duplicates("target").sort_values("target")["target_mode"])
    from mtml.analysis.transference import mode_matrix

    expected = mode_matrix(mean, *modes, len(MODES))
    assert np.allclose(summary["mode_matrix"]["maml"]["mean_ratio"], expected, atol=1e-5, equal_nan=True)
    md = (tmp_path / "two" / "transference.md").read_text()  # the same numbers as tables
    cell = summary["snapshots"]["maml/iteration 0"]
    per = ", ".join(f"{100 * x:.0f}%" for x in cell["positive_transfer_per_seed"].values())
    assert (f"| maml | iteration 0 | {cell['mean_ratio']:.4f} | {100 * cell['positive_transfer']:.1f}% | {per} | 24 |"
            in md)
    assert "2 training seeds (0, 1)" in md and f"| glyphs | {expected[0, 0]:.4f} |" in md


def test_multimodal_table_folds_the_training_seeds(tmp_path):
    """With several seeds each paired difference covers every seed (combined CI, as compare.md),
    not the first seed's episodes only; a missing seed names its file."""
    from mtml.analysis.multimodal import differences, markdown
    from mtml.layout import Layout

    study = make_study({**tiny_multimodal(methods={"maml": SMALL, "mmaml": COND}).params, "seeds": [0, 1]}, ["mm.yaml"])
    layout = Layout(tmp_path, study)
    rng = np.random.default_rng(3)
    base = rng.uniform(30, 90, size=(len(MODES), 10))
    acc = {}
    for seed, offset in ((0, 1.0), (1, 6.0)):  # mmaml's gain differs between the seeds
        for meth, shift in (("maml", 0.0), ("mmaml", offset)):
            acc[meth, seed] = base + shift + rng.normal(0, 2, size=base.shape)
            rows = [{"split": "test", "dataset": ds, "mode": i, "episode": e, "accuracy": acc[meth, seed][i, e]}
                    for i, ds in enumerate(MODES) for e in range(10)]
            path = layout.run_dir("mm", meth, seed) / "episodes.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(path, index=False)
    frame = pd.DataFrame({"experiment": "mm", "method": ["maml", "mmaml"], "algorithm": ["maml", "mmaml"]})
    diffs = differences(layout, frame, study).set_index("dataset")
    truth = np.mean([acc["mmaml", s] - acc["maml", s] for s in (0, 1)], axis=0)
    assert diffs.loc["all", "difference"] == pytest.approx(truth.mean(), abs=1e-4)
    assert diffs.loc["shapes", "difference"] == pytest.approx(truth[2].mean(), abs=1e-4)
    assert (diffs["seeds"] == 2).all() and diffs.loc["all", "episodes"] == 30
    assert (diffs["ci_low"] < diffs["difference"]).all() and (diffs["difference"] < diffs["ci_high"]).all()
    # the seeds disagree by 5 points: the combined CI is wider than the episode-only one
    assert (diffs["ci_high"] - diffs["ci_low"] > 2 * diffs["ci95"]).all()
    cells = pd.DataFrame([{"experiment": "mm", "method": m, "algorithm": m, "dataset": d, "episodes": 10,
                           "accuracy": 50.0, "ci95": 1.0, "ci_low": 48.0, "ci_high": 52.5}
                          for m in ("maml", "mmaml") for d in [*MODES, "all"]])
    md = markdown(study, cells, diffs.reset_index())
    assert "mean over 2 training seeds [combined 95% CI" in md and "| maml | maml | 50.00 [48.00, 52.50] |" in md
    d = diffs.loc["all"]
    assert f"{d['difference']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] |" in md
    (layout.run_dir("mm", "maml", 1) / "episodes.csv").unlink()
    with pytest.raises(UserError, match=r"maml/seed-1/episodes.csv is missing"):
        differences(layout, frame, study)


@pytest.mark.slow  # shares one end-to-end run of all 8 methods (about 30 s of CPU)
def test_multimodal_table_lays_out_every_method_and_mode_with_paired_differences(trained):
    from mtml.analysis.registry import get_analysis
    from mtml.layout import Layout

    study, root, results = trained
    out = root / "analysis-multimodal-table"
    out.mkdir(parents=True)
    get_analysis("multimodal-table")(study, Layout(root, study), out)
    table, md = pd.read_csv(out / "table.csv"), (out / "table.md").read_text()
    assert len(table) == len(study.methods) * 4
    for meth, rows in results.items():
        by = {r["dataset"]: r for r in rows}
        for ds, r in by.items():
            row = table[(table["method"] == meth) & (table["dataset"] == ds)].iloc[0]
            # (the table's aggregate over seeds, from episodes.csv: eval.json's numbers with one seed)
            assert (row["accuracy"], row["ci95"]) == pytest.approx((r["accuracy"], r["ci95"]), abs=1e-3)
        # the paper's layout: one row per method, one column per mode, then all modes
        cells = " | ".join(f"{by[d]['accuracy']:.2f} ± {by[d]['ci95']:.2f}" for d in [*MODES, "all"])
        assert f"| {meth} | {r['algorithm']} | {cells} |" in md
    diffs = pd.read_csv(out / "differences.csv")
    assert set(zip(diffs["method"], diffs["base"])) == {
        ("multi-maml", "maml"), ("mmaml", "maml"), ("mmaml-kml", "maml"),
        ("multi-protonet", "protonet"), ("mprotonet", "protonet"), ("mprotonet-kml", "protonet")}
    acc = {(m, r["dataset"]): r["accuracy"] for m, rows in results.items() for r in rows}
    for _, d in diffs.iterrows():
        # on the same episodes the mean difference is the difference of the means
        assert d["difference"] == pytest.approx(acc[(d["method"], d["dataset"])] - acc[(d["base"], d["dataset"])],
                                                abs=2e-4)
        assert d["episodes"] == 24 * (3 if d["dataset"] == "all" else 1)


@pytest.mark.slow  # the stages through the CLI, as Snakemake and DVC call them (about 20 s of CPU)
def test_a_multimodal_experiment_runs_through_the_cli_stages(tmp_path, monkeypatch):
    import yaml

    from mtml.cli import main

    params = tiny_multimodal({"transference": {"sources": 3, "targets": 1, "retrain_iterations": 2,
                                               "snapshots": 2}},
                             methods={"maml": SMALL, "mmaml-kml": COND}).params
    params["training"].update(iterations=4, val_interval=2, val_episodes=2)
    params["evaluation"]["episodes"] = 4
    params["analyses"] = ["multimodal-table", "transference"]
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    stages = [["prepare", "--dataset", ds] for ds in MODES] + [["episodes", "--experiment", "mm"]]
    for meth in params["methods"]:
        stages += [["train", "--experiment", "mm", "--method", meth],
                   ["evaluate", "--experiment", "mm", "--method", meth]]
    stages += [["aggregate"]] + [["analyse", "--name", a] for a in params["analyses"]]
    for stage in stages:
        assert main([*stage, "--params", "params.yaml"]) == 0, stage
    summary = json.loads(Path("metrics/default/summary.json").read_text())
    assert {k.split("/")[3] for k in summary} == {*MODES, "all"}  # exp/method/split/dataset[/seed-k]
    assert {k.rsplit("/", 1)[1] for k in summary if k.count("/") == 4} == {"seed-0"}
    md = Path("metrics/default/analysis/multimodal-table/table.md").read_text()
    assert "| maml | maml |" in md and "| mmaml-kml | maml |" in md  # a result row, a paired difference
    ratios = pd.read_csv("metrics/default/analysis/transference/ratios.csv")
    assert set(ratios["method"]) == {"maml", "mmaml-kml"} and "trained" in set(ratios["snapshot"])
