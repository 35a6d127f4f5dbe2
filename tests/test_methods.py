"""MAML, ANIL and ProtoNet against finite differences and hand computations."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtml.errors import UserError
from mtml.methods import build
from mtml.methods.base import Episode
from mtml.methods.inner_loop import adapt, named_params, sgd_update
from mtml.methods.metric import prototypes, squared_euclidean_logits

from gradcheck_helpers import assert_matches_finite_differences

pytestmark = pytest.mark.usefixtures("float64")  # finite differences: tests/conftest.py


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _task(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(6, 3, generator=g), torch.randint(0, 2, (6,), generator=g),
            torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g))


def _meta_loss(net, params, first_order, steps=2, lr=0.5):
    sx, sy, qx, qy = _task()
    new = adapt(net, params, sx, sy, steps, sgd_update(lr), first_order=first_order)
    return nn.functional.cross_entropy(functional_call(net, new, (qx,)), qy)


def test_maml_second_order_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    net = TinyNet()
    assert_matches_finite_differences(lambda p: _meta_loss(net, p, first_order=False), named_params(net))


def test_first_order_differs_from_second_order():
    torch.manual_seed(0)
    net = TinyNet()
    params = named_params(net)
    second = torch.autograd.grad(_meta_loss(net, params, False), list(params.values()))
    first = torch.autograd.grad(_meta_loss(net, params, True), list(params.values()))
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(first, second))
    # With one step on a linear-in-params loss curvature term vanishes only trivially; here
    # it must not: first-order equals the query gradient at the adapted parameters.
    sx, sy, qx, qy = _task()
    new = adapt(net, params, sx, sy, 2, sgd_update(0.5), first_order=True)
    at_adapted = {k: v.detach().requires_grad_() for k, v in new.items()}
    loss = nn.functional.cross_entropy(functional_call(net, at_adapted, (qx,)), qy)
    direct = torch.autograd.grad(loss, list(at_adapted.values()))
    for a, b in zip(first, direct):
        assert torch.allclose(a, b)


def _episode(ways=3, shots=2, queries=2, shape=(1, 28, 28), seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = lambda n: torch.arange(ways).repeat_interleave(n)  # noqa: E731
    return Episode(torch.rand(ways * shots, *shape, generator=g), lab(shots),
                   torch.rand(ways * queries, *shape, generator=g), lab(queries), ways)


def test_anil_inner_loop_leaves_backbone_unchanged():
    torch.manual_seed(0)
    learner = build("anil", {"filters": 8, "inner_steps": 3}, (1, 28, 28), 3)
    before = {k: v.detach().clone() for k, v in learner.net.backbone.named_parameters()}
    ep = _episode()
    feats = learner.net.backbone(ep.support_x)
    head_params = named_params(learner.net.head)
    new = adapt(learner.net.head, head_params, feats, ep.support_y, 3, sgd_update(0.4))
    assert set(new) == {"weight", "bias"}  # only the head is adapted
    assert any(not torch.equal(new[k], head_params[k]) for k in new)
    loss, _ = learner.meta_loss([ep])
    loss.backward()
    for k, v in learner.net.backbone.named_parameters():
        assert torch.equal(v, before[k])  # the inner loop did not touch the backbone
        assert v.grad is not None  # but the outer loop trains it


def test_maml_meta_loss_backpropagates_to_every_parameter():
    torch.manual_seed(0)
    learner = build("maml", {"filters": 8}, (1, 28, 28), 3)
    loss, stats = learner.meta_loss([_episode(), _episode(seed=1)])
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())
    assert 0 <= stats["acc"] <= 1


def test_protonet_logits_match_hand_computation():
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    protos = prototypes(support, labels, 2)
    assert torch.equal(protos, torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    query = torch.tensor([[1.0, 1.0]])
    # ||(1,1)-(1,0)||^2 = 1; ||(1,1)-(0,3)||^2 = 1 + 4 = 5
    assert torch.equal(squared_euclidean_logits(query, protos), torch.tensor([[-1.0, -5.0]]))


def test_pixel_nn_picks_the_nearest_support_image():
    learner = build("pixel-nn", {}, (1, 2, 2), 2)
    ep = Episode(torch.tensor([[[[0.0, 0], [0, 0]]], [[[1.0, 1], [1, 1]]]]), torch.tensor([0, 1]),
                 torch.tensor([[[[0.9, 1], [1, 0.8]]], [[[0.1, 0], [0, 0.2]]]]), torch.tensor([1, 0]), 2)
    assert torch.equal(learner.predict(ep).argmax(-1), torch.tensor([1, 0]))


def test_unknown_method_and_hyperparameter_are_clear_errors():
    with pytest.raises(UserError, match="allowed: .*maml"):
        build("x", {"algorithm": "mamml"}, (1, 28, 28), 5)
    with pytest.raises(UserError, match="methods.maml.inner_lrr.*allowed: .*inner_lr"):
        build("maml", {"inner_lrr": 0.1}, (1, 28, 28), 5)
