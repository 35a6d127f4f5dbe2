"""Multi-task trunks (issue 16): exact reductions to hard sharing / independent networks,
task-routing masks, and every architecture x a few optimisers trained end to end."""

from __future__ import annotations

import copy

import pytest
import torch

from mtml.models.conv4 import Conv4
from mtml.models.mtl_trunks import CrossStitchTrunk, MixtureTrunk, RoutingTrunk, SoftSharingTrunk
from mtml.multitask.tasks import TASKS

SHAPE = (3, 16, 16)
TASK_NAMES = ["classification", "depth", "normals", "vanishing_point"]


pytestmark = pytest.mark.usefixtures("small_ops")  # tests/conftest.py


def _load_column(trunk, column: int, net: Conv4) -> None:
    """Copy a Conv4's weights into column `column` of a trunk's blocks."""
    with torch.no_grad():
        for block, ref in zip(trunk.blocks, net.blocks):
            for p, q in zip(block[column].parameters(), ref.parameters()):
                p.copy_(q)


def test_cross_stitch_with_identity_units_equals_independent_networks():
    torch.manual_seed(0)
    nets = [Conv4(3, 8) for _ in TASK_NAMES]
    trunk = CrossStitchTrunk(TASK_NAMES, SHAPE, 8, init=1.0)
    for t, net in enumerate(nets):
        _load_column(trunk, t, net)
    x = torch.rand(5, *SHAPE)
    for t, name in enumerate(TASK_NAMES):
        assert torch.equal(trunk(x, name), nets[t](x))
    # The default unit mixes the columns, so it is not the independent networks.
    mixed = CrossStitchTrunk(TASK_NAMES, SHAPE, 8, init=0.9)
    for t, net in enumerate(nets):
        _load_column(mixed, t, net)
    assert not torch.allclose(mixed(x, "depth"), nets[1](x))
    unit = mixed.stitch[0, :, :, 0]
    assert torch.allclose(unit.diagonal(), torch.full((4,), 0.9))
    assert torch.allclose(unit.sum(1), torch.ones(4))  # off-diagonal (1 - 0.9) / 3


@pytest.mark.parametrize("shared_gate", [False, True])
def test_gating_with_one_trunk_equals_hard_sharing(shared_gate):
    torch.manual_seed(0)
    net = Conv4(3, 8)
    trunk = MixtureTrunk(TASK_NAMES, SHAPE, 8, experts=1, shared_gate=shared_gate)
    _load_column(trunk, 0, net)
    x = torch.rand(5, *SHAPE)
    for name in TASK_NAMES:
        assert torch.equal(trunk(x, name), net(x))
    # With two experts each task's gate mixes them with input-dependent softmax weights.
    two = MixtureTrunk(TASK_NAMES, SHAPE, 8, experts=2, shared_gate=shared_gate)
    g = two.gate(x, "depth")
    assert g.shape == (5, 2) and torch.allclose(g.sum(1), torch.ones(5)) and not torch.equal(g[0], g[1])
    assert len(two.gates) == (1 if shared_gate else 4)


def test_task_routing_with_ratio_one_equals_hard_sharing():
    torch.manual_seed(0)
    net = Conv4(3, 8)
    trunk = RoutingTrunk(TASK_NAMES, SHAPE, 8, ratio=1.0, seed=3)
    _load_column(trunk, 0, net)
    x = torch.rand(5, *SHAPE)
    for name in TASK_NAMES:
        assert torch.equal(trunk(x, name), net(x))


@pytest.mark.parametrize("ratio,filters", [(0.5, 8), (0.25, 16), (0.75, 8)])
def test_task_routing_masks_have_the_requested_ratio_per_task_and_block(ratio, filters):
    trunk = RoutingTrunk(TASK_NAMES, SHAPE, filters, ratio=ratio, seed=3)
    masks = trunk.masks
    assert masks.shape == (4, 4, filters) and set(masks.unique().tolist()) == {0.0, 1.0}
    assert (masks.sum(-1) == ratio * filters).all()  # every task, every block
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 4  # the tasks' sub-networks differ
    assert torch.equal(RoutingTrunk(TASK_NAMES, SHAPE, filters, ratio, seed=3).masks, masks)  # seeded
    assert not torch.equal(RoutingTrunk(TASK_NAMES, SHAPE, filters, ratio, seed=4).masks, masks)
    # a task sees only its channels: the others are zero in its output
    x = torch.rand(3, *SHAPE)
    out = trunk(x, "normals").view(3, filters, -1)
    off = masks[2, -1] == 0
    assert (out[:, off] == 0).all() and (out[:, ~off] != 0).any()


def test_soft_sharing_penalty_is_the_weighted_sum_of_pairwise_squared_distances():
    torch.manual_seed(0)
    trunk = SoftSharingTrunk(TASK_NAMES[:3], SHAPE, 4, weight=0.5)
    cols = [torch.cat([p.flatten() for p in trunk.column_parameters(t)]) for t in range(3)]
    expected = 0.5 * sum(((cols[i] - cols[j]) ** 2).sum() for i, j in ((0, 1), (0, 2), (1, 2)))
    assert torch.isclose(trunk.penalty(), expected)
    with torch.no_grad():  # equal columns: no penalty
        for t in (1, 2):
            for p, q in zip(trunk.column_parameters(t), trunk.column_parameters(0)):
                p.copy_(q)
    assert trunk.penalty() == 0


def test_pad_net_fuses_other_tasks_features_and_has_an_intermediate_loss():
    from mtml.methods import resolve_hparams
    from mtml.methods.multitask import MultiTaskANIL

    cls, hp = resolve_hparams("x", {"algorithm": "mt-anil", "filters": 8, "inner_steps": 1,
                                    "architecture": "pad-net"})
    torch.manual_seed(0)
    learner = cls(hp, SHAPE, 3, [TASKS[n] for n in TASK_NAMES])
    assert isinstance(learner, MultiTaskANIL)
    trunk = learner.trunk
    x = torch.rand(4, *SHAPE)
    base = trunk(x, "depth")
    with torch.no_grad():  # the depth features change when the normals column changes
        for p in trunk.blocks[-1][2].parameters():
            p.add_(0.5)
    assert not torch.allclose(trunk(x, "depth"), base)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(2)
    aux = trunk.aux_loss("classification", torch.rand(6, *SHAPE, generator=g), y,
                         torch.rand(6, *SHAPE, generator=g), y)
    aux.backward()
    assert aux > 0 and trunk.blocks[-1][0].conv.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- end to end

ARCHITECTURES = {  # architecture options; routing with its paper-like ratio, small mixtures
    "hard": {},
    "mmoe": {"architecture": "mmoe", "experts": 2},
    "mmoe-shared": {"architecture": "mmoe-shared", "experts": 2},
    "cross-stitch": {"architecture": "cross-stitch"},
    "routing": {"architecture": "routing", "routing_ratio": 0.75},  # 6 of 8 channels per task
    "pad-net": {"architecture": "pad-net"},
    "soft": {"architecture": "soft"},
}
EXTRA = {  # optimisers, each with another architecture (every architecture also runs with `sum`)
    "hard-random-rr": {"loss_weighting": "random", "schedule": "round-robin", "schedule_tasks": 2},
    "mmoe-gradnorm": {**ARCHITECTURES["mmoe"], "loss_weighting": "gradnorm"},
    "mmoe-shared-dwa": {**ARCHITECTURES["mmoe-shared"], "loss_weighting": "dwa"},
    "cross-stitch-aligned": {**ARCHITECTURES["cross-stitch"], "optimiser": "aligned-mtl"},
    "routing-pcgrad": {**ARCHITECTURES["routing"], "optimiser": "pcgrad"},
    "pad-net-imtlg-difficulty": {**ARCHITECTURES["pad-net"], "optimiser": "imtl-g", "schedule": "difficulty",
                                 "schedule_tasks": 3},
}
# MGDA is not here: without gradient normalisation its min-norm point follows the task with
# the smallest gradient (depth here), and classification fell below its untrained accuracy
# in 80 iterations (hard sharing: 32.9% against 60.6%, seed 0). Its update is tested against
# the closed form in test_mtl_optimisation.py.
RUNS = {**{f"{a}-sum": v for a, v in ARCHITECTURES.items()}, **EXTRA}
SCENES = {"image_size": 16, "room_types": [8, 3, 3], "images_per_class": 8}
PARAMS = {
    "seed": 0, "device": "cpu", "threads": 1,
    "datasets": {"scenes": {"source": "scenes", "options": {**SCENES, "environments": [4, 1, 2]}}},
    "experiments": {"mt": {"kind": "multitask", "dataset": "scenes", "ways": 3, "shots": 2, "queries": 3,
                           "options": {"dense_shots": 3, "dense_queries": 3}}},
    "methods": {meth: {"algorithm": "mt-anil", "filters": 8, "inner_steps": 3, "eval_inner_steps": 8,
                       "inner_lr": {"classification": 0.4}, **v}
                for meth, v in RUNS.items()},
    "training": {"iterations": 80, "meta_batch": 2, "meta_lr": 0.005, "val_interval": 80, "val_episodes": 2},
    "evaluation": {"episodes": 24},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_ops):
    """Each method's test metrics after training and at its seeded initialisation."""
    from mtml.layout import Layout
    from mtml.multitask.scoring import evaluate_subtasks
    from mtml.params import study as make_study
    from mtml.stages import (
        build_episodes,
        init_learner,
        load_banks,
        load_learner,
        prepare,
        read_manifests,
        train,
    )

    root = tmp_path_factory.mktemp("mtl")
    study = make_study(copy.deepcopy(PARAMS))
    layout = Layout(root, study)
    prepare(study, layout, "scenes")
    build_episodes(study, layout, "mt")
    exp = study.experiment("mt")
    mt = exp.settings
    banks = load_banks(exp, layout, ["scenes"], torch.device("cpu"))
    manifests = {s.keys["task"]: m for s, m in read_manifests(exp, layout, ("test",))}

    def scores(learner):
        return {t.name: evaluate_subtasks(learner, banks["scenes"], t, manifests[t.name], mt.thresholds[t.name],
                                          nil=False).mean(numeric_only=True) for t in mt.tasks}

    out = {}
    for meth in study.methods:
        run = study.run("mt", meth)
        train(run, layout, torch.device("cpu"))
        out[meth] = (scores(init_learner(run, exp.kind.context(exp, banks), "cpu")),
                     scores(load_learner(run, layout, "cpu")))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("meth", list(PARAMS["methods"]))
def test_every_architecture_and_optimiser_beats_its_untrained_self_on_every_task(trained, meth):
    untrained, after = trained[meth]
    assert after["classification"]["accuracy"] > untrained["classification"]["accuracy"]
    for task in ("depth", "normals", "vanishing_point"):
        assert after[task]["mse"] < untrained[task]["mse"], task
