"""Speed of every method: meta-training iterations/s and evaluation episodes/s on this device.

Episodes are random tensors of the experiment's shape (the data do not change the cost), so
the benchmark needs no prepared dataset. Methods come from params (`methods`), hence it
covers whatever a params file selects, with its hyperparameters.
"""

from __future__ import annotations

import json
import platform
import statistics
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


def interleaved(variants: dict, repeats: int, device) -> dict[str, dict[str, float]]:
    """Median seconds per call of each variant, timed in turns (A B C A B C ...) so that a
    noisy, shared machine slows every variant alike; ratios of medians are what to read.
    `wall` is elapsed time, `cpu` this process's CPU time (less disturbed by other processes
    on an oversubscribed CPU; with several threads it adds theirs up)."""
    times = {name: {"wall": [], "cpu": []} for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times[name]["wall"].append(time.perf_counter() - t0)
            times[name]["cpu"].append(time.process_time() - c0)
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def random_bank(ways, shots, queries, shape, device, episodes: int, seed: int = 0):
    """An ImageBank of random images (4 x (shots + queries) per class, 4 x ways classes) and
    a fixed manifest of `episodes` episodes over it, for timing the evaluation stage."""
    import numpy as np
    import pandas as pd

    from mtml.data.storage import PreparedDataset
    from mtml.episodes.manifest import build_manifest
    from mtml.episodes.sampler import ImageBank

    rng = np.random.default_rng(seed)
    n_classes, per_class = 4 * ways, 4 * (shots + queries)
    labels = np.repeat(np.arange(n_classes), per_class)
    images = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
    classes = pd.DataFrame({"class_id": np.arange(n_classes), "name": [f"c{i}" for i in range(n_classes)],
                            "group": "g", "split": "test", "n_images": per_class})
    data = PreparedDataset("random", images, labels, classes, {})
    return ImageBank(data, device), build_manifest(data, "test", ways, shots, queries, episodes, seed)


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


def compare(params: dict, experiment: str, repeats: int = 5, iterations: int = 3, episodes: int = 32,
            eval_batches=(1, 8), image_size: int | None = None, meta_batch: int | None = None) -> dict:
    """The speed options side by side, interleaved in one process on the same random episodes:
    meta-training with `task_parallel` loop vs vmap, and the evaluation stage's
    `evaluate_manifest` (NIL included) at each `evaluation.episode_batch` of `eval_batches`
    (1 = the reference loop). Methods without a batched path are left out."""
    import contextlib
    import copy
    import io

    from mtml.evaluation.evaluate import evaluate_manifest
    from mtml.methods.parallel import family

    device = resolve_device(params["device"])
    exp = params["experiments"][experiment]
    ways, shots, queries = exp["ways"], exp["shots"], exp["queries"]
    shape = tuple(exp.get("options", {}).get("image_shape", (1, 28, 28)))
    if image_size:
        shape = (shape[0], image_size, image_size)
    size = meta_batch or training_config(params, experiment)["meta_batch"]
    torch.manual_seed(0)
    train_batches = [[random_episode(ways, shots, queries, shape, device) for _ in range(size)]
                     for _ in range(iterations)]
    bank, manifest = random_bank(ways, shots, queries, shape, device, episodes)
    rows = []
    for name in params["methods"]:
        torch.manual_seed(0)
        learner = build(name, method(params, name, experiment), shape, ways).to(device)
        if family(learner) is None:
            continue
        row = {"method": name, "family": family(learner)}
        if learner.trainable:
            variants = {}
            for mode in ("loop", "vmap"):
                twin = copy.deepcopy(learner).train()
                twin.task_parallel = mode
                opt = twin.make_optimizer(1e-3)
                variants[mode] = (lambda t=twin, o=opt: [t.train_step(b, o, lambda b=b: b) for b in train_batches])
            med = interleaved(variants, repeats, device)
            for mode, t in med.items():
                row[f"train_it_per_s_{mode}"] = round(iterations / t["wall"], 3)
            row["train_vmap_over_loop"] = round(med["loop"]["wall"] / med["vmap"]["wall"], 3)
            row["train_vmap_over_loop_cpu_time"] = round(med["loop"]["cpu"] / med["vmap"]["cpu"], 3)
        learner.eval()
        quiet = contextlib.redirect_stdout(io.StringIO())
        variants = {n: (lambda n=n, m=learner: evaluate_manifest(m, bank, manifest, "bench", n)) for n in eval_batches}
        with quiet, contextlib.redirect_stderr(io.StringIO()):
            med = interleaved(variants, repeats, device)
        for n, t in med.items():
            row[f"eval_episodes_per_s_batch{n}"] = round(episodes / t["wall"], 2)
            row[f"eval_batch{n}_over_loop"] = round(med[eval_batches[0]]["wall"] / t["wall"], 3)
            row[f"eval_batch{n}_over_loop_cpu_time"] = round(med[eval_batches[0]]["cpu"] / t["cpu"], 3)
        rows.append(row)
    return {"device": str(device), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "setting": {"experiment": experiment, "ways": ways, "shots": shots, "queries": queries,
                        "image_shape": list(shape), "meta_batch": size, "repeats": repeats,
                        "train_iterations_per_call": iterations, "eval_episodes_per_call": episodes,
                        "eval_batches": list(eval_batches)},
            "rows": rows}


def print_comparison(result: dict) -> None:
    s = result["setting"]
    print(f"mtml speed options on {result['device']} ({result['device_name']}, {result['torch_threads']} threads): "
          f"{s['ways']}-way {s['shots']}-shot {s['queries']} queries, images {s['image_shape']}, "
          f"meta-batch {s['meta_batch']}; medians of {s['repeats']} interleaved repeats")
    for r in result["rows"]:
        parts = [f"{r['method']:>10}"]
        if "train_vmap_over_loop" in r:
            parts.append(f"train it/s loop {r['train_it_per_s_loop']:.2f} vmap {r['train_it_per_s_vmap']:.2f} "
                         f"(vmap/loop x{r['train_vmap_over_loop']:.2f}, CPU time x{r['train_vmap_over_loop_cpu_time']:.2f})")
        parts.append("eval episodes/s " + ", ".join(
            f"batch {n}: {r[f'eval_episodes_per_s_batch{n}']:.1f} (x{r[f'eval_batch{n}_over_loop']:.2f})"
            for n in s["eval_batches"]))
        print(" | ".join(parts))
