"""Aggregate every run of a study (experiment x method x training seed) into
metrics/<study>/summary.json (one row per seed, one aggregated row), summary.md (mean with the
combined CI over seeds and episodes; published numbers next to ours when params has
`published:`), compare.json/.md with the paired comparisons and plots. The statistics:
`mtml.analysis.compare` and docs/statistics.md."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from mtml.analysis.compare import (
    ALL_SEEDS,
    SeedSummaryRows,
    _records,
    forest_plot,
    markdown_summary,
    paired_comparisons,
    pool_modes,
    published_comparison,
    seed_summary,
    write_compare,
)
from mtml.errors import UserError
from mtml.utils import atomic_path, write_json, write_text


class SummaryRows(SeedSummaryRows):
    """summary.json's rows: `compare.SeedSummaryRows` (one row per seed, one with seed = "all")
    and the run's setting and timings (the "all" row: mean seconds over its seeds)."""

    split: str = pa.Field(isin=["test", "cross-domain"])
    algorithm: str
    ways: int = pa.Field(ge=2)
    shots: int = pa.Field(ge=1)
    train_seconds: float = pa.Field(ge=0)
    eval_seconds: float = pa.Field(ge=0)


def _read_json(path: Path):
    if not path.exists():
        raise UserError(f"{path} is missing; run the train and evaluate stages for it first")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); delete it and rerun the stage that "
                        f"writes it (evaluate for eval.json and timing_eval.json, train otherwise)") from None


def _rerun(run) -> str:
    return (f"rerun its evaluate stage (python -m mtml evaluate --experiment {run.experiment.name} "
            f"--method {run.method} --seed {run.seed})")


def read_runs(study, layout) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every run's (experiment x method x seed) files: its setting and timings (one row per
    run), the per-episode rows behind the table (`kind.table_episodes`) and every per-episode
    row (for the comparisons); episodes carry experiment, method and seed columns."""
    info, table, episodes = [], [], []
    for run in study.runs():
        exp, meth, seed = run.experiment.name, run.method, str(run.seed)
        run_dir = layout.run_dir(exp, meth, run.seed)
        timing = {**_read_json(run_dir / "timing_train.json"), **_read_json(run_dir / "timing_eval.json")}
        found = _read_json(run_dir / "eval.json")
        got = {(r.get("split"), r.get("dataset")) for r in found if isinstance(r, dict)}
        missing = sorted(run.experiment.kind.expected_rows(study, run.experiment) - got)
        if missing:
            raise UserError(f"{run_dir / 'eval.json'} lacks the {missing[0][0]} row of dataset "
                            f"{missing[0][1]!r} for {run.label}; {_rerun(run)}")
        info.append({"experiment": exp, "method": meth, "seed": seed, "algorithm": run.cls.algorithm,
                     "ways": run.experiment.ways, "shots": run.experiment.shots,
                     "train_seconds": timing.get("train_seconds"), "eval_seconds": timing.get("eval_seconds")})
        path = run_dir / "episodes.csv"
        if not path.exists():
            raise UserError(f"{path} is missing; {_rerun(run)}")
        frame = pd.read_csv(path)
        frame.insert(0, "experiment", exp)
        frame.insert(1, "method", meth)
        frame.insert(2, "seed", seed)
        episodes.append(frame)
        table.append(run.experiment.kind.table_episodes(run.experiment, frame))
    return (pd.DataFrame(info), pool_modes(pd.concat(table, ignore_index=True)),
            pool_modes(pd.concat(episodes, ignore_index=True)))


def summarise(study, layout, per_episode: pd.DataFrame | None = None, info: pd.DataFrame | None = None):
    """summary.json's rows (`SummaryRows`): each seed and the aggregate over seeds."""
    if per_episode is None:
        info, per_episode, _ = read_runs(study, layout)
    summary = seed_summary(per_episode)
    expected = {(r.experiment.name, r.method, split, ds, str(r.seed)) for r in study.runs()
                for split, ds in r.experiment.kind.expected_rows(study, r.experiment)}
    got = set(summary[["experiment", "method", "split", "dataset", "seed"]].itertuples(index=False, name=None))
    missing = sorted(expected - got)
    if missing:
        e, m, split, ds, k = missing[0]
        raise UserError(f"{layout.run_dir(e, m, k) / 'episodes.csv'} has no {split} episodes of dataset "
                        f"{ds!r}; {_rerun(study.run(e, m, int(k)))}")
    per_seed = summary.merge(info, on=["experiment", "method", "seed"], how="inner")
    setting = (info.groupby(["experiment", "method"], sort=False)
               .agg(algorithm=("algorithm", "first"), ways=("ways", "first"), shots=("shots", "first"),
                    train_seconds=("train_seconds", "mean"), eval_seconds=("eval_seconds", "mean"))
               .reset_index())
    agg = summary[summary["seed"] == ALL_SEEDS].merge(setting, on=["experiment", "method"], how="inner")
    # each run's seeds, then its aggregate, in the study's order
    frame = pd.concat([per_seed, agg], ignore_index=True).sort_values(["experiment", "split", "dataset", "method"], kind="stable", key=_order(summary))
    try:
        return SummaryRows.validate(frame.reset_index(drop=True), lazy=True)
    except pa.errors.SchemaErrors as err:
        raise UserError(f"evaluation results do not fit the summary schema: "
                        f"{err.failure_cases.head(5).to_dict('records')}") from None


def _order(summary: pd.DataFrame):
    """Sort key: the order in which each value first appears in `summary` (study order)."""
    def key(col: pd.Series) -> pd.Series:
        first = {v: i for i, v in enumerate(dict.fromkeys(summary[col.name]))}
        return col.map(first)
    return key


def collect(study, layout) -> pd.DataFrame:
    """The aggregated rows (seed = "all") of every run: one per experiment/method/split/dataset."""
    frame = summarise(study, layout)
    return frame[frame["seed"] == ALL_SEEDS].reset_index(drop=True)


def summary_key(row: dict) -> str:
    """summary.json's key: `exp/method/split/dataset` for the aggregate over seeds (what `dvc
    metrics diff` compares), with `/seed-<k>` for one seed's row."""
    key = f"{row['experiment']}/{row['method']}/{row['split']}/{row['dataset']}"
    return key if row["seed"] == ALL_SEEDS else f"{key}/seed-{row['seed']}"


def timing_table(summary: pd.DataFrame) -> str:
    """NIL accuracy and seconds per method (means over seeds)."""
    agg = summary[summary["seed"] == ALL_SEEDS]
    lines = ["## NIL accuracy and time (mean over seeds)", ""]
    for (exp, split, dataset), g in agg.groupby(["experiment", "split", "dataset"], sort=False):
        g0 = g.iloc[0]
        lines += [f"### {exp} — {split} ({dataset}), {g0['ways']}-way {g0['shots']}-shot, "
                  f"{g0['episodes']} episodes", "",
                  "| method | NIL accuracy (%) ± episode CI | train s | eval s |", "|---|---|---|---|"]
        for _, r in g.sort_values("accuracy", ascending=False).iterrows():
            nil = "" if pd.isna(r.get("nil_accuracy")) else f"{r['nil_accuracy']:.2f} ± {r['nil_ci95']:.2f}"
            lines.append(f"| {r['method']} | {nil} | {r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def plot_accuracy(frame: pd.DataFrame, path: Path) -> None:
    """Mean over seeds with the combined CI (the "all" rows of `frame`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = frame[frame["seed"] == ALL_SEEDS]
    groups = list(frame.groupby(["experiment", "split", "dataset"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False)
    for ax, ((exp, split, ds), g) in zip(axes[0], groups):
        err = [g["accuracy"] - g["ci_low"], g["ci_high"] - g["accuracy"]]
        ax.bar(g["method"], g["accuracy"], yerr=err, capsize=4, color="#4c72b0")
        chance = 100 / g["ways"].iloc[0]
        ax.axhline(chance, ls="--", c="gray", lw=1, label="chance")
        ax.set_title(f"{exp}\n{split}: {ds} ({g['seeds'].max()} seeds)", fontsize=9)
        ax.set_ylabel("accuracy (%), combined 95% CI")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def plot_val_curves(study, layout, path: Path) -> None:
    """Validation accuracy during training: one colour per method, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps = study.experiments
    fig, axes = plt.subplots(1, len(exps), figsize=(5 * len(exps), 3.6), squeeze=False)
    for ax, exp in zip(axes[0], exps):
        for i, meth in enumerate(study.methods):
            for j, seed in enumerate(study.seeds):
                log = pd.read_csv(layout.run_dir(exp, meth, seed) / "train_log.csv").dropna(subset=["val_accuracy"])
                if len(log):
                    ax.plot(log["iteration"], log["val_accuracy"], marker="o", ms=3, color=f"C{i % 10}",
                            alpha=1 if j == 0 else 0.5, label=meth if j == 0 else None)
        ax.set_title(f"{exp}: validation accuracy", fontsize=9)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel("val accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def aggregate(study, layout) -> pd.DataFrame:
    """summary.json/.md, compare.json/.md, plots/{accuracy,val_curves,compare}.png."""
    metrics_root = layout.metrics
    info, table, episodes = read_runs(study, layout)
    frame = summarise(study, layout, table, info)
    # A value a row lacks (e.g. seed_std of one seed) is left out rather than null: DVC's
    # metrics drop nulls, and `dvc exp show` would then disagree with the file.
    rows = [{k: v for k, v in r.items() if v is not None} for r in _records(frame)]
    write_json(layout.summary("summary.json"), {summary_key(r): r for r in rows})
    published = published_comparison(frame, study.published) if study.published else None
    write_text(layout.summary("summary.md"), "# Results\n\n" + markdown_summary(frame, published)
               + "\n" + timing_table(frame))
    compared = paired_comparisons(episodes, reference=study.reference, pairs=study.comparisons)
    write_compare(metrics_root, compared)
    forest_plot(compared, metrics_root / "plots" / "compare.png")
    plot_accuracy(frame, metrics_root / "plots" / "accuracy.png")
    plot_val_curves(study, layout, metrics_root / "plots" / "val_curves.png")
    return frame


def print_table(frame: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mtml results (accuracy %: mean over seeds, combined 95% CI in brackets)")
    cols = ("experiment", "split", "dataset", "method", "accuracy", "seeds", "NIL", "train s", "eval s")
    for col in cols:
        table.add_column(col, justify="left" if col in cols[:4] else "right")
    for _, r in frame[frame["seed"] == ALL_SEEDS].iterrows():
        nil = "" if pd.isna(r.get("nil_accuracy")) else f"{r['nil_accuracy']:.2f}"
        table.add_row(r["experiment"], r["split"], r["dataset"], r["method"],
                      f"{r['accuracy']:.2f} \\[{r['ci_low']:.2f}, {r['ci_high']:.2f}]", str(r["seeds"]), nil,
                      f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.0f}")
    Console(width=150).print(table)
