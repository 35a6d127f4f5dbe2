"""Analyses of multi-task meta-learning runs (Lekkala & Itti).

- multitask-table: Table-1-shaped results: one row per method (algorithm, single/multi meta
  task, filters, loss weighting), per task the test "Acc" (classification: accuracy) and
  MSE, over every training seed (`mtml.analysis.seed_rows`); plus the effect of uncertainty weighting for method
  pairs that differ only in `loss_weighting`.
- optimal-attention (section 5.3): freeze a trained AM / P-AM model and learn the channel
  weights w alone, by gradient descent on all the data of a test subtask (its support set
  adapts the head, the loss is taken over every image of the subtask's classes or
  environment); compare with the predicted weights: cosine similarity overall and per block,
  and a plot per block.
- attention-weights (Fig. 3 top): the predicted weights of every test subtask, one colour
  per backbone block, per task; plus per-block statistics and how similar tasks' mean
  weights are.
- multitask-curves (Fig. 5): per run, one validation curve per high-level task (query loss:
  cross-entropy, or MSE in loss units; and accuracy), from the validations training ran
  (trace.jsonl's `validation` records).
- multitask-speed: train time and inference time per subtask of the AM model against
  MAML-style full adaptation (mt-maml) of the same backbone width, on the same subtasks, and
  their parameter ratio (the paper reports 1.7x faster training and 2.3x faster inference
  than MAML, with 1.1x its parameters).

They read the study's models, prepared data and manifests through its `Layout` and write
under `out_dir`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtml.analysis.seed_rows import seed_rows
from mtml.errors import UserError
from mtml.utils import atomic_path, write_json, write_text

OPTIMAL_STEPS = 40         # Adam steps learning w alone
OPTIMAL_LR = 0.05
OPTIMAL_SUBTASKS = 2       # test subtasks per task
OPTIMAL_MAX_ITEMS = 120    # "all the data" of a subtask, subsampled beyond this (seeded)
SPEED_REPEATS = 10        # timed meta-updates per learner (after one warm-up)
SPEED_SUBTASKS = 10       # timed test subtasks per task and learner


# --------------------------------------------------------------------------- helpers


def _multitask_experiments(study, name: str) -> list[str]:
    exps = [e for e in study.experiments if study.experiment(e).kind.name == "multitask"]
    if not exps:
        raise UserError(f"analysis {name!r} needs an experiment of kind multitask in params 'experiments'")
    return exps


def _modulated_methods(study, exp: str, name: str) -> list[str]:
    methods = [m for m in study.methods if study.run(exp, m).cls.modulator_cls is not None]
    if not methods:
        raise UserError(f"analysis {name!r} needs a method with an attention modulator "
                        f"(algorithm mt-am or mt-pam) in params 'methods'")
    return methods


def _run_file(layout, exp: str, meth: str, fname: str) -> Path:
    path = layout.run_dir(exp, meth) / fname
    if not path.exists():
        raise UserError(f"{path} is missing; run the train and evaluate stages of {exp}/{meth} first")
    return path


def _trained(study, layout, exp: str, meth: str):
    from mtml.stages import load_learner

    path = layout.model(exp, meth)
    if not path.exists():
        raise UserError(f"{path} is missing; run the train stage of {exp}/{meth} first")
    return load_learner(study.run(exp, meth), layout, torch.device("cpu"))


def _bank(study, layout, exp: str):
    from mtml.stages import load_banks

    e = study.experiment(exp)
    return load_banks(e, layout, [e.dataset], torch.device("cpu"))[e.dataset], e.settings


def _test_manifest(study, layout, exp: str, task: str) -> pd.DataFrame:
    from mtml.stages import read_manifests

    e = study.experiment(exp)
    return next(m for spec, m in read_manifests(e, layout, ("test",)) if spec.keys["task"] == task)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else float("nan")


# --------------------------------------------------------------------------- table


def variant(study, exp: str, meth: str) -> dict:
    """A method's Table-1 columns, from the hyperparameters the run trained with."""
    run = study.run(exp, meth)
    cls, hp = run.cls, run.hparams
    return {"method": meth, "algorithm": cls.algorithm,
            "meta_tasks": "single" if hp.get("tasks") == "single" else "multi",
            "filters": hp.get("filters"), "loss_weighting": hp.get("loss_weighting"),
            "pretrained_heads": ",".join(hp.get("pretrained_heads", [])) or "-"}


def results_table(study, layout) -> pd.DataFrame:
    rows = []
    for exp in _multitask_experiments(study, "multitask-table"):
        for meth in study.methods:
            for r in seed_rows(study, layout, exp, meth):
                rows.append({"experiment": exp, **variant(study, exp, meth), "split": r["split"],
                             "dataset": r["dataset"], "task": r["task"], "metric": r["metric"],
                             "paper_acc": r.get("paper_acc"), "paper_acc_ci95": r.get("paper_acc_ci95"),
                             "accuracy": r["accuracy"], "accuracy_ci95": r["accuracy_ci95"], "mse": r["mse"],
                             "seeds": r["seeds"]})
    return pd.DataFrame(rows)


def _pm(value, ci) -> str:
    return f"{value:.1f}" + (f" ± {ci:.1f}" if pd.notna(ci) else "")


def _cells(r) -> list[str]:
    """A task's cells: classification accuracy; or the paper's Acc, our threshold share, MSE."""
    if pd.isna(r["mse"]):
        return [_pm(r["accuracy"], r["accuracy_ci95"])]
    paper = "-" if pd.isna(r["paper_acc"]) else _pm(r["paper_acc"], r["paper_acc_ci95"])
    return [paper, _pm(r["accuracy"], r["accuracy_ci95"]), f"{r['mse']:.4f}"]


def _columns(task: str, rows: pd.DataFrame) -> list[str]:
    r = rows.iloc[0]
    if pd.isna(r["mse"]):
        return [task]
    return [f"{task} Acc", f"{task} {str(r['metric']).removesuffix(' (%)')}", f"{task} MSE"]


def uncertainty_effect(study, frame: pd.DataFrame) -> list[dict]:
    """Per task, uncertainty minus fixed weighting for method pairs equal in everything else
    (as trained in each experiment, overrides included)."""
    out = []
    for exp in dict.fromkeys(frame["experiment"]):
        runs = {m: study.run(exp, m) for m in study.methods}
        configs = {m: {k: v for k, v in r.hparams.items() if k != "loss_weighting"} for m, r in runs.items()}
        for a in study.methods:
            for b in study.methods:
                if (runs[a].hparams["loss_weighting"], runs[b].hparams["loss_weighting"]) != ("fixed", "uncertainty"):
                    continue
                if configs[a] != configs[b] or runs[a].cls is not runs[b].cls:
                    continue
                mine = frame[frame["experiment"] == exp]
                out += _effect_rows(mine, a, b)
    return out


def _effect_rows(frame: pd.DataFrame, a: str, b: str) -> list[dict]:
    out = []
    merged = frame[frame["method"] == a].merge(frame[frame["method"] == b],
                                               on=["experiment", "split", "dataset", "task"])
    for _, r in merged.iterrows():
        out.append({"experiment": r["experiment"], "split": r["split"], "task": r["task"],
                    "fixed": a, "uncertainty": b,
                    "accuracy_change": round(r["accuracy_y"] - r["accuracy_x"], 4),
                    "mse_change": None if pd.isna(r["mse_x"]) else round(r["mse_y"] - r["mse_x"], 6)})
    return out


def multitask_table(study, layout, out_dir: Path) -> None:
    frame = results_table(study, layout)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "table.csv") as tmp:
        frame.to_csv(tmp, index=False)
    lines = ["# Multi-task meta-learning results (Lekkala & Itti's Table 1 rows)", "",
             "Cells: % ± 95% CI over subtasks (with several training seeds: the mean over seeds and "
             "subtasks, the CI over both, `mtml.analysis.seed_rows`). Classification: query accuracy. Per other task: "
             "`Acc`, the paper's metric (share of outputs within 1e-3 of the label, each output "
             "number on its own); then ours, the share within a threshold (depth: "
             "max(pred/true, true/pred) < delta per pixel; normals: angle to the true normal per "
             "pixel; vanishing point: angle to the true direction per point; thresholds in each "
             "run's details.json); then the MSE in the label's units.", ""]
    for (exp, split, ds), g in frame.groupby(["experiment", "split", "dataset"], sort=False):
        tasks = list(dict.fromkeys(g["task"]))
        columns = {t: _columns(t, g[g["task"] == t]) for t in tasks}
        header = [c for t in tasks for c in columns[t]]
        lines += [f"## {exp}: {split} ({ds})", "",
                  "| method | algorithm | meta tasks | filters | loss weighting | " + " | ".join(header) + " |",
                  "|---" * (5 + len(header)) + "|"]
        for meth, m in g.groupby("method", sort=False):
            v = m.iloc[0]
            cells = [c for t in tasks for c in (_cells(m[m["task"] == t].iloc[0]) if (m["task"] == t).any()
                                                  else ["-"] * len(columns[t]))]
            lines.append(f"| {meth} | {v['algorithm']} | {v['meta_tasks']} | {v['filters']} | "
                         f"{v['loss_weighting']} | " + " | ".join(cells) + " |")
        lines.append("")
    effect = uncertainty_effect(study, frame)
    if effect:
        lines += ["## Uncertainty weighting vs fixed weights (uncertainty minus fixed)", "",
                  "| experiment | split | task | fixed | uncertainty | Acc change | MSE change |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {e['experiment']} | {e['split']} | {e['task']} | {e['fixed']} | {e['uncertainty']} | "
                  f"{e['accuracy_change']:+.2f} | "
                  f"{'-' if e['mse_change'] is None else format(e['mse_change'], '+.5f')} |" for e in effect]
        lines.append("")
    write_text(out_dir / "table.md", "\n".join(lines))
    write_json(out_dir / "uncertainty_effect.json", effect)


# --------------------------------------------------------------------------- validation curves


def validation_curves(trace_path: Path) -> dict[str, dict[str, list[float]]]:
    """task -> {iteration, loss, accuracy}: the per-task validation records of one run."""
    curves: dict[str, dict[str, list[float]]] = {}
    for line in trace_path.read_text().splitlines():
        record = json.loads(line)
        for task, v in record.get("validation", {}).get("task", {}).items():
            c = curves.setdefault(task, {"iteration": [], "loss": [], "accuracy": []})
            c["iteration"].append(record["iteration"])
            c["loss"].append(v["loss"])
            c["accuracy"].append(v["accuracy"])
    return curves


def multitask_curves(study, layout, out_dir: Path) -> None:
    plt = _pyplot()
    out = {}
    for exp in _multitask_experiments(study, "multitask-curves"):
        for meth in study.methods:
            curves = validation_curves(_run_file(layout, exp, meth, "trace.jsonl"))
            if not curves:
                raise UserError(f"{layout.run_dir(exp, meth) / 'trace.jsonl'} has no per-task validation "
                                f"records; retrain {exp}/{meth} with this version (the train stage writes them)")
            out.setdefault(exp, {})[meth] = curves
            fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
            for i, (task, c) in enumerate(curves.items()):
                axes[0].plot(c["iteration"], c["loss"], marker="o", ms=3, color=f"C{i}",
                             label=f"{task} ({'CE' if task == 'classification' else 'MSE'})")
                axes[1].plot(c["iteration"], c["accuracy"], marker="o", ms=3, color=f"C{i}", label=task)
            axes[0].set_yscale("log")
            axes[0].set_ylabel("validation query loss")
            axes[1].set_ylabel("validation accuracy (%)")
            for ax in axes:
                ax.set_xlabel("meta-iteration")
                ax.set_title(f"{exp} / {meth}", fontsize=9)
            axes[0].legend(fontsize=7)
            _save_figure(fig, Path(out_dir) / f"{exp}-{meth}.png")
    write_json(Path(out_dir) / "curves.json", out)


# --------------------------------------------------------------------------- optimal attention


def subtask_all_items(bank, task, manifest: pd.DataFrame, episode: int) -> np.ndarray:
    """Every image of a test subtask's classes (classification) or environment (others),
    at most OPTIMAL_MAX_ITEMS of them (a seeded subsample, to bound the analysis' time)."""
    rows = manifest[manifest["episode"] == episode]
    if task.kind == "classification":
        classes = np.unique(bank.data.labels[rows["item"].to_numpy()])
        items = np.concatenate([bank.items_of_class[c] for c in classes])
    else:
        items = bank.items_of_env[str(rows["environment"].iloc[0])]
    if len(items) > OPTIMAL_MAX_ITEMS:
        items = np.sort(np.random.default_rng(episode).choice(items, OPTIMAL_MAX_ITEMS, replace=False))
    return items


def all_data_loss(learner, sub, w: torch.Tensor) -> torch.Tensor:
    """Loss on the subtask's query set (here: all of its data) after the head adapts on the
    support set under channel weights w (second order, so w gets the full gradient)."""
    out = learner.query_output(sub, w, learner.hp["inner_steps"], first_order=False)
    return learner.task_specs[sub.task].loss(out, sub.query_y)


def optimal_weights(learner, sub, steps: int, lr: float) -> torch.Tensor:
    """Channel weights learned alone, the model frozen: w = tanh(v) minimises `all_data_loss`
    by Adam from v = 0 (the unmodulated network)."""
    for p in learner.parameters():
        p.requires_grad_(False)
    v = torch.zeros(len(learner.backbone(sub.task).blocks) * learner.filters, requires_grad=True)
    opt = torch.optim.Adam([v], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        all_data_loss(learner, sub, torch.tanh(v)).backward()
        opt.step()
    return torch.tanh(v).detach()


def optimal_attention(study, layout, out_dir: Path) -> None:
    from mtml.multitask.data import manifest_subtasks

    plt = _pyplot()
    torch.manual_seed(0)
    results = []
    for exp in _multitask_experiments(study, "optimal-attention"):
        bank, mt = _bank(study, layout, exp)
        for meth in _modulated_methods(study, exp, "optimal-attention"):
            learner = _trained(study, layout, exp, meth)
            blocks = len(learner.backbone(mt.task_names[0]).blocks)
            fig, axes = plt.subplots(len(mt.tasks), blocks, figsize=(3.2 * blocks, 2.4 * len(mt.tasks)),
                                     squeeze=False)
            for ti, task in enumerate(mt.tasks):
                manifest = _test_manifest(study, layout, exp, task.name)
                for n, (ep, sub) in enumerate(manifest_subtasks(bank, task, manifest)):
                    if n == OPTIMAL_SUBTASKS:
                        break
                    with torch.no_grad():
                        predicted, _ = learner.channel_weights(sub, sample=False)
                    items = subtask_all_items(bank, task, manifest, ep)
                    if task.kind == "classification":  # labels as in the subtask: class -> label
                        rows = manifest[manifest["episode"] == ep]
                        to_label = dict(zip(bank.data.labels[rows["item"].to_numpy()], rows["label"]))
                        all_y = torch.as_tensor([to_label[c] for c in bank.data.labels[items]])
                    else:
                        all_y = bank.gather_y(task.name, items)
                    whole = type(sub)(sub.task, sub.support_x, sub.support_y, bank.gather_x(items), all_y,
                                      sub.environment, sub.ways)
                    best = optimal_weights(learner, whole, OPTIMAL_STEPS, OPTIMAL_LR)
                    losses = {f"loss_{k}": round(float(all_data_loss(learner, whole, w).detach()), 6)
                              for k, w in (("unmodulated", torch.zeros_like(best)), ("predicted", predicted),
                                           ("optimal", best))}
                    per_block = [_cosine(predicted.view(blocks, -1)[b], best.view(blocks, -1)[b])
                                 for b in range(blocks)]
                    results.append({"experiment": exp, "method": meth, "task": task.name, "episode": ep,
                                    "environment": sub.environment, "cosine": round(_cosine(predicted, best), 4),
                                    "cosine_per_block": [round(c, 4) for c in per_block], **losses})
                    if n == 0:
                        for b in range(blocks):
                            ax = axes[ti, b]
                            ax.plot(predicted.view(blocks, -1)[b].numpy(), label="predicted", marker=".")
                            ax.plot(best.view(blocks, -1)[b].numpy(), label="optimal", marker=".")
                            ax.set_title(f"{task.name} block {b + 1}: cos {per_block[b]:.2f}", fontsize=8)
                            ax.set_xlabel("channel", fontsize=7)
                            ax.tick_params(labelsize=6)
                axes[ti, 0].set_ylabel("w")
            axes[0, 0].legend(fontsize=7)
            _save_figure(fig, Path(out_dir) / f"{exp}-{meth}.png")
    frame = pd.DataFrame(results)
    summary = (frame.groupby(["experiment", "method", "task"])
               [["cosine", "loss_unmodulated", "loss_predicted", "loss_optimal"]].mean().round(5).reset_index())
    write_json(Path(out_dir) / "optimal_attention.json",
               {"steps": OPTIMAL_STEPS, "lr": OPTIMAL_LR, "max_items": OPTIMAL_MAX_ITEMS, "subtasks": results,
                "mean_cosine": summary.to_dict("records")})


# --------------------------------------------------------------------------- attention weights


def predicted_weights(learner, bank, task, manifest: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """[subtasks, blocks * channels] predicted weights and each subtask's environment."""
    from mtml.multitask.data import manifest_subtasks

    ws, envs = [], []
    with torch.no_grad():
        for _, sub in manifest_subtasks(bank, task, manifest):
            ws.append(learner.channel_weights(sub, sample=False)[0].numpy())
            envs.append(sub.environment)
    return np.stack(ws), envs


def attention_weights(study, layout, out_dir: Path) -> None:
    plt = _pyplot()
    stats = []
    for exp in _multitask_experiments(study, "attention-weights"):
        bank, mt = _bank(study, layout, exp)
        for meth in _modulated_methods(study, exp, "attention-weights"):
            learner = _trained(study, layout, exp, meth)
            blocks, channels = len(learner.backbone(mt.task_names[0]).blocks), learner.filters
            fig, axes = plt.subplots(len(mt.tasks), 1, figsize=(9, 2.2 * len(mt.tasks)), squeeze=False)
            means, arrays = {}, {}
            for ti, task in enumerate(mt.tasks):
                w, envs = predicted_weights(learner, bank, task, _test_manifest(study, layout, exp, task.name))
                arrays[task.name] = w
                means[task.name] = w.mean(0)
                ax = axes[ti, 0]
                for b in range(blocks):
                    cols = np.arange(b * channels, (b + 1) * channels)
                    ax.scatter(np.tile(cols, len(w)), w[:, cols].reshape(-1), s=3, alpha=0.25,
                               color=f"C{b}", label=f"block {b + 1}")
                ax.set_title(f"{exp}/{meth}: {task.name} ({len(w)} test subtasks)", fontsize=9)
                ax.set_ylabel("w")
                per_block = w.reshape(len(w), blocks, channels)
                stats.append({"experiment": exp, "method": meth, "task": task.name, "subtasks": len(w),
                              "block_mean": per_block.mean((0, 2)).round(5).tolist(),
                              "block_std_across_subtasks": per_block.std(0).mean(1).round(5).tolist(),
                              "environments": len(set(envs))})
            axes[0, 0].legend(fontsize=7, markerscale=3, ncol=blocks)
            axes[-1, 0].set_xlabel("channel (blocks in order)")
            _save_figure(fig, Path(out_dir) / f"{exp}-{meth}.png")
            np.savez_compressed(Path(out_dir) / f"{exp}-{meth}.npz", **arrays)
            names = list(means)
            similarity = {a: {b: round(_cosine(torch.from_numpy(means[a]), torch.from_numpy(means[b])), 4)
                              for b in names} for a in names}
            stats.append({"experiment": exp, "method": meth, "task_mean_cosine": similarity})
    write_json(Path(out_dir) / "attention_weights.json", stats)


# --------------------------------------------------------------------------- speed


def _speed_learners(study, exp: str, image_shape) -> dict[str, object]:
    """The first AM method of the study (a multi-meta-task one if any), a MAML-style method
    of the same width and meta-task setting (the study's mt-maml if one matches, else a twin
    with the AM's backbone and inner-loop settings), and the first mt-anil of that width for
    reference: a speed ratio between backbones of different widths would measure the width."""
    from mtml.methods import resolve_hparams
    from mtml.methods.base import LearnerContext
    from mtml.methods.multitask import MultiTaskAM, MultiTaskANIL, MultiTaskMAML

    e = study.experiment(exp)
    runs = sorted((study.run(exp, m) for m in study.methods), key=lambda r: r.hparams.get("tasks") != "multi")
    am = next((r for r in runs if r.cls is MultiTaskAM), None)  # stable: multi first, then params order
    if am is None:
        raise UserError("analysis 'multitask-speed' needs a method with algorithm mt-am in params 'methods'")
    same = [r for r in runs if (r.hparams["filters"], r.hparams["tasks"]) == (am.hparams["filters"], am.hparams["tasks"])]
    chosen = {"am": (am.method, am.cls, am.hparams)}
    for role, kind in (("maml", MultiTaskMAML), ("anil", MultiTaskANIL)):
        match = next((r for r in same if r.cls is kind), None)
        if match is not None:
            chosen[role] = (match.method, match.cls, match.hparams)
    if "maml" not in chosen:
        keys = ("filters", "tasks", "inner_steps", "eval_inner_steps", "first_order", "inner_lr", "pretrained_heads")
        cls, hp = resolve_hparams("maml-twin", {"algorithm": "mt-maml", **{k: am.hparams[k] for k in keys}})
        chosen["maml"] = ("mt-maml (built)", cls, hp)
    ctx = LearnerContext(tuple(image_shape), e.ways, tasks=tuple(e.settings.tasks))
    out = {}
    for role, (meth, cls, hp) in chosen.items():
        torch.manual_seed(0)
        out[role] = (meth, cls.from_context(dict(hp), ctx))
    return out


def time_learners(learners: dict[str, object], batches: list[dict], test_subtasks: list) -> dict[str, dict]:
    """Seconds per subtask of a meta-update and of inference, for each learner.

    Training: the median over timed meta-updates of (update time / subtasks in the update).
    Inference: the median over a task's test subtasks, averaged over tasks (a median of the
    pooled subtasks would pick one task's cost). The learners take turns (one meta-update of
    each, then the next batch; one test subtask of each, then the next), so a change of
    machine load during the measurement slows them alike instead of biasing the ratio.
    `batches[0]` is a warm-up update, not timed.
    """
    per_update = sum(len(v) for v in batches[0].values())
    opts = {role: learner.make_optimizer(1e-3) for role, learner in learners.items()}
    for role, learner in learners.items():
        learner.train_step(batches[0], opts[role], None)  # warm-up
    train: dict[str, list[float]] = {role: [] for role in learners}
    for batch in batches[1:]:
        for role, learner in learners.items():
            t0 = time.perf_counter()
            learner.train_step(batch, opts[role], None)
            train[role].append((time.perf_counter() - t0) / per_update)
    infer: dict[str, dict[str, list[float]]] = {role: {} for role in learners}
    for learner in learners.values():
        learner.eval()
    with torch.no_grad():
        for sub in test_subtasks:
            for role, learner in learners.items():
                t0 = time.perf_counter()
                learner.predict(sub)
                infer[role].setdefault(sub.task, []).append(time.perf_counter() - t0)
    for learner in learners.values():
        learner.train()
    out = {}
    for role in learners:
        per_task = {task: float(np.median(ts)) for task, ts in infer[role].items()}
        out[role] = {"train_seconds_per_subtask": float(np.median(train[role])),
                     "inference_seconds_per_subtask": float(np.mean(list(per_task.values()))),
                     "inference_seconds_per_task": per_task, "train_updates_timed": len(train[role]),
                     "inference_subtasks_timed": sum(len(ts) for ts in infer[role].values())}
    return out


def multitask_speed(study, layout, out_dir: Path) -> None:
    from mtml.multitask.data import SubtaskStream, manifest_subtasks

    plt = _pyplot()
    results = []
    for exp in _multitask_experiments(study, "multitask-speed"):
        bank, mt = _bank(study, layout, exp)
        stream = SubtaskStream(bank, mt.tasks, mt.shape, seed=0)
        batches = [stream.batch(1) for _ in range(SPEED_REPEATS + 1)]
        tests = []
        for task in mt.tasks:
            subs = manifest_subtasks(bank, task, _test_manifest(study, layout, exp, task.name))
            tests += [sub for _, (_, sub) in zip(range(SPEED_SUBTASKS), subs)]
        chosen = _speed_learners(study, exp, bank.image_shape)
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        measured = time_learners({role: learner for role, (_, learner) in chosen.items()}, batches, tests)
        timings = {}
        for role, (meth, learner) in chosen.items():
            timings[role] = {"method": meth, "filters": learner.filters,
                             "parameters": sum(p.numel() for p in learner.parameters()), **measured[role]}
            run = layout.run_dir(exp, meth) / "timing_train.json"
            if run.exists():  # the real training run's wall time, for context
                timings[role]["run_train_seconds"] = json.loads(run.read_text())["train_seconds"]
        am, maml = timings["am"], timings["maml"]
        load = [load_before, os.getloadavg()[0]] if load_before is not None else None
        results.append({
            "experiment": exp, "device": "cpu", "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_average_1min_before_after": load, "timings": timings,
            "train_speedup_am_vs_maml": round(maml["train_seconds_per_subtask"] / am["train_seconds_per_subtask"], 3),
            "inference_speedup_am_vs_maml": round(
                maml["inference_seconds_per_subtask"] / am["inference_seconds_per_subtask"], 3),
            "parameter_ratio_am_vs_maml": round(am["parameters"] / maml["parameters"], 3),
            "paper": {"train_speedup": 1.7, "inference_speedup": 2.3, "parameter_ratio": 1.1}})
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for ax, key, title in ((axes[0], "train_seconds_per_subtask", "meta-training"),
                               (axes[1], "inference_seconds_per_subtask", "inference")):
            roles = list(timings)
            ax.bar([timings[r]["method"] for r in roles], [1000 * timings[r][key] for r in roles],
                   color=[f"C{i}" for i in range(len(roles))])
            ax.set_title(f"{exp}: {title}", fontsize=9)
            ax.set_ylabel("ms per subtask")
            ax.tick_params(axis="x", rotation=20, labelsize=7)
        _save_figure(fig, Path(out_dir) / f"{exp}.png")
    write_json(Path(out_dir) / "speed.json", results)
