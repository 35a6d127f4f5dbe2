localrules:
    aggregate,


rule aggregate:
    input:
        [
            f"metrics/runs/{e}/{m}/{f}"
            for e in EXPERIMENTS
            for m in METHODS
            for f in ("eval.json", "train_log.csv", "timing_train.json", "timing_eval.json")
        ],
    output:
        summary="metrics/summary.json",
        table="metrics/summary.md",
        accuracy=report(
            "metrics/plots/accuracy.png",
            caption="../report/accuracy.rst",
            category="Results",
        ),
        curves=report(
            "metrics/plots/val_curves.png",
            caption="../report/val_curves.rst",
            category="Training",
        ),
    params:
        experiments=EXPERIMENTS,
        methods=METHODS,
    threads: 1
    log:
        "logs/aggregate.log",
    shell:
        "python -m mtml aggregate --params {PARAMS} --threads 1 > {log} 2>&1"


rule analyse:
    input:
        "metrics/summary.json",
    output:
        directory("metrics/analysis/{analysis}"),
    params:
        experiments=EXPERIMENTS,
        methods=METHODS,
    threads: 1
    log:
        "logs/analyse/{analysis}.log",
    shell:
        "python -m mtml analyse --params {PARAMS} --name {wildcards.analysis} --threads 1 > {log} 2>&1"
