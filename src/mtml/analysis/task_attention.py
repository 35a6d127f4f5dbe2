"""Analyses of task-attended meta-training (Aimen, Sidheekh & Krishnan 2021).

- attention-trend: the largest and smallest attention weight of each meta-batch across
  iterations (the paper's Fig. 4): does attention move away from uniform (1/N)?
- attention-correlation: the mean Pearson correlation, across training, between each
  meta-information component and the weights of a batch (Fig. 5a), and the rank of the
  batch's highest-loss task under the weights (Fig. 5b; rank 1 = the largest weight).
- ta-curves: validation accuracy of each method with and without task attention (Fig. 3).
- paper-table: test accuracy of every method for {5,10}-way {1,5}-shot per dataset, shaped
  like the paper's Tables 1-2, from metrics/summary.json; settings not run stay "not run".

Attention analyses read metrics/runs/<experiment>/<method>/trace.jsonl, written by the
`ta-*` methods (one record per meta-iteration: weights and meta-information per task).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mtml.analysis.seed_rows import seed_csv
from mtml.errors import UserError
from mtml.utils import atomic_path

META_INFORMATION = ("grad_norm", "query_loss", "query_acc", "loss_ratio")
PAPER_SETTINGS = [(5, 1), (5, 5), (10, 1), (10, 5)]


def _cls(study, meth: str) -> type:
    """The method's class (the same for every experiment: overrides change hyperparameters only)."""
    return study.run(study.experiments[0], meth).cls


def attention_methods(study) -> list[str]:
    """Methods of the study trained with task attention (their algorithm wraps a base)."""
    from mtml.methods.task_weighting import TaskAttention

    return [m for m in study.methods if issubclass(_cls(study, m), TaskAttention)]


def _require_attention(study, name: str) -> list[str]:
    methods = attention_methods(study)
    if not methods:
        raise UserError(f"analysis {name!r} needs a task-attention method (algorithm ta-maml, ta-metasgd "
                        f"or ta-metalstm++) in params 'methods'; there is none")
    return methods


POOLED = "every iteration of every seed counts once; curves are the mean over seeds."


def seeds_note(study, how: str = POOLED, lead: str = "Pooled over") -> str:
    """The line an analysis' table starts with: which training seeds it reads, and `how` it
    combines several."""
    seeds = list(study.seeds)
    return (f"Training seed {seeds[0]}." if len(seeds) == 1 else
            f"{lead} {len(seeds)} training seeds ({', '.join(map(str, seeds))}): {how}")


def read_trace(layout, exp: str, meth: str, seed=None) -> list[dict]:
    path = layout.run_dir(exp, meth, seed) / "trace.jsonl"
    if not path.exists():
        raise UserError(f"{path} is missing; run the train stage of {exp}/{meth} first")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise UserError(f"{path} is empty: {exp}/{meth} trained no iterations")
    return records


def read_traces(study, layout, exp: str, meth: str) -> list[dict]:
    """Every training seed's trace records, each with its `seed`."""
    return [{**r, "seed": seed} for seed in study.seeds for r in read_trace(layout, exp, meth, seed)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    _pyplot().close(fig)


def _write(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def _write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _grid(plt, n: int, width: float = 5.0, height: float = 3.6):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


# ------------------------------------------------------------------------- attention-trend


def attention_extremes(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"seed": r.get("seed", 0), "iteration": r["iteration"], "max_weight": max(r["weights"]),
                          "min_weight": min(r["weights"]), "tasks": len(r["weights"])} for r in records])


def _first_last(ext: pd.DataFrame, column: str) -> tuple[float, float]:
    """Mean of `column` over the first and the last 10% of each seed's iterations, averaged over seeds."""
    heads, tails = [], []
    for _, g in ext.groupby("seed", sort=False):
        tenth = max(1, len(g) // 10)
        heads.append(g[column].iloc[:tenth].mean())
        tails.append(g[column].iloc[-tenth:].mean())
    return float(np.mean(heads)), float(np.mean(tails))


def attention_trend(study, layout, out_dir: Path) -> None:
    methods = _require_attention(study, "attention-trend")
    plt = _pyplot()
    exps = study.experiments
    fig, axes = _grid(plt, len(exps))
    frames, lines = [], ["# Attention weights: largest and smallest per meta-batch", "", seeds_note(study), "",
                         "| experiment | method | tasks | max (first 10%) | max (last 10%) | min (first 10%) | min (last 10%) |",
                         "|---|---|---|---|---|---|---|"]
    for ax, exp in zip(axes, exps):
        for k, meth in enumerate(methods):
            ext = attention_extremes(read_traces(study, layout, exp, meth))
            frames.append(ext.assign(experiment=exp, method=meth))
            colour = f"C{k}"
            curve = ext.groupby("iteration", sort=True)[["max_weight", "min_weight"]].mean()
            ax.plot(curve.index, curve["max_weight"], c=colour, lw=1, label=f"{meth} max")
            ax.plot(curve.index, curve["min_weight"], c=colour, lw=1, ls="--", label=f"{meth} min")
            (max_head, max_tail), (min_head, min_tail) = _first_last(ext, "max_weight"), _first_last(ext, "min_weight")
            lines.append(f"| {exp} | {meth} | {int(ext['tasks'].iloc[0])} | {max_head:.3f} | {max_tail:.3f} | "
                         f"{min_head:.3f} | {min_tail:.3f} |")
        n = frames[-1]["tasks"].iloc[0]
        ax.axhline(1 / n, c="gray", lw=1, ls=":", label=f"uniform 1/{n}")
        ax.set_title(f"{exp}: attention weight extremes per batch", fontsize=9)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel("attention weight")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, Path(out_dir) / "attention_trend.png")
    cols = ["experiment", "method", "seed", "iteration", "tasks", "max_weight", "min_weight"]
    _write(pd.concat(frames)[cols], Path(out_dir) / "attention_trend.csv")
    _write_text("\n".join(lines) + "\n", Path(out_dir) / "attention_trend.md")


# ------------------------------------------------------------------- attention-correlation


def component_correlations(records: list[dict]) -> pd.DataFrame:
    """Per iteration, Pearson r between each meta-information component and the weights
    (across the batch's tasks); NaN where either is constant within the batch."""
    rows = []
    for r in records:
        w = np.asarray(r["weights"], dtype=float)
        row = {"iteration": r["iteration"]}
        for comp in META_INFORMATION:
            x = np.asarray(r[comp], dtype=float)
            ok = len(w) > 1 and x.std() > 0 and w.std() > 0
            row[comp] = float(np.corrcoef(x, w)[0, 1]) if ok else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def max_loss_rank(records: list[dict]) -> pd.DataFrame:
    """Rank (1 = largest weight) of the highest-query-loss task of each batch."""
    rows = []
    for r in records:
        w, loss = np.asarray(r["weights"]), np.asarray(r["query_loss"])
        order = np.argsort(-w, kind="stable")
        rank = int(np.nonzero(order == int(np.argmax(loss)))[0][0]) + 1
        rows.append({"seed": r.get("seed", 0), "iteration": r["iteration"], "rank": rank, "tasks": len(w)})
    return pd.DataFrame(rows)


def attention_correlation(study, layout, out_dir: Path) -> None:
    methods = _require_attention(study, "attention-correlation")
    plt = _pyplot()
    exps = study.experiments
    corr_rows, rank_frames = [], []
    fig_a, axes_a = _grid(plt, len(exps))
    fig_b, axes_b = _grid(plt, len(exps))
    width = 0.8 / len(methods)
    for ax_a, ax_b, exp in zip(axes_a, axes_b, exps):
        for k, meth in enumerate(methods):
            records = read_traces(study, layout, exp, meth)
            corr = component_correlations(records)
            means = [float(corr[c].mean()) for c in META_INFORMATION]  # NaN-skipping mean
            for comp, m in zip(META_INFORMATION, means):
                corr_rows.append({"experiment": exp, "method": meth, "component": comp, "mean_pearson": m,
                                  "iterations": int(corr[comp].notna().sum())})
            ax_a.bar(np.arange(len(META_INFORMATION)) + k * width, np.nan_to_num(means), width, label=meth)
            ranks = max_loss_rank(records)
            rank_frames.append(ranks.assign(experiment=exp, method=meth))
            mean_rank = ranks.groupby("iteration", sort=True)["rank"].mean()  # over seeds
            window = max(1, len(mean_rank) // 20)
            ax_b.scatter(ranks["iteration"], ranks["rank"], s=4, c=f"C{k}", alpha=0.25)
            ax_b.plot(mean_rank.index, mean_rank.rolling(window, min_periods=1).mean(), c=f"C{k}",
                      label=f"{meth} (mean of {window})")
        ax_a.set_xticks(np.arange(len(META_INFORMATION)) + width * (len(methods) - 1) / 2)
        ax_a.set_xticklabels(META_INFORMATION, fontsize=8)
        ax_a.axhline(0, c="gray", lw=0.8)
        ax_a.set_ylim(-1, 1)
        ax_a.set_ylabel("mean Pearson r with attention weight")
        ax_a.set_title(f"{exp}: meta-information vs attention (Fig. 5a)", fontsize=9)
        ax_a.legend(fontsize=7)
        n = int(rank_frames[-1]["tasks"].iloc[0])
        ax_b.axhline((n + 1) / 2, c="gray", lw=1, ls=":", label="weights blind to loss")
        ax_b.set_yticks(range(1, n + 1))
        ax_b.invert_yaxis()
        ax_b.set_xlabel("meta-iteration")
        ax_b.set_ylabel("rank of the max-loss task (1 = top weight)")
        ax_b.set_title(f"{exp}: where the hardest task ranks (Fig. 5b)", fontsize=9)
        ax_b.legend(fontsize=7)
    for fig in (fig_a, fig_b):
        fig.tight_layout()
    _save(fig_a, Path(out_dir) / "meta_information_correlation.png")
    _save(fig_b, Path(out_dir) / "max_loss_task_rank.png")
    corr = pd.DataFrame(corr_rows)
    ranks = pd.concat(rank_frames)
    _write(corr, Path(out_dir) / "meta_information_correlation.csv")
    _write(ranks[["experiment", "method", "seed", "iteration", "tasks", "rank"]],
           Path(out_dir) / "max_loss_task_rank.csv")
    lines = ["# Meta-information and attention", "", seeds_note(study), "",
             "Mean Pearson correlation with the attention weights (over iterations):", "",
             "| experiment | method | " + " | ".join(META_INFORMATION) + " |",
             "|---|---|" + "---|" * len(META_INFORMATION)]
    for (exp, meth), g in corr.groupby(["experiment", "method"], sort=False):
        vals = dict(zip(g["component"], g["mean_pearson"]))
        lines.append(f"| {exp} | {meth} | " + " | ".join(f"{vals[c]:+.3f}" for c in META_INFORMATION) + " |")
    lines += ["", "Rank of the highest-loss task under the weights (1 = largest weight):", "",
              "| experiment | method | mean rank | share ranked first |", "|---|---|---|---|"]
    for (exp, meth), g in ranks.groupby(["experiment", "method"], sort=False):
        lines.append(f"| {exp} | {meth} | {g['rank'].mean():.2f} of {int(g['tasks'].iloc[0])} | "
                     f"{(g['rank'] == 1).mean():.2f} |")
    _write_text("\n".join(lines) + "\n", Path(out_dir) / "attention_correlation.md")


# ------------------------------------------------------------------------------- ta-curves


def attention_pairs(study) -> list[tuple[str, list[str]]]:
    """(task-attended method, the methods of the study running its base algorithm)."""
    pairs = []
    for meth in _require_attention(study, "ta-curves"):
        base = _cls(study, meth).base_class.algorithm
        pairs.append((meth, [m for m in study.methods if _cls(study, m).algorithm == base]))
    return pairs


def _val_log(study, layout, exp: str, meth: str) -> pd.DataFrame:
    """Validation accuracy per iteration, the mean over the training seeds."""
    logs = seed_csv(study, layout, exp, meth, "train_log.csv", "train").dropna(subset=["val_accuracy"])
    return logs.groupby("iteration", as_index=False)["val_accuracy"].mean()


def ta_curves(study, layout, out_dir: Path) -> None:
    pairs = attention_pairs(study)
    plt = _pyplot()
    exps = study.experiments
    fig, axes = plt.subplots(len(exps), len(pairs), figsize=(4.6 * len(pairs), 3.4 * len(exps)), squeeze=False)
    frames, lines = [], ["# Validation accuracy with and without task attention", "", seeds_note(study), "",
                         "| experiment | method | with attention | best val accuracy (%) | at iteration |",
                         "|---|---|---|---|---|"]
    for row, exp in enumerate(exps):
        for col, (ta, bases) in enumerate(pairs):
            ax = axes[row][col]
            for k, meth in enumerate([ta, *bases]):
                log = _val_log(study, layout, exp, meth)
                frames.append(log.assign(experiment=exp, method=meth))
                ax.plot(log["iteration"], log["val_accuracy"], marker="o", ms=3, c=f"C{k}",
                        ls="-" if meth == ta else "--", label=meth)
                if len(log) and not any(f"| {exp} | {meth} |" in line for line in lines):
                    best = log.loc[log["val_accuracy"].idxmax()]
                    lines.append(f"| {exp} | {meth} | {'yes' if meth == ta else 'no'} | "
                                 f"{best['val_accuracy']:.2f} | {int(best['iteration'])} |")
            ax.set_title(f"{exp}: {ta} vs {', '.join(bases) or '(no base method in params)'}", fontsize=9)
            ax.set_xlabel("meta-iteration")
            ax.set_ylabel("val accuracy (%)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, Path(out_dir) / "ta_curves.png")
    _write(pd.concat(frames)[["experiment", "method", "iteration", "val_accuracy"]].drop_duplicates(),
           Path(out_dir) / "ta_curves.csv")
    _write_text("\n".join(lines) + "\n", Path(out_dir) / "ta_curves.md")


# ----------------------------------------------------------------------------- paper-table


def paper_table(study, summary: dict) -> pd.DataFrame:
    """One row per (dataset, method, setting) of the paper's grid; status 'not run' where
    no experiment of the study covers it. Test split only."""
    tests = [r for r in summary.values() if r["split"] == "test" and r.get("seed", "all") == "all"]
    datasets = list(dict.fromkeys(study.experiment(e).dataset for e in study.experiments))
    rows = []
    for ds in datasets:
        for meth in study.methods:
            for ways, shots in PAPER_SETTINGS:
                hits = [r for r in tests if r["dataset"] == ds and r["method"] == meth
                        and r["ways"] == ways and r["shots"] == shots]
                r = hits[0] if hits else None
                rows.append({"dataset": ds, "method": meth, "ways": ways, "shots": shots,
                             "experiment": r["experiment"] if r else "", "accuracy": r["accuracy"] if r else np.nan,
                             "ci95": r["ci95"] if r else np.nan,
                             # the combined CI (seeds and episodes) of summary.json's aggregated row
                             "ci_low": r.get("ci_low", np.nan) if r else np.nan,
                             "ci_high": r.get("ci_high", np.nan) if r else np.nan,
                             "seeds": r.get("seeds", 1) if r else 0, "status": "run" if r else "not run"})
    return pd.DataFrame(rows)


def _cell(r, several: bool) -> str:
    if r["status"] != "run":
        return "not run"
    return f"{r['accuracy']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if several else \
        f"{r['accuracy']:.2f} ± {r['ci95']:.2f}"


def paper_table_analysis(study, layout, out_dir: Path) -> None:
    path = layout.summary("summary.json")
    if not path.exists():
        raise UserError(f"{path} is missing; run the aggregate stage first")
    table = paper_table(study, json.loads(path.read_text()))
    _write(table, Path(out_dir) / "paper_table.csv")
    header = " | ".join(f"{w}-way {s}-shot" for w, s in PAPER_SETTINGS)
    # several training seeds: the mean over seeds with the combined CI (seeds and episodes,
    # docs/statistics.md); one seed: ± the episode CI, as the paper reports
    seeds = len(study.seeds)
    several = seeds > 1
    title = (f"# Test accuracy (%), mean over {seeds} training seeds [combined 95% CI], shaped like Tables 1-2 "
             "of Aimen et al." if several else "# Test accuracy (%) ± 95% CI, shaped like Tables 1-2 of Aimen et al.")
    lines = [title, ""]
    plt = _pyplot()
    groups = list(table.groupby("dataset", sort=False))
    fig, axes = _grid(plt, len(groups), width=6.0)
    for ax, (ds, g) in zip(axes, groups):
        lines += [f"## {ds}", "", f"| method | {header} |", "|---|" + "---|" * len(PAPER_SETTINGS)]
        methods = list(dict.fromkeys(g["method"]))
        width = 0.8 / len(methods)
        for k, meth in enumerate(methods):
            cells = g[g["method"] == meth]
            lines.append(f"| {meth} | " + " | ".join(_cell(r, several) for _, r in cells.iterrows()) + " |")
            ran = (cells["status"] == "run").to_numpy()
            acc = cells["accuracy"][ran].to_numpy()
            err = ([acc - cells["ci_low"][ran].to_numpy(), cells["ci_high"][ran].to_numpy() - acc] if several
                   else cells["ci95"][ran].to_numpy())
            ax.bar((np.arange(len(PAPER_SETTINGS)) + k * width)[ran], acc, width,
                   yerr=err, capsize=2, label=meth, color=f"C{k % 10}")
        lines.append("")
        ax.set_xticks(np.arange(len(PAPER_SETTINGS)) + width * (len(methods) - 1) / 2)
        ax.set_xticklabels([f"{w}w{s}s" + ("" if (g[(g.ways == w) & (g.shots == s)].status == "run").any()
                                           else "\n(not run)") for w, s in PAPER_SETTINGS], fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("test accuracy (%), " + ("mean [combined 95% CI]" if several else "± 95% CI"))
        ax.set_title(f"{ds}", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _save(fig, Path(out_dir) / "paper_table.png")
    _write_text("\n".join(lines), Path(out_dir) / "paper_table.md")
