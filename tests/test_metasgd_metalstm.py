"""Meta-SGD and the MetaLSTM family against MAML, plain SGD and finite differences."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtml.errors import UserError
from mtml.methods import build
from mtml.methods.base import Episode
from mtml.methods.inner_loop import adapt, named_params, sgd_update
from mtml.methods.learned_optimizer import gated_step, preprocess

SHAPE = (1, 16, 16)


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def _episode(ways=3, shots=2, queries=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = lambda n: torch.arange(ways).repeat_interleave(n)  # noqa: E731
    return Episode(torch.rand(ways * shots, *SHAPE, generator=g), lab(shots),
                   torch.rand(ways * queries, *SHAPE, generator=g), lab(queries), ways)


def test_metasgd_with_fixed_learning_rates_reproduces_maml_exactly():
    torch.manual_seed(0)
    maml = build("maml", {"filters": 4, "inner_lr": 0.3, "inner_steps": 2}, SHAPE, 3)
    sgd = build("metasgd", {"filters": 4, "inner_lr": 0.3, "inner_steps": 2, "learn_lr": False}, SHAPE, 3)
    sgd.net.load_state_dict(maml.net.state_dict())
    assert not any("lrs" in n for n, _ in sgd.named_parameters())  # fixed: buffers, not meta-learned
    ep = _episode()
    a, b = maml(ep), sgd(ep)
    assert set(a.adapted) == set(b.adapted)
    assert all(not torch.equal(a.adapted[k], a.init[k]) for k in ("head.weight", "backbone.blocks.0.conv.weight"))
    for k in a.adapted:
        assert torch.equal(a.adapted[k], b.adapted[k]), k
    assert torch.equal(a.loss, b.loss)


def test_metasgd_learning_rates_are_meta_learned_and_match_finite_differences():
    torch.manual_seed(0)
    learner = build("metasgd", {"filters": 4, "inner_lr": 0.2}, SHAPE, 3)
    ep = _episode()
    learner(ep).loss.backward()
    lrs = dict(learner.lrs.named_parameters())
    assert lrs and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lrs.values())
    # d loss / d alpha at one coordinate of the head's learning rate, by central differences
    name = "head-weight"
    analytic = lrs[name].grad[0, 0].item()
    eps = 1e-6
    with torch.no_grad():
        losses = []
        for sign in (1, -1):
            lrs[name][0, 0] += sign * eps
            with torch.enable_grad():
                losses.append(learner(ep).loss.item())
            lrs[name][0, 0] -= sign * eps
    assert math.isclose(analytic, (losses[0] - losses[1]) / (2 * eps), rel_tol=1e-5, abs_tol=1e-9)


def test_preprocessing_follows_andrychowicz():
    x = torch.tensor([2.0, -0.5, 1e-6, -1e-6, 0.0])
    out = preprocess(x, p=10.0)
    big = torch.tensor([math.log(2.0) / 10, 1.0]), torch.tensor([math.log(0.5) / 10, -1.0])
    assert torch.allclose(out[0], big[0]) and torch.allclose(out[1], big[1])
    # below e^-10 ~ 4.5e-5: (-1, e^10 x)
    assert torch.allclose(out[2], torch.tensor([-1.0, math.exp(10) * 1e-6]))
    assert torch.allclose(out[3], torch.tensor([-1.0, -math.exp(10) * 1e-6]))
    assert torch.equal(out[4], torch.tensor([-1.0, 0.0]))


def test_gated_step_with_unit_forget_gate_and_constant_input_gate_is_sgd():
    theta, grad = torch.randn(7, 1), torch.randn(7, 1)
    lr = 0.37
    assert torch.equal(gated_step(theta, grad, torch.ones(7, 1), torch.full((7, 1), lr)), theta - lr * grad)


def test_metalstm_rule_with_saturated_gates_reproduces_gradient_descent():
    torch.manual_seed(0)
    lr = 0.25
    learner = build("metalstm", {"filters": 4, "inner_steps": 3}, SHAPE, 3)
    gates = learner.optimizer_net.gates
    with torch.no_grad():  # f = sigmoid(50) = 1 in float64, i = sigmoid(logit(lr)) = lr
        gates.forget.weight.zero_()
        gates.input.weight.zero_()
        gates.forget.bias.fill_(50.0)
        gates.input.bias.fill_(math.log(lr / (1 - lr)))
    ep = _episode()
    init = named_params(learner.net)
    lstm = adapt(learner.net, init, ep.support_x, ep.support_y, 3, learner.inner_update(), first_order=True)
    plain = adapt(learner.net, init, ep.support_x, ep.support_y, 3, sgd_update(lr), first_order=True)
    for k in plain:
        assert torch.allclose(lstm[k], plain[k], rtol=0, atol=1e-12), k
    # and the default initialisation is not that: the gates start near, not at, SGD
    fresh = build("metalstm", {"filters": 4, "inner_steps": 3}, SHAPE, 3)
    fresh.net.load_state_dict(learner.net.state_dict())
    other = adapt(fresh.net, named_params(fresh.net), ep.support_x, ep.support_y, 3, fresh.inner_update(), True)
    assert any(not torch.allclose(other[k], plain[k]) for k in plain)


def test_metalstm_meta_gradient_reaches_the_lstm_and_the_initialisation():
    torch.manual_seed(0)
    learner = build("metalstm++", {"filters": 4, "inner_steps": 2}, SHAPE, 3)
    loss, _ = learner.meta_loss([_episode(), _episode(seed=1)])
    loss.backward()
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_metalstm_updates_after_every_task_and_metalstm_pp_once_per_batch():
    batch = [_episode(seed=s) for s in range(3)]
    for name, steps in (("metalstm", 3), ("metalstm++", 1)):
        torch.manual_seed(0)
        learner = build(name, {"filters": 4, "inner_steps": 1}, SHAPE, 3)
        opt = learner.make_optimizer(1e-3)
        stats = learner.train_step(batch, opt, lambda: batch)
        assert math.isfinite(stats["loss"]) and 0 <= stats["acc"] <= 1
        counts = {int(s["step"]) for s in opt.state.values()}
        assert counts == {steps}, name


def test_metalstm_clips_the_meta_gradient_norm():
    torch.manual_seed(0)
    learner = build("metalstm++", {"filters": 4, "inner_steps": 1, "grad_clip": 0.01}, SHAPE, 3)
    learner.meta_loss([_episode()])[0].backward()
    before = torch.sqrt(sum((p.grad ** 2).sum() for p in learner.parameters()))
    learner.clip_gradients()
    after = torch.sqrt(sum((p.grad ** 2).sum() for p in learner.parameters()))
    assert before > 0.01 and math.isclose(after, 0.01, rel_tol=1e-4)


def test_metalstm_rejects_an_input_gate_outside_0_1():
    with pytest.raises(UserError, match="inner_lr"):
        build("metalstm", {"inner_lr": 1.5}, SHAPE, 3)


def test_metasgd_prediction_adapts_with_learned_rates():
    torch.manual_seed(0)
    learner = build("metasgd", {"filters": 4}, SHAPE, 3)
    ep = _episode()
    with torch.no_grad():
        before = learner.predict(ep)
        for p in learner.lrs.parameters():
            p.mul_(2)
        after = learner.predict(ep)
    assert not torch.allclose(before, after)
    # the prediction is the query logits of the adapted weights
    o = learner.adapt_task(ep, 1, first_order=True)
    assert torch.allclose(functional_call(learner.net, o.adapted, (ep.query_x,)), after)
    assert isinstance(o.module, nn.Module)
