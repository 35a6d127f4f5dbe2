"""TAML's inequality measures, the task-attention wrapper (Algorithm 1 of Aimen et al.) and
its analyses; ends with one short end-to-end run of all eight methods of the paper."""

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as nn_f

from mtml.errors import UserError
from mtml.methods import build
from mtml.methods.base import Episode
from mtml.methods.task_weighting import (
    INEQUALITIES,
    AttentionNetwork,
    atkinson,
    generalized_entropy,
    gini,
    inequality,
    theil,
)
from mtml.params import study as make_study

SHAPE = (1, 16, 16)


def _episode(ways=3, shots=2, queries=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = lambda n: torch.arange(ways).repeat_interleave(n)  # noqa: E731
    return Episode(torch.rand(ways * shots, *SHAPE, generator=g), lab(shots),
                   torch.rand(ways * queries, *SHAPE, generator=g), lab(queries), ways)


# ------------------------------------------------------------------------------------ TAML


def test_inequality_measures_hand_values():
    losses = torch.tensor([1.0, 3.0])  # shares 0.5 and 1.5
    assert math.isclose(theil(losses), (0.5 * math.log(0.5) + 1.5 * math.log(1.5)) / 2, rel_tol=1e-6)
    assert math.isclose(gini(losses), (2 + 2) / (2 * 4 * 2), rel_tol=1e-6)  # sum_ij|li-lj| / (2 n^2 mean)
    assert math.isclose(generalized_entropy(losses, 2.0), ((0.25 + 2.25) / 2 - 1) / 2, rel_tol=1e-6)
    assert math.isclose(atkinson(losses, 0.5), 1 - ((0.5 ** 0.5 + 1.5 ** 0.5) / 2) ** 2, rel_tol=1e-6)
    assert math.isclose(generalized_entropy(losses, 1.0), theil(losses), rel_tol=1e-6)
    assert math.isclose(atkinson(losses, 1.0), 1 - math.sqrt(0.5 * 1.5), rel_tol=1e-6)


@pytest.mark.parametrize("kind", INEQUALITIES)
def test_inequality_is_zero_when_equal_positive_otherwise_and_scale_free(kind):
    equal = torch.full((4,), 1.7)
    assert abs(float(inequality(equal, kind))) < 1e-6
    unequal = torch.tensor([0.5, 1.0, 2.0, 4.0], requires_grad=True)
    value = inequality(unequal, kind)
    assert value > 0
    assert torch.isclose(inequality(10 * unequal, kind), value, rtol=1e-5)
    (grad,) = torch.autograd.grad(value, unequal)
    assert grad[-1] > 0 > grad[0]  # raising the largest loss (lowering the smallest) adds inequality


@pytest.mark.parametrize("on", ["initial", "adapted"])
def test_taml_regulariser_reaches_the_meta_parameters(on):
    batch = [_episode(seed=s) for s in range(3)]
    grads = {}
    for lam in (0.0, 1.0):
        torch.manual_seed(0)
        learner = build("taml", {"filters": 4, "lambda": lam, "inequality_on": on}, SHAPE, 3)
        loss, stats = learner.meta_loss(batch)
        assert stats["inequality"] > 0
        loss.backward()
        assert all(p.grad is not None for p in learner.parameters())
        grads[lam] = torch.cat([p.grad.flatten() for p in learner.parameters()])
    assert not torch.allclose(grads[0.0], grads[1.0])


def test_taml_rejects_unknown_inequality():
    with pytest.raises(UserError, match="allowed: theil, atkinson, generalized_entropy, gini"):
        build("taml", {"inequality": "variance"}, SHAPE, 3)


# -------------------------------------------------------------------------- task attention


@pytest.mark.parametrize("layers", [1, 2])
def test_attention_weights_are_positive_and_sum_to_one(layers):
    torch.manual_seed(0)
    net = AttentionNetwork(tasks=5, layers=layers)
    for scale in (1e-3, 1.0, 100.0):
        w = net(scale * torch.rand(5, 4))
        assert w.shape == (5,) and (w > 0).all() and torch.isclose(w.sum(), torch.tensor(1.0))
    # 1x1 convolution over the 4 components, `layers` ReLU layers of 32 units, N scores
    assert (net.fold.in_channels, net.fold.out_channels, net.fold.kernel_size) == (4, 1, (1,))
    linears = [(m.in_features, m.out_features) for m in net.mix if isinstance(m, torch.nn.Linear)]
    assert linears == [(5, 32)] + [(32, 32)] * (layers - 1) + [(32, 5)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.mix) == layers


def test_attention_layers_must_be_a_positive_integer():
    with pytest.raises(UserError, match="attention_layers"):
        build("ta-maml", {"filters": 4, "meta_batch": 3, "attention_layers": 0}, SHAPE, 3)


@pytest.mark.parametrize("grad_norm", ["adapted", "meta"])
def test_meta_information_tuple_against_a_hand_adaptation(float64, grad_norm):
    """(gradient norm, query loss, query accuracy, loss after / before adaptation), recomputed
    from one plain SGD step on the support set."""
    from torch.func import functional_call

    from mtml.methods.task_weighting import meta_information, task_gradient

    torch.manual_seed(0)
    learner = build("ta-maml", {"filters": 4, "meta_batch": 3, "inner_lr": 0.3, "inner_steps": 1,
                                "grad_norm": grad_norm}, SHAPE, 3)
    net, ep = learner.base.net, _episode(queries=5)
    theta = dict(net.named_parameters())
    support = nn_f.cross_entropy(functional_call(net, theta, (ep.support_x,)), ep.support_y)
    grads = torch.autograd.grad(support, list(theta.values()), create_graph=True)
    adapted = {k: p - 0.3 * g for (k, p), g in zip(theta.items(), grads)}
    logits = functional_call(net, adapted, (ep.query_x,))
    after = nn_f.cross_entropy(logits, ep.query_y)
    before = nn_f.cross_entropy(functional_call(net, theta, (ep.query_x,)), ep.query_y)
    if grad_norm == "adapted":
        g = torch.autograd.grad(after, list(adapted.values()), retain_graph=True)
    else:  # the task's meta-gradient, through the adaptation
        g = torch.autograd.grad(after, list(theta.values()), retain_graph=True)
    expected = [torch.sqrt(sum((x ** 2).sum() for x in g)), after, (logits.argmax(-1) == ep.query_y).double().mean(),
                after / before]
    o = learner.base(ep)
    info = meta_information(o) if grad_norm == "adapted" else meta_information(
        o, task_gradient(o.loss, dict(learner.base.named_parameters()), retain_graph=True))
    assert info.shape == (4,)
    for name, got, want in zip(("grad_norm", "query_loss", "query_acc", "loss_ratio"), info, expected):
        tol = 1e-6 if name == "query_acc" else 1e-9  # accuracy is computed in float32
        assert math.isclose(float(got), float(want.detach()), rel_tol=tol), name
    assert 0 < float(expected[2]) < 1 and float(expected[3].detach()) != 1  # the planted values are not trivial
    assert not info.requires_grad  # meta-information is an input: eq. 3 reaches phi only through w


def _ta(algorithm="ta-maml", **hp):
    torch.manual_seed(0)
    learner = build(algorithm, {"filters": 4, "meta_batch": 3, **hp}, SHAPE, 3)
    return learner, learner.make_optimizer(0.01)


@pytest.mark.parametrize("algorithm", ["ta-maml", "ta-metasgd", "ta-metalstm++"])
def test_meta_update_is_the_weighted_sum_of_task_gradients_and_spares_the_attention(algorithm):
    no_clip = {"grad_clip": 0} if "lstm" in algorithm else {}  # compare raw gradients
    learner, opt = _ta(algorithm, inner_steps=1, **no_clip)
    batch = [_episode(seed=s) for s in range(3)]
    per_task = []
    for ep in batch:  # reference: each task's meta-gradient on its own
        learner.zero_grad(set_to_none=True)
        learner.base.meta_loss([ep])[0].backward()
        per_task.append({k: p.grad.clone() for k, p in learner.base.named_parameters()})
    learner.zero_grad(set_to_none=True)
    step = learner.attend(batch)
    w = step.weights.detach()
    assert (w > 0).all() and torch.isclose(w.sum(), torch.tensor(1.0))
    # grads are written before the optimiser moves the weights; read them through a no-op step
    for group in opt.param_groups:
        group["lr"] = 0.0
    learner.meta_update(step, opt)
    for k, p in learner.base.named_parameters():
        expected = sum(w[i] * g[k] for i, g in enumerate(per_task))
        assert torch.allclose(p.grad, expected, rtol=1e-4, atol=1e-7), k
    assert all(p.grad is None for p in learner.attention.parameters())  # eq. 2 leaves it alone


def test_attention_learns_only_from_the_lookahead_batch(float64):
    learner, opt = _ta(inner_steps=1)
    batch, new_batch = [_episode(seed=s) for s in range(3)], [_episode(seed=s) for s in range(3, 6)]
    step = learner.attend(batch)
    learner.meta_update(step, opt)
    assert all(p.grad is None for p in learner.attention.parameters())
    base_after_eq2 = {k: p.detach().clone() for k, p in learner.base.named_parameters()}
    attention_before = {k: p.detach().clone() for k, p in learner.attention.named_parameters()}
    learner.attention_update(step, new_batch, opt)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.attention.parameters())
    assert all(p.grad is None for p in learner.base.parameters())  # eq. 3 leaves the base alone
    for k, p in learner.base.named_parameters():
        assert torch.equal(p, base_after_eq2[k])
    assert any(not torch.equal(p, attention_before[k]) for k, p in learner.attention.named_parameters())


def test_lookahead_gradient_wrt_weights_matches_finite_differences(float64):
    learner, _ = _ta(inner_steps=1, lookahead_lr=0.5)
    step = learner.attend([_episode(seed=s) for s in range(3)])
    new_batch = [_episode(seed=s) for s in range(3, 5)]
    w = step.weights.detach().clone().requires_grad_()
    (analytic,) = torch.autograd.grad(learner.lookahead_loss(step, new_batch, w), w)
    eps = 1e-6
    for i in range(3):
        e = torch.zeros(3)
        e[i] = eps
        fd = (learner.lookahead_loss(step, new_batch, w.detach() + e).item()
              - learner.lookahead_loss(step, new_batch, w.detach() - e).item()) / (2 * eps)
        assert math.isclose(analytic[i].item(), fd, rel_tol=1e-5, abs_tol=1e-10), i
    assert analytic.abs().sum() > 0


def test_attention_gradient_is_the_lookahead_loss_through_w_against_a_reference(float64):
    """Eq. 3 checked against an independent reference: per-task meta-gradients taken one task
    at a time, theta'(w) = theta - beta sum_i w_i g_i written into a copy of the base, the new
    batch's mean query loss differentiated in w by central differences, chained through the
    attention network; theta is the meta-model *before* eq. 2 (as in the authors' code)."""
    beta = 0.5
    learner, opt = _ta(inner_steps=1, lookahead_lr=beta)
    batch, new_batch = [_episode(seed=s) for s in range(3)], [_episode(seed=s) for s in range(3, 6)]
    ref = copy.deepcopy(learner.base)
    per_task = []
    for ep in batch:
        ref.zero_grad(set_to_none=True)
        ref.meta_loss([ep])[0].backward()
        per_task.append({k: p.grad.clone() for k, p in ref.named_parameters()})
    theta0 = {k: p.detach().clone() for k, p in ref.named_parameters()}

    def reference_loss(w):
        probe = copy.deepcopy(ref)
        with torch.no_grad():
            for k, p in probe.named_parameters():
                p.copy_(theta0[k] - beta * sum(w[i] * per_task[i][k] for i in range(3)))
        return probe.meta_loss(new_batch)[0].item()

    step = learner.attend(batch)
    w = step.weights.detach()
    learner.meta_update(step, opt)  # eq. 2 moves the base; the look-ahead still starts from theta0
    assert math.isclose(learner.lookahead_loss(step, new_batch, w).item(), reference_loss(w), rel_tol=1e-10)
    eps = 1e-6
    dl_dw = torch.tensor([(reference_loss(w + eps * e) - reference_loss(w - eps * e)) / (2 * eps)
                          for e in torch.eye(3)])
    assert dl_dw.abs().sum() > 0
    expected = torch.autograd.grad(step.weights, list(learner.attention.parameters()), grad_outputs=dl_dw,
                                   retain_graph=True)
    # a look-ahead on the *old* batch would give another gradient: the new batch matters
    other = torch.autograd.grad(learner.lookahead_loss(step, batch, step.weights),
                                list(learner.attention.parameters()), retain_graph=True)
    learner.attention_update(step, new_batch, opt)
    for (name, p), e in zip(learner.attention.named_parameters(), expected):
        assert torch.allclose(p.grad, e, rtol=1e-5, atol=1e-10), name
    assert any(not torch.allclose(p.grad, o, rtol=1e-3) for p, o in zip(learner.attention.parameters(), other))


def test_train_step_looks_ahead_on_one_freshly_sampled_batch():
    learner, opt = _ta()
    twin = copy.deepcopy(learner)
    twin.make_optimizer(0.01)
    batch, fresh = [_episode(seed=s) for s in range(3)], [_episode(seed=s) for s in range(3, 6)]
    calls = []
    stats = learner.train_step(batch, opt, lambda: calls.append(1) or fresh)
    assert calls == [1]
    step = twin.attend(batch)
    on_fresh = twin.lookahead_loss(step, fresh, step.weights).item()
    assert math.isclose(stats["trace"]["lookahead_loss"], on_fresh, abs_tol=2e-6)
    assert not math.isclose(on_fresh, twin.lookahead_loss(step, batch, step.weights).item(), abs_tol=1e-4)


def test_train_step_traces_weights_and_meta_information():
    learner, opt = _ta()
    batch = [_episode(seed=s) for s in range(3)]
    stats = learner.train_step(batch, opt, lambda: [_episode(seed=s) for s in range(3, 6)])
    trace = stats["trace"]
    json.dumps(trace)
    assert set(trace) == {"weights", "grad_norm", "query_loss", "query_acc", "loss_ratio", "lookahead_loss"}
    assert all(len(trace[k]) == 3 for k in trace if k != "lookahead_loss")
    assert math.isclose(sum(trace["weights"]), 1.0, abs_tol=1e-5)
    assert math.isclose(stats["loss"], float(np.mean(trace["query_loss"])), rel_tol=1e-5)


def test_attention_batch_size_mismatch_is_a_clear_error():
    learner, opt = _ta()
    with pytest.raises(UserError, match="meta_batch"):
        learner.train_step([_episode()] * 2, opt, lambda: [_episode()] * 2)


def test_benchmark_times_the_paper_methods_with_an_experiments_meta_batch(tmp_path):
    from mtml.benchmark import benchmark

    from pipeline_helpers import tiny_params

    small = {"filters": 4, "inner_steps": 1, "eval_inner_steps": 1}
    methods = {m: dict(small) for m in ("maml", "metasgd", "metalstm", "metalstm++", "taml")}
    methods.update({m: {**small, "meta_batch": 3} for m in ("ta-maml", "ta-metasgd", "ta-metalstm++")})
    # the experiment trains with meta-batches of 3 while the top-level training block says 2
    params = tiny_params(methods=methods, experiments={"tiny": {"dataset": "glyphs", "ways": 3, "shots": 1,
                                                                 "queries": 2, "training": {"meta_batch": 3}}})
    from mtml.layout import Layout

    result = benchmark(params, Layout(tmp_path, params), "tiny", iterations=1, episodes=1)
    assert result["setting"]["meta_batch"] == 3
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == set(methods)
    for name, row in rows.items():
        assert row["train_iter_per_s"] > 0 and row["eval_episodes_per_s"] > 0 and row["parameters"] > 0, name
    assert rows["ta-maml"]["parameters"] > rows["maml"]["parameters"]  # + the attention network
    assert rows["metasgd"]["parameters"] == 2 * rows["maml"]["parameters"]  # one rate per weight


# ------------------------------------------------------------------------------- analyses


def test_correlation_and_max_loss_rank_hand_values():
    from mtml.analysis.task_attention import component_correlations, max_loss_rank

    records = [{"iteration": 1, "weights": [0.2, 0.3, 0.5], "grad_norm": [1, 2, 3], "query_loss": [3, 2, 1],
                "query_acc": [0.5, 0.5, 0.5], "loss_ratio": [1, 2, 4]}]
    corr = component_correlations(records).iloc[0]
    assert math.isclose(corr["grad_norm"], np.corrcoef([1, 2, 3], [0.2, 0.3, 0.5])[0, 1])
    assert math.isclose(corr["query_loss"], -corr["grad_norm"])
    assert np.isnan(corr["query_acc"])  # constant within the batch
    assert max_loss_rank(records)["rank"].tolist() == [3]  # the max-loss task has the least weight


def test_paper_table_marks_settings_not_run(tmp_path):
    from mtml.analysis.task_attention import paper_table

    from pipeline_helpers import tiny_params

    params = tiny_params(experiments={"a": {"dataset": "glyphs", "ways": 5, "shots": 1}},
                         methods={"maml": {}, "ta-maml": {"meta_batch": 2}})
    summary = {"a/maml/test/glyphs": {"experiment": "a", "dataset": "glyphs", "split": "test", "method": "maml",
                                      "ways": 5, "shots": 1, "accuracy": 50.0, "ci95": 1.0}}
    table = paper_table(params, summary)
    assert len(table) == 2 * 4
    run = table[table["status"] == "run"]
    assert run[["method", "ways", "shots", "accuracy"]].values.tolist() == [["maml", 5, 1, 50.0]]


def test_attention_analyses_pool_every_training_seed(tmp_path):
    """attention-trend, attention-correlation and ta-curves read each seed's trace and log: the
    trend and curves are means over seeds, the correlation counts every seed's iterations."""
    from mtml.analysis.task_attention import (
        META_INFORMATION,
        attention_correlation,
        attention_trend,
        ta_curves,
    )
    from mtml.layout import Layout

    from pipeline_helpers import tiny_params

    base = tiny_params(experiments={"a": {"dataset": "glyphs", "ways": 5, "shots": 1}},
                       methods={"maml": {}, "ta-maml": {"meta_batch": 2}})
    study = make_study({**base.params, "seeds": [0, 1]}, ["p.yaml"])
    layout = Layout(tmp_path, study)
    top = {0: 0.6, 1: 0.8}  # seed 1's attention is more peaked
    for seed in (0, 1):
        for meth in ("maml", "ta-maml"):
            d = layout.run_dir("a", meth, seed)
            d.mkdir(parents=True)
            pd.DataFrame({"iteration": [10, 20], "loss": 1.0, "train_accuracy": 50.0,
                          "val_accuracy": [40.0 + seed * 10, 50.0 + seed * 10]}).to_csv(d / "train_log.csv", index=False)
        records = [{"iteration": i, "weights": [top[seed], 1 - top[seed]], "query_loss": [2.0, 1.0],
                    **{c: [1.0, 0.0] for c in META_INFORMATION}} for i in range(1, 21)]
        (layout.run_dir("a", "ta-maml", seed) / "trace.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records))
    for name, analysis in (("trend", attention_trend), ("corr", attention_correlation), ("curves", ta_curves)):
        (tmp_path / name).mkdir()
        analysis(study, layout, tmp_path / name)
    trend_md = (tmp_path / "trend/attention_trend.md").read_text()
    assert "Pooled over 2 training seeds (0, 1)" in trend_md and "| a | ta-maml | 2 | 0.700 | 0.700 | 0.300 | 0.300 |" in trend_md
    assert len(pd.read_csv(tmp_path / "trend/attention_trend.csv")) == 2 * 20
    ranks = pd.read_csv(tmp_path / "corr/max_loss_task_rank.csv")
    assert len(ranks) == 40 and set(ranks["seed"]) == {0, 1} and (ranks["rank"] == 1).all()
    assert "| a | ta-maml | 1.00 of 2 | 1.00 |" in (tmp_path / "corr/attention_correlation.md").read_text()
    # the best of the mean validation curve over seeds: (50 + 60) / 2 at iteration 20
    assert "| a | ta-maml | yes | 55.00 | 20 |" in (tmp_path / "curves/ta_curves.md").read_text()


def test_paper_table_shows_the_combined_ci_with_several_seeds(tmp_path):
    from mtml.analysis.task_attention import paper_table_analysis
    from mtml.layout import Layout

    from pipeline_helpers import tiny_params

    params = tiny_params(experiments={"a": {"dataset": "glyphs", "ways": 5, "shots": 1}},
                         methods={"maml": {}, "ta-maml": {"meta_batch": 2}})
    row = {"experiment": "a", "dataset": "glyphs", "split": "test", "method": "maml", "ways": 5, "shots": 1,
           "accuracy": 50.0, "ci95": 1.0, "ci_low": 46.5, "ci_high": 52.25, "seed": "all", "seeds": 3}
    for seeds, cell in (([0, 1, 2], "| maml | 50.00 [46.50, 52.25] | not run |"), ([0], "| maml | 50.00 ± 1.00 | not run |")):
        study = make_study({**params.params, "seeds": seeds}, ["p.yaml"])
        layout = Layout(tmp_path / str(len(seeds)), study)
        layout.summary("summary.json").parent.mkdir(parents=True)
        layout.summary("summary.json").write_text(json.dumps({"a/maml/test/glyphs": row}))
        out = tmp_path / f"out{len(seeds)}"
        out.mkdir()
        paper_table_analysis(study, layout, out)
        md = (out / "paper_table.md").read_text()
        assert cell in md and ("mean over 3 training seeds [combined 95% CI]" in md) == (len(seeds) == 3)


def test_docs_list_every_hyperparameter_of_the_papers_methods():
    from pathlib import Path

    from mtml.methods import REGISTRY

    docs = (Path(__file__).parents[1] / "docs/task_attention.md").read_text()
    missing = [(name, key) for name in ALL_METHODS for key in REGISTRY[name].defaults if f"`{key}`" not in docs]
    assert not missing, f"docs/task_attention.md lacks {missing}"
    assert all(f"`{name}`" in docs for name in ALL_METHODS)


# ---------------------------------------------------------------------------- end to end

ALL_METHODS = {
    "maml": {"filters": 12},
    "metasgd": {"filters": 12},
    "metalstm": {"filters": 8, "inner_lr": 0.3, "inner_steps": 2, "eval_inner_steps": 2},
    "metalstm++": {"filters": 8, "inner_lr": 0.3, "inner_steps": 2, "eval_inner_steps": 2},
    "taml": {"filters": 12},
    "ta-maml": {"filters": 12, "meta_batch": 2},
    "ta-metasgd": {"filters": 12, "meta_batch": 2},
    "ta-metalstm++": {"filters": 8, "inner_lr": 0.3, "inner_steps": 2, "eval_inner_steps": 2, "meta_batch": 2},
}


@pytest.mark.slow
def test_all_methods_beat_chance_and_analyses_draw(tmp_path):
    from mtml.analysis.aggregate import aggregate
    from mtml.analysis.registry import get_analysis
    from mtml.layout import Layout

    from pipeline_helpers import run_pipeline, tiny_params

    params = tiny_params(methods=ALL_METHODS, analyses=["attention-trend", "attention-correlation",
                                                        "ta-curves", "paper-table", "metalstm-oscillation"],
                         experiments={"tiny": {"dataset": "glyphs", "ways": 5, "shots": 1, "queries": 5}},
                         training={"iterations": 40, "meta_batch": 2, "meta_lr": 0.003, "val_interval": 20,
                                   "val_episodes": 10})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: ~30 s of CPU; two contend on a loaded 2-core CI box
    try:
        results = run_pipeline(params, tmp_path)
    finally:
        torch.set_num_threads(threads)
    for (_, meth), rows in results.items():
        test = next(r for r in rows if r["split"] == "test")
        assert test["accuracy"] - test["ci95"] > 20.0, (meth, test)  # 5-way chance is 20%
    layout = Layout(tmp_path, params)
    for meth in ALL_METHODS:
        lines = (layout.run_dir("tiny", meth) / "trace.jsonl").read_text().splitlines()
        # ta-*: attention records; metalstm, metalstm++: each meta-update's loss
        assert len(lines) == (40 if meth.startswith("ta-") or meth in ("metalstm", "metalstm++") else 0)
    aggregate(params, layout)
    for name in params.analyses:
        out = tmp_path / "analysis" / name
        out.mkdir(parents=True)
        get_analysis(name)(params, layout, out)
        assert any(out.glob("*.png")) and any(out.glob("*.md")) and any(out.glob("*.csv"))
    trend = pd.read_csv(tmp_path / "analysis/attention-trend/attention_trend.csv")
    assert len(trend) == 3 * 40 and (trend["max_weight"] >= 0.5 - 1e-6).all() and (trend["min_weight"] <= 0.5 + 1e-6).all()
    table = pd.read_csv(tmp_path / "analysis/paper-table/paper_table.csv")
    assert (table[(table.ways == 5) & (table.shots == 1)]["status"] == "run").all()
    assert (table[table.ways == 10]["status"] == "not run").all()
