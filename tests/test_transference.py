"""Transference LR(i -> j): exact identities, its first-order expansion, and the mode matrix."""

import numpy as np
import pytest
import torch

from mtml.analysis.transference import mode_matrix, task_loss, transference_ratios
from mtml.methods import build

from pipeline_helpers import random_episode

SHAPE = (3, 16, 16)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _episodes(n, seed, modes=1):
    torch.manual_seed(seed)
    return [random_episode(3, 1, 2, SHAPE, "cpu", mode=i % modes) for i in range(n)]


@pytest.mark.parametrize("algorithm,hp", [
    ("maml", {"filters": 4}),
    ("mmaml-kml", {"filters": 4, "encoder_filters": 4, "embed_dim": 4, "generator_hidden": 3}),
    ("protonet", {"filters": 4}),
    ("multi-maml", {"filters": 4, "modes": 2}),
])
def test_ratio_is_exactly_one_when_the_meta_update_step_is_zero(algorithm, hp):
    torch.manual_seed(0)
    learner = build(algorithm, hp, SHAPE, 3)
    ratios = transference_ratios(learner, _episodes(3, 1, modes=2), _episodes(2, 2, modes=2), step_size=0.0)
    assert ratios.shape == (3, 2)
    assert (ratios == 1.0).all()


def test_ratio_matches_its_first_order_expansion():
    # LR(i -> j) = 1 - eta <grad L_i, grad L_j> / L_j + O(eta^2), with the meta-gradients
    # (through MAML's inner loop) of the source and the target losses. The step is tiny: the
    # post-adaptation loss of a ReLU net jumps where an inner-loop gradient changes pieces.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        learner = build("maml", {"filters": 4, "inner_steps": 2}, SHAPE, 3)
        source, target = _episodes(1, 3)[0], _episodes(1, 4)[0]
        params = list(learner.parameters())
        g_i = torch.autograd.grad(learner.meta_loss([source])[0], params)
        g_j = torch.autograd.grad(learner.meta_loss([target])[0], params)
        dot = sum(float((a * b).sum()) for a, b in zip(g_i, g_j))
        eta = 1e-7
        predicted = 1 - eta * dot / task_loss(learner, target)
        ratio = transference_ratios(learner, [source], [target], step_size=eta)[0, 0]
        assert abs(ratio - 1) > 1e-9  # the step changes the loss measurably
        assert abs(ratio - predicted) < 1e-3 * abs(ratio - 1)
    finally:
        torch.set_default_dtype(old)


def test_a_task_transfers_positively_to_itself():
    torch.manual_seed(0)
    learner = build("maml", {"filters": 4}, SHAPE, 3)
    eps = _episodes(4, 5)
    ratios = transference_ratios(learner, eps, eps, step_size=1e-5)
    assert (np.diag(ratios) < 1).all()


def test_mode_matrix_averages_each_source_mode_target_mode_block():
    ratios = np.array([[0.9, 1.1, 1.0],
                       [0.7, 1.3, 1.2],
                       [1.0, 0.8, 0.6]])
    m = mode_matrix(ratios, source_modes=[0, 0, 1], target_modes=[0, 1, 1], n_modes=3)
    assert m[0, 0] == pytest.approx(0.8)
    assert m[0, 1] == pytest.approx((1.1 + 1.0 + 1.3 + 1.2) / 4)
    assert m[1, 0] == pytest.approx(1.0)
    assert m[1, 1] == pytest.approx(0.7)
    assert np.isnan(m[2]).all() and np.isnan(m[:, 2]).all()
