"""Reading and writing `checkpoint.pt` (resume state) and `model.pt` (best weights).

Both are saved as tensors and plain containers only (dicts, lists, numbers, strings; the
numpy RNG state of an episode stream is such a dict already) and read with
`torch.load(..., weights_only=True)`, so a crafted file cannot run code when loaded.

A checkpoint is a cache: one that cannot be read (truncated by a full disk, saved by an older
version in another format, not ours) is discarded with a one-line notice and training starts
afresh. A model is an input of evaluation: one that cannot be read is a `UserError` naming the
file and the fix.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import torch

from mtml.errors import UserError
from mtml.utils import atomic_path

CHECKPOINT_KEYS = ("fingerprint", "iteration", "model", "optimizer", "stream", "torch_rng", "log", "best")
MODEL_KEYS = ("state", "image_shape", "ways")


def plain(obj):
    """`obj` with numpy scalars and arrays turned into python numbers and tensors, tuples kept.

    What `weights_only=True` can load back: tensors, dicts, lists, tuples, str, int, float,
    bool, None."""
    if isinstance(obj, torch.Tensor | str | bool | int | float) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return type(obj)((k, plain(v)) for k, v in obj.items())  # dict or OrderedDict
    if isinstance(obj, list | tuple):
        return type(obj)(plain(v) for v in obj)
    raise TypeError(f"cannot save a {type(obj).__name__} in a checkpoint (tensors and plain containers only)")


def _save(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(plain(obj), tmp)


def _load(path: Path, device) -> dict:
    """torch.load with weights_only=True; any failure to parse becomes a one-line reason."""
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise ValueError("it holds Python objects besides tensors and plain containers "
                             "(refused: loading it could run code)") from None
        raise ValueError(f"unreadable ({_first_line(err)})") from None
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise ValueError(f"unreadable ({type(err).__name__}: {_first_line(err)})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"it holds a {type(obj).__name__}, not a dict")
    return obj


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def save_checkpoint(path: str | Path, state: dict) -> None:
    _save(Path(path), state)


def load_checkpoint(path: str | Path, device) -> dict | None:
    """The checkpoint's dict, or None when there is none or it cannot be used (then it is
    deleted and a notice printed, so the next run never stumbles over it again)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        ckpt = _load(path, device)
        missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)} (not an mtml checkpoint)")
    except ValueError as err:
        print(f"notice: checkpoint {path} is discarded, {err}; training starts from iteration 0",
              file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
        return None
    return ckpt


def save_model(path: str | Path, state: dict, **info) -> None:
    """model.pt: the weights to evaluate (`state`) and what rebuilds the learner (`info`)."""
    _save(Path(path), {"state": state, **info})


def load_model(path: str | Path, device) -> dict:
    """model.pt as {"state": state_dict, "image_shape": [...], "ways": n, ...}."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model {path} is missing; run the train stage first")
    try:
        saved = _load(path, device)
        missing = [k for k in MODEL_KEYS if k not in saved]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        if not isinstance(saved["state"], dict) or not all(
                isinstance(v, torch.Tensor) for v in saved["state"].values()):
            raise ValueError("its 'state' is not a dict of tensors")
    except ValueError as err:
        raise UserError(f"model {path} is not a model saved by mtml's train stage: {err}; "
                        f"delete it and rerun the train stage") from None
    return saved


def load_weights(learner: torch.nn.Module, saved: dict, path: str | Path) -> torch.nn.Module:
    """`learner.load_state_dict(saved["state"])`; a mismatch names the file and the fix."""
    try:
        learner.load_state_dict(saved["state"])
    except RuntimeError as err:
        what = f"method {saved['method']!r}" if "method" in saved else "another method"
        raise UserError(f"model {path} was trained for {what} with other settings than params give "
                        f"now ({_first_line(err)}); delete it and rerun the train stage") from None
    return learner

