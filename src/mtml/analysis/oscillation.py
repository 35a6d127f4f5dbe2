"""metalstm-oscillation: the meta-loss trajectories of MetaLSTM and MetaLSTM++ (Aimen et al.
2021, Fig. 1), and how much each oscillates.

MetaLSTM (Ravi & Larochelle) updates the meta-model after every task, MetaLSTM++ once per
meta-batch on the batch's mean loss; the paper's Fig. 1 shows MetaLSTM's meta-loss jumping
from update to update. Two views, both drawn and measured:

- per meta-update (the paper's view): the loss of each meta-update, from `update_losses` in
  trace.jsonl (MetaLSTM: one per task, each on the model its previous task left; MetaLSTM++:
  one per batch). Part of MetaLSTM's spread here is only that one task's loss varies more than
  a batch mean of meta_batch tasks.
- per iteration: the mean loss over the iteration's tasks (train_log.csv), which both methods
  average over the same tasks of the same seeded stream; a difference left here comes from
  the updates, not from averaging.

The measures of a loss sequence l_1..l_T (oscillation_measures):
- `mean_abs_change`: mean |l_{t+1} - l_t| (the headline number: how far the loss jumps per step);
- `detrended_sd`: standard deviation of l_t minus its centred moving average (`window` steps,
  at the steps the whole window covers): the spread about the trend, so a steady decrease
  does not count as oscillation;
- `reversal_rate`: share of consecutive changes that switch sign (1: a zigzag, 0: monotone;
  about 2/3 for independent noise).

With several training seeds each measure is taken on every seed's sequence and the table
shows their mean (oscillation.csv keeps one row per seed too); the plot draws the first seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mtml.analysis.task_attention import _cls, _pyplot, _save, _write, _write_text, seeds_note
from mtml.errors import UserError

ALGORITHMS = ("metalstm", "metalstm++")
WINDOW = 25   # moving-average window (steps, odd) of detrended_sd


def oscillation_measures(losses, window: int = WINDOW) -> dict:
    """How much a loss sequence oscillates (see the module docstring)."""
    x = np.asarray(losses, dtype=float)
    if len(x) < 3:
        raise ValueError(f"need at least 3 losses to measure oscillation; got {len(x)}")
    d = np.diff(x)
    signs = np.sign(d[d != 0])
    # centred moving average over an odd window, where the whole window fits (a straight line
    # is its own trend: no oscillation)
    w = min(window, len(x))
    w -= 1 - w % 2
    h = (w - 1) // 2
    trend = np.convolve(x, np.ones(w) / w, "valid")
    return {"steps": len(x), "mean_loss": float(x.mean()), "mean_abs_change": float(np.abs(d).mean()),
            "detrended_sd": float((x[h:len(x) - h] - trend).std()),
            "reversal_rate": float((signs[1:] != signs[:-1]).mean()) if len(signs) > 1 else 0.0}


def lstm_methods(study) -> list[str]:
    methods = [m for m in study.methods if _cls(study, m).algorithm in ALGORITHMS]
    if not methods:
        raise UserError("analysis 'metalstm-oscillation' needs a method with algorithm metalstm or metalstm++ "
                        "in params 'methods'; there is none")
    return methods


def update_losses(layout, exp: str, meth: str, seed=None) -> pd.DataFrame:
    """One row per meta-update: its position in iterations (update k of n in iteration i is at
    i - 1 + (k + 1) / n) and its loss."""
    path = layout.run_dir(exp, meth, seed) / "trace.jsonl"
    if not path.exists():
        raise UserError(f"{path} is missing; run the train stage of {exp}/{meth} first")
    rows = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "update_losses" not in rec:
            raise UserError(f"{path} has no update_losses: it was written before MetaLSTM recorded them; "
                            f"delete it and rerun the train stage of {exp}/{meth}")
        n = len(rec["update_losses"])
        rows += [{"position": rec["iteration"] - 1 + (k + 1) / n, "loss": v} for k, v in enumerate(rec["update_losses"])]
    return pd.DataFrame(rows, columns=["position", "loss"])


def iteration_losses(layout, exp: str, meth: str, seed=None) -> pd.DataFrame:
    path = layout.run_dir(exp, meth, seed) / "train_log.csv"
    if not path.exists():
        raise UserError(f"{path} is missing; run the train stage of {exp}/{meth} first")
    return pd.read_csv(path)[["iteration", "loss"]].rename(columns={"iteration": "position"})


VIEWS = (("update", "per meta-update (trace.jsonl)", update_losses),
         ("iteration", "per iteration, mean over its tasks (train_log.csv)", iteration_losses))


def metalstm_oscillation(study, layout, out_dir: Path) -> None:
    methods = lstm_methods(study)
    exps = study.experiments
    plt = _pyplot()
    fig, axes = plt.subplots(len(exps), len(VIEWS), figsize=(6.0 * len(VIEWS), 3.4 * len(exps)), squeeze=False)
    rows, curves = [], []
    for r, exp in enumerate(exps):
        for c, (view, title, read) in enumerate(VIEWS):
            ax = axes[r][c]
            for k, meth in enumerate(methods):
                for s, seed in enumerate(study.seeds):
                    seq = read(layout, exp, meth, seed)
                    curves.append(seq.assign(experiment=exp, method=meth, view=view, seed=seed))
                    if s == 0:
                        ax.plot(seq["position"], seq["loss"], lw=0.7, c=f"C{k}", alpha=0.85,
                                label=f"{meth} ({_cls(study, meth).algorithm}, seed {seed})")
                    if len(seq) >= 3:
                        rows.append({"experiment": exp, "method": meth, "algorithm": _cls(study, meth).algorithm,
                                     "view": view, "seed": seed, **oscillation_measures(seq["loss"])})
            ax.set_title(f"{exp}: meta-loss {title}", fontsize=9)
            ax.set_xlabel("meta-iteration")
            ax.set_ylabel("meta-loss (query cross-entropy)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, Path(out_dir) / "oscillation.png")
    measures = ["steps", "mean_loss", "mean_abs_change", "detrended_sd", "reversal_rate"]
    per_seed = pd.DataFrame(rows, columns=["experiment", "method", "algorithm", "view", "seed", *measures])
    _write(per_seed, Path(out_dir) / "oscillation.csv")
    table = per_seed.groupby(["experiment", "method", "algorithm", "view"], sort=False, as_index=False)[measures].mean()
    _write(pd.concat(curves)[["experiment", "method", "view", "seed", "position", "loss"]],
           Path(out_dir) / "trajectories.csv")
    lines = ["# Meta-loss oscillation: MetaLSTM vs MetaLSTM++ (Aimen et al. 2021, Fig. 1)", "",
             f"mean |change| between consecutive steps, sd about a centred {WINDOW}-step moving average, "
             "share of direction reversals (docs/task_attention.md).", "",
             seeds_note(study, "each measure is the mean of the seeds' values (oscillation.csv has each "
                               f"seed's); the plot draws seed {study.seeds[0]}.", lead="Over"),
             "",
             "| experiment | method | view | steps | mean loss | mean abs change | detrended sd | reversal rate |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {t.experiment} | {t.method} | {t.view} | {t.steps:.0f} | {t.mean_loss:.4f} | {t.mean_abs_change:.4f} | "
              f"{t.detrended_sd:.4f} | {t.reversal_rate:.2f} |" for t in table.itertuples()]
    _write_text("\n".join(lines) + "\n", Path(out_dir) / "oscillation.md")
