"""TAML's inequality measures, the task-attention wrapper (Algorithm 1 of Aimen et al.) and
its analyses; ends with one short end-to-end run of all eight methods of the paper."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

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

SHAPE = (1, 16, 16)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


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


def test_attention_weights_are_positive_and_sum_to_one():
    torch.manual_seed(0)
    net = AttentionNetwork(tasks=5)
    for scale in (1e-3, 1.0, 100.0):
        w = net(scale * torch.rand(5, 4))
        assert w.shape == (5,) and (w > 0).all() and torch.isclose(w.sum(), torch.tensor(1.0))


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

    params = {"experiments": {"a": {"dataset": "glyphs"}}, "methods": {"maml": {}, "ta-maml": {}}}
    summary = {"a/maml/test/glyphs": {"experiment": "a", "dataset": "glyphs", "split": "test", "method": "maml",
                                      "ways": 5, "shots": 1, "accuracy": 50.0, "ci95": 1.0}}
    table = paper_table(params, summary)
    assert len(table) == 2 * 4
    run = table[table["status"] == "run"]
    assert run[["method", "ways", "shots", "accuracy"]].values.tolist() == [["maml", 5, 1, 50.0]]


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
    from mtml.analysis.registry import ANALYSES

    from pipeline_helpers import run_pipeline, tiny_params

    params = tiny_params(methods=ALL_METHODS, analyses=["attention-trend", "attention-correlation",
                                                        "ta-curves", "paper-table"],
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
    metrics = tmp_path / "metrics"
    for meth in ALL_METHODS:
        lines = (metrics / "runs/tiny" / meth / "trace.jsonl").read_text().splitlines()
        assert len(lines) == (40 if meth.startswith("ta-") else 0)
    aggregate(params, metrics)
    for name in params["analyses"]:
        out = tmp_path / "analysis" / name
        out.mkdir(parents=True)
        ANALYSES[name](params, metrics, out)
        assert any(out.glob("*.png")) and any(out.glob("*.md")) and any(out.glob("*.csv"))
    trend = pd.read_csv(tmp_path / "analysis/attention-trend/attention_trend.csv")
    assert len(trend) == 3 * 40 and (trend["max_weight"] >= 0.5 - 1e-6).all() and (trend["min_weight"] <= 0.5 + 1e-6).all()
    table = pd.read_csv(tmp_path / "analysis/paper-table/paper_table.csv")
    assert (table[(table.ways == 5) & (table.shots == 1)]["status"] == "run").all()
    assert (table[table.ways == 10]["status"] == "not run").all()
