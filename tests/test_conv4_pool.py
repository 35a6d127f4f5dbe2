"""`conv4.max_pool` (the CPU fast path of Conv-4's 2x2 max-pooling) gives torch's
`max_pool2d(x, 2)` bit for bit: values, chosen positions, gradients and the second
derivatives MAML takes, ties and odd sizes included; and `speed.keep_freed_memory`."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.func import functional_call

import mtml.models.conv4 as conv4
from mtml.models.conv4 import Classifier, max_pool


def plain(x):
    return nn.functional.max_pool2d(x, 2)


def tied(shape, seed=0):
    """Values on a coarse grid: most windows hold equal maxima (positive ones too)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 1.5).round()


SHAPES = [(3, 4, 9, 9), (2, 3, 7, 7), (5, 8, 28, 28), (2, 2, 3, 3), (1, 3, 6, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_values_equal_max_pool2d_with_and_without_a_graph(shape):
    x = tied(shape)
    x.view(-1)[::17] = float("nan")  # NaN wins its window in both
    x.view(-1)[5::23] = float("-inf")
    with torch.no_grad():  # the strided-maximum path
        assert torch.equal(max_pool(x).nan_to_num(7.5), plain(x).nan_to_num(7.5))
    xg = x.clone().requires_grad_()  # the index path
    assert torch.equal(max_pool(xg).detach().nan_to_num(7.5), plain(x).nan_to_num(7.5))
    assert max_pool(x).is_contiguous()


@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_goes_where_max_pool2d_sends_it_on_ties(shape):
    x = tied(shape).requires_grad_()
    weights = torch.arange(plain(x).numel(), dtype=torch.float32).view(plain(x).shape) + 1
    g_fast, = torch.autograd.grad((max_pool(x) * weights).sum(), x)
    g_plain, = torch.autograd.grad((plain(x) * weights).sum(), x)
    assert torch.equal(g_fast, g_plain)
    _, index = nn.functional.max_pool2d(x.detach(), 2, return_indices=True)  # same positions chosen
    assert torch.equal(g_plain.flatten(2).gather(2, index.flatten(2)).view(index.shape), weights.expand_as(index))


def reference_block(self, x):
    """Conv-4's block as written in the papers: conv, BatchNorm, ReLU, then torch's max-pool."""
    return plain(torch.relu(self.norm(self.conv(x))))


def _maml_grads(pool, first_order: bool, block_forward=conv4.ConvBlock.forward):
    """A second-order (or first-order) MAML meta-gradient through Conv-4 with `pool` and
    `block_forward` as its blocks' forward."""
    torch.manual_seed(0)
    net = Classifier((1, 28, 28), 5, 8)
    x, y = torch.randn(20, 1, 28, 28), torch.randint(0, 5, (20,))
    saved, conv4.max_pool = conv4.max_pool, pool
    saved_forward, conv4.ConvBlock.forward = conv4.ConvBlock.forward, block_forward
    try:
        params = dict(net.named_parameters())
        loss = nn.functional.cross_entropy(functional_call(net, params, (x[:10],)), y[:10])
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
        new = {k: p - 0.4 * g for (k, p), g in zip(params.items(), grads)}
        outer = nn.functional.cross_entropy(functional_call(net, new, (x[10:],)), y[10:])
        return [loss.detach(), outer.detach()] + list(torch.autograd.grad(outer, list(params.values())))
    finally:
        conv4.max_pool, conv4.ConvBlock.forward = saved, saved_forward


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradients_equal_the_plain_op_bit_for_bit(first_order):
    fast, reference = _maml_grads(max_pool, first_order), _maml_grads(plain, first_order)
    assert all(torch.equal(a, b) for a, b in zip(fast, reference))


@pytest.mark.parametrize("first_order", [False, True])
def test_blocks_pooling_before_relu_equal_the_papers_order_bit_for_bit(first_order):
    """ConvBlock pools, then applies ReLU (a quarter of the elements): the same losses,
    meta-gradients and second derivatives as ReLU, then torch's max-pool."""
    fast = _maml_grads(max_pool, first_order)
    reference = _maml_grads(plain, first_order, block_forward=reference_block)
    assert all(torch.equal(a, b) for a, b in zip(fast, reference))


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_commutes_with_the_pool_on_ties_zeros_and_nan(shape):
    x = tied(shape)  # many windows of zeros, of negatives only, of equal positive maxima
    x.view(-1)[::19] = float("nan")
    with torch.no_grad():
        assert torch.equal(torch.relu(max_pool(x)).nan_to_num(7.5), plain(torch.relu(x)).nan_to_num(7.5))
    xg = x.nan_to_num(0.0).requires_grad_()
    weights = torch.arange(plain(xg).numel(), dtype=torch.float32).view(plain(xg).shape) - 20
    g_fast, = torch.autograd.grad((torch.relu(max_pool(xg)) * weights).sum(), xg)
    g_reference, = torch.autograd.grad((plain(torch.relu(xg)) * weights).sum(), xg)
    assert torch.equal(g_fast, g_reference)


def test_other_inputs_take_the_plain_op():
    x = tied((4, 3, 8, 8))
    cl = x.contiguous(memory_format=torch.channels_last)  # channels_last runs
    assert torch.equal(max_pool(cl), plain(x)) and max_pool(cl).is_contiguous(memory_format=torch.channels_last)
    batched = torch.func.vmap(max_pool)(torch.stack([x, -x]))  # vmap'd episodes
    assert torch.equal(batched, torch.stack([plain(x), plain(-x)]))
    with pytest.raises(RuntimeError):  # too small to pool: torch's own error, as before
        max_pool(torch.ones(1, 1, 1, 1))


def test_keep_freed_memory_stops_the_page_faults_of_a_meta_batch(tmp_path):
    """In a fresh process: three second-order MAML updates (Conv-4-32, 28x28, meta-batch 4)
    fault in tens of thousands of pages per call with glibc's defaults and (almost) none
    after `keep_freed_memory()`; the environment's own MALLOC_* setting is left alone."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc settings: Linux only")
    script = textwrap.dedent("""
        import resource, sys, torch
        from mtml.benchmark import random_episode
        from mtml.methods import build
        from mtml.speed import keep_freed_memory
        torch.set_num_threads(1)
        applied = keep_freed_memory() if sys.argv[1] == "keep" else None
        torch.manual_seed(0)
        learner = build("maml", {"filters": 32}, (1, 28, 28), 5)
        opt = torch.optim.Adam(learner.parameters(), 1e-3)
        batch = [random_episode(5, 1, 15, (1, 28, 28)) for _ in range(4)]
        faults = []
        for _ in range(4):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(3):
                learner.train_step(batch, opt, lambda: batch)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        print(applied, min(faults[1:]))
    """)
    (tmp_path / "faults.py").write_text(script)

    def run(mode, **env):
        import os

        out = subprocess.run([sys.executable, str(tmp_path / "faults.py"), mode], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True).stdout.split()
        return out[0], int(out[1])

    kept, default = run("keep"), run("default")
    assert kept[0] == "True" and kept[1] < 500, kept
    assert default[1] > 5000, default  # what it saves (about 25,000 faults per 3 updates measured)
    assert run("keep", MALLOC_TRIM_THRESHOLD_="131072")[0] == "False"  # the user's setting wins
