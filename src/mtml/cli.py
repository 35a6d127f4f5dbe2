"""Stage entry points: `python -m mtml <stage> ...`.

Snakemake rules and dvc.yaml stages call exactly these commands. Each stage parses its
arguments, loads the study (params files -> `mtml.study.Study`), and calls its driver in
`mtml.stages`; every path comes from `mtml.layout.Layout` (see there for the layout).
"""

from __future__ import annotations

import argparse
import os
import sys

from mtml.errors import UserError


def _setup(args):
    from mtml import params as P
    from mtml.layout import Layout
    from mtml.speed import keep_freed_memory
    from mtml.utils import seed_everything, set_threads

    keep_freed_memory()
    study = P.load(args.params)
    set_threads(args.threads or study.threads)
    seed_everything(study.seed)
    layout = Layout(".", study)
    if getattr(args, "dvc", False):
        from mtml.workflow_dvc import check_dvc_yaml

        check_dvc_yaml(layout)
    return study, layout


def _device(study):
    from mtml.utils import resolve_device

    return resolve_device(study.device)


def cmd_prepare(args):
    from mtml import stages

    study, layout = _setup(args)
    print(f"prepared {stages.prepare(study, layout, args.dataset)}")


def cmd_episodes(args):
    from mtml import stages

    study, layout = _setup(args)
    print(f"wrote episodes {stages.build_episodes(study, layout, args.experiment)}")


def cmd_train(args):
    from mtml import stages
    from mtml.search import resolve_run
    from mtml.utils import seed_everything

    study, layout = _setup(args)
    device = _device(study)
    if args.trial is not None and args.seed is not None:
        raise UserError("--trial and --seed exclude each other: a trial trains with the first of params 'seeds'")
    run = resolve_run(study, layout, args.experiment, args.method, args.seed, args.trial)
    seed_everything(run.seed)  # the global RNGs too follow the training seed
    res = stages.train(run, layout, device)
    print(f"trained {run.label} on {device}: {res}")


def cmd_evaluate(args):
    from mtml import stages
    from mtml.search import resolve_run
    from mtml.utils import seed_everything

    study, layout = _setup(args)
    run = resolve_run(study, layout, args.experiment, args.method, args.seed)
    seed_everything(run.seed)  # the global RNGs too follow the training seed
    rows = stages.evaluate(run, layout, _device(study))
    for r in rows:
        print(f"{run.label} {r['split']}:{r['dataset']} "
              f"{r['accuracy']:.2f} ± {r['ci95']:.2f} (NIL {r['nil_accuracy']:.2f})")


def cmd_select(args):
    from mtml.search import run_select

    study, layout = _setup(args)
    record = run_select(study, layout, args.experiment, args.method)
    best = record["trials"][record["selected"]]
    print(f"selected trial {record['selected']} of {len(record['trials'])} for {args.method} on {args.experiment}: "
          f"{best['best_val_accuracy']:.2f}% validation accuracy with {best['config']}")


def cmd_aggregate(args):
    from mtml import stages
    from mtml.analysis.aggregate import print_table

    study, layout = _setup(args)
    print_table(stages.aggregate(study, layout))


def cmd_analyse(args):
    from mtml import stages

    study, layout = _setup(args)
    print(f"wrote {stages.analyse(study, layout, args.name)}")


def numerics_names(text: str) -> list[str]:
    from mtml.benchmark import NUMERICS

    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in NUMERICS]
    if bad:
        raise UserError(f"--numerics {','.join(bad)}: unknown; choose from {', '.join(NUMERICS)}")
    return names


def cmd_benchmark(args):
    from mtml.benchmark import (
        benchmark,
        compare,
        print_benchmark,
        print_comparison,
        write_benchmark,
    )

    study, layout = _setup(args)
    exp = args.experiment or study.experiments[0]
    if args.against:
        from mtml.bench_learn2learn import against_learn2learn, print_against

        result = against_learn2learn(study, exp, args.repeats, args.iterations, args.episodes,
                                     args.meta_batch, args.image_size)
        print_against(result)
        out = args.out or f"bench/learn2learn-{result['device'].split(':')[0]}-{result['torch_threads']}t.json"
        write_benchmark(result, out)
        print(f"wrote {out}")
        return
    if args.compare:
        batches = [int(b) for b in args.eval_batches.split(",")]
        if batches[0] != 1:
            raise UserError("--eval-batches starts with 1 (the reference loop the others are compared with)")
        result = compare(study, exp, args.repeats, args.iterations, args.episodes, batches,
                         args.image_size, args.meta_batch, numerics_names(args.numerics))
        print_comparison(result)
        out = args.out or f"bench/compare-{result['device'].split(':')[0]}.json"
        write_benchmark(result, out)
        print(f"wrote {out}")
        return
    result = benchmark(study, layout, exp, args.iterations, args.episodes)
    print_benchmark(result)
    out = args.out or f"bench/benchmark-{result['device'].split(':')[0]}.json"
    write_benchmark(result, out)
    print(f"wrote {out}")


def cmd_validate(args):
    study, _ = _setup(args)
    print(f"params OK: study {study.name!r}")


def cmd_dvc_yaml(args):
    from mtml.workflow_dvc import write_dvc_yaml

    study, layout = _setup(args)
    path = write_dvc_yaml(layout, args.params)
    print(f"wrote {path} for study {study.name!r}")


def cmd_docs_tables(args):
    from mtml.analysis.docs_tables import update

    changed = update(".", check=args.check)
    if args.check and changed:
        raise UserError("result tables differ from the committed metrics in " + "; ".join(changed)
                        + "; run `python -m mtml docs-tables` and commit the documents")
    print(("checked" if args.check else "regenerated") + f" result tables; {len(changed)} block(s) "
          + ("differ" if args.check else "changed") + (f": {', '.join(changed)}" if changed else ""))


def cmd_schema(args):
    import yaml

    from mtml.params import params_schema

    print(yaml.safe_dump(params_schema(), sort_keys=False, width=100), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtml", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", nargs="+", default=os.environ.get("MTML_PARAMS", "params.yaml").split(),
                        help="params files; later ones override earlier ones (default: $MTML_PARAMS, which "
                             "Snakemake sets for its jobs, else params.yaml)")
    common.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: params 'threads')")
    common.add_argument("--dvc", action="store_true",
                        help="called by dvc.yaml: first check that dvc.yaml was generated from these params")
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("prepare", parents=[common], help="download or generate a dataset, then split it")
    p.add_argument("--dataset", required=True)
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("episodes", parents=[common], help="write fixed val/test/cross-domain manifests")
    p.add_argument("--experiment", required=True)
    p.set_defaults(func=cmd_episodes)
    for name, func, text in (("train", cmd_train, "meta-train one method"),
                             ("evaluate", cmd_evaluate, "evaluate one method on fixed episodes")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--experiment", required=True)
        p.add_argument("--method", required=True)
        p.add_argument("--seed", type=int, default=None,
                       help="training seed, one of params 'seeds' (default: the first)")
        if name == "train":
            p.add_argument("--trial", type=int, default=None,
                           help="train this trial of the method's hyperparameter search (params 'search')")
        p.set_defaults(func=func)
    p = sub.add_parser("select", parents=[common], help="pick the best trial of a hyperparameter search")
    p.add_argument("--experiment", required=True)
    p.add_argument("--method", required=True)
    p.set_defaults(func=cmd_select)
    p = sub.add_parser("aggregate", parents=[common], help="summary.json, tables and plots")
    p.set_defaults(func=cmd_aggregate)
    p = sub.add_parser("analyse", parents=[common], help="draw one analysis (under metrics/<study>/analysis/)")
    p.add_argument("--name", required=True)
    p.set_defaults(func=cmd_analyse)
    p = sub.add_parser("benchmark", parents=[common], help="iterations/s and episodes/s of each method")
    p.add_argument("--experiment", default=None, help="episode setting to time (default: the first experiment)")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--out", default=None, help="JSON output (default: bench/benchmark-<device>.json)")
    p.add_argument("--compare", action="store_true",
                   help="time the speed options side by side instead (training.task_parallel loop vs vmap, "
                        "evaluation.episode_batch values), interleaved; --iterations and --episodes are per timed call")
    p.add_argument("--against", choices=["learn2learn"], default=None,
                   help="time our MAML and ANIL against learn2learn's (optional `bench` extra), interleaved; "
                        "--iterations and --episodes are per timed call")
    p.add_argument("--eval-batches", default="1,4,8", help="with --compare: episode_batch values, 1 first (default 1,4,8)")
    p.add_argument("--numerics", default="reference",
                   help="with --compare: comma-separated numerics (reference, tf32, bf16, tf32+bf16, channels_last); each beyond "
                        "reference adds vmap training and the largest episode batch with it (mtml.speed)")
    p.add_argument("--repeats", type=int, default=5, help="with --compare/--against: interleaved repeats (median reported)")
    p.add_argument("--image-size", type=int, default=None, help="with --compare/--against: square image side (default: the experiment's)")
    p.add_argument("--meta-batch", type=int, default=None, help="with --compare/--against: tasks per meta-batch (default: training.meta_batch)")
    p.set_defaults(func=cmd_benchmark)
    p = sub.add_parser("validate", parents=[common], help="check params and exit")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("dvc-yaml", parents=[common], help="write dvc.yaml for the params (after editing them)")
    p.set_defaults(func=cmd_dvc_yaml)
    p = sub.add_parser("docs-tables", help="regenerate the result tables of README.md and docs/*.md "
                       "from the committed metrics/<study>/ files (mtml.analysis.docs_tables)")
    p.add_argument("--check", action="store_true", help="only compare; fail when a table differs")
    p.set_defaults(func=cmd_docs_tables)
    p = sub.add_parser("schema", help="print the params JSON Schema, every declared option included")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"mtml {args.stage}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mtml {args.stage}: interrupted; outputs written so far are complete, rerun to continue",
              file=sys.stderr)
        return 130
    return 0
