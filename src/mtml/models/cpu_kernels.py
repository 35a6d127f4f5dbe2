"""Conv-4's CPU kernels: torch's bits, faster (C in `cpu_kernels.c`, docs/speed.md).

- Batch-statistics BatchNorm. torch's CPU kernel sums each channel sequentially in double
  precision, one channel after the other, so every addition waits for the previous one: in a
  Conv-4 evaluation it cost as much as the convolutions. The C code runs the same sequential
  sums of many channels side by side (AVX2 vectors of eight channels), keeping each channel's
  order and so every bit of the mean, the inverse standard deviation and the output. The
  backward pass is torch's own (`native_batch_norm_backward` with these statistics), so
  gradients and MAML's second derivatives (recorded through it when a graph is built) are
  torch's too.
- A block's BatchNorm, 2x2 max-pool and ReLU in one pass over the map (with a graph, the
  pool's window choice too; the backward runs the three ops' backwards).
- The 2x2 max-pool alone: values and window choice in one pass, and its backward.

The C file is compiled on first use with the system's C compiler (`cc`, or `$CC`) for this
CPU and cached in `$XDG_CACHE_HOME/mtml` (`~/.cache/mtml`), keyed by the source, the compiler
and the CPU's features. Before it is used, a self-check compares it with torch's kernels bit
for bit on random inputs; where anything differs (another torch build may fuse its arithmetic
differently), where there is no compiler, or with `MTML_NATIVE_KERNELS=0`, torch's kernels
run: results never depend on which ran, only the time. `status()` says which and why.

Used for contiguous float32 NCHW maps with more than one position per plane, outside
torch.func transforms, without running statistics, on one torch thread (torch spreads the
channels over its threads; these kernels use one), which is what every stage of the pipeline
runs with (`threads: 1`).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch._C._functorch import is_functorch_wrapped_tensor

from mtml.utils import switched_on

SOURCE = Path(__file__).with_suffix(".c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC")
ENV = "MTML_NATIVE_KERNELS"  # 0: always torch's kernels

_P, _L = ctypes.c_void_p, ctypes.c_long


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _param(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().contiguous()


class _Kernel:
    def __init__(self, lib: ctypes.CDLL, fused: int, why: str):
        self.lib, self.fused, self.why = lib, fused, why

    def _stats(self, x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        n, c = x.shape[:2]
        mean, invstd = x.new_empty(c), x.new_empty(c)
        work = torch.empty(c, dtype=torch.float64)
        self.lib.mtml_bn_stats(x.data_ptr(), n, c, x[0, 0].numel(), eps, mean.data_ptr(), invstd.data_ptr(),
                               work.data_ptr())
        return mean, invstd

    def forward(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
        """F.batch_norm's output, save_mean and save_invstd (batch statistics)."""
        mean, invstd = self._stats(x, eps)
        y, w, b = torch.empty_like(x), _param(weight), _param(bias)
        self.lib.mtml_bn_apply(x.data_ptr(), x.shape[0], x.shape[1], x[0, 0].numel(), mean.data_ptr(),
                               invstd.data_ptr(), _ptr(w), _ptr(b), self.fused, y.data_ptr())
        return y, mean, invstd

    def pool_relu(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
        """relu(max_pool(batch_norm(x), 2)) in one pass over the map (no graph)."""
        n, c, h, width = x.shape
        mean, invstd = self._stats(x, eps)
        out, w, b = x.new_empty(n, c, h // 2, width // 2), _param(weight), _param(bias)
        self.lib.mtml_bn_apply_pool_relu(x.data_ptr(), n, c, h, width, mean.data_ptr(), invstd.data_ptr(), _ptr(w),
                                         _ptr(b), self.fused, out.data_ptr())
        return out

    def pool_relu_index(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """relu(max_pool(batch_norm(x), 2)) in one pass, the pool's index (`return_indices`),
        save_mean and save_invstd: what the block's backward needs (with a graph)."""
        n, c, h, width = x.shape
        mean, invstd = self._stats(x, eps)
        out, w, b = x.new_empty(n, c, h // 2, width // 2), _param(weight), _param(bias)
        index = torch.empty(out.shape, dtype=torch.int64)
        self.lib.mtml_bn_apply_pool_relu_index(x.data_ptr(), n, c, h, width, mean.data_ptr(), invstd.data_ptr(),
                                               _ptr(w), _ptr(b), self.fused, index.data_ptr(), out.data_ptr())
        return out, index, mean, invstd

    def pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """max_pool2d(x, 2, return_indices=True), both contiguous (no graph)."""
        n, c, h, w = x.shape
        index = torch.empty(n, c, h // 2, w // 2, dtype=torch.int64)
        out = x.new_empty(n, c, h // 2, w // 2)
        self.lib.mtml_pool_index(x.data_ptr(), n * c, h, w, index.data_ptr(), out.data_ptr())
        return out, index

    def pool_backward(self, grad: Tensor, index: Tensor, shape: torch.Size, relu_out: Tensor | None = None
                      ) -> Tensor:
        """The input's gradient of `pool` (max_pool2d's backward); with `relu_out`, of
        relu(pool(.)) whose output that is."""
        grad, out = grad.contiguous(), grad.new_empty(shape)
        self.lib.mtml_pool_backward(grad.data_ptr(), _ptr(relu_out), index.data_ptr(), shape[0] * shape[1], shape[2],
                                    shape[3], out.data_ptr())
        return out


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build() -> Path:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang; or set CC)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, " ".join(FLAGS), platform.machine(),
                                    _cpu_features()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtml"
    target = cache / f"cpu_kernels-{key}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # compile next to the target and rename: concurrent jobs never load a half-written file
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".so")
        os.close(fd)
        try:
            done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"{Path(cc).name} failed: {done.stderr.strip()[-500:]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def _self_check(kernel: _Kernel) -> bool:
    """Bit for bit equal to torch's kernels on random maps (shapes of Conv-4 and odd ones)."""
    g = torch.Generator().manual_seed(12345)
    for shape in ((6, 32, 28, 28), (3, 32, 7, 7), (5, 19, 3, 3), (4, 8, 5, 1), (2, 3, 2, 2)):
        for scale in (1e-3, 1.0, 1e3):
            x = (torch.randn(shape, generator=g) + torch.randn(1, generator=g)) * scale
            w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
            ours = kernel.forward(x, w, b, 1e-5)
            theirs = torch.ops.aten.native_batch_norm(x, w, b, None, None, True, 0.0, 1e-5)
            if not all(torch.equal(a, t) for a, t in zip(ours, theirs)):
                return False
            if shape[-1] > 1 and not torch.equal(kernel.pool_relu(x, w, b, 1e-5),
                                                 torch.relu(torch.nn.functional.max_pool2d(theirs[0], 2))):
                return False
    for shape in ((4, 8, 9, 7), (2, 4, 6, 35)):  # rows of 3 windows (masked), of 17 (two steps and an overlap)
        ties = (torch.randn(shape, generator=g) * 1.5).round()
        ties.view(-1)[::13] = float("nan")
        ours, theirs = kernel.pool(ties), torch.nn.functional.max_pool2d(ties, 2, return_indices=True)
        if not (torch.equal(ours[1], theirs[1]) and torch.equal(ours[0].nan_to_num(7.5), theirs[0].nan_to_num(7.5))):
            return False
    return True


@functools.cache
def _kernel() -> _Kernel | None:
    global _WHY
    if os.environ.get(ENV, "1") == "0":
        _WHY = f"torch's kernels: {ENV}=0"
        return None
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _WHY = f"torch's kernels: the native ones did not build ({err})"
        return None
    lib.mtml_bn_stats.argtypes = [_P, _L, _L, _L, ctypes.c_double, _P, _P, _P]
    lib.mtml_bn_apply.argtypes = [_P, _L, _L, _L, _P, _P, _P, _P, ctypes.c_int, _P]
    lib.mtml_bn_apply_pool_relu.argtypes = [_P, _L, _L, _L, _L, _P, _P, _P, _P, ctypes.c_int, _P]
    lib.mtml_bn_apply_pool_relu_index.argtypes = [_P, _L, _L, _L, _L, _P, _P, _P, _P, ctypes.c_int, _P, _P]
    lib.mtml_pool_index.argtypes = [_P, _L, _L, _L, _P, _P]
    lib.mtml_pool_backward.argtypes = [_P, _P, _P, _L, _L, _L, _P]
    lib.mtml_avx2.restype = ctypes.c_int
    vector = "AVX2" if lib.mtml_avx2() else "scalar"
    # torch's vectorised CPU code fuses multiply-adds; a build without FMA would not
    for fused in (1, 0):
        kernel = _Kernel(lib, fused, f"native ({vector}, {'fused' if fused else 'unfused'} multiply-add)")
        with torch.no_grad():
            if _self_check(kernel):
                _WHY = kernel.why
                return kernel
    _WHY = "torch's kernels: the native ones differ from them in the self-check"
    return None


_WHY = "not used yet"
_OFF = contextvars.ContextVar("torch_batch_norm", default=False)


def torch_kernel() -> contextlib.AbstractContextManager[None]:
    """torch's kernels inside: the reference that tests and benchmarks compare with."""
    return switched_on(_OFF)


def status() -> str:
    """Which kernels Conv-4 runs on this CPU with the current torch threads, and why."""
    if _kernel() is not None and torch.get_num_threads() != 1:
        return f"torch's kernels: {torch.get_num_threads()} torch threads (the native ones run on 1)"
    return _WHY


class _BatchNorm(torch.autograd.Function):
    """Forward by the native kernel; backward by torch's `native_batch_norm_backward` with the
    same statistics torch would have saved, so it is recorded (and differentiated again) as
    torch's own batch norm is."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
        y, mean, invstd = _kernel().forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        return (*_batch_norm_backward(ctx, grad, x, weight, mean, invstd), None)


def _batch_norm_backward(ctx, grad: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor):
    """torch's own backward of batch-statistics BatchNorm (recorded under `create_graph`):
    the gradients of the map, weight and bias the Function's inputs need."""
    mask = [bool(m) for m in ctx.needs_input_grad[:3]]
    return torch.ops.aten.native_batch_norm_backward(grad, x, weight, None, None, mean, invstd, True, ctx.eps, mask)


def applies(x: Tensor) -> bool:
    """Whether `x` is a map the native kernels compute (see the module's docstring)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() >= 3 and x.is_contiguous()
            and x[0, 0].numel() > 1 and not is_functorch_wrapped_tensor(x) and torch.get_num_threads() == 1
            and not _OFF.get() and _kernel() is not None)


def batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """`F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)`, bit for bit."""
    if not applies(x) or not eps > 0:  # (torch's function raises on eps <= 0)
        return torch.nn.functional.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    params = [t for t in (weight, bias) if t is not None]
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in params)):
        return _BatchNorm.apply(x, weight, bias, eps)
    return _kernel().forward(x, weight, bias, eps)[0]


def batch_norm_pool_relu(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor | None:
    """A Conv-4 block after its convolution, relu(max_pool(batch_norm(x), 2)), in one pass over
    the map: the values of the three ops (NaN where they give NaN) and, with a graph, their
    gradients and second derivatives (`_BlockTail`); None where `batch_norm` would not use the
    native kernel or the map is too small to pool."""
    if x.dim() != 4 or min(x.shape[-2:]) < 2 or not eps > 0 or not applies(x):
        return None
    params = [t for t in (weight, bias) if t is not None]
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in params)):
        return _BlockTail.apply(x, weight, bias, eps)
    return _kernel().pool_relu(x, weight, bias, eps)


def _pool_backward(grad: Tensor, index: Tensor, shape: torch.Size, relu_out: Tensor | None = None) -> Tensor:
    """max_pool2d's input gradient from its index (with `relu_out`, ReLU's threshold_backward
    on that output first): native, or under `create_graph` (MAML's inner loop) recorded as the
    ops ReLU's and gather's backward run (scatter_add into zeros), so the second derivatives
    are those of `conv4.max_pool`'s gather path and torch.relu."""
    if torch.is_grad_enabled() or grad.dtype != torch.float32 or is_functorch_wrapped_tensor(grad):
        if relu_out is not None:
            grad = torch.ops.aten.threshold_backward(grad, relu_out, 0)
        flat = grad.new_zeros(shape).flatten(2)
        return flat.scatter_add(2, index.flatten(2), grad.flatten(2)).view(shape)
    return _kernel().pool_backward(grad, index, shape, relu_out)


class _MaxPool(torch.autograd.Function):
    """2x2 max-pool: forward by the native kernel, backward `_pool_backward`. Every path selects
    the same values, so the numbers are the same."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out, index = _kernel().pool(x.detach())
        ctx.save_for_backward(index)
        ctx.shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (index,) = ctx.saved_tensors
        return _pool_backward(grad, index, ctx.shape)


class _BlockTail(torch.autograd.Function):
    """BatchNorm (batch statistics), 2x2 max-pool and ReLU of a Conv-4 block with a graph: the
    forward in one pass (the BatchNorm output is never stored), the backward the three ops'
    backwards in the order autograd runs them for `_BatchNorm`, `_MaxPool` and `torch.relu`:
    ReLU's threshold_backward on the saved output, the pool's `_pool_backward`, torch's
    `native_batch_norm_backward`; under `create_graph` each is recorded as there, so
    gradients and second derivatives are the separate ops' bits (tests/test_cpu_kernels.py)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
        out, index, mean, invstd = _kernel().pool_relu_index(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, invstd, index, out)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, mean, invstd, index, out = ctx.saved_tensors
        grad = _pool_backward(grad, index, x.shape, relu_out=out)
        return (*_batch_norm_backward(ctx, grad, x, weight, mean, invstd), None)


def max_pool(x: Tensor) -> Tensor | None:
    """torch's 2x2 max-pool (values, gradients and second derivatives) by the native kernels,
    for a map they compute; None elsewhere."""
    if x.dim() != 4 or min(x.shape[-2:]) < 2 or not applies(x):
        return None
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxPool.apply(x)
    return _kernel().pool(x)[0]
