"""Evaluation episodes/s and meta-training iterations/s before issue 17 and now (docs/speed.md).

Evaluation (`eval`, interleaved in one process): "before" is the evaluate stage's loop as it
was at commit 24a6638: a pandas groupby per episode to find its images, the prediction, then a
second backbone pass for NIL, with Conv-4's blocks as they were (ReLU on the whole map, then
torch's NCHW max-pool). "after" is `evaluate_manifest` today (index arrays, NIL from the
prediction's features where it has them, `conv4.max_pool`, ReLU after it, Conv-4's native CPU
kernels), in its reference mode (`episode_batch: 1`) unless --batches says more;
"after_torch_kernels" the same with torch's kernels instead of the native ones. Both score the same random bank and
manifest with the same untrained learner (params.yaml's hyperparameters; 28x28, 5-way 1-shot,
15 queries, NIL against class means); every variant's accuracies are checked equal to the before path's.

    python scripts/bench_before_after.py eval --threads 1 --episodes 100 --repeats 5

The process-wide allocator setting (`mtml.speed.keep_freed_memory`) applies to both sides,
so the evaluation ratio leaves out what it saves.

Meta-training (`train`): a process per side, alternated (before, after, before, ...), each
timing `--iterations` meta-updates of the default settings (meta-batch 4) per call after a
warm-up and reporting its median: "before" with Conv-4's blocks as they were (ReLU, then
torch's NCHW max-pool) and glibc's default malloc, "after" as every mtml command runs now
(`conv4.max_pool`, ReLU after the pool, Conv-4's native CPU kernels, `keep_freed_memory`).
The loop trains the same (tests/test_conv4_pool.py, tests/test_cpu_kernels.py), so both sides
do the same arithmetic.

    python scripts/bench_before_after.py train --threads 1 --iterations 3 --repeats 5 --rounds 3

Conv-4's block (`pool`, interleaved in one process), per block of an evaluation's query set
(75 images, 32 channels), without a graph: ReLU, then the maximum of each window's four
strided views (the evaluation path before ReLU moved after the pool) against `conv4.max_pool`
(row pairs, then column pairs), then ReLU; the two pools alone; torch's BatchNorm against the
native one (`mtml.models.cpu_kernels`); and what follows the convolution as filed (torch's
BatchNorm, ReLU, torch's max-pool) against the block now (BatchNorm, pool and ReLU in one pass);
with a graph, the last pair's forward and backward (the gradients of map, weight and bias).

    python scripts/bench_before_after.py pool --threads 1 --repeats 40
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import time

import torch

import mtml.models.conv4 as conv4
from mtml.benchmark import interleaved, random_bank
from mtml.evaluation.evaluate import episode_embeddings, evaluate_manifest
from mtml.evaluation.stats import nil_logits
from mtml.methods.base import build
from mtml.models import cpu_kernels
from mtml.speed import keep_freed_memory

METHODS = ("protonet", "anil", "maml")  # with their hyperparameters in params.yaml


def method_config(method: str) -> dict:
    from mtml import params

    return params.load(["params.yaml"]).params["methods"][method]


def old_manifest_episodes(bank, manifest):
    """The episode loop of 24a6638: a pandas groupby and sort per episode."""
    for ep, rows in manifest.groupby("episode", sort=True):
        parts = []
        for role in ("support", "query"):
            r = rows[rows["role"] == role].sort_values("label", kind="stable")
            parts.append(r["item"].to_numpy().reshape(r["label"].nunique(), -1))
        yield int(ep), bank.episode(*parts)


def filing_time_block(self, x):
    """Conv-4's max-pool block as 24a6638 ran it: ReLU on the whole map, then the pool."""
    assert not self.stride, "the timed methods use max-pool blocks"
    return torch.nn.functional.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)


@contextlib.contextmanager
def filing_time_conv4():
    """Conv-4 as it ran when issue 17 was filed: ReLU, then torch's NCHW max-pool."""
    forward = conv4.ConvBlock.forward
    conv4.ConvBlock.forward = filing_time_block
    try:
        yield
    finally:
        conv4.ConvBlock.forward = forward


def before(learner, bank, manifest):
    rows = []
    with filing_time_conv4(), torch.no_grad():
        for ep_id, ep in old_manifest_episodes(bank, manifest):
            acc = (learner.predict(ep).argmax(-1) == ep.query_y).float().mean()
            support, query = episode_embeddings(learner, ep)
            nil = (nil_logits(support, ep.support_y, query, ep.ways).argmax(-1) == ep.query_y).float().mean()
            rows.append((ep_id, 100 * float(acc), 100 * float(nil)))
    return rows


def after(learner, bank, manifest, batch: int, native: bool = True):
    with contextlib.nullcontext() if native else cpu_kernels.torch_kernel():
        frame = evaluate_manifest(learner, bank, manifest, "eval", batch)
    return list(frame[["episode", "accuracy", "nil_accuracy"]].itertuples(index=False, name=None))


def train_side(side: str, method: str, threads: int, iterations: int, repeats: int) -> float:
    """Median seconds per call of `iterations` meta-updates, in this process, as `side` ran."""
    from mtml.benchmark import random_episode

    if side == "after":
        keep_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    learner = build(method, method_config(method), (1, 28, 28), 5)
    opt = learner.make_optimizer(1e-3)
    batches = [[random_episode(5, 1, 15, (1, 28, 28)) for _ in range(4)] for _ in range(iterations)]
    times = []
    with contextlib.nullcontext() if side == "after" else filing_time_conv4():
        for _ in range(repeats + 1):  # the first call warms up
            start = time.perf_counter()
            for b in batches:
                learner.train_step(b, opt, lambda b=b: b)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def four_view_max(x):
    """The no-graph pool before 1c88779: the maximum of each window's four strided views."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                         torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


def block_tail_before(x, w, b):
    """A Conv-4 block after its convolution as filed: torch's BatchNorm, ReLU, torch's max-pool."""
    bn = torch.nn.functional.batch_norm(x, None, None, w, b, True, 0.0, 1e-5)
    return torch.nn.functional.max_pool2d(torch.relu(bn), 2)


def block_tail_now(x, w, b):
    """The same as `ConvBlock.forward` computes it now."""
    out = cpu_kernels.batch_norm_pool_relu(x, w, b, 1e-5)
    return out if out is not None else torch.relu(conv4.max_pool(cpu_kernels.batch_norm(x, w, b, 1e-5)))


def with_graph(tail, w, b, g):
    """A block tail's forward and backward with a graph (map, weight and bias require grad),
    given the output's gradient `g`: the three gradients."""
    def run(x):
        with torch.enable_grad():
            xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
            return torch.autograd.grad(tail(xs, ws, bs), (xs, ws, bs), g[..., :x.shape[2] // 2, :x.shape[3] // 2])
    return run


def same(a, b) -> bool:
    return all(map(torch.equal, a, b)) if isinstance(a, tuple) else torch.equal(a, b)


def pool(args) -> None:
    torch.set_num_threads(args.threads)
    w, b = torch.randn(32), torch.randn(32)
    g = torch.randn(75, 32, 14, 14)
    variants = {"relu_then_four_views": lambda x: four_view_max(torch.relu(x)),
                "max_pool_then_relu": lambda x: torch.relu(conv4.max_pool(x)),
                "four_views": four_view_max, "max_pool": conv4.max_pool,
                "torch_batch_norm": lambda x: torch.nn.functional.batch_norm(x, None, None, w, b, True, 0.0, 1e-5),
                "native_batch_norm": lambda x: cpu_kernels.batch_norm(x, w, b, 1e-5),
                "block_tail_before": lambda x: block_tail_before(x, w, b),
                "block_tail_now": lambda x: block_tail_now(x, w, b),
                "graph_block_tail_before": with_graph(block_tail_before, w, b, g),
                "graph_block_tail_now": with_graph(block_tail_now, w, b, g)}
    pairs = {"pool_and_relu": ("relu_then_four_views", "max_pool_then_relu"), "pool": ("four_views", "max_pool"),
             "batch_norm": ("torch_batch_norm", "native_batch_norm"),
             "block_tail": ("block_tail_before", "block_tail_now"),
             "block_tail_with_graph": ("graph_block_tail_before", "graph_block_tail_now")}
    for size in (28, 14, 7):
        x = torch.randn(75, 32, size, size)
        with torch.no_grad():  # each pair computes the same numbers
            for before_name, after_name in pairs.values():
                assert same(variants[before_name](x), variants[after_name](x)), (before_name, after_name)
        seconds = {name: [] for name in variants}
        with torch.no_grad():
            for _ in range(args.repeats):
                for name, fn in variants.items():
                    start = time.perf_counter()
                    fn(x)
                    seconds[name].append(time.perf_counter() - start)
        ms = {name: round(statistics.median(t) * 1e3, 3) for name, t in seconds.items()}
        print(json.dumps({"shape": list(x.shape), "threads": args.threads, "cpu_kernels": cpu_kernels.status(),
                          "median_ms": ms, **{f"{pair}_speedup": round(ms[a] / ms[c], 2)
                                              for pair, (a, c) in pairs.items()}}), flush=True)


def train(args) -> None:
    for method in args.methods.split(","):
        seconds = {"before": [], "after": []}
        for _ in range(args.rounds):
            for side in ("before", "after"):
                out = subprocess.run([sys.executable, __file__, "train-side", side, method, str(args.threads),
                                      str(args.iterations), str(args.repeats)],
                                     capture_output=True, text=True, check=True).stdout
                seconds[side].append(float(out.split()[-1]))
        before, after = statistics.median(seconds["before"]), statistics.median(seconds["after"])
        print(json.dumps({"method": method, "threads": args.threads, "iterations": args.iterations,
                          "repeats": args.repeats, "rounds": args.rounds,
                          "it_per_s": {"before": round(args.iterations / before, 2),
                                       "after": round(args.iterations / after, 2)},
                          "speedup": round(before / after, 2), "rounds_seconds": seconds}), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["train-side"]:  # one side of `train`, in its own process
        side, method, threads, iterations, repeats = sys.argv[2:7]
        print(train_side(side, method, int(threads), int(iterations), int(repeats)))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("eval", "train", "pool"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--episodes", type=int, default=100, help="eval: episodes per timed call")
    ap.add_argument("--iterations", type=int, default=3, help="train: meta-updates per timed call")
    ap.add_argument("--repeats", type=int, default=5, help="(pool: 40 is what docs/speed.md quotes)")
    ap.add_argument("--rounds", type=int, default=3, help="train: alternated processes per side")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batches", default="1", help="eval: episode_batch values of the after path")
    args = ap.parse_args()
    if args.part == "train":
        train(args)
        return
    if args.part == "pool":
        pool(args)
        return
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    bank, manifest = random_bank(5, 1, 15, (1, 28, 28), device, args.episodes)
    for method in args.methods.split(","):
        torch.manual_seed(0)
        learner = build(method, method_config(method), (1, 28, 28), 5).eval()
        reference = before(learner, bank, manifest)
        variants = {"before": lambda L=learner: before(L, bank, manifest),
                    "after_torch_kernels": lambda L=learner: after(L, bank, manifest, 1, native=False)}
        for b in map(int, args.batches.split(",")):
            variants[f"after_batch{b}"] = lambda b=b, L=learner: after(L, bank, manifest, b)
        with contextlib.redirect_stderr(io.StringIO()):  # (progress bars)
            for name, fn in variants.items():
                got = fn()
                if [r[1:] for r in got] != [r[1:] for r in reference]:
                    raise SystemExit(f"{method} {name}: accuracies differ from the before path's")
            med = interleaved(variants, args.repeats, device)
        out = {"method": method, "threads": args.threads, "episodes": args.episodes, "repeats": args.repeats}
        for clock in ("wall", "cpu"):
            base = med["before"][clock]
            out[f"{clock}_episodes_per_s"] = {k: round(args.episodes / t[clock], 1) for k, t in med.items()}
            out[f"{clock}_speedup"] = {k: round(base / t[clock], 2) for k, t in med.items()}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
