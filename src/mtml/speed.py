"""Numerics and layout options of a run: `training.tf32`, `training.amp` and
`training.channels_last`, for training and evaluation.

The reference mode (neither key, or `tf32: false, amp: false`) computes in float32 everywhere.
On CUDA that means switching TF32 convolutions OFF: PyTorch enables them for cuDNN by default,
so a plain CUDA run would not be the reference one. `tf32: true` lets matrix products and
convolutions use TensorFloat-32 on GPUs that have it (10-bit mantissa inputs, float32
accumulation; no effect on CPU). `amp: bf16` runs the forward passes (inner loop included)
under `torch.autocast` in bfloat16; parameters, optimiser state and gradients stay float32,
and bfloat16 has float32's exponent range, so no loss scaling is needed (tests check the
meta-gradients stay finite and near the float32 ones).

`channels_last: true` stores Conv-4's weights and activations channels-last (NHWC), which
oneDNN on CPUs and cuDNN on GPUs may run faster; same arithmetic up to the kernels' summation
order (a test compares meta-gradients with the contiguous layout).

No key has a schema default: runs made before they existed keep their fingerprints.

`keep_freed_memory()` is process-wide and changes no arithmetic: every `mtml` command asks
glibc's malloc to keep freed memory for reuse (see its docstring).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import torch

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16}  # params `amp: false` reads as "off"


def settings(training: dict) -> tuple[bool, str]:
    """(tf32, amp) of a run's resolved `training` settings."""
    amp = training.get("amp") or "off"
    return bool(training.get("tf32", False)), str(amp)


@contextlib.contextmanager
def numerics(training: dict, device: torch.device | str):
    """Run the enclosed training or evaluation with the run's numerics; the global TF32
    flags are restored afterwards."""
    tf32, amp = settings(training)
    device = torch.device(device)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    dtype = AMP_DTYPES[amp]
    cast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    try:
        with cast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def prepare(learner: torch.nn.Module, training: dict) -> torch.nn.Module:
    """Put the learner's Conv-4 networks in the run's memory format (`training.channels_last`)."""
    from mtml.models.conv4 import Conv4

    if training.get("channels_last"):
        for module in learner.modules():
            if isinstance(module, Conv4):
                module.memory_format = torch.channels_last
                module.to(memory_format=torch.channels_last)
    return learner


def describe(training: dict) -> str:
    tf32, amp = settings(training)
    parts = [p for p in ("TF32" if tf32 else "", f"autocast {amp}" if amp != "off" else "",
                         "channels_last" if training.get("channels_last") else "") if p]
    return ", ".join(parts) or "reference (float32)"


# glibc's mallopt parameters (malloc.h) and the environment variables that set them
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process (trim threshold 1 GiB, mmap
    threshold 32 MiB) instead of handing it back to the kernel; True if it took effect.

    A meta-batch keeps every task's graph until its backward pass, so each update frees tens
    of MiB at once; by default glibc returns that to the kernel, and the next update pays a
    page fault per 4 KiB page to get it back (~25,000 per 3 MAML updates on one thread, 7-10%
    of the time: docs/speed.md). The arithmetic does not change; the process keeps the memory
    of its largest step. Left alone where it cannot apply (not Linux/glibc) or when the
    environment sets glibc's own MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_ (the user's
    choice wins)."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _GLIBC_ENV):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
