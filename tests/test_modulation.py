"""FiLM and kernel modulation (KML): identities, hand computations, parameter counts, and
the meta-gradient through encoder, generator and inner loop against finite differences."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtml.errors import UserError
from mtml.methods import build
from mtml.methods.inner_loop import named_params
from mtml.models.conv4 import Classifier
from mtml.models.modulation import (
    Conditioned,
    FactorisedKernelGenerator,
    FiLMModulation,
    KernelModulation,
    conv_kernels,
    factorised_kml_parameters,
    full_kml_parameters,
    norm_parameters,
)

from pipeline_helpers import random_episode

SHAPE = (3, 16, 16)
COND = {"filters": 6, "encoder_filters": 4, "embed_dim": 5, "generator_hidden": 3}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py



def _net(seed=0):
    torch.manual_seed(seed)
    return Classifier(SHAPE, 4, filters=6)


def _images(n=7, seed=1):
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def test_kml_with_zero_generator_output_equals_the_unmodulated_network_exactly():
    net, x = _net(), _images()
    kernels = conv_kernels(net.backbone)
    gen = FactorisedKernelGenerator(embed_dim=5, kernels=kernels, hidden=3)
    for p in gen.parameters():  # every output of the generator is then exactly zero
        nn.init.zeros_(p)
    mod = gen(torch.randn(5))
    assert all(torch.count_nonzero(m) == 0 for m in mod.masks.values())
    out = functional_call(net, mod.modulate(named_params(net)), (x,))
    assert torch.equal(out, net(x))


def test_kml_modulates_every_kernel_element_as_the_formula_says():
    net, x = _net(), _images()
    name = "backbone.blocks.0.conv.weight"
    w = net.backbone.blocks[0].conv.weight
    u, v = torch.randn(w.shape[0]), torch.randn(w[0].numel())
    db = torch.randn(w.shape[0])
    mod = KernelModulation({name: torch.outer(u, v).reshape(w.shape)},
                           {"backbone.blocks.0.conv.bias": db})
    params = mod.modulate(named_params(net))
    # Reference: W_hat[o, i, a, b] = W[o, i, a, b] * (1 + u[o] v[i, a, b]), b_hat = b + db.
    w_hat = w * (1 + u[:, None, None, None] * v.reshape(w.shape[1:])[None])
    assert torch.allclose(params[name], w_hat)
    block = net.backbone.blocks[0]
    ref = torch.relu(block.norm(nn.functional.conv2d(x, w_hat, block.conv.bias + db, padding=1)))
    ref = nn.functional.max_pool2d(ref, 2)
    seen = {}

    def record(i, h):  # keeps block outputs
        seen[i] = h
        return h

    functional_call(Conditioned(net.backbone, None, record),
                    {k: p for k, p in params.items() if k.startswith("backbone.")}, (x,))
    assert torch.allclose(seen[0], ref, atol=1e-6)


def test_film_with_scale_one_and_shift_zero_equals_the_unmodulated_network_exactly():
    net, x = _net(), _images()
    chans = [b.conv.out_channels for b in net.backbone.blocks]
    film = FiLMModulation([torch.ones(c) for c in chans], [torch.zeros(c) for c in chans])
    out = Conditioned(net.backbone, net.head, film.block_hook)(x)
    assert torch.equal(out, net(x))


def test_film_at_norm_with_scale_one_and_shift_zero_changes_nothing():
    net, x = _net(), _images()
    chans = [b.conv.out_channels for b in net.backbone.blocks]
    film = FiLMModulation([torch.ones(c) for c in chans], [torch.zeros(c) for c in chans],
                          norm_parameters(net.backbone))
    assert film.block_hook is None
    params = named_params(net)
    modulated = film.modulate(params)
    assert all(torch.equal(modulated[k], params[k]) for k in params)
    assert torch.equal(functional_call(net, modulated, (x,)), net(x))


def test_film_at_norm_is_mmaml_placement_after_batchnorm_before_relu():
    net, x = _net(), _images()
    chans = [b.conv.out_channels for b in net.backbone.blocks]
    scales, shifts = [torch.rand(c) + 0.5 for c in chans], [torch.randn(c) for c in chans]
    film = FiLMModulation(scales, shifts, norm_parameters(net.backbone))
    h = x
    for i, block in enumerate(net.backbone.blocks):
        z = block.norm(block.conv(h)) * scales[i][None, :, None, None] + shifts[i][None, :, None, None]
        h = nn.functional.max_pool2d(torch.relu(z), 2)
    ref = net.head(h.flatten(1))
    assert torch.allclose(functional_call(net, film.modulate(named_params(net)), (x,)), ref, atol=1e-6)


def test_film_is_a_per_channel_affine_map_of_each_block_output():
    net, x = _net(), _images()
    chans = [b.conv.out_channels for b in net.backbone.blocks]
    scales, shifts = [torch.randn(c) for c in chans], [torch.randn(c) for c in chans]
    film = FiLMModulation(scales, shifts)
    h = x
    for i, block in enumerate(net.backbone.blocks):
        h = block(h) * scales[i][None, :, None, None] + shifts[i][None, :, None, None]
    ref = net.head(h.flatten(1))
    assert torch.allclose(Conditioned(net.backbone, net.head, film.block_hook)(x), ref, atol=1e-6)


def test_factorised_generator_has_the_parameter_count_of_the_formula():
    # Two conv kernels: [8, 3, 3, 3] and [8, 8, 3, 3]; embedding 5, hidden 4.
    kernels = {"a.weight": (8, 3, 3, 3), "b.weight": (8, 8, 3, 3)}
    gen = FactorisedKernelGenerator(embed_dim=5, kernels=kernels, hidden=4)
    # Per kernel: u-MLP 5->4->C_out, w-MLP 5->4->C_in*9, delta_b linear 5->C_out.
    by_hand = 0
    for c_out, c_in in ((8, 3), (8, 8)):
        by_hand += (5 * 4 + 4) + (4 * c_out + c_out)
        by_hand += (5 * 4 + 4) + (4 * c_in * 9 + c_in * 9)
        by_hand += 5 * c_out + c_out
    assert sum(p.numel() for p in gen.parameters()) == by_hand
    assert factorised_kml_parameters(5, 4, kernels.values()) == by_hand
    # The unfactorised generator emits every kernel entry.
    full = sum((5 * 4 + 4) + (4 * n + n) + (5 * 8 + 8) for n in (8 * 3 * 9, 8 * 8 * 9))
    assert full_kml_parameters(5, 4, kernels.values()) == full
    assert full > 5 * by_hand


def test_factorised_m_generator_is_about_150_times_smaller_with_mmaml_widths():
    # MMAML's network (32-64-128-256 channels, 3x3 kernels, RGB input) with linear generators:
    # per kernel, (d + 1)(C_out + C_in k^2) parameters emit u and w instead of (d + 1) C_out C_in k^2
    # for M whole, whatever the embedding size d: the ~150x saving quoted for KML's simplified
    # generator. delta_b is the same map in both, so it narrows the ratio when counted.
    kernels = [(32, 3, 3, 3), (64, 32, 3, 3), (128, 64, 3, 3), (256, 128, 3, 3)]
    whole_m = 32 * 27 + 64 * 288 + 128 * 576 + 256 * 1152
    factor_m = (32 + 27) + (64 + 288) + (128 + 576) + (256 + 1152)
    for d in (32, 128):
        whole = full_kml_parameters(d, 0, kernels, bias_shift=False)
        factorised = factorised_kml_parameters(d, 0, kernels, bias_shift=False)
        assert (whole, factorised) == ((d + 1) * whole_m, (d + 1) * factor_m)
        assert 150 < whole / factorised < 160
        delta_b = (d + 1) * (32 + 64 + 128 + 256)
        assert full_kml_parameters(d, 0, kernels) == whole + delta_b
        assert factorised_kml_parameters(d, 0, kernels) == factorised + delta_b
    assert full_kml_parameters(128, 0, kernels) / factorised_kml_parameters(128, 0, kernels) == pytest.approx(
        50_105_664 / 387_387)  # the docs' table row


def test_method_reports_its_generator_parameters():
    learner = build("mmaml-kml", {"filters": 32, "embed_dim": 64, "generator_hidden": 32}, (3, 84, 84), 5)
    kernels = conv_kernels(learner.net.backbone).values()
    assert learner.generator_parameters() == factorised_kml_parameters(64, 32, kernels)
    film = build("mmaml", {"filters": 32, "embed_dim": 64}, (3, 84, 84), 5)
    assert film.generator_parameters() == 4 * (64 + 1) * 2 * 32


@pytest.mark.parametrize("modulated,base,film_at", [
    ("mmaml", "maml", "block"), ("mmaml", "maml", "norm"), ("mmaml-kml", "maml", "block"),
    ("mprotonet", "protonet", "block"), ("mprotonet", "protonet", "norm"),
    ("mprotonet-kml", "protonet", "block")])
def test_fresh_modulated_method_predicts_exactly_like_its_base(modulated, base, film_at):
    # Generators start at the identity modulation, so with the same backbone and head the
    # modulated method is its base method.
    torch.manual_seed(0)
    m = build(modulated, {**COND, "film_at": film_at}, SHAPE, 4)
    b = build(base, {"filters": COND["filters"]}, SHAPE, 4)
    b.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("conditioner.")})
    ep = random_episode(4, 2, 3, SHAPE, "cpu")
    with torch.no_grad():
        assert torch.equal(m.predict(ep), b.predict(ep))


def test_bad_film_at_is_a_user_error():
    with pytest.raises(UserError, match="film_at.*allowed: block, norm"):
        build("mmaml", {"film_at": "conv"}, SHAPE, 4)


@pytest.mark.parametrize("algorithm,film_at", [("mmaml", "block"), ("mmaml", "norm"),
                                               ("mmaml-kml", "block"), ("mprotonet-kml", "block")])
def test_meta_gradient_through_modulation_matches_finite_differences(algorithm, film_at):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        hp = {**COND, "film_at": film_at, **({"inner_steps": 2} if "maml" in algorithm else {})}
        learner = build(algorithm, hp, SHAPE, 3)
        for p in learner.conditioner.generator.parameters():  # leave the identity start
            nn.init.normal_(p, std=0.3)
        ep = random_episode(3, 2, 2, SHAPE, "cpu")
        loss, _ = learner.meta_loss([ep])
        names = [n for n, _ in learner.named_parameters()]
        picks = [n for n in names if "conditioner.encoder" in n][:2] + \
                [n for n in names if "conditioner.generator" in n][:3] + [names[0]]
        params = dict(learner.named_parameters())
        grads = torch.autograd.grad(loss, [params[n] for n in picks])
        eps = 1e-6
        for name, g in zip(picks, grads):
            p = params[name]
            idx = tuple(s - 1 for s in p.shape)
            with torch.no_grad():
                p[idx] += eps
                plus = float(learner.meta_loss([ep])[0])
                p[idx] -= 2 * eps
                minus = float(learner.meta_loss([ep])[0])
                p[idx] += eps
            fd = (plus - minus) / (2 * eps)
            assert abs(float(g[idx]) - fd) <= 1e-5 * max(1.0, abs(fd)), (name, float(g[idx]), fd)
        assert any(float(g.abs().max()) > 1e-8 for g in grads[:5])
    finally:
        torch.set_default_dtype(old)
