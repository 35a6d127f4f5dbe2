"""Conv-4's `downsample: stride` (Finn et al.'s Omniglot network: stride-2 3x3 convolutions
with TensorFlow's SAME padding, no pooling, features averaged over the last map) against a
plain nn.Sequential written from the reference code, on every path MAML runs it."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtml.benchmark import random_episode
from mtml.errors import UserError
from mtml.methods import build, resolve_hparams
from mtml.methods.inner_loop import adapt, named_params, sgd_update
from mtml.models.conv4 import Classifier, same_padding

from gradcheck_helpers import assert_matches_finite_differences

# TF SAME with stride 2 at 28x28, by hand: pad total (ceil(n/2) - 1) * 2 + 3 - n, the odd
# one after: 28 -> 14 (0, 1), 14 -> 7 (0, 1), 7 -> 4 (1, 1), 4 -> 2 (0, 1)
PADS_28 = [(0, 1), (0, 1), (1, 1), (0, 1)]


def _reference(net: Classifier, pads) -> nn.Sequential:
    """The reference network as layers, holding `net`'s tensors: per block zero padding,
    stride-2 convolution, batch-statistics BatchNorm, ReLU; then the mean over positions
    (cbfinn/maml's `reduce_mean(hidden4, [1, 2])`) and the linear head."""
    layers = []
    for (before, after), block in zip(pads, net.backbone.blocks):
        conv = nn.Conv2d(block.conv.in_channels, block.conv.out_channels, 3, stride=2)
        conv.weight, conv.bias = block.conv.weight, block.conv.bias
        norm = nn.BatchNorm2d(block.conv.out_channels, track_running_stats=False)
        norm.weight, norm.bias = block.norm.weight, block.norm.bias
        layers += [nn.ZeroPad2d((before, after, before, after)), conv, norm, nn.ReLU()]
    head = nn.Linear(net.head.in_features, net.head.out_features)
    head.weight, head.bias = net.head.weight, net.head.bias
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def test_same_padding_and_feature_sizes():
    assert [same_padding(n) for n in (28, 14, 7, 4)] == PADS_28
    sizes = []
    net = Classifier((1, 28, 28), 5, filters=6, downsample="stride")
    for block in net.backbone.blocks:
        block.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    assert sizes == [(14, 14), (7, 7), (4, 4), (2, 2)]
    # features: one per filter (the mean over the 2x2 map); max-pooling: 28 -> 1x1, 84 -> 5x5
    assert net.backbone.feature_dim((1, 28, 28)) == 6
    assert Classifier((3, 84, 84), 5, 6, "stride").backbone.feature_dim((3, 84, 84)) == 6
    assert Classifier((1, 28, 28), 5, 6).backbone.feature_dim((1, 28, 28)) == 6
    assert Classifier((3, 84, 84), 5, 6).backbone.feature_dim((3, 84, 84)) == 6 * 25


def test_functional_forward_equals_the_sequential_reference():
    torch.manual_seed(0)
    net = Classifier((1, 28, 28), 5, filters=4, downsample="stride")
    # other weights than the module's own (as the inner loop passes them), BN affine included
    params = {k: v.detach() + 0.1 * torch.randn_like(v) for k, v in named_params(net).items()}
    x = torch.rand(6, 1, 28, 28)
    ref = _reference(Classifier((1, 28, 28), 5, filters=4, downsample="stride"), PADS_28)
    ref.load_state_dict({k: params[name] for k, name in zip(ref.state_dict(), params)})
    torch.testing.assert_close(functional_call(net, params, (x,)), ref(x), rtol=1e-5, atol=1e-6)
    # and with PyTorch's symmetric padding=1 it would differ (the sampling grid shifts)
    sym = _reference(Classifier((1, 28, 28), 5, filters=4, downsample="stride"), [(1, 1)] * 4)
    sym.load_state_dict(ref.state_dict())
    assert not torch.allclose(sym(x), ref(x), atol=1e-3)


def test_maml_meta_gradient_through_the_strided_net_matches_finite_differences(float64):
    torch.manual_seed(0)
    net = Classifier((1, 12, 12), 3, filters=3, downsample="stride")
    params = named_params(net)
    ep = random_episode(3, 2, 2, (1, 12, 12))

    def meta_loss(p):
        new = adapt(net, p, ep.support_x, ep.support_y, 2, sgd_update(0.3), first_order=False)
        return nn.functional.cross_entropy(functional_call(net, new, (ep.query_x,)), ep.query_y)

    assert_matches_finite_differences(meta_loss, params)


def _meta_gradient(name, task_parallel, channels_last=False):
    from mtml.speed import prepare

    torch.manual_seed(1)
    hp = {"filters": 4, "inner_steps": 2, "downsample": "stride"}
    learner = prepare(build(name, hp, (1, 28, 28), 3), {"channels_last": channels_last})
    learner.task_parallel = task_parallel
    torch.manual_seed(0)
    loss, _ = learner.meta_loss([random_episode(3, 2, 3, (1, 28, 28)) for _ in range(3)])
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in learner.parameters() if p.grad is not None])


@pytest.mark.parametrize("name", ["maml", "anil"])
def test_vmap_and_channels_last_paths_agree_with_the_loop(name):
    ref_loss, ref = _meta_gradient(name, "loop")
    for task_parallel, channels_last in (("vmap", False), ("loop", True)):
        loss, grad = _meta_gradient(name, task_parallel, channels_last)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5)


def test_the_option_defaults_to_maxpool_without_entering_resolved_hyperparameters():
    _, hp = resolve_hparams("maml", {})
    assert "downsample" not in hp  # runs made before the option existed keep their settings
    assert build("maml", {"filters": 4}, (1, 28, 28), 5).net.backbone.downsample == "maxpool"
    assert resolve_hparams("anil", {"downsample": "stride"})[1]["downsample"] == "stride"
    with pytest.raises(UserError, match=r"params key 'methods.maml.downsample' is 'pool'; allowed: maxpool, stride"):
        resolve_hparams("maml", {"downsample": "pool"})
