"""Speed of every method: meta-training iterations/s and evaluation episodes/s on this device.

Tasks come from the experiment kind's own training stream over the prepared data (prepared
first when missing), so every kind is timed with exactly the tasks and learners its training
uses. Methods come from the study (`methods`), with their hyperparameters.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time

import torch

from mtml.methods.base import build_learner
from mtml.methods.parallel import resolve_task_parallel
from mtml.models import cpu_kernels
from mtml.utils import resolve_device


def device_info(device: torch.device) -> dict:
    """What every benchmark result records about where it ran."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": str(device), "device_name": name, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_kernels": cpu_kernels.status() if device.type == "cpu" else "-"}


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


def random_episode(ways, shots, queries, shape, device="cpu", mode=0):
    """An episode of random images (the cost of a method does not depend on the pixels)."""
    from mtml.methods.base import Episode

    lab = lambda n: torch.arange(ways, device=device).repeat_interleave(n)  # noqa: E731
    return Episode(torch.rand(ways * shots, *shape, device=device), lab(shots),
                   torch.rand(ways * queries, *shape, device=device), lab(queries), ways, mode)


def setting_shape(exp, image_size: int | None = None) -> tuple[int, int, int]:
    """The image shape random episodes of experiment `exp` get: the kind's own (multimodal),
    else 1x28x28; `image_size` overrides height and width."""
    shape = tuple(getattr(exp.settings, "image_shape", None) or (1, 28, 28))
    return (shape[0], image_size, image_size) if image_size else shape


def random_training(study, experiment: str, iterations: int, image_size: int | None = None,
                    meta_batch: int | None = None):
    """(device, experiment, image shape, meta-batch size, `iterations` meta-batches of random
    episodes) for timing the experiment's setting side by side (seeded)."""
    device = resolve_device(study.device)
    exp = study.experiment(experiment)
    shape = setting_shape(exp, image_size)
    size = meta_batch or exp.training["meta_batch"]
    torch.manual_seed(0)
    batches = [[random_episode(exp.ways, exp.shots, exp.queries, shape, device) for _ in range(size)]
               for _ in range(iterations)]
    return device, exp, shape, size, batches


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


def time_method(learner, stream, tasks_of, batch_size, device, iterations, episodes) -> dict:
    """Parameter counts, meta-training iterations/s and evaluation tasks/s of one learner,
    on meta-batches of `stream` (`tasks_of(batch)` lists a batch's tasks)."""
    row = {"algorithm": learner.algorithm, "parameters": sum(p.numel() for p in learner.parameters()),
           "task_parallel": learner.task_parallel}
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
        learner.task_parallel = resolve_task_parallel(run.training.get("task_parallel", "auto"), device)
        stream = stages.training_stream(run, banks)
        rows.append({"method": name, **time_method(learner, stream, exp.kind.tasks_of, batch_size, device,
                                                   iterations, episodes)})
    return {
        **device_info(device),
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
                        f"meta-batch {s['meta_batch']}, images {s['image_shape']}",
                  caption=f"Conv-4 CPU kernels: {result['cpu_kernels']}" if result["device"] == "cpu" else None)
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


# `--numerics` names: the `training` settings each stands for (mtml.speed)
NUMERICS = {"reference": {}, "tf32": {"tf32": True}, "bf16": {"amp": "bf16"}, "tf32+bf16": {"tf32": True, "amp": "bf16"},
            "channels_last": {"channels_last": True}}


def _with_numerics(fn, name: str, device):
    from mtml.speed import numerics

    def run():
        with numerics(NUMERICS[name], device):
            return fn()
    return run


def _compared_learners(study, experiment, shape, ways, device):
    """(name, learner) of every method with a batched path; a metric learner with a
    `batch_norm` option also as `<name>[running]` (running statistics: evaluation embeds each
    test image once, `mtml.evaluation.batched.evaluate_embedded_once`; timed for evaluation)."""
    from mtml.methods.base import LearnerContext
    from mtml.methods.parallel import family

    for name in study.methods:
        run = study.run(experiment, name)
        torch.manual_seed(0)
        learner = build_learner(run, LearnerContext(shape, ways)).to(device)
        if family(learner) is None:
            continue
        yield name, learner
        if family(learner) == "metric" and run.hparams.get("batch_norm") == "transductive":
            torch.manual_seed(0)
            running = dataclasses.replace(run, hparams={**run.hparams, "batch_norm": "running"})
            twin = build_learner(running, LearnerContext(shape, ways)).to(device).eval()
            yield f"{name}[running]", twin


def compare(study, experiment: str, repeats: int = 5, iterations: int = 3, episodes: int = 32,
            eval_batches=(1, 8), image_size: int | None = None, meta_batch: int | None = None,
            numerics=("reference",)) -> dict:
    """The speed options side by side, interleaved in one process on the same random episodes:
    meta-training with `task_parallel` loop vs vmap, and the evaluation stage's
    `evaluate_manifest` (NIL included) at each `evaluation.episode_batch` of `eval_batches`
    (1 = the reference loop), all in float32 (TF32 off); each further name of `numerics`
    (NUMERICS: tf32, bf16, tf32+bf16) adds vmap training and the largest episode batch with
    those settings. Methods without a batched path are left out."""
    import contextlib
    import copy
    import io

    from mtml.evaluation.evaluate import evaluate_manifest
    from mtml.methods.parallel import family
    from mtml.speed import prepare

    device, exp, shape, size, train_batches = random_training(study, experiment, iterations, image_size, meta_batch)
    ways, shots, queries = exp.ways, exp.shots, exp.queries
    bank, manifest = random_bank(ways, shots, queries, shape, device, episodes)
    extra = [n for n in numerics if n != "reference"]
    largest = max(eval_batches)
    rows = []
    for name, learner in _compared_learners(study, experiment, shape, ways, device):
        row = {"method": name, "family": family(learner)}
        if learner.trainable and "[" not in name:
            variants = {}
            modes = [("loop", "reference"), ("vmap", "reference")] + [("vmap", n) for n in extra]
            if "channels_last" in extra:  # a layout the loop may like better than vmap (CPU)
                modes.append(("loop", "channels_last"))
            for mode, num in modes:
                twin = prepare(copy.deepcopy(learner).train(), NUMERICS[num])
                twin.task_parallel = mode
                opt = twin.make_optimizer(1e-3)
                name = mode if num == "reference" else f"{mode}+{num}"
                variants[name] = _with_numerics(
                    lambda t=twin, o=opt: [t.train_step(b, o, lambda b=b: b) for b in train_batches], num, device)
            med = interleaved(variants, repeats, device)
            for mode, t in med.items():
                row[f"train_it_per_s_{mode}"] = round(iterations / t["wall"], 3)
                if mode != "loop":
                    row[f"train_{mode}_over_loop"] = round(med["loop"]["wall"] / t["wall"], 3)
            row["train_vmap_over_loop_cpu_time"] = round(med["loop"]["cpu"] / med["vmap"]["cpu"], 3)
        learner.eval()
        quiet = contextlib.redirect_stdout(io.StringIO())
        variants = {str(n): _with_numerics(lambda n=n, m=learner: evaluate_manifest(m, bank, manifest, "bench", n),
                                           "reference", device) for n in eval_batches}
        if "[" in name:  # the running-statistics twin: the loop against each image embedded once
            variants = {"1": variants["1"], "auto": lambda m=learner: evaluate_manifest(m, bank, manifest, "bench", "auto")}
        for num in extra if "[" not in name else ():
            twin = prepare(copy.deepcopy(learner), NUMERICS[num])
            variants[f"{largest}+{num}"] = _with_numerics(
                lambda m=twin: evaluate_manifest(m, bank, manifest, "bench", largest), num, device)
            if num == "channels_last":
                variants[f"1+{num}"] = _with_numerics(
                    lambda m=twin: evaluate_manifest(m, bank, manifest, "bench", 1), num, device)
        with quiet, contextlib.redirect_stderr(io.StringIO()):
            med = interleaved(variants, repeats, device)
        loop = med[str(eval_batches[0])]
        for n, t in med.items():
            row[f"eval_episodes_per_s_batch{n}"] = round(episodes / t["wall"], 2)
            row[f"eval_batch{n}_over_loop"] = round(loop["wall"] / t["wall"], 3)
            row[f"eval_batch{n}_over_loop_cpu_time"] = round(loop["cpu"] / t["cpu"], 3)
        rows.append(row)
    return {**device_info(device),
            "setting": {"experiment": experiment, "ways": ways, "shots": shots, "queries": queries,
                        "image_shape": list(shape), "meta_batch": size, "repeats": repeats,
                        "train_iterations_per_call": iterations, "eval_episodes_per_call": episodes,
                        "eval_batches": list(eval_batches), "numerics": ["reference", *extra]},
            "rows": rows}


def print_comparison(result: dict) -> None:
    s = result["setting"]
    print(f"mtml speed options on {result['device']} ({result['device_name']}, {result['torch_threads']} threads): "
          f"{s['ways']}-way {s['shots']}-shot {s['queries']} queries, images {s['image_shape']}, "
          f"meta-batch {s['meta_batch']}; medians of {s['repeats']} interleaved repeats; Conv-4 CPU kernels: {result['cpu_kernels']}")
    for r in result["rows"]:
        parts = [f"{r['method']:>10}"]
        if "train_it_per_s_loop" in r:
            trains = [k[len("train_it_per_s_"):] for k in r if k.startswith("train_it_per_s_")]
            parts.append("train it/s " + ", ".join(
                f"{m} {r[f'train_it_per_s_{m}']:.2f}" + (f" (x{r[f'train_{m}_over_loop']:.2f})" if m != "loop" else "")
                for m in trains))
        evals = [k[len("eval_episodes_per_s_batch"):] for k in r if k.startswith("eval_episodes_per_s_batch")]
        parts.append("eval episodes/s " + ", ".join(
            f"batch {n}: {r[f'eval_episodes_per_s_batch{n}']:.1f} (x{r[f'eval_batch{n}_over_loop']:.2f})"
            for n in evals))
        print(" | ".join(parts))
