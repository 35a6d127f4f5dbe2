"""Meta-training: episodes sampled on the fly, Adam outer loop, validation on fixed episodes
with best-checkpoint selection, a per-iteration CSV log, and resume after interruption.

Resume is exact on CPU: the checkpoint holds the model, optimiser, the episode stream's and
torch's RNG states, the log so far and the best weights, so an interrupted and resumed run
ends with the same files as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtml.episodes.sampler import ImageBank, manifest_episodes
from mtml.methods.base import MetaLearner
from mtml.methods.parallel import resolve_task_parallel
from mtml.training.checkpoint import load_checkpoint, save_checkpoint, save_model
from mtml.utils import atomic_path, interactive, progress, write_json

LOG_COLUMNS = ["iteration", "loss", "train_accuracy", "val_accuracy"]
TIMING_FILE = "timing_train.json"  # written by fit, read by recorded_train_seconds


def episodes_accuracy(learner: MetaLearner, bank: ImageBank, manifest: pd.DataFrame) -> float:
    learner.eval()
    accs = []
    with torch.no_grad():
        for _, ep in manifest_episodes(bank, manifest):
            accs.append(float((learner.predict(ep).argmax(-1) == ep.query_y).float().mean()))
    learner.train()
    return float(np.mean(accs)) * 100


def _rng_states() -> dict:
    """torch's CPU generator and, once CUDA is in use, every GPU's (P-AM draws its samples
    on the device)."""
    states = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(ckpt: dict) -> None:
    # Loading a checkpoint onto cuda moves the saved generator states to the GPU too, but
    # generators only take CPU byte tensors.
    torch.set_rng_state(ckpt["torch_rng"].cpu())
    if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])




def lr_schedule(optimizer: torch.optim.Optimizer | None, tcfg: dict):
    """`training.lr_decay` as a StepLR stepped once per meta-iteration (after iteration k
    the rate is meta_lr * factor ** (k // every), every parameter group alike), or None:
    a constant rate, as before the key existed."""
    decay = tcfg.get("lr_decay")
    if optimizer is None or not decay:
        return None
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay["every"], gamma=decay["factor"])


def _validation(validate: Callable, learner: MetaLearner) -> tuple[float, dict | None]:
    """validate() gives the score in %, or (score, details recorded in trace.jsonl)."""
    out = validate(learner)
    return out if isinstance(out, tuple) else (out, None)


class StepTimer:
    """Time and memory per iteration: seconds of the meta-updates this process ran (batch
    sampling included, validation not), the process's peak resident memory, and on CUDA the
    peak memory torch allocated on the device during them."""

    def __init__(self, device):
        self.device, self.seconds, self.count = torch.device(device), 0.0, 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def __enter__(self):
        self._t = time.perf_counter()

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - self._t
        self.count += 1

    def summary(self) -> dict:
        import resource

        out = {"timed_iterations": self.count,
               "seconds_per_iteration": round(self.seconds / self.count, 5) if self.count else None,
               "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux
        if self.device.type == "cuda":
            out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)
        return out


def recorded_train_seconds(run_dirs) -> float:
    """The fewest wall seconds any of these runs' last trainings took (their timing_train.json;
    0.0 if none is readable). The workflow passes a method's runs over all seeds, so one run
    slowed by a busy machine does not make its method look long; it starts the longest
    trainings first with it (common.smk)."""
    seconds = []
    for run_dir in run_dirs:
        try:
            seconds.append(float(json.loads((Path(run_dir) / TIMING_FILE).read_text())["train_seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return min(seconds, default=0.0)


def fit(learner: MetaLearner, stream, validate: Callable[[MetaLearner], float], tcfg: dict,
        fingerprint: str, model_dir: Path, metrics_dir: Path, device: torch.device, label: str,
        model_info: dict) -> dict:
    """The meta-training loop every experiment kind shares.

    `stream` draws meta-batches (`batch(n)`, checkpointable `state()`/`set_state()`),
    `validate(learner)` is the validation accuracy in % (or that and a dict of details, kept
    in trace.jsonl under `validation`), `model_info` is stored in model.pt
    beside the best weights. Writes model.pt, checkpoint.pt and the run's metrics files.
    """
    iterations = tcfg["iterations"] if learner.trainable else 0
    learner.task_parallel = resolve_task_parallel(tcfg.get("task_parallel", "auto"), device)
    ckpt_path = Path(model_dir) / "checkpoint.pt"

    optimizer = learner.make_optimizer(tcfg["meta_lr"]) if learner.trainable else None
    scheduler = lr_schedule(optimizer, tcfg)
    # traces: per-iteration records a method reports (e.g. task-attention weights) for analyses
    start, log, traces, elapsed = 0, [], [], 0.0
    best = {"accuracy": -1.0, "iteration": 0, "state": copy.deepcopy(learner.state_dict())}
    ckpt = load_checkpoint(ckpt_path, device)
    if ckpt is not None:
        if ckpt.get("fingerprint") != fingerprint:
            print(f"train {label}: discarding {ckpt_path}: it was written for other settings or data; "
                  f"training starts afresh", flush=True)
        else:
            learner.load_state_dict(ckpt["model"])
            if optimizer is not None and ckpt["optimizer"] is not None:
                optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None:  # same settings (the fingerprint), so a schedule was saved
                scheduler.load_state_dict(ckpt["scheduler"])
            stream.set_state(ckpt["stream"])
            _set_rng_states(ckpt)
            start, log, elapsed, best = ckpt["iteration"], ckpt["log"], ckpt["elapsed"], ckpt["best"]
            traces = ckpt.get("traces", [])

    t0 = time.perf_counter() - elapsed
    steps = StepTimer(device)
    bar, _ = progress(f"train {label}", iterations, loss="-", val="-")
    with bar:
        task = bar.add_task(f"train {label}", total=iterations, completed=start, loss="-", val="-")
        for it in range(start, iterations):
            with steps:
                stats = learner.train_step(stream.batch(tcfg["meta_batch"]), optimizer,
                                           lambda: stream.batch(tcfg["meta_batch"]))
                if scheduler is not None:
                    scheduler.step()
            if "trace" in stats:
                traces.append({"iteration": it + 1, **stats.pop("trace")})
            row = {"iteration": it + 1, "loss": stats["loss"], "train_accuracy": 100 * stats.get("acc", np.nan),
                   "val_accuracy": np.nan}
            last = it + 1 == iterations
            if (it + 1) % tcfg["val_interval"] == 0 or last:
                row["val_accuracy"], detail = _validation(validate, learner)
                if detail is not None:  # per-task validation (multitask): beside the iteration's trace
                    if not traces or traces[-1]["iteration"] != it + 1:
                        traces.append({"iteration": it + 1})
                    traces[-1]["validation"] = detail
                if row["val_accuracy"] > best["accuracy"]:
                    best = {"accuracy": row["val_accuracy"], "iteration": it + 1,
                            "state": copy.deepcopy(learner.state_dict())}
                log.append(row)
                save_checkpoint(ckpt_path, {
                    "fingerprint": fingerprint, "iteration": it + 1, "model": learner.state_dict(),
                    "optimizer": optimizer.state_dict(), "stream": stream.state(),
                    **({"scheduler": scheduler.state_dict()} if scheduler is not None else {}),
                    **_rng_states(), "log": log, "best": best, "traces": traces,
                    "elapsed": time.perf_counter() - t0})
                if not interactive():  # logs (Snakemake, SLURM) get a plain line per validation
                    print(f"train {label}: iteration {it + 1}/{iterations} loss {stats['loss']:.4f} "
                          f"val {row['val_accuracy']:.2f}% best {best['accuracy']:.2f}% "
                          f"({time.perf_counter() - t0:.0f}s)", flush=True)
            else:
                log.append(row)
            bar.update(task, advance=1, loss=f"{stats['loss']:.3f}",
                       val=f"{best['accuracy']:.1f}" if best["accuracy"] >= 0 else "-")
    train_seconds = time.perf_counter() - t0
    if iterations == 0:  # nothing to resume, but every run leaves a checkpoint (a DVC output)
        save_checkpoint(ckpt_path, {"fingerprint": fingerprint, "iteration": 0, "model": learner.state_dict(),
                                    "optimizer": None, "stream": stream.state(),
                                    **_rng_states(), "log": log, "best": best, "elapsed": 0.0})

    if best["accuracy"] < 0:  # nothing trained (e.g. pixel-nn): keep the initial weights
        best["accuracy"] = _validation(validate, learner)[0]
    save_model(Path(model_dir) / "model.pt", best["state"], **model_info)
    frame = pd.DataFrame(log, columns=LOG_COLUMNS)
    with atomic_path(Path(metrics_dir) / "train_log.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    summary = {"iterations": iterations, "best_iteration": best["iteration"],
               "best_val_accuracy": round(best["accuracy"], 4)}
    write_json(Path(metrics_dir) / "train.json", summary)
    with atomic_path(Path(metrics_dir) / "trace.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(t, sort_keys=True) + "\n" for t in traces))
    write_json(Path(metrics_dir) / TIMING_FILE, {"train_seconds": round(train_seconds, 3), **steps.summary()})
    return summary
