"""Speed of every method: meta-training iterations/s and evaluation episodes/s on this device.

Episodes are random tensors of the experiment's shape (the data do not change the cost), so
the benchmark needs no prepared dataset. Methods come from params (`methods`), hence it
covers whatever a params file selects, with its hyperparameters.
"""

from __future__ import annotations

import json
import platform
import time

import torch

from mtml.methods import build
from mtml.methods.base import Episode
from mtml.params import method, training_config
from mtml.utils import resolve_device


def random_episode(ways, shots, queries, shape, device, mode=0) -> Episode:
    lab = lambda n: torch.arange(ways, device=device).repeat_interleave(n)  # noqa: E731
    return Episode(torch.rand(ways * shots, *shape, device=device), lab(shots),
                   torch.rand(ways * queries, *shape, device=device), lab(queries), ways, mode)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(fn, n, device, warmup=2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return n / (time.perf_counter() - t0)


def time_method(learner, setting, shape, batch_size, device, iterations, episodes, modes: int = 1) -> dict:
    """Parameter counts, meta-training iterations/s and evaluation episodes/s of one learner.
    With `modes`, a meta-batch's tasks take the modes in turn (a multimodal experiment)."""
    ways, shots, queries = setting

    def batch():
        return [random_episode(ways, shots, queries, shape, device, mode=i % modes) for i in range(batch_size)]

    row = {"algorithm": learner.algorithm, "parameters": sum(p.numel() for p in learner.parameters())}
    if hasattr(learner, "generator_parameters"):
        row["generator_parameters"] = int(learner.generator_parameters())
    if learner.trainable:
        opt = learner.make_optimizer(1e-3)
        row["train_iter_per_s"] = round(_rate(lambda: learner.train_step(batch(), opt, batch), iterations, device), 3)
    ep = random_episode(ways, shots, queries, shape, device)

    def evaluate_one():
        with torch.no_grad():
            learner.predict(ep)

    row["eval_episodes_per_s"] = round(_rate(evaluate_one, episodes, device), 3)
    return row


def benchmark(params: dict, experiment: str, iterations: int = 10, episodes: int = 20) -> dict:
    device = resolve_device(params["device"])
    exp = params["experiments"][experiment]
    ways, shots, queries = exp["ways"], exp["shots"], exp["queries"]
    shape = tuple(params["experiments"][experiment].get("options", {}).get("image_shape", (1, 28, 28)))
    batch_size = training_config(params, experiment)["meta_batch"]  # with the experiment's overrides
    mm, modes = None, 1
    if exp["kind"] == "multimodal":  # per-mode methods get one learner per mode, as in training
        from mtml.multimodal.config import multimodal_config
        from mtml.multimodal.train import build_learner

        mm = multimodal_config(params, experiment)
        modes = len(mm.modes)
    rows = []
    for name in params["methods"]:
        torch.manual_seed(0)
        if mm is not None:
            learner = build_learner(params, experiment, name, mm, ways).to(device)
        else:
            learner = build(name, method(params, name, experiment), shape, ways).to(device)
        rows.append({"method": name, **time_method(learner, (ways, shots, queries), shape, batch_size,
                                                   device, iterations, episodes, modes)})
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "setting": {"experiment": experiment, "ways": ways, "shots": shots, "queries": queries,
                    "image_shape": list(shape), "meta_batch": batch_size},
        "rows": rows,
    }


def print_benchmark(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result["setting"]
    table = Table(title=f"mtml benchmark on {result['device']} ({result['device_name']}, "
                        f"{result['torch_threads']} threads): {s['ways']}-way {s['shots']}-shot, "
                        f"meta-batch {s['meta_batch']}, images {s['image_shape']}")
    generators = any("generator_parameters" in r for r in result["rows"])
    cols = ["method", "parameters"] + (["generator params"] if generators else []) + ["train it/s", "eval episodes/s"]
    for col in cols:
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in result["rows"]:
        gen = [f"{r['generator_parameters']:,}" if "generator_parameters" in r else "-"] if generators else []
        table.add_row(r["method"], f"{r['parameters']:,}", *gen,
                      f"{r.get('train_iter_per_s', float('nan')):.2f}", f"{r['eval_episodes_per_s']:.1f}")
    Console(width=120).print(table)


def write_benchmark(result: dict, path) -> None:
    from mtml.utils import write_text

    write_text(path, json.dumps(result, indent=2) + "\n")
