"""Multi-task optimisation (issue 16): gradient aggregators against closed forms, DWA and
GradNorm weights, random weighting, task scheduling, the aggregated update of a learner,
and Delta-MTL."""

from __future__ import annotations

import math

import pytest
import torch

import mtml.methods.multitask  # noqa: F401  (registers the multi-task algorithms)
from mtml.analysis.mtl_metrics import delta_mtl
from mtml.errors import UserError
from mtml.multitask.optimisation import (
    DynamicWeightAverage,
    GradNorm,
    TaskScheduler,
    dwa_weights,
    make_aggregator,
    random_weights,
)

TASK_NAMES = ["classification", "depth", "normals", "vanishing_point"]


pytestmark = pytest.mark.usefixtures("small_ops")  # tests/conftest.py


def test_mgda_on_two_gradients_is_the_closed_form_min_norm_combination():
    # min_a ||a g1 + (1 - a) g2||: a = clip((g2 - g1) . g2 / ||g1 - g2||^2, 0, 1) (Sener & Koltun, alg. 1)
    mgda = make_aggregator("mgda", 2)
    for g1, g2 in (([1.0, 0.0], [-1.0, 1.0]), ([2.0, 1.0, 0.5], [-0.3, 1.2, -2.0]), ([1.0, 1.0], [3.0, 2.0])):
        g1, g2 = torch.tensor(g1), torch.tensor(g2)
        a = ((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2))).clamp(0, 1)
        expected = a * g1 + (1 - a) * g2
        assert torch.allclose(mgda(torch.stack([g1, g2])), expected, atol=1e-5)
    # the first case by hand: a = 3/5, d = (0.2, 0.4)
    assert torch.allclose(mgda(torch.tensor([[1.0, 0.0], [-1.0, 1.0]])), torch.tensor([0.2, 0.4]), atol=1e-6)
    # (1, 1) and (3, 2): a = 1, the shorter gradient itself (it is in the other's half-space)
    assert torch.allclose(mgda(torch.tensor([[1.0, 1.0], [3.0, 2.0]])), torch.tensor([1.0, 1.0]), atol=1e-6)


def test_pcgrad_projects_a_conflicting_pair_as_in_its_paper():
    # Yu et al. 2020, eq. of alg. 1: g_i <- g_i - (g_i . g_j / ||g_j||^2) g_j when g_i . g_j < 0;
    # the update is the sum of the projected gradients. g1 = (1, 0), g2 = (-1, 1): g1 . g2 = -1,
    # g1' = (1, 0) + 1/2 (-1, 1) = (0.5, 0.5), g2' = (-1, 1) + 1/1 (1, 0) = (0, 1): sum (0.5, 1.5).
    pcgrad = make_aggregator("pcgrad", 2)
    assert torch.allclose(pcgrad(torch.tensor([[1.0, 0.0], [-1.0, 1.0]])), torch.tensor([0.5, 1.5]))
    # no conflict: the plain sum
    assert torch.allclose(pcgrad(torch.tensor([[1.0, 0.0], [1.0, 1.0]])), torch.tensor([2.0, 1.0]))


def test_dwa_weights_follow_the_formula_and_sum_to_the_number_of_tasks():
    prev, before = torch.tensor([0.9, 0.5, 2.0]), torch.tensor([1.0, 1.0, 1.0])  # r = 0.9, 0.5, 2
    w = dwa_weights(prev, before, temperature=2.0)
    e = [math.exp(r / 2.0) for r in (0.9, 0.5, 2.0)]
    assert torch.allclose(w, torch.tensor([3 * x / sum(e) for x in e]))
    assert torch.isclose(w.sum(), torch.tensor(3.0))
    assert w[2] > w[0] > w[1]  # the task whose loss fell least gets the most weight
    dwa = DynamicWeightAverage(TASK_NAMES[:3], temperature=2.0)
    first = {k: torch.tensor(v) for k, v in zip(TASK_NAMES[:3], (1.0, 1.0, 1.0))}
    second = {k: torch.tensor(v) for k, v in zip(TASK_NAMES[:3], (0.9, 0.5, 2.0))}
    assert dwa.weights(first) == {k: 1.0 for k in first}   # t = 1: no history
    assert dwa.weights(second) == {k: 1.0 for k in first}  # t = 2: one loss known
    third = dwa.weights(first)                              # t = 3: r from t-1 = second, t-2 = first
    assert list(third.values()) == pytest.approx(w.tolist())
    assert sum(third.values()) == pytest.approx(3.0)


def test_gradnorm_weights_sum_to_the_number_of_tasks_and_move_toward_equal_training_rates():
    gn = GradNorm(TASK_NAMES[:3], alpha=1.5)
    opt = torch.optim.SGD([gn.weight], lr=0.05)
    norms = {"classification": torch.tensor(1.0), "depth": torch.tensor(1.0), "normals": torch.tensor(1.0)}
    losses = {k: torch.tensor(1.0) for k in norms}
    gn.set_grad(losses, norms)  # first call: L(0) recorded, equal rates -> G_i at target
    assert torch.equal(gn.weight.grad, torch.zeros(3))
    # Constructed case: equal gradient norms; depth trains slowest (loss ratio 0.9), normals
    # fastest (0.3). GradNorm must raise the slow task's weight and lower the fast one's.
    later = {"classification": torch.tensor(0.6), "depth": torch.tensor(0.9), "normals": torch.tensor(0.3)}
    spread = []
    for _ in range(30):
        opt.zero_grad()
        gn.set_grad(later, norms)
        opt.step()
        gn.renormalise()
        assert torch.isclose(gn.weight.sum(), torch.tensor(3.0))
        g = gn.weight.detach()  # G_i = w_i (norms equal); target_i = mean(G) r_i^alpha
        rel = torch.tensor([0.6, 0.9, 0.3])
        target = g.mean() * (rel / rel.mean()) ** 1.5
        spread.append(float((g - target).abs().sum()))
    w = gn.weights(later)
    assert w["depth"] > 1.0 > w["normals"] and w["depth"] > w["classification"] > w["normals"]
    # The weighted gradient norms approach their targets (exactly only without the sum
    # constraint: here the targets sum to 3.19, the weights to 3).
    assert spread[-1] < spread[0] / 4


def test_random_weights_are_a_scaled_softmax_of_gaussian_draws():
    torch.manual_seed(3)
    w = random_weights(TASK_NAMES)
    torch.manual_seed(3)
    eps = torch.randn(4)
    assert list(w.values()) == pytest.approx((4 * torch.softmax(eps, 0)).tolist())
    assert sum(w.values()) == pytest.approx(4.0)


def test_task_schedules():
    rr = TaskScheduler(TASK_NAMES, "round-robin", 1)
    assert [rr.select(TASK_NAMES) for _ in range(5)] == [[t] for t in TASK_NAMES] + [["classification"]]
    rr2 = TaskScheduler(TASK_NAMES, "round-robin", 3)
    assert rr2.select(TASK_NAMES) == TASK_NAMES[:3]
    assert rr2.select(TASK_NAMES) == ["classification", "depth", "vanishing_point"]
    torch.manual_seed(0)
    uni = TaskScheduler(TASK_NAMES, "uniform", 2)
    picks = [tuple(uni.select(TASK_NAMES)) for _ in range(400)]
    assert all(len(p) == 2 and len(set(p)) == 2 for p in picks)
    counts = {t: sum(t in p for p in picks) for t in TASK_NAMES}
    assert all(150 < c < 250 for c in counts.values())  # each task in half the iterations
    diff = TaskScheduler(TASK_NAMES, "difficulty", 1)
    assert torch.allclose(diff.probabilities(), torch.full((4,), 0.25))  # nothing trained yet
    diff.observe({t: torch.tensor(2.0) for t in TASK_NAMES})
    diff.observe({"classification": torch.tensor(1.0), "depth": torch.tensor(2.0), "normals": torch.tensor(0.5)})
    # ratios last/first: 0.5, 1, 0.25, 1 -> probabilities / 2.75
    assert torch.allclose(diff.probabilities(), torch.tensor([0.5, 1.0, 0.25, 1.0]) / 2.75)
    torch.manual_seed(0)
    picks = [diff.select(TASK_NAMES)[0] for _ in range(2000)]
    assert picks.count("depth") / 2000 == pytest.approx(1 / 2.75, abs=0.04)
    assert picks.count("normals") / 2000 == pytest.approx(0.25 / 2.75, abs=0.03)


def _learner(**hp):
    from mtml.methods import resolve_hparams
    from mtml.multitask.tasks import TASKS

    cls, full = resolve_hparams("x", {"algorithm": "mt-anil", "filters": 4, "inner_steps": 1, **hp})
    torch.manual_seed(0)
    return cls(full, (3, 16, 16), 3, [TASKS[n] for n in ("depth", "vanishing_point")])


def _batch():
    import torch.nn.functional as F

    from mtml.multitask.data import Subtask

    g = torch.Generator().manual_seed(0)
    depth = Subtask("depth", torch.rand(4, 3, 16, 16, generator=g), torch.rand(4, 1, 16, 16, generator=g),
                    torch.rand(4, 3, 16, 16, generator=g), torch.rand(4, 1, 16, 16, generator=g), "e", 3)
    vp = lambda: F.normalize(torch.randn(4, 3, 3, generator=g), dim=-1).flatten(1)  # noqa: E731
    vps = Subtask("vanishing_point", torch.rand(4, 3, 16, 16, generator=g), vp(),
                  torch.rand(4, 3, 16, 16, generator=g), vp(), "e", 3)
    return {"depth": [depth], "vanishing_point": [vps]}


def test_aggregated_update_gives_the_shared_trunk_the_aggregated_jacobian():
    """The learner's train_step with MGDA: the backbone's gradient is MGDA of the per-task
    gradients computed by plain autograd; heads keep their ordinary gradients."""
    learner = _learner(optimiser="mgda")
    batch = _batch()
    shared = learner.shared_parameters()
    _, _, parts = learner.meta_loss_terms(batch)
    rows = list(parts["terms"].values())
    jac = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(r, shared, retain_graph=True)])
                       for r in rows])
    expected = make_aggregator("mgda", 2)(jac)
    head_grads = {k: torch.autograd.grad(sum(rows), list(learner.heads[k].parameters()), retain_graph=True)
                  for k in batch}
    opt = torch.optim.SGD(learner.parameters(), lr=0.0)  # lr 0: keep the grads to compare
    learner.train_step(batch, opt, None)
    got = torch.cat([p.grad.flatten() for p in shared])
    assert torch.allclose(got, expected, atol=1e-5) and not torch.allclose(got, jac.sum(0), atol=1e-3)
    for k, grads in head_grads.items():
        for p, g in zip(learner.heads[k].parameters(), grads):
            assert torch.allclose(p.grad, g, atol=1e-6)


def test_optimisation_options_are_checked():
    from mtml.methods import resolve_hparams
    from mtml.methods.multitask import check_hparams

    for bad, match in (({"optimiser": "adam"}, r"methods\.x\.optimiser.*mgda"),
                       ({"loss_weighting": "dwaa"}, r"methods\.x\.loss_weighting.*gradnorm"),
                       ({"schedule": "rr"}, r"methods\.x\.schedule.*round-robin"),
                       ({"schedule": "uniform", "schedule_tasks": 3}, r"methods\.x\.schedule_tasks.*\[1, 2\]"),
                       ({"dwa_temperature": 0}, r"methods\.x\.dwa_temperature.*> 0"),
                       ({"architecture": "mtan"}, r"methods\.x\.architecture.*cross-stitch"),
                       ({"routing_ratio": 0}, r"methods\.x\.routing_ratio"),
                       ({"architecture": "soft", "tasks": "single"}, r"methods\.x\.architecture.*tasks: multi")):
        with pytest.raises(UserError, match=match):  # declared options fail already in resolve_hparams
            _, hp = resolve_hparams("x", {"algorithm": "mt-anil", **bad})
            check_hparams("x", hp, ["depth", "normals"])
    from mtml.multitask.tasks import TASKS

    cls, hp = resolve_hparams("x", {"algorithm": "mt-maml", "architecture": "routing"})
    with pytest.raises(UserError, match="mt-maml adapts the backbone.*architecture: hard"):
        cls(hp, (3, 16, 16), 3, [TASKS["depth"]])


def test_delta_mtl_by_hand():
    # accuracy up 10% relative (higher better): +10; mse 0.5 -> 0.6 (lower better): -20; mean -5
    single = {"classification": 50.0, "depth": 0.5}
    multi = {"classification": 55.0, "depth": 0.6}
    assert delta_mtl(multi, single, {"classification": True, "depth": False}) == pytest.approx(-5.0)
    assert delta_mtl(single, single, {"classification": True, "depth": False}) == 0
    with pytest.raises(ValueError, match="depth"):
        delta_mtl({"classification": 1.0}, single, {"classification": True, "depth": False})
