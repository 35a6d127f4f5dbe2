"""mtl-table: multi-task architectures x optimisers, compared as MTL papers do (issue 16).

For every multitask experiment and test split (test, cross-domain), one row per method: its
architecture, optimiser, loss weighting, schedule and teacher (`distill`); per task the test
metric with its 95% CI over subtasks, and over training seeds when there are several
(classification: query accuracy in %, higher is better; depth, normals, vanishing points: MSE
in the label's units, lower is better; `mtml.analysis.seed_rows`); Delta-MTL (Maninis et al. 2019, `mtml.analysis.mtl_metrics.delta_mtl`) of
those metrics against the single-task baseline, and Delta-MTL of "Acc" (every task's share
within its threshold, higher is better), each with a 95% CI over training seeds and test
subtasks (`mtl_metrics.delta_mtl_interval` on every seed's episodes.csv: the methods share
the seeds and subtasks, so the bootstrap keeps them paired) and a verdict whether it differs
from 0 (Holm-adjusted across the table); time and memory per training iteration (the run's
timing_train.json); and the tasks on which the method beats the reference (hard sharing with
uncertainty weighting, when the study has it) with non-overlapping 95% CIs.

The single-task baseline is the first method of params with `tasks: single` (one backbone
per task). The Pareto plot draws, per split and pair of tasks, each method's two metrics with
their CIs; methods no other method beats on both (the pair's Pareto front) are filled.

Writes table.md, table.json and pareto-<experiment>-<split>.png under the analysis folder.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

from mtml.analysis.compare import _rng, holm, verdicts
from mtml.analysis.mtl_metrics import delta_mtl, delta_mtl_interval
from mtml.analysis.seed_rows import seed_episodes, seed_rows
from mtml.errors import UserError
from mtml.utils import atomic_path, write_json, write_text

SETTINGS = ("tasks", "architecture", "optimiser", "loss_weighting", "schedule", "distill")
TIMING = ("seconds_per_iteration", "peak_rss_mib", "cuda_peak_mib")


def _json(path: Path, what: str):
    if not path.exists():
        raise UserError(f"{path} is missing; run the train and evaluate stages of {what} first")
    return json.loads(path.read_text())


def primary_metric(kind: str) -> tuple[str, bool]:
    """(details.json key, higher is better) of a task's metric in the table."""
    return ("accuracy", True) if kind == "classification" else ("mse", False)


def method_results(study, layout, exp: str, meth: str) -> dict:
    """A method's settings, timing (the first seed's train stage) and per-split, per-task
    metrics of one experiment (over every training seed: `seed_rows`)."""
    run = study.run(exp, meth)
    timing = _json(layout.run_dir(exp, meth) / "timing_train.json", f"{exp}/{meth}")
    results: dict = {}
    for r in seed_rows(study, layout, exp, meth):
        split = r["split"] if r["split"] == "test" else f"{r['split']}:{r['dataset']}"
        results.setdefault(split, {})[r["task"]] = {k: r.get(k) for k in ("accuracy", "accuracy_ci95", "mse",
                                                                          "mse_ci95", "subtasks", "seeds")}
    return {"method": meth, "algorithm": run.cls.algorithm, "filters": run.hparams.get("filters"),
            **{k: run.hparams.get(k) for k in SETTINGS}, **{k: timing.get(k) for k in TIMING},
            "results": results}


def subtask_matrices(study, layout, exp: str, meth: str) -> dict:
    """split -> task -> metric -> [seeds x subtasks] frame (index: training seed, columns: the
    manifest's episode ids) from every seed's episodes.csv; only subtasks every seed has."""
    rows = seed_episodes(study, layout, exp, meth)
    out: dict = {}
    for (split, dataset, task), g in rows.groupby(["split", "dataset", "task"], sort=False):
        key = split if split == "test" else f"{split}:{dataset}"
        out.setdefault(key, {})[task] = {m: g.pivot(index="seed", columns="episode", values=m).dropna(axis=1)
                                         for m in ("accuracy", "mse") if g[m].notna().any()}
    return out


def _paired(a, b, where: str) -> tuple[np.ndarray, np.ndarray]:
    seeds, subtasks = a.index.intersection(b.index), a.columns.intersection(b.columns)
    if len(seeds) == 0 or len(subtasks) < 2:
        raise UserError(f"{where}: the method and the baseline share {len(seeds)} training seeds and "
                        f"{len(subtasks)} test subtasks; evaluate both on the same manifests and `seeds`")
    return a.loc[seeds, subtasks].to_numpy(np.float64), b.loc[seeds, subtasks].to_numpy(np.float64)


def delta_intervals(mats: dict, base: dict, metric: dict, higher: dict, rng, where: str) -> dict | None:
    """`delta_mtl_interval` of one method against the baseline on one split; metric: task -> column."""
    pairs = {t: _paired(mats[t][metric[t]], base[t][metric[t]], f"{where} {t}") for t in higher}
    return delta_mtl_interval({t: p[0] for t, p in pairs.items()}, {t: p[1] for t, p in pairs.items()}, higher, rng)


def _holm_verdicts(summaries: list[dict], field: str, alpha: float = 0.05) -> None:
    """p_holm and verdict (better / worse / no detectable difference) of every CI in the table."""
    cis = [ci for s in summaries for r in s["methods"] for ci in r[field].values() if ci is not None]
    tested = [ci for ci in cis if ci["p"] is not None]
    adjusted = holm([ci["p"] for ci in tested])
    for ci, p, v in zip(tested, adjusted, verdicts([ci["estimate"] for ci in tested], adjusted, alpha)):
        ci["p_holm"], ci["verdict"] = float(p), str(v)
    for ci in cis:
        ci.setdefault("p_holm", None)
        ci.setdefault("verdict", None)


def baseline_method(study, exp: str) -> str:
    single = [m for m in study.methods if study.run(exp, m).hparams.get("tasks") == "single"]
    if not single:
        raise UserError("analysis 'mtl-table' compares with a single-task baseline: add a method with "
                        "'tasks: single' (e.g. {algorithm: mt-anil, tasks: single}) to params 'methods'")
    return single[0]


def reference_method(rows: list[dict]) -> str | None:
    """Hard sharing with uncertainty weighting, plain update, all tasks, no teacher."""
    for r in rows:
        if (r["tasks"], r["architecture"], r["optimiser"], r["loss_weighting"], r["schedule"], r["distill"]) == (
                "multi", "hard", "sum", "uncertainty", "all", None):
            return r["method"]
    return None


def _better_outside_ci(a: dict, b: dict, key: str, higher: bool) -> bool:
    """a's metric better than b's with their 95% CIs apart."""
    ca, cb = a.get(f"{key}_ci95") or 0.0, b.get(f"{key}_ci95") or 0.0
    return (a[key] - ca > b[key] + cb) if higher else (a[key] + ca < b[key] - cb)


def pareto_front(points: dict[str, tuple[float, ...]], higher: tuple[bool, ...]) -> list[str]:
    """Names whose point no other point dominates (at least as good everywhere, better somewhere)."""
    signed = {k: tuple(v if h else -v for v, h in zip(p, higher)) for k, p in points.items()}
    return [k for k, p in signed.items()
            if not any(all(x >= y for x, y in zip(q, p)) and q != p for o, q in signed.items() if o != k)]


def _delta(multi: dict, single: dict, higher: dict) -> float | None:
    """Delta-MTL, None where a baseline metric is 0 (no relative change)."""
    if any(single[t] == 0 for t in higher):
        return None
    return round(delta_mtl(multi, single, higher), 3)


def summarise(study, layout, exp: str) -> dict:
    task_specs = {t.name: t for t in study.experiment(exp).settings.tasks}
    kinds = {t: primary_metric(s.kind) for t, s in task_specs.items()}
    rows = [method_results(study, layout, exp, m) for m in study.methods]
    base = baseline_method(study, exp)
    ref = reference_method(rows)
    by_name = {r["method"]: r for r in rows}
    mats = {m: subtask_matrices(study, layout, exp, m) for m in study.methods}
    higher = {t: h for t, (_, h) in kinds.items()}
    for r in rows:
        r["delta_mtl"], r["delta_mtl_acc"], r["beats_reference"] = {}, {}, {}
        r["delta_mtl_ci"], r["delta_mtl_acc_ci"] = {}, {}
        for split, res in r["results"].items():
            if r["method"] != base:
                where = f"{exp}/{r['method']} vs {base} {split}"
                r["delta_mtl_ci"][split] = delta_intervals(
                    mats[r["method"]][split], mats[base][split], {t: k for t, (k, _) in kinds.items()}, higher,
                    _rng(0, exp, split, r["method"], "delta_mtl"), where)
                r["delta_mtl_acc_ci"][split] = delta_intervals(
                    mats[r["method"]][split], mats[base][split], {t: "accuracy" for t in kinds},
                    {t: True for t in kinds}, _rng(0, exp, split, r["method"], "delta_mtl_acc"), where)
            single = by_name[base]["results"][split]
            r["delta_mtl"][split] = _delta({t: res[t][kinds[t][0]] for t in kinds},
                                           {t: single[t][kinds[t][0]] for t in kinds},
                                           {t: h for t, (_, h) in kinds.items()})
            r["delta_mtl_acc"][split] = _delta({t: res[t]["accuracy"] for t in kinds},
                                               {t: single[t]["accuracy"] for t in kinds}, {t: True for t in kinds})
            if ref is not None and r["method"] != ref:
                theirs = by_name[ref]["results"][split]
                r["beats_reference"][split] = [t for t, (key, h) in kinds.items()
                                               if _better_outside_ci(res[t], theirs[t], key, h)]
    splits = list(rows[0]["results"])
    fronts = {s: pareto_front({r["method"]: tuple(r["results"][s][t][kinds[t][0]] for t in kinds) for r in rows},
                              tuple(h for _, h in kinds.values())) for s in splits}
    return {"experiment": exp, "baseline": base, "reference": ref, "splits": splits,
            "metrics": {t: {"key": k, "higher_is_better": h} for t, (k, h) in kinds.items()},
            "pareto_front": fronts, "methods": rows}


def _fmt(x, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _signed(x) -> str:
    return "-" if x is None else f"{x:+.2f}"


def delta_cells(r: dict, split: str, field: str, baseline: bool) -> str:
    """'estimate [ci_low, ci_high] | verdict' of a Delta-MTL / Delta-Acc column pair."""
    if baseline:
        return "0 (baseline) | -"
    ci = r[f"{field}_ci"].get(split)
    if ci is None:
        return f"{_signed(r[field][split])} | -"
    if ci["ci_low"] is None:
        return f"{_signed(ci['estimate'])} [no CI: a resampled baseline mean is 0] | -"
    return f"{_signed(ci['estimate'])} [{_signed(ci['ci_low'])}, {_signed(ci['ci_high'])}] | {ci['verdict']}"


def _cell(res: dict, key: str) -> str:
    digits = 1 if key == "accuracy" else 4
    ci = res.get(f"{key}_ci95")
    return _fmt(res[key], digits) + (f" ± {_fmt(ci, digits)}" if ci is not None else "")


def markdown(summaries: list[dict]) -> str:
    lines = ["# Multi-task architectures x optimisers", "",
             "Per task the test metric ± its 95% CI over subtasks (and training seeds, when several; classification: accuracy in %, higher is "
             "better; other tasks: MSE in the label's units, lower is better). Delta-MTL (Maninis et al. 2019): "
             "the mean relative change in % of those metrics against the single-task baseline (positive: "
             "better); Delta-Acc: the same for every task's Acc (share within its threshold). Both from every "
             "training seed's per-subtask rows, with a 95% CI (hierarchical bootstrap over seeds and subtasks, "
             "paired with the baseline) and `vs 0`: better / worse than the baseline when the Holm-adjusted p "
             "over the table's rows is below 0.05, else no detectable difference. s/it, RSS: "
             "seconds per training iteration and peak resident memory (MiB) of the train stage. "
             "`beats ref`: tasks on which the method beats the reference (hard sharing, uncertainty "
             "weighting) with the two 95% CIs apart. `*`: on the Pareto front of all tasks' metrics.", ""]
    for s in summaries:
        tasks = list(s["metrics"])
        lines += [f"Baseline (`tasks: single`): {s['baseline']}; reference: {s['reference'] or '(none in params)'}.", ""]
        for split in s["splits"]:
            lines += [f"## {s['experiment']}: {split}", "",
                      "| method | architecture | optimiser | loss weighting | schedule | distill | "
                      + " | ".join(tasks) + " | Delta-MTL % [95% CI] | vs 0 | Delta-Acc % [95% CI] | vs 0 | "
                      "s/it | RSS | beats ref |",
                      "|---" * (6 + len(tasks) + 7) + "|"]
            for r in s["methods"]:
                res = r["results"][split]
                star = "*" if r["method"] in s["pareto_front"][split] else ""
                name = r["method"] + star + (" (single)" if r["method"] == s["baseline"] else "")
                beats = ", ".join(r["beats_reference"].get(split, [])) or "-"
                if r["method"] == s["reference"]:
                    beats = "(ref)"
                arch = r["architecture"] if r["tasks"] == "multi" else "single"
                lines.append(f"| {name} | {arch} | {r['optimiser']} | {r['loss_weighting']} | {r['schedule']} | "
                             f"{r['distill'] or '-'} | "
                             + " | ".join(_cell(res[t], s["metrics"][t]["key"]) for t in tasks)
                             + "".join(f" | {delta_cells(r, split, f, r['method'] == s['baseline'])}"
                                       for f in ("delta_mtl", "delta_mtl_acc"))
                             + f" | {_fmt(r['seconds_per_iteration'], 3)} | {_fmt(r['peak_rss_mib'], 0)} | {beats} |")
            lines.append("")
    return "\n".join(lines)


def pareto_plot(summary: dict, split: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["metrics"])
    pairs = list(itertools.combinations(tasks, 2)) or [(tasks[0], tasks[0])]
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (a, b) in zip(axes.flat, pairs):
        ka, kb = summary["metrics"][a], summary["metrics"][b]
        points = {r["method"]: (r["results"][split][a], r["results"][split][b]) for r in summary["methods"]}
        front = set(pareto_front({m: (p[0][ka["key"]], p[1][kb["key"]]) for m, p in points.items()},
                                 (ka["higher_is_better"], kb["higher_is_better"])))
        for i, (m, (ra, rb)) in enumerate(points.items()):
            color, marker = f"C{i % 10}", "osD^v<>"[(i // 10) % 7]  # 10 colours: markers tell methods apart
            ax.errorbar(ra[ka["key"]], rb[kb["key"]], xerr=ra.get(f"{ka['key']}_ci95") or 0,
                        yerr=rb.get(f"{kb['key']}_ci95") or 0, fmt=marker, color=color, ecolor=color, alpha=0.8,
                        markerfacecolor=color if m in front else "white", label=m)
        for axis, t, k in (("x", a, ka), ("y", b, kb)):
            label = f"{t} {'accuracy (%)' if k['key'] == 'accuracy' else 'MSE'} ({'higher' if k['higher_is_better'] else 'lower'} is better)"
            getattr(ax, f"set_{axis}label")(label, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=7, frameon=False)
    fig.suptitle(f"{summary['experiment']} {split}: per-task metrics ± 95% CI\n(filled: on the Pareto front of the pair)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(labels) / 5), 1, 0.93))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def mtl_table(study, layout, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    exps = [e for e in study.experiments if study.experiment(e).kind.name == "multitask"]
    if not exps:
        raise UserError("analysis 'mtl-table' needs an experiment of kind multitask in params 'experiments'")
    summaries = [summarise(study, layout, e) for e in exps]
    for field in ("delta_mtl_ci", "delta_mtl_acc_ci"):
        _holm_verdicts(summaries, field)
    write_json(out_dir / "table.json", summaries)
    write_text(out_dir / "table.md", markdown(summaries))
    for s in summaries:
        for split in s["splits"]:
            pareto_plot(s, split, out_dir / f"pareto-{s['experiment']}-{split.replace(':', '-')}.png")
