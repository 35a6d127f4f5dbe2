"""Stage entry points: `python -m mtml <stage> ...`.

Snakemake rules and dvc.yaml stages call exactly these commands. Each stage parses its
arguments, loads params, calls the library and writes its outputs atomically. Paths follow
one layout relative to the working directory:

  data/raw/<dataset>/        downloads            data/processed/<dataset>/   prepared arrays
  data/episodes/<exp>/       fixed manifests      models/<exp>/<method>/      weights, checkpoint
  metrics/<exp>/<method>/    logs, evaluations    metrics/summary.*, metrics/plots/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtml.errors import UserError

RAW, PROCESSED, EPISODES = Path("data/raw"), Path("data/processed"), Path("data/episodes")
MODELS, METRICS = Path("models"), Path("metrics")


def _setup(args):
    from mtml import params as P
    from mtml.utils import seed_everything, set_threads

    params = P.load(args.params)
    set_threads(args.threads or params["threads"])
    seed_everything(params["seed"])
    return params


def cmd_prepare(args):
    from mtml.data.sources import prepare_dataset

    params = _setup(args)
    if args.dataset not in params["datasets"]:
        raise UserError(f"dataset {args.dataset!r} is not in params 'datasets'; defined: {', '.join(params['datasets'])}")
    out = prepare_dataset(args.dataset, params["datasets"][args.dataset], RAW, PROCESSED, params["seed"])
    print(f"prepared {out}")


def _kind(params, exp):
    from mtml.kinds import KINDS
    from mtml.params import experiment

    return KINDS[experiment(params, exp)["kind"]]


def cmd_episodes(args):
    params = _setup(args)
    out = _kind(params, args.experiment).episodes(params, args.experiment, PROCESSED, EPISODES)
    print(f"wrote episodes {out}")


def cmd_train(args):
    from mtml.utils import resolve_device

    params = _setup(args)
    device = resolve_device(params["device"])
    res = _kind(params, args.experiment).train(params, args.experiment, args.method, PROCESSED, EPISODES,
                MODELS / args.experiment / args.method, METRICS / "runs" / args.experiment / args.method, device)
    print(f"trained {args.experiment}/{args.method} on {device}: {res}")


def cmd_evaluate(args):
    from mtml.utils import resolve_device

    params = _setup(args)
    device = resolve_device(params["device"])
    rows = _kind(params, args.experiment).evaluate(params, args.experiment, args.method, MODELS / args.experiment / args.method / "model.pt",
                    PROCESSED, EPISODES, METRICS / "runs" / args.experiment / args.method, device)
    for r in rows:
        print(f"{r['experiment']}/{r['method']} {r['split']}:{r['dataset']} "
              f"{r['accuracy']:.2f} ± {r['ci95']:.2f} (NIL {r['nil_accuracy']:.2f})")


def cmd_aggregate(args):
    from mtml.analysis.aggregate import aggregate, print_table

    params = _setup(args)
    print_table(aggregate(params, METRICS))


def cmd_analyse(args):
    from mtml.analysis.registry import ANALYSES

    params = _setup(args)
    if args.name not in ANALYSES:
        raise UserError(f"analysis {args.name!r} is unknown; allowed: {', '.join(sorted(ANALYSES))}")
    from mtml.utils import atomic_path

    with atomic_path(METRICS / "analysis" / args.name) as tmp:
        tmp.mkdir()
        ANALYSES[args.name](params, METRICS, tmp)
    print(f"wrote {METRICS / 'analysis' / args.name}")


def cmd_benchmark(args):
    from mtml.benchmark import (
        benchmark,
        compare,
        print_benchmark,
        print_comparison,
        write_benchmark,
    )

    params = _setup(args)
    exp = args.experiment or next(iter(params["experiments"]))
    if args.against:
        from mtml.bench_learn2learn import against_learn2learn, print_against

        result = against_learn2learn(params, exp, args.repeats, args.iterations, args.episodes,
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
        result = compare(params, exp, args.repeats, args.iterations, args.episodes, batches,
                         args.image_size, args.meta_batch)
        print_comparison(result)
        out = args.out or f"bench/compare-{result['device'].split(':')[0]}.json"
        write_benchmark(result, out)
        print(f"wrote {out}")
        return
    result = benchmark(params, exp, args.iterations, args.episodes)
    print_benchmark(result)
    out = args.out or f"bench/benchmark-{result['device'].split(':')[0]}.json"
    write_benchmark(result, out)
    print(f"wrote {out}")


def cmd_validate(args):
    _setup(args)
    print("params OK")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtml", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", nargs="+", default=["params.yaml"],
                        help="params files; later ones override earlier ones (default: params.yaml)")
    common.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: params 'threads')")
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
        p.set_defaults(func=func)
    p = sub.add_parser("aggregate", parents=[common], help="summary.json, tables and plots")
    p.set_defaults(func=cmd_aggregate)
    p = sub.add_parser("analyse", parents=[common], help="draw one analysis (figures under metrics/analysis/)")
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
    p.add_argument("--repeats", type=int, default=5, help="with --compare/--against: interleaved repeats (median reported)")
    p.add_argument("--image-size", type=int, default=None, help="with --compare/--against: square image side (default: the experiment's)")
    p.add_argument("--meta-batch", type=int, default=None, help="with --compare/--against: tasks per meta-batch (default: training.meta_batch)")
    p.set_defaults(func=cmd_benchmark)
    p = sub.add_parser("validate", parents=[common], help="check params and exit")
    p.set_defaults(func=cmd_validate)
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
