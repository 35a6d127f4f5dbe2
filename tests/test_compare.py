"""Statistics of comparisons (mtml.analysis.compare): calibration on simulated studies, the
fast bootstrap against a plain loop, Holm, published statuses and the schemas.

Simulated study: E test episodes with a difficulty shared by every seed and method
(p_e = 0.3 + 0.6 Beta(6, 6), so the true mean accuracy is exactly 60 %), a training offset
per method and seed ~ N(0, seed_sd) points, and per-episode accuracy Binomial(15, p)/15*100
(15 queries). The simulations use 400 bootstrap resamples (the default is 2000) so the whole
file runs in well under a minute."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mtml.analysis import compare as C
from mtml.errors import UserError
from mtml.evaluation.stats import mean_ci95
from mtml.params import load, validate

ROOT = Path(__file__).resolve().parents[1]
TRUE_MEAN = 60.0


def simulate(rng, seeds=3, episodes=600, seed_sd=1.5, shift=0.0):
    """Two methods' [seeds x episodes] accuracies; the first is `shift` points better."""
    difficulty = 0.3 + 0.6 * rng.beta(6, 6, size=episodes)
    out = []
    for s in (shift, 0.0):
        p = np.clip(difficulty[None, :] + (rng.normal(0, seed_sd, size=(seeds, 1)) + s) / 100, 0, 1)
        out.append(rng.binomial(15, p) / 15 * 100)
    return out


def frame(matrices: dict, experiment="exp", split="test", dataset="ds", **extra) -> pd.DataFrame:
    """Per-episode rows as aggregation concatenates them: method -> [seeds x episodes]."""
    rows = []
    for method, x in matrices.items():
        for s, acc in enumerate(np.asarray(x)):
            rows.append(pd.DataFrame({"experiment": experiment, "method": method, "split": split,
                                      "dataset": dataset, "seed": s, "episode": np.arange(len(acc)),
                                      "accuracy": acc, **extra}))
    return pd.concat(rows, ignore_index=True)


# ---------------------------------------------------------------- calibration (simulations)

def test_two_copies_of_one_method_keep_the_false_positive_rate_near_alpha():
    rng = np.random.default_rng(1)
    verdicts, episode_level = [], []
    for i in range(200):
        a, b = simulate(rng, seeds=3, seed_sd=1.5)
        row = C.compare_pair(a, b, np.random.default_rng(i), resamples=400)
        verdicts.append(C.verdicts([row["difference"]], [row["p_combined"]])[0])
        episode_level.append(row["p_wilcoxon"] < 0.05)
    fpr = np.mean([v != "no detectable difference" for v in verdicts])
    assert fpr <= 0.08
    # Why the verdict is not driven by the episode-level tests: they ignore training variance,
    # so two copies of one method trained with other seeds "differ" in about half the studies.
    assert np.mean(episode_level) > 0.3


def test_a_planted_two_point_difference_is_detected_in_most_studies():
    rng = np.random.default_rng(2)
    found = []
    for i in range(200):
        a, b = simulate(rng, seeds=5, seed_sd=0.5, shift=2.0)
        row = C.compare_pair(a, b, np.random.default_rng(i), resamples=400)
        found.append(C.verdicts([row["difference"]], [row["p_combined"]])[0] == "better")
    assert np.mean(found) >= 0.7


def test_combined_ci_covers_the_true_mean_about_95_percent_of_the_time():
    # 3 seeds with a training spread (1.5 points) larger than the episode CI (~0.5): the
    # percentile interval under-covers, the t-expanded default stays in 0.90-0.99.
    rng = np.random.default_rng(3)
    expanded, percentile = [], []
    for i in range(300):
        a, _ = simulate(rng, seeds=3, seed_sd=1.5)
        for hits, kind in ((expanded, "expanded"), (percentile, "percentile")):
            r = C.combined_interval(a, np.random.default_rng(i), 400, interval=kind)
            hits.append(r["ci_low"] <= TRUE_MEAN <= r["ci_high"])
    assert 0.90 <= np.mean(expanded) <= 0.99
    assert np.mean(percentile) < np.mean(expanded)


def test_variance_components_match_the_variance_of_the_grand_mean():
    # Ground truth from 1500 simulated studies: the empirical variance of their grand means.
    # With a training spread the estimate is unbiased (within 10 %); without one, truncating the
    # seed component at 0 errs a little on the safe side, while adding var(seed means)/S and
    # var(episode means)/E (the cell noise counted twice) overshoots by far more.
    rng = np.random.default_rng(4)
    for seed_sd in (1.5, 0.0):
        means, estimates, naive = [], [], []
        for _ in range(1500):
            x, _ = simulate(rng, seeds=3, episodes=200, seed_sd=seed_sd)
            v_seed, v_ep, _ = C.variance_components(x)
            means.append(x.mean())
            estimates.append(v_seed + v_ep)
            naive.append(x.mean(axis=1).var(ddof=1) / 3 + x.mean(axis=0).var(ddof=1) / 200)
        truth = np.var(means, ddof=1)
        if seed_sd:
            assert np.mean(estimates) == pytest.approx(truth, rel=0.10)
        else:
            assert truth * 0.95 <= np.mean(estimates) <= truth * 1.25 < np.mean(naive)


def test_bootstrap_variance_matches_the_variance_components():
    x, _ = simulate(np.random.default_rng(5), seeds=4, episodes=300, seed_sd=2.0)
    reps = C.hierarchical_bootstrap(x, np.random.default_rng(0), 8000)
    v_seed, v_ep, _ = C.variance_components(x)
    assert reps.var() == pytest.approx(v_seed + v_ep, rel=0.06)
    assert reps.mean() == pytest.approx(x.mean(), abs=0.05)


def test_fast_bootstrap_equals_a_plain_resampling_loop():
    x = np.random.default_rng(6).uniform(0, 100, size=(3, 50))
    fast = C.hierarchical_bootstrap(x, np.random.default_rng(9), 50)
    # Reference: draw the same counts, expand them into index lists, gather and average.
    S, E = x.shape
    m, g = x.mean(axis=1, keepdims=True), x.mean()
    k = math.sqrt(C.variance_components(x)[0] / (((m - g) ** 2).sum() / S ** 2))
    adjusted = x - m + g + k * (m - g)
    c, w = C.bootstrap_counts(np.random.default_rng(9), S, E, 50)
    plain = [adjusted[np.ix_(np.repeat(np.arange(S), c[b]), np.repeat(np.arange(E), w[b]))].mean()
             for b in range(50)]
    np.testing.assert_allclose(fast, plain, rtol=1e-12)


def test_bootstrap_of_2000_resamples_is_fast():
    import time

    x = np.random.default_rng(7).uniform(0, 100, size=(3, 600))
    t0 = time.perf_counter()
    C.hierarchical_bootstrap(x, np.random.default_rng(0), 2000)
    assert time.perf_counter() - t0 < 1.0


# ---------------------------------------------------------------- Holm

def test_holm_on_a_hand_computed_case():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(0.06, 1*0.04)=0.06
    np.testing.assert_allclose(C.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(C.holm([0.2, np.nan, 0.9]), [0.4, np.nan, 0.9])  # NaN left out of the family
    np.testing.assert_allclose(C.holm([0.6, 0.7]), [1.0, 1.0])  # capped at 1


# ---------------------------------------------------------------- frames

def test_seed_summary_rows_per_seed_and_aggregated():
    a, b = simulate(np.random.default_rng(8), seeds=3, episodes=100)
    df = frame({"a": a, "b": b[:1]})
    df["nil_accuracy"] = df["accuracy"] / 2
    out = C.seed_summary(df, resamples=500)
    one = out[(out["method"] == "a") & (out["seed"] == "1")].iloc[0]
    assert (one["accuracy"], one["ci95"]) == pytest.approx(mean_ci95(a[1]))
    agg = out[(out["method"] == "a") & (out["seed"] == "all")].iloc[0]
    seed_means = a.mean(axis=1)
    assert agg["accuracy"] == pytest.approx(seed_means.mean())
    assert agg["seed_std"] == pytest.approx(seed_means.std(ddof=1))
    assert agg["seed_ci95"] == pytest.approx(4.302653 * seed_means.std(ddof=1) / math.sqrt(3), rel=1e-6)
    assert agg["ci_low"] < agg["accuracy"] < agg["ci_high"] and agg["nil_accuracy"] == pytest.approx(agg["accuracy"] / 2)
    single = out[(out["method"] == "b") & (out["seed"] == "all")].iloc[0]
    assert single["seeds"] == 1 and np.isnan(single["seed_ci95"])
    # one seed: the combined CI is the episode bootstrap, close to the episode CI
    assert single["ci_high"] - single["ci_low"] == pytest.approx(2 * single["ci95"], rel=0.2)


def test_two_seeds_give_a_wide_interval_clipped_to_the_accuracy_range():
    x = np.array([[40.0, 60.0, 50.0, 55.0], [90.0, 95.0, 85.0, 99.0]])  # two seeds far apart
    r = C.combined_interval(x, np.random.default_rng(0), 500)
    assert r["df"] < 3 and (r["ci_low"], r["ci_high"]) == (0.0, 100.0)


def test_seed_rows_come_in_numeric_order():
    a, _ = simulate(np.random.default_rng(17), seeds=2, episodes=10)
    df = frame({"a": a})
    df["seed"] = df["seed"].map({0: 10, 1: 2})
    assert list(C.seed_summary(df, resamples=50)["seed"]) == ["2", "10", "all"]


def test_paired_comparisons_on_a_frame_match_the_pair_statistics():
    rng = np.random.default_rng(10)
    a, b = simulate(rng, seeds=3, episodes=80)
    c = a + 5
    df = frame({"a": a, "b": b, "c": c})
    # a fourth seed only method b has, and an episode only method a has: both are left out
    extra = frame({"b": b[:1]}).assign(seed=7)
    df = pd.concat([df, extra, frame({"a": a[:, :1]}).assign(episode=999)]).sample(frac=1, random_state=0)
    df = df.sort_values("method", kind="stable")  # methods in params order, rows shuffled within
    table = C.paired_comparisons(df, resamples=300)
    assert list(zip(table["method"], table["versus"])) == [("a", "b"), ("a", "c"), ("b", "c")]
    row = table.iloc[0]
    ref = C.compare_pair(a, b, C._rng(0, "exp", "test", "ds", "a", "b"), 300)
    for key in ("seeds", "episodes", "difference", "ci_low", "ci_high", "p_combined", "p_t_seeds", "p_wilcoxon"):
        assert row[key] == pytest.approx(ref[key]), key
    ac = table.iloc[1]  # a is exactly 5 points below c everywhere: zero-variance differences
    assert ac["difference"] == pytest.approx(-5) and ac["p_t_episodes"] == 0 and ac["verdict"] == "worse"
    np.testing.assert_allclose(table["p_combined_holm"], C.holm(table["p_combined"]))
    vs_ref = C.paired_comparisons(df, reference="c", resamples=300)
    assert list(vs_ref["method"]) == ["a", "b"] and set(vs_ref["versus"]) == {"c"}
    assert (vs_ref["difference"] < 0).all()
    # planned pairs: each as the all-pairs row (read the other way round when listed so), and
    # Holm over the planned pairs only, so a planned pair's adjusted p is never larger
    planned = C.paired_comparisons(df, pairs=[("c", "a"), ("b", "c")], resamples=300)
    assert list(zip(planned["method"], planned["versus"])) == [("c", "a"), ("b", "c")]
    bc = table.iloc[2]
    assert planned.iloc[1]["difference"] == pytest.approx(bc["difference"])
    assert planned.iloc[1]["p_combined"] == pytest.approx(bc["p_combined"])
    assert planned.iloc[0]["difference"] == pytest.approx(-ac["difference"]) and planned.iloc[0]["verdict"] == "better"
    np.testing.assert_allclose(planned["p_combined_holm"], C.holm(planned["p_combined"]))
    assert planned.iloc[1]["p_combined_holm"] <= bc["p_combined_holm"]


def test_identical_copies_give_zero_difference_and_no_verdict():
    a, _ = simulate(np.random.default_rng(11), seeds=2, episodes=50)
    row = C.paired_comparisons(frame({"a": a, "a2": a}), resamples=200).iloc[0]
    assert row["difference"] == 0 and row["ci_low"] == 0 and row["ci_high"] == 0
    assert row["p_t_episodes"] == 1 and row["p_wilcoxon"] == 1 and row["p_t_seeds"] == 1
    assert row["verdict"] == "no detectable difference"


def test_multimodal_modes_are_pooled_and_paired_by_mode_and_episode():
    rng = np.random.default_rng(12)
    parts = [frame({m: rng.uniform(0, 100, size=(2, 30))}, dataset=ds, mode=i)
             for m in ("maml", "mmaml") for i, ds in enumerate(("glyphs", "shapes"))]
    pooled = C.pool_modes(pd.concat(parts, ignore_index=True))
    table = C.paired_comparisons(pooled, resamples=100)
    assert list(table["dataset"]) == ["glyphs", "shapes", "all"]
    assert table.iloc[2]["episodes"] == 60  # episode ids repeat across modes: (mode, episode) pairs


def test_multitask_runs_are_summarised_and_compared_per_task():
    rng = np.random.default_rng(16)
    parts = []
    for task in ("classification", "depth"):
        for m in ("am", "anil"):
            part = frame({m: rng.uniform(0, 100, size=(2, 20))}, task=task, environment=1)
            part["nil_accuracy"] = part["accuracy"] / 2 if task == "classification" else np.nan
            parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    summary = C.seed_summary(df, resamples=100)
    agg = summary[summary["seed"] == "all"].set_index(["task", "method"])
    assert len(agg) == 4 and np.isnan(agg.loc[("depth", "am"), "nil_accuracy"])
    assert agg.loc[("classification", "am"), "nil_accuracy"] == pytest.approx(agg.loc[("classification", "am"), "accuracy"] / 2)
    table = C.paired_comparisons(df, resamples=100)
    assert list(table["task"]) == ["classification", "depth"]
    # published numbers are classification accuracies: matched to the classification row only
    pub = C.published_comparison(summary, {"exp": {"am": {"test": entry(50.0)}}})
    assert pub.iloc[0]["measured"] == pytest.approx(agg.loc[("classification", "am"), "accuracy"])


def test_bad_input_gives_one_clear_error():
    with pytest.raises(UserError, match="lack column"):
        C.seed_summary(pd.DataFrame({"experiment": ["e"], "accuracy": [1.0]}))
    a, _ = simulate(np.random.default_rng(13), seeds=2, episodes=10)
    with pytest.raises(UserError, match="reference"):
        C.paired_comparisons(frame({"a": a, "b": a}), reference="protonet")
    with pytest.raises(UserError, match=r"'comparisons' names method\(s\) protonet with no results"):
        C.paired_comparisons(frame({"a": a, "b": a}), pairs=[("a", "protonet")])
    with pytest.raises(UserError, match="not both"):
        C.paired_comparisons(frame({"a": a, "b": a}), reference="a", pairs=[("a", "b")])
    df = frame({"a": a})
    with pytest.raises(UserError, match="twice"):
        C.seed_summary(pd.concat([df, df]))


# ---------------------------------------------------------------- schemas

def test_schemas_reject_planted_bad_rows():
    a, b = simulate(np.random.default_rng(14), seeds=2, episodes=40)
    summary = C.seed_summary(frame({"a": a}), resamples=100)
    bad = summary.copy()
    bad.loc[0, "accuracy"] = 120.0
    with pytest.raises(UserError, match="SeedSummaryRows"):
        C._validate(C.SeedSummaryRows, bad, "seed-summary rows")
    inverted = summary.copy()
    inverted.loc[0, ["ci_low", "ci_high"]] = [inverted.loc[0, "accuracy"] + 1, inverted.loc[0, "accuracy"] + 2]
    with pytest.raises(UserError, match="ci_brackets_mean"):
        C._validate(C.SeedSummaryRows, inverted, "seed-summary rows")
    table = C.paired_comparisons(frame({"a": a, "b": b}), resamples=100)
    bad = table.copy()
    bad.loc[0, "verdict"] = "maybe"
    with pytest.raises(UserError, match="verdict"):
        C._validate(C.CompareRows, bad, "comparison rows")


# ---------------------------------------------------------------- published numbers

def aggregated(rows):
    return pd.DataFrame([{"experiment": e, "method": m, "split": s, "dataset": d, "seed": "all", "seeds": 3,
                          "accuracy": acc, "ci_low": acc - 2, "ci_high": acc + 2} for e, m, s, d, acc in rows])


def entry(acc, **more):
    return {"accuracy": acc, "source": {"paper": "P", "table": "Table 1"}, **more}


def test_published_status_on_hand_cases():
    agg = aggregated([("e", "maml", "test", "mini", 60.0), ("e", "anil", "test", "mini", 60.0),
                      ("e", "proto", "test", "mini", 60.0), ("e", "proto", "cross-domain", "cub", 40.0)])
    published = {"e": {"maml": {"test": entry(61.5, ci95=0.5)},
                       "anil": {"test": entry(57.0)},
                       "proto": {"test": entry(63.0), "cross-domain": entry(42.0)},
                       "am": {"test": entry(50.0)}}}
    out = C.published_comparison(agg, published).set_index(["method", "split"])
    assert out.loc[("maml", "test"), "status"] == "reproduced"
    assert out.loc[("maml", "test"), "difference"] == pytest.approx(-1.5)
    assert out.loc[("maml", "test"), "published_ci95"] == 0.5
    assert out.loc[("anil", "test"), "status"] == "below"       # paper below our CI: we measure more
    assert out.loc[("proto", "test"), "status"] == "above"
    assert out.loc[("proto", "cross-domain"), "status"] == "reproduced"  # 42 is the CI's edge
    assert out.loc[("am", "test"), "status"] == "not measured"
    md = C.markdown_summary(pd.concat([agg.assign(ci95=0.5, seed_std=1.0)]), C.published_comparison(agg, published))
    assert "61.50 ± 0.50 | -1.50 | reproduced | P, Table 1" in md


def test_published_entry_must_name_its_dataset_when_a_split_has_several():
    agg = aggregated([("e", "maml", "test", "glyphs", 60.0), ("e", "maml", "test", "all", 55.0)])
    with pytest.raises(UserError, match="published.e.maml.test"):
        C.published_comparison(agg, {"e": {"maml": {"test": entry(50.0)}}})
    out = C.published_comparison(agg, {"e": {"maml": {"test": entry(56.0, dataset="all")}}})
    assert out.iloc[0]["measured"] == 55.0 and out.iloc[0]["status"] == "reproduced"


def test_params_schema_holds_the_published_fragment_and_checks_entries():
    from mtml.params import params_schema

    schema = params_schema()
    assert schema["properties"]["published"] == C.PUBLISHED_SCHEMA
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    exp, meth = next(iter(params["experiments"])), next(iter(params["methods"]))
    good = {**params, "published": {exp: {meth: {"test": entry(50.0)}}}}
    C.check_published(validate(good))
    no_source = {**params, "published": {exp: {meth: {"test": {"accuracy": 50.0}}}}}
    with pytest.raises(UserError, match=f"published.{exp}.{meth}.test"):
        validate(no_source)
    with pytest.raises(UserError, match="allowed"):
        validate({**params, "published": {exp: {meth: {"val": entry(50.0)}}}})
    with pytest.raises(UserError, match="published.exp.nope"):
        C.check_published({"experiments": {"exp": {}}, "methods": {"maml": {}}, "published": {"exp": {"nope": {}}}})


@pytest.mark.parametrize("preset", ["task_attention_miniimagenet", "miniimagenet", "multitask_miniplaces",
                                    "multimodal_2mode", "multimodal_2mode_dagger", "multimodal_3mode",
                                    "multimodal_5mode"])
def test_presets_published_blocks_name_their_experiments_and_methods(preset):
    study = load(ROOT / "configs" / f"{preset}.yaml")  # (loading a study runs check_published too)
    assert study.published
    C.check_published(study.params)


# ---------------------------------------------------------------- writers

def test_writers_produce_markdown_json_and_a_forest_plot(tmp_path):
    a, b = simulate(np.random.default_rng(15), seeds=2, episodes=60)
    table = C.paired_comparisons(frame({"maml": a, "protonet": b + 3}), reference="protonet", resamples=200)
    C.write_compare(tmp_path, table)
    keyed = json.loads((tmp_path / "compare.json").read_text())
    assert list(keyed) == ["exp/test/ds/maml-vs-protonet"]
    assert keyed["exp/test/ds/maml-vs-protonet"]["verdict"] == table.iloc[0]["verdict"]
    md = (tmp_path / "compare.md").read_text()
    assert "| maml | protonet |" in md and table.iloc[0]["verdict"] in md
    C.forest_plot(table, tmp_path / "forest.png")
    assert (tmp_path / "forest.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- several matrices (Delta-MTL)

def test_variance_components_of_a_sum_reduce_to_one_matrix_and_match_simulated_sums():
    rng = np.random.default_rng(11)
    for seeds in (1, 3):
        x, _ = simulate(rng, seeds=seeds, episodes=80)
        np.testing.assert_allclose(C.variance_components_of_sum([x]), C.variance_components(x), rtol=1e-10)
    # Two tasks on the same trained models (a seed effect shared by both, plus one of each task's
    # own) and their own episodes: the estimate of var(mean_1 + mean_2) against 1000 simulated sums.
    sums, estimates = [], []
    for _ in range(1000):
        shared = rng.normal(0, 1.5, size=(3, 1))
        a = simulate(rng, seeds=3, episodes=100, seed_sd=1.0)[0] + shared
        b = simulate(rng, seeds=3, episodes=60, seed_sd=1.0)[0] + shared
        sums.append(a.mean() + b.mean())
        estimates.append(sum(C.variance_components_of_sum([a, b])[:2]))
    assert np.mean(estimates) == pytest.approx(np.var(sums, ddof=1), rel=0.10)


def test_joint_bootstrap_equals_a_plain_resampling_loop():
    # Two blocks (two methods each) with 40 and 25 episodes, 3 seeds: one seed draw for all, one
    # episode draw per block, the seed deviations of every matrix scaled by 0.7.
    rng = np.random.default_rng(12)
    blocks = [rng.uniform(0, 100, size=(2, 3, 40)), rng.uniform(0, 1, size=(2, 3, 25))]
    fast = C.joint_hierarchical_bootstrap(blocks, np.random.default_rng(9), 30, seed_scale=0.7)
    draw = np.random.default_rng(9)
    c = C.draw_counts(draw, 3, 30)
    w = [C.draw_counts(draw, b.shape[2], 30) for b in blocks]
    for b, wb, reps in zip(blocks, w, fast):
        for x, rx in zip(b, reps):
            m, g = x.mean(axis=1, keepdims=True), x.mean()
            adjusted = x - m + g + 0.7 * (m - g)
            plain = [adjusted[np.ix_(np.repeat(np.arange(3), c[r]), np.repeat(np.arange(x.shape[1]), wb[r]))].mean()
                     for r in range(30)]
            np.testing.assert_allclose(rx, plain, rtol=1e-12)
    # one matrix without a scale: the plain hierarchical bootstrap of one seed
    x = blocks[0][0, :1]
    np.testing.assert_array_equal(C.joint_hierarchical_bootstrap([x[None]], np.random.default_rng(3), 50, None)[0][0],
                                  C.hierarchical_bootstrap(x, np.random.default_rng(3), 50))
