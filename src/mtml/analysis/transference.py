"""Task transference in multimodal meta-learning (Abdollahzadeh et al. 2021, sec. 3).

For a source meta-train task i and a target meta-test task j,

    LR(i -> j) = L_j(Q_j; theta_i^{t+1}, S_j) / L_j(Q_j; theta^t, S_j),

where theta_i^{t+1} is the meta-model after one meta-update on task i alone (an SGD step of
size `step_size` on task i's meta-loss) and L_j is the target's query loss after adapting on
its support set (the method's own meta-loss of task j). LR < 1: the update on i helped j
(positive transfer); LR > 1: it hurt j.

The trainer keeps only the best weights, so the analysis snapshots a short retrain of its
own: the method is rebuilt at its seeded initialisation and meta-trained on the experiment's
training stream (the same tasks, in the same order, as the real run), with snapshots at
evenly spaced iterations; the trained model.pt is the last snapshot when it exists. With
several training seeds (`seeds`) this is done for each seed's run (its initialisation, its
training stream, its model.pt), and the shares and mode matrices pool the seeds (summary.json
also lists each seed's share). Source tasks are drawn from the training distribution (modes
mixed by `mode_mix`, the same for every seed), targets are the first test episodes of every mode.

Writes, per multimodal experiment: `ratios.csv` (every LR), `histograms-<exp>.png` (LR over
the sources for one fixed target, per method and snapshot, coloured by the source's mode),
`modes-<exp>.png` (mean LR from each source mode to each target mode at the last snapshot),
`summary.json` and `transference.md` (its numbers as tables). Settings: `experiments.<exp>.options.transference` (see
mtml.multimodal.config). Paths come from the study's `Layout`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtml.episodes.sampler import manifest_episodes
from mtml.errors import UserError
from mtml.methods.base import Episode, MetaLearner
from mtml.multimodal.sampler import MultimodalStream
from mtml.stages import init_learner, load_banks, read_manifests, training_stream
from mtml.training.checkpoint import load_model
from mtml.utils import atomic_path, derive_seed, resolve_device

DEFAULT_ALGORITHMS = ("maml", "mmaml-kml")


def task_loss(learner: MetaLearner, episode: Episode) -> float:
    """L_j: the query loss after adapting on the support set (the method's meta-loss)."""
    with torch.no_grad():
        return float(learner.meta_loss([episode])[0])


def transference_ratios(learner: MetaLearner, sources: list[Episode], targets: list[Episode],
                        step_size: float) -> np.ndarray:
    """LR(i -> j) for every source i and target j: array [len(sources), len(targets)]."""
    params = [p for p in learner.parameters() if p.requires_grad]
    probe = copy.deepcopy(learner)  # holds theta_i^{t+1}; `learner` keeps theta^t
    probe_params = [p for p in probe.parameters() if p.requires_grad]
    base = np.array([task_loss(learner, t) for t in targets])
    out = np.empty((len(sources), len(targets)))
    for i, source in enumerate(sources):
        loss, _ = learner.meta_loss([source])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for q, p, g in zip(probe_params, params, grads):
                q.copy_(p if g is None else p - step_size * g)
        out[i] = np.array([task_loss(probe, t) for t in targets]) / base
    return out


def mode_matrix(ratios: np.ndarray, source_modes, target_modes, n_modes: int) -> np.ndarray:
    """Mean LR from sources of mode a (row) to targets of mode b (column); NaN where empty."""
    src, tgt = np.asarray(source_modes), np.asarray(target_modes)
    out = np.full((n_modes, n_modes), np.nan)
    for a in range(n_modes):
        for b in range(n_modes):
            block = ratios[np.ix_(src == a, tgt == b)]
            if block.size:
                out[a, b] = block.mean()
    return out


def _snapshots(run, layout, banks, opts, device):
    """[(label, state_dict)]: a seeded short retrain at evenly spaced iterations, then the
    trained model (model.pt) when there is one."""
    exp = run.experiment
    tcfg = run.training
    learner = init_learner(run, exp.kind.context(exp, banks), device)
    stream = training_stream(run, banks)
    model_path = layout.model(exp.name, run.method, run.seed)
    total = opts["retrain_iterations"] if learner.trainable else 0
    marks = sorted(set(np.linspace(0, total, opts["snapshots"]).round().astype(int).tolist()))
    optimizer = learner.make_optimizer(tcfg["meta_lr"]) if learner.trainable else None
    states = []
    for it in range(total + 1):
        if it in marks:
            states.append((f"iteration {it}", copy.deepcopy(learner.state_dict())))
        if it < total:
            learner.train_step(stream.batch(tcfg["meta_batch"]), optimizer,
                               lambda: stream.batch(tcfg["meta_batch"]))
    if model_path.exists():
        states.append(("trained", load_model(model_path, device)["state"]))
    return learner, states


def _analysed_methods(study, exp: str, opts: dict) -> list[str]:
    if opts["methods"] is not None:
        return list(opts["methods"])
    return [m for m in study.methods if study.run(exp, m).cls.algorithm in DEFAULT_ALGORITHMS]


def analyse_experiment(study, layout, exp: str, device) -> pd.DataFrame:
    """Every LR of experiment `exp` as rows (method, seed, snapshot, source, target, modes, ratio)."""
    e = study.experiment(exp)
    mm = e.settings
    opts = mm.transference
    banks = load_banks(e, layout, mm.modes, device)
    src_stream = MultimodalStream([banks[d] for d in mm.modes], mm.mode_mix, "train", e.ways, e.shots, e.queries,
                                  derive_seed(study.seed, exp, "transference-sources"), mm.batch_mix)
    sources = src_stream.batch(opts["sources"])
    targets = []
    for spec, manifest in read_manifests(e, layout, ("test",)):
        manifest = manifest[manifest["episode"] < opts["targets"]]
        targets += [ep for _, ep in manifest_episodes(banks[spec.dataset], manifest)]
    rows = []
    for meth in _analysed_methods(study, exp, opts):
        for seed in study.seeds:
            learner, states = _snapshots(study.run(exp, meth, seed), layout, banks, opts, device)
            for label, state in states:
                learner.load_state_dict(state)
                ratios = transference_ratios(learner, sources, targets, opts["step_size"])
                for i, s in enumerate(sources):
                    for j, t in enumerate(targets):
                        rows.append({"experiment": exp, "method": meth, "seed": seed, "snapshot": label,
                                     "source": i, "source_mode": s.mode, "target": j, "target_mode": t.mode,
                                     "ratio": ratios[i, j]})
    return pd.DataFrame(rows)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def plot_histograms(frame: pd.DataFrame, modes: list[str], path: Path) -> None:
    """LR over the sources for the fixed target 0, per method (row) and snapshot (column),
    every training seed's ratios together."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = frame[frame["target"] == 0]
    seeds = fixed["seed"].nunique()
    pooled = f", {seeds} seeds" if seeds > 1 else ""
    methods, snaps = list(dict.fromkeys(fixed["method"])), list(dict.fromkeys(fixed["snapshot"]))
    fig, axes = plt.subplots(len(methods), len(snaps), figsize=(3.6 * len(snaps), 2.8 * len(methods)),
                             squeeze=False, sharey="row")
    for r, meth in enumerate(methods):
        for c, snap in enumerate(snaps):
            ax, g = axes[r][c], fixed[(fixed["method"] == meth) & (fixed["snapshot"] == snap)]
            bins = np.histogram_bin_edges(g["ratio"], bins=20)
            ax.hist([g.loc[g["source_mode"] == m, "ratio"] for m in range(len(modes))], bins=bins,
                    stacked=True, label=[f"source {m}" for m in modes])
            ax.axvline(1.0, color="k", lw=1, ls="--")
            ax.set_title(f"{meth}, {snap}{pooled}\nLR<1 (helps): {100 * (g['ratio'] < 1).mean():.0f}%", fontsize=8)
            ax.set_xlabel(f"LR(i -> target 0, mode {modes[int(g['target_mode'].iloc[0])]})", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)


def plot_mode_heatmaps(frame: pd.DataFrame, modes: list[str], path: Path) -> dict:
    """Mean LR from each source mode (rows) to each target mode (columns), last snapshot, over
    every training seed (each pair's ratio is first averaged over the seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(frame["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 + 1.1 * len(modes) * len(methods), 3.4),
                             squeeze=False)
    matrices = {}
    for ax, meth in zip(axes[0], methods):
        g = frame[frame["method"] == meth]
        last = g["snapshot"].iloc[-1]
        g = g[g["snapshot"] == last]
        pairs = (g.groupby(["source", "target", "source_mode", "target_mode"], as_index=False)["ratio"].mean()
                 .sort_values(["source", "target"]))
        ratios = pairs.pivot(index="source", columns="target", values="ratio").to_numpy()
        src = pairs.drop_duplicates("source").sort_values("source")["source_mode"].to_numpy()
        tgt = pairs.drop_duplicates("target").sort_values("target")["target_mode"].to_numpy()
        m = mode_matrix(ratios, src, tgt, len(modes))
        matrices[meth] = {"snapshot": last, "mean_ratio": m.round(6).tolist()}
        spread = max(float(np.nanmax(np.abs(m - 1))), 1e-6)
        im = ax.imshow(m, cmap="RdBu_r", vmin=1 - spread, vmax=1 + spread)
        for (a, b), v in np.ndenumerate(m):
            ax.text(b, a, f"{v:.4f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(modes)), modes, rotation=30, fontsize=7)
        ax.set_yticks(range(len(modes)), modes, fontsize=7)
        ax.set_xlabel("target mode")
        ax.set_ylabel("source mode")
        ax.set_title(f"{meth} ({last}): mean LR", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)
    return matrices


def _shares(frame: pd.DataFrame) -> dict:
    """Per method and snapshot, over every seed's pairs: the mean LR and the share of pairs with
    LR < 1 (positive transfer), and each seed's share (how far one trained model's share moves)."""
    out = {}
    for (meth, snap), g in frame.groupby(["method", "snapshot"], sort=False):
        out[f"{meth}/{snap}"] = {
            "mean_ratio": round(float(g["ratio"].mean()), 6),
            "positive_transfer": round(float((g["ratio"] < 1).mean()), 4),
            "pairs": int(len(g)),
            "positive_transfer_per_seed": {str(seed): round(float((v < 1).mean()), 4)
                                           for seed, v in g.groupby("seed")["ratio"]}}
    return out


def transference(study, layout, out_dir: Path) -> None:
    exps = [e for e in study.experiments if study.experiment(e).kind.name == "multimodal"]
    if not exps:
        raise UserError("analysis 'transference' needs an experiment of kind multimodal in params 'experiments'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(study.device)
    frames, summary = [], {}
    for exp in exps:
        mm = study.experiment(exp).settings
        modes = list(mm.modes)
        frame = analyse_experiment(study, layout, exp, device)
        if frame.empty:
            raise UserError(f"analysis 'transference' found no method to analyse in experiment {exp!r}: "
                            f"add a method with algorithm {' or '.join(DEFAULT_ALGORITHMS)}, or list "
                            f"methods in experiments.{exp}.options.transference.methods")
        frames.append(frame)
        plot_histograms(frame, modes, out_dir / f"histograms-{exp}.png")
        matrices = plot_mode_heatmaps(frame, modes, out_dir / f"modes-{exp}.png")
        summary[exp] = {"modes": modes, "settings": mm.transference, "seeds": list(study.seeds),
                        "mode_matrix": matrices, "snapshots": _shares(frame)}
    pd.concat(frames).to_csv(out_dir / "ratios.csv", index=False, float_format="%.8g")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "transference.md").write_text(markdown(summary))


def markdown(summary: dict) -> str:
    """summary.json as tables a person reads: per experiment the share of positive transfer per
    method and snapshot (pooled over seeds, then each seed's), and the mode-to-mode mean LR."""
    lines = ["# Transference", "",
             "LR(i -> j) = target j's query loss after one meta-update on source task i / before it; "
             "LR < 1: the update on i helped j (positive transfer). Pairs share sources and targets, "
             "so they are not independent: the spread of the per-seed shares, not a binomial interval, "
             "shows how much a share moves with the trained model.", ""]
    for exp, s in summary.items():
        cfg, seeds = s["settings"], s["seeds"]
        lines += [f"## {exp}", "",
                  f"{cfg['sources']} source tasks x {cfg['targets']} target episodes per mode ({len(s['modes'])} modes), "
                  f"step {cfg['step_size']}, {len(seeds)} training seed{'s' if len(seeds) != 1 else ''} "
                  f"({', '.join(map(str, seeds))}); snapshots of a {cfg['retrain_iterations']}-iteration retrain, "
                  "then the trained model.", "",
                  "| method | snapshot | mean LR | LR < 1 (pooled) | LR < 1 per seed | pairs |", "|---|---|---|---|---|---|"]
        for key, v in s["snapshots"].items():
            meth, snap = key.split("/", 1)
            per = ", ".join(f"{100 * x:.0f}%" for x in v["positive_transfer_per_seed"].values())
            lines.append(f"| {meth} | {snap} | {v['mean_ratio']:.4f} | {100 * v['positive_transfer']:.1f}% | "
                         f"{per} | {v['pairs']} |")
        for meth, m in s["mode_matrix"].items():
            lines += ["", f"Mean LR of {meth} ({m['snapshot']}), source mode (row) -> target mode (column):", "",
                      "| source \\ target | " + " | ".join(s["modes"]) + " |", "|---" * (len(s["modes"]) + 1) + "|"]
            lines += [f"| {a} | " + " | ".join("" if v is None or v != v else f"{v:.4f}" for v in row) + " |"
                      for a, row in zip(s["modes"], m["mean_ratio"])]
        lines.append("")
    return "\n".join(lines)
