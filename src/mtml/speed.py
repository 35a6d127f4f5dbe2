"""Numerics options of a run: `training.tf32` and `training.amp`, for training and evaluation.

The reference mode (neither key, or `tf32: false, amp: false`) computes in float32 everywhere.
On CUDA that means switching TF32 convolutions OFF: PyTorch enables them for cuDNN by default,
so a plain CUDA run would not be the reference one. `tf32: true` lets matrix products and
convolutions use TensorFloat-32 on GPUs that have it (10-bit mantissa inputs, float32
accumulation; no effect on CPU). `amp: bf16` runs the forward passes (inner loop included)
under `torch.autocast` in bfloat16; parameters, optimiser state and gradients stay float32,
and bfloat16 has float32's exponent range, so no loss scaling is needed (tests check the
meta-gradients stay finite and near the float32 ones).

Neither key has a schema default: runs made before they existed keep their fingerprints.
"""

from __future__ import annotations

import contextlib

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


def describe(training: dict) -> str:
    tf32, amp = settings(training)
    return "reference (float32)" if not tf32 and amp == "off" else \
        ", ".join(p for p in (("TF32" if tf32 else ""), (f"autocast {amp}" if amp != "off" else "")) if p)
