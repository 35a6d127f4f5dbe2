"""Small shared helpers: atomic writes, seeding, devices, threads, progress bars."""

from __future__ import annotations

import contextlib
import contextvars
import glob
import hashlib
import json
import os
import random
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mtml.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success.

    An interrupted stage therefore never leaves a half-written file that looks finished.
    Works for files and for directories.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-{_HOST}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40]
# Hours after which a temporary made on another host (a cluster node) counts as abandoned.
FOREIGN_TEMP_HOURS = 24


@contextlib.contextmanager
def switched_on(flag: contextvars.ContextVar) -> Iterator[None]:
    """A boolean ContextVar `flag` is True inside (threads and tasks keep their own), restored
    after: the module-level switches of the models and learners."""
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete what killed writers of `path` left: `.<name>.<pid>-<host>.<random>.tmp` whose
    process is gone (or, made on another host, older than FOREIGN_TEMP_HOURS), and temporaries
    of the older unnamed form `.<name>.<random>.tmp`. A live writer's temporary is kept."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:(\d+)-(\w*)\.)?[a-z0-9_]{8}\.tmp")
    removed = []
    for entry in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        if m.group(1) is not None:
            if m.group(2) == _HOST:
                try:
                    os.kill(int(m.group(1)), 0)
                    continue  # its writer still runs
                except ProcessLookupError:
                    pass
                except PermissionError:  # alive, someone else's
                    continue
            elif time.time() - entry.stat().st_mtime < FOREIGN_TEMP_HOURS * 3600:
                continue
        import shutil

        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def seed_everything(seed: int) -> None:
    """One seed feeds python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any printable parts (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "params key 'device' is 'cuda' but no CUDA GPU is visible to torch; "
            "set device: auto (uses the GPU when there is one) or device: cpu"
        )
    if name not in ("cpu", "cuda"):
        raise UserError(f"params key 'device' must be one of auto, cpu, cuda; got {name!r}")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    """Cap torch's CPU threads at what the scheduler gave this job."""
    if threads:
        torch.set_num_threads(max(1, int(threads)))


def interactive() -> bool:
    return sys.stderr.isatty()


def progress(description: str, total: int, **fields):
    """A rich progress bar on a terminal, quiet otherwise (logs stay plain)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    columns += [TextColumn(f"{k}={{task.fields[{k}]}}") for k in fields]
    bar = Progress(*columns, disable=not interactive(), transient=False)
    return bar, fields


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
