"""`mtml.models.cpu_kernels`: the native batch-statistics BatchNorm and max-pool give torch's
CPU kernels' results bit for bit (statistics, outputs, gradients, second derivatives, Conv-4
MAML meta-gradients and evaluation), and torch's kernels run wherever they do not apply or
cannot be built."""

import shutil

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtml.models import cpu_kernels as bn
from mtml.models.conv4 import Classifier

needs_cc = pytest.mark.skipif(not any(shutil.which(c) for c in ("cc", "gcc", "clang")),
                              reason="no C compiler on this machine: torch's kernels run (tested below)")


def bits(t):
    return t.detach().contiguous().view(torch.int32)


def reference(x, w, b, eps=1e-5):
    with bn.torch_kernel():
        return nn.functional.batch_norm(x, None, None, w, b, True, 0.0, eps)


SHAPES = [(75, 32, 28, 28), (5, 32, 28, 28), (80, 32, 14, 14), (80, 32, 7, 7), (80, 32, 3, 3),
          (4, 5, 3, 3), (6, 1, 28, 28), (3, 20, 5, 5), (7, 64, 5, 5), (2, 40, 2), (9, 13, 2, 3)]


@needs_cc
def test_the_native_kernel_builds_and_passes_its_self_check(one_thread):
    assert bn.status().startswith("native"), bn.status()
    assert bn.applies(torch.randn(5, 32, 28, 28))


@needs_cc
@pytest.mark.parametrize("shape", SHAPES)
def test_statistics_and_output_equal_torchs_bit_for_bit(one_thread, shape):
    g = torch.Generator().manual_seed(len(shape) * 1000 + shape[1])
    kernel = bn._kernel()
    for scale in (1e-4, 1e-2, 1.0, 1e2, 1e4):
        x = (torch.randn(shape, generator=g) + 3 * torch.randn(1, generator=g)) * scale
        w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
        ours = kernel.forward(x, w, b, 1e-5)
        theirs = torch.ops.aten.native_batch_norm(x, w, b, None, None, True, 0.0, 1e-5)
        for a, t in zip(ours, theirs):
            assert torch.equal(bits(a), bits(t))
        assert torch.equal(bits(bn.batch_norm(x, w, b, 1e-5)), bits(reference(x, w, b)))
        assert torch.equal(bits(bn.batch_norm(x, None, None, 1e-3)), bits(reference(x, None, None, 1e-3)))


@needs_cc
def test_constant_channels_zeros_infinities_and_nan_as_torch(one_thread):
    x = torch.randn(6, 16, 5, 5)
    x[:, 0] = 2.5                    # variance 0
    x[:, 1] = 0.0                    # all zeros
    x[:, 2, ::2, 1::3] = 0.0
    x[1, 3, 2, 2] = float("nan")     # NaN statistics for the channel
    x[2, 4, 0, 1] = float("inf")
    x[0, 5, 1, 1] = 1e30             # large values next to small ones
    w, b = torch.randn(16), torch.randn(16)
    assert torch.equal(bits(bn.batch_norm(x, w, b, 1e-5)), bits(reference(x, w, b)))
    with pytest.raises(ValueError, match="eps must be positive"):  # torch's own error
        bn.batch_norm(x, w, b, 0.0)


@needs_cc
def test_gradients_and_second_derivatives_equal_torchs(one_thread):
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, 32, 7, 7, generator=g)
    w0, b0 = torch.randn(32, generator=g), torch.randn(32, generator=g)
    weights = torch.randn(5, 32, 7, 7, generator=g)

    def grads(fast):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        if fast:
            y = bn.batch_norm(x, w, b, 1e-5)
            assert y.grad_fn is not None and "_BatchNorm" in type(y.grad_fn).__name__
        else:
            y = reference(x, w, b)
        first = torch.autograd.grad((y.tanh() * weights).sum(), (x, w, b), create_graph=True)
        second = torch.autograd.grad(sum((f * f).sum() for f in first), (x, w, b))
        return [y, *first, *second]

    for a, t in zip(grads(True), grads(False)):
        assert torch.equal(bits(a), bits(t))


def papers_block_tail(x, w, b):
    """BatchNorm (torch's kernel), ReLU, torch's max-pool: a Conv-4 block after its conv."""
    return nn.functional.max_pool2d(torch.relu(reference(x, w, b)), 2)


@needs_cc
@pytest.mark.parametrize("shape", [(75, 32, 28, 28), (80, 32, 14, 14), (80, 32, 7, 7), (80, 32, 3, 3),
                                   (4, 5, 5, 4), (3, 9, 2, 2)])
def test_block_without_a_graph_in_one_pass_equals_the_three_ops(one_thread, shape):
    g = torch.Generator().manual_seed(shape[-1])
    x = (torch.randn(shape, generator=g) * 2).round()  # ties, zeros and windows of negatives
    x.view(-1)[::97] = float("nan")
    w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    w[0] = -w[0].abs()  # a negative scale reverses which value of a window is largest
    with torch.no_grad():
        fused = bn.batch_norm_pool_relu(x, w, b, 1e-5)
        assert fused is not None
        expected = papers_block_tail(x, w, b)
        assert torch.equal(fused.isnan(), expected.isnan())
        assert torch.equal(fused.nan_to_num(7.5), expected.nan_to_num(7.5))
    with torch.no_grad():
        assert bn.batch_norm_pool_relu(x[..., :1, :], w, b, 1e-5) is None  # torch says why it cannot pool


def block_tail_now(x, w, b):
    """The block after its conv as Conv-4 runs it with torch's kernels: BatchNorm, pool, ReLU."""
    from mtml.models import conv4

    with bn.torch_kernel():
        return torch.relu(conv4.max_pool(nn.functional.batch_norm(x, None, None, w, b, True, 0.0, 1e-5)))


@needs_cc
@pytest.mark.parametrize("shape", [(5, 32, 28, 28), (20, 16, 14, 14), (6, 8, 7, 7), (7, 8, 3, 3), (3, 5, 2, 6)])
def test_block_with_a_graph_in_one_pass_has_the_three_ops_gradients_and_second_derivatives(one_thread, shape):
    g = torch.Generator().manual_seed(shape[-1] + 100)
    x0 = (torch.randn(shape, generator=g) * 2).round()  # ties and windows of negatives
    w0, b0 = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    w0[0] = -w0[0].abs()
    weights = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=g)

    def grads(fast):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        y = bn.batch_norm_pool_relu(x, w, b, 1e-5) if fast else block_tail_now(x, w, b)
        assert fast == ("_BlockTail" in type(y.grad_fn).__name__)
        plain = torch.autograd.grad((y * weights).sum(), (x, w, b), retain_graph=True)
        first = torch.autograd.grad((y * y.detach().sin() * weights).sum(), (x, w, b), create_graph=True)
        second = torch.autograd.grad(sum((f * f.detach().cos()).sum() for f in first), (x, w, b))
        return [y, *plain, *first, *second]

    for a, t in zip(grads(True), grads(False), strict=True):
        assert torch.equal(bits(a), bits(t))


@needs_cc
# rows of 1-7 windows (masked), 8 (one step), 10 and 17 (the last step overlapping), 14 (Conv-4)
@pytest.mark.parametrize("shape", [(3, 4, 9, 9), (2, 3, 7, 7), (5, 8, 28, 28), (2, 2, 3, 3), (1, 3, 6, 5),
                                   (2, 3, 4, 16), (2, 2, 5, 20), (2, 3, 6, 35)])
def test_pool_values_and_positions_are_max_pool2d_s(one_thread, shape):
    g = torch.Generator().manual_seed(shape[-1])
    x = (torch.randn(shape, generator=g) * 1.5).round()  # ties in most windows
    x.view(-1)[::17] = float("nan")
    x.view(-1)[5::23] = float("-inf")
    x[0, 0] = float("-inf")  # windows of -inf only keep their first position
    out, index = bn._kernel().pool(x)
    theirs, their_index = nn.functional.max_pool2d(x, 2, return_indices=True)
    assert index.is_contiguous() and torch.equal(index, their_index)
    assert torch.equal(out.nan_to_num(7.5), theirs.nan_to_num(7.5))
    assert bn.max_pool(x[..., :1]) is None  # torch says why it cannot pool


@needs_cc
@pytest.mark.parametrize("create_graph", [False, True])
def test_pool_gradients_and_second_derivatives_are_max_pool2d_s(one_thread, create_graph):
    g = torch.Generator().manual_seed(5)
    x0 = (torch.randn(4, 8, 14, 14, generator=g) * 1.5).round()
    x0[0, 0, 0, :2] = -0.0  # a zero gradient of either sign reaches its position as +0 (scatter_add)
    weights = torch.randn(4, 8, 7, 7, generator=g)
    weights[0, 0, 0, 0] = -0.0

    def grads(pool):
        x = x0.clone().requires_grad_()
        w = weights.clone().requires_grad_()
        gx, = torch.autograd.grad((pool(x) * w).sum(), x, create_graph=create_graph)
        if not create_graph:
            return [gx]
        return [gx, *torch.autograd.grad((gx * gx.detach().cos()).sum(), (w,))]

    ours = grads(bn.max_pool)
    assert "_MaxPool" in type(bn.max_pool(x0.clone().requires_grad_()).grad_fn).__name__
    for a, t in zip(ours, grads(lambda x: nn.functional.max_pool2d(x, 2))):
        assert torch.equal(bits(a), bits(t))


@needs_cc
def test_conv4_pool_with_a_graph_takes_the_native_kernels(one_thread, monkeypatch):
    from mtml.models import conv4

    calls = []
    native = bn.max_pool
    monkeypatch.setattr(bn, "max_pool", lambda x: calls.append(x.shape) or native(x))
    x = (torch.randn(4, 8, 14, 14) * 1.5).round().requires_grad_()
    weights = torch.randn(4, 8, 7, 7)
    ours, = torch.autograd.grad((conv4.max_pool(x) * weights).sum(), x)
    theirs, = torch.autograd.grad((nn.functional.max_pool2d(x, 2) * weights).sum(), x)
    assert calls == [x.shape] and torch.equal(ours, theirs)


def _maml(first_order):
    """A MAML meta-gradient through Conv-4 and its evaluation-style forward without a graph."""
    torch.manual_seed(0)
    net = Classifier((1, 28, 28), 5, 16)
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 5, (40,))
    params = dict(net.named_parameters())
    loss = nn.functional.cross_entropy(functional_call(net, params, (x[:10],)), y[:10])
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
    new = {k: p - 0.4 * g for (k, p), g in zip(params.items(), grads)}
    outer = nn.functional.cross_entropy(functional_call(net, new, (x[10:],)), y[10:])
    with torch.no_grad():
        logits = functional_call(net, new, (x[10:],))
    return [loss, outer, logits, *torch.autograd.grad(outer, list(params.values()))]


@needs_cc
@pytest.mark.parametrize("first_order", [False, True])
def test_conv4_maml_meta_gradients_equal_torchs_kernel_bit_for_bit(one_thread, first_order):
    fast = _maml(first_order)
    with bn.torch_kernel():
        slow = _maml(first_order)
    for a, t in zip(fast, slow):
        assert torch.equal(bits(a), bits(t))


def test_other_inputs_take_torchs_kernel(one_thread):
    x = torch.randn(4, 8, 5, 5)
    assert not bn.applies(x.double())
    assert not bn.applies(x.to(torch.bfloat16))
    assert not bn.applies(x.contiguous(memory_format=torch.channels_last))
    assert not bn.applies(torch.randn(4, 8, 1, 1))  # one position per plane: torch's layout-free path
    with bn.torch_kernel():
        assert not bn.applies(x)
    torch.set_num_threads(2)
    assert not bn.applies(x)  # torch spreads channels over its threads; the kernel uses one
    torch.set_num_threads(1)
    seen = []
    torch.func.vmap(lambda t: seen.append(bn.applies(t)) or t)(torch.randn(3, 4, 8, 5, 5))
    assert seen == [False]
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.batch_norm(torch.randn(1, 8, 1, 1), None, None, 1e-5)  # torch's own error


def test_without_a_compiler_torchs_kernel_runs(one_thread, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(bn.shutil, "which", lambda name: None)
    bn._kernel.cache_clear()
    try:
        assert "did not build" in bn.status() and "no C compiler" in bn.status()
        assert not bn.applies(torch.randn(4, 8, 5, 5))
        x, w, b = torch.randn(4, 8, 5, 5), torch.randn(8), torch.randn(8)
        assert torch.equal(bits(bn.batch_norm(x, w, b, 1e-5)), bits(reference(x, w, b)))
    finally:
        bn._kernel.cache_clear()


def test_switched_off_by_the_environment(one_thread, monkeypatch):
    monkeypatch.setenv(bn.ENV, "0")
    bn._kernel.cache_clear()
    try:
        assert bn.status() == f"torch's kernels: {bn.ENV}=0"
    finally:
        bn._kernel.cache_clear()


@needs_cc
def test_a_kernel_that_differs_from_torch_is_not_used(one_thread, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # a fresh build into an empty cache
    forward = bn._Kernel.forward
    monkeypatch.setattr(bn._Kernel, "forward", lambda self, *a: [t.nextafter(t + 1) for t in forward(self, *a)])
    bn._kernel.cache_clear()
    try:
        assert bn.status() == "torch's kernels: the native ones differ from them in the self-check"
        assert list(tmp_path.glob("mtml/cpu_kernels-*.so"))  # it did build
    finally:
        bn._kernel.cache_clear()


@needs_cc
@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"), reason="x86-64 flags")
def test_a_build_without_avx2_runs_the_scalar_code_to_the_same_bits(one_thread, monkeypatch, tmp_path):
    """The C file's plain loops (what a CPU without AVX2 runs) against torch, as the vector code is."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(bn, "FLAGS", tuple("-march=x86-64" if f == "-march=native" else f for f in bn.FLAGS))
    bn._kernel.cache_clear()
    try:
        assert bn.status().startswith("native (scalar"), bn.status()
        g = torch.Generator().manual_seed(3)
        for shape in [(5, 8, 28, 28), (3, 4, 9, 9), (2, 3, 6, 35), (4, 5, 3, 3)]:
            x = (torch.randn(shape, generator=g) * 1.5).round()
            x.view(-1)[::17] = float("nan")
            out, index = bn._kernel().pool(x)
            theirs, their_index = nn.functional.max_pool2d(x, 2, return_indices=True)
            assert torch.equal(index, their_index) and torch.equal(out.nan_to_num(7.5), theirs.nan_to_num(7.5))
            y, w, b = torch.randn(shape, generator=g), torch.randn(shape[1], generator=g), torch.randn(shape[1])
            assert torch.equal(bits(bn.batch_norm_pool_relu(y, w, b, 1e-5)),
                               bits(nn.functional.max_pool2d(torch.relu(reference(y, w, b)), 2)))
            y.requires_grad_()  # with a graph: values and the pool's choice (its gradient)
            ours, theirs = bn.batch_norm_pool_relu(y, w, b, 1e-5), block_tail_now(y, w, b)
            assert "_BlockTail" in type(ours.grad_fn).__name__ and torch.equal(bits(ours), bits(theirs))
            assert torch.equal(*(bits(torch.autograd.grad(t.sum(), y)[0]) for t in (ours, theirs)))
    finally:
        bn._kernel.cache_clear()
