"""Speed of every method: meta-training iterations/s and evaluation episodes/s on this device.

Tasks come from the experiment kind's own training stream over the prepared data (prepared
first when missing), so every kind is timed with exactly the tasks and learners its training
uses. Methods come from the study (`methods`), with their hyperparameters.
"""

from __future__ import annotations

import json
import platform
import time

import torch

from mtml.methods.base import build_learner
from mtml.utils import resolve_device


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


def time_method(learner, stream, tasks_of, batch_size, device, iterations, episodes) -> dict:
    """Parameter counts, meta-training iterations/s and evaluation tasks/s of one learner,
    on meta-batches of `stream` (`tasks_of(batch)` lists a batch's tasks)."""
    row = {"algorithm": learner.algorithm, "parameters": sum(p.numel() for p in learner.parameters())}
    generator = learner.generator_parameters()
    if generator is not None:
        row["generator_parameters"] = int(generator)
    if learner.trainable:
        opt = learner.make_optimizer(1e-3)
        row["train_iter_per_s"] = round(_rate(
            lambda: learner.train_step(stream.batch(batch_size), opt, lambda: stream.batch(batch_size)),
            iterations, device), 3)
    evaluation = tasks_of(stream.batch(1))
    learner.eval()

    def evaluate_one():
        with torch.no_grad():
            for task in evaluation:
                learner.predict(task)

    row["eval_episodes_per_s"] = round(_rate(evaluate_one, episodes, device) * len(evaluation), 3)
    learner.train()
    return row


def benchmark(study, layout, experiment: str, iterations: int = 10, episodes: int = 20) -> dict:
    from mtml import stages

    device = resolve_device(study.device)
    exp = study.experiment(experiment)
    for d in exp.kind.train_datasets(exp):
        if not layout.prepared(d).exists():
            stages.prepare(study, layout, d)
    banks = stages.load_banks(exp, layout, exp.kind.train_datasets(exp), device)
    ctx = exp.kind.context(exp, banks)
    batch_size = exp.training["meta_batch"]  # with the experiment's overrides
    rows = []
    for name in study.methods:
        run = study.run(experiment, name)
        torch.manual_seed(0)
        learner = build_learner(run, ctx).to(device)
        stream = stages.training_stream(run, banks)
        rows.append({"method": name, **time_method(learner, stream, exp.kind.tasks_of, batch_size, device,
                                                   iterations, episodes)})
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "setting": {"experiment": experiment, "kind": exp.kind.name, "ways": exp.ways, "shots": exp.shots,
                    "queries": exp.queries, "image_shape": list(ctx.image_shape), "meta_batch": batch_size},
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
