"""Aggregate every run of a study into metrics/<study>/summary.json, a markdown table and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from mtml.errors import UserError
from mtml.utils import atomic_path, write_json, write_text


class SummaryRows(pa.DataFrameModel):
    experiment: str
    dataset: str
    split: str = pa.Field(isin=["test", "cross-domain"])
    method: str
    algorithm: str
    ways: int = pa.Field(ge=2)
    shots: int = pa.Field(ge=1)
    episodes: int = pa.Field(ge=1)
    accuracy: float = pa.Field(ge=0, le=100)
    ci95: float = pa.Field(ge=0)
    nil_accuracy: float = pa.Field(ge=0, le=100)
    nil_ci95: float = pa.Field(ge=0)
    train_seconds: float = pa.Field(ge=0)
    eval_seconds: float = pa.Field(ge=0)

    class Config:
        coerce = True


def _read_json(path: Path):
    if not path.exists():
        raise UserError(f"{path} is missing; run the train and evaluate stages for it first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); delete it and rerun the stage that writes it") from None


def collect(study, layout) -> pd.DataFrame:
    """Every run's eval.json rows with its timings; every row the study implies must be there."""
    rows = []
    for run in study.runs():
        exp, meth = run.experiment.name, run.method
        run_dir = layout.run_dir(exp, meth)
        timing = {**_read_json(run_dir / "timing_train.json"), **_read_json(run_dir / "timing_eval.json")}
        found = _read_json(run_dir / "eval.json")
        got = {(r.get("split"), r.get("dataset")) for r in found if isinstance(r, dict)}
        missing = sorted(run.experiment.kind.expected_rows(study, run.experiment) - got)
        if missing:
            raise UserError(f"{run_dir / 'eval.json'} lacks the {missing[0][0]} row of dataset "
                            f"{missing[0][1]!r} for {exp}/{meth}; rerun its evaluate stage "
                            f"(python -m mtml evaluate --experiment {exp} --method {meth})")
        for row in found:
            rows.append({**row, **timing})
    frame = pd.DataFrame(rows)
    try:
        return SummaryRows.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise UserError(f"evaluation results do not fit the summary schema: "
                        f"{err.failure_cases.head(5).to_dict('records')}") from None


def markdown_table(frame: pd.DataFrame) -> str:
    lines = []
    for (exp, split, dataset), g in frame.groupby(["experiment", "split", "dataset"], sort=False):
        g0 = g.iloc[0]
        lines += [f"### {exp} — {split} ({dataset}), {g0['ways']}-way {g0['shots']}-shot, "
                  f"{g0['episodes']} episodes", "",
                  "| method | accuracy (%) | NIL accuracy (%) | train s | eval s |",
                  "|---|---|---|---|---|"]
        for _, r in g.sort_values("accuracy", ascending=False).iterrows():
            lines.append(f"| {r['method']} | {r['accuracy']:.2f} ± {r['ci95']:.2f} | "
                         f"{r['nil_accuracy']:.2f} ± {r['nil_ci95']:.2f} | "
                         f"{r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def plot_accuracy(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(frame.groupby(["experiment", "split", "dataset"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False)
    for ax, ((exp, split, ds), g) in zip(axes[0], groups):
        ax.bar(g["method"], g["accuracy"], yerr=g["ci95"], capsize=4, color="#4c72b0")
        chance = 100 / g["ways"].iloc[0]
        ax.axhline(chance, ls="--", c="gray", lw=1, label="chance")
        ax.set_title(f"{exp}\n{split}: {ds}", fontsize=9)
        ax.set_ylabel("accuracy (%) ± 95% CI")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def plot_val_curves(study, layout, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps = study.experiments
    fig, axes = plt.subplots(1, len(exps), figsize=(5 * len(exps), 3.6), squeeze=False)
    for ax, exp in zip(axes[0], exps):
        for meth in study.methods:
            log = pd.read_csv(layout.run_dir(exp, meth) / "train_log.csv").dropna(subset=["val_accuracy"])
            if len(log):
                ax.plot(log["iteration"], log["val_accuracy"], marker="o", ms=3, label=meth)
        ax.set_title(f"{exp}: validation accuracy", fontsize=9)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel("val accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def aggregate(study, layout) -> pd.DataFrame:
    metrics_root = layout.metrics
    frame = collect(study, layout)
    # Keyed rows: `dvc metrics diff` then reads e.g. "glyphs-5w1s/maml/test/glyphs.accuracy".
    summary = {f"{r['experiment']}/{r['method']}/{r['split']}/{r['dataset']}": r
               for r in frame.to_dict("records")}
    write_json(layout.summary("summary.json"), summary)
    write_text(layout.summary("summary.md"), "# Results\n\n" + markdown_table(frame))
    plot_accuracy(frame, metrics_root / "plots" / "accuracy.png")
    plot_val_curves(study, layout, metrics_root / "plots" / "val_curves.png")
    return frame


def print_table(frame: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mtml results (accuracy % ± 95% CI over fixed episodes)")
    for col in ("experiment", "split", "dataset", "method", "accuracy", "NIL", "train s", "eval s"):
        table.add_column(col, justify="right" if col in ("accuracy", "NIL", "train s", "eval s") else "left")
    for _, r in frame.iterrows():
        table.add_row(r["experiment"], r["split"], r["dataset"], r["method"],
                      f"{r['accuracy']:.2f} ± {r['ci95']:.2f}", f"{r['nil_accuracy']:.2f} ± {r['nil_ci95']:.2f}",
                      f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.0f}")
    Console(width=140).print(table)
