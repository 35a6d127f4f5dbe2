localrules:
    aggregate,
    analyse,


rule aggregate:
    input:
        [
            f"metrics/runs/{e}/{m}/{f}"
            for e in EXPERIMENTS
            for m in METHODS
            for f in (
                "eval.json",
                "train_log.csv",
                "timing_train.json",
                "timing_eval.json",
            )
        ],
    output:
        summary="metrics/summary.json",
        table=report(
            "metrics/summary.md",
            caption="../report/summary.rst",
            category="Results",
        ),
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
    log:
        "logs/aggregate.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        experiments=EXPERIMENTS,
        methods=METHODS,
    shell:
        f"python -m mtml aggregate --params {PARAMS} --threads 1 > {{log}} 2>&1"


rule analyse:
    input:
        "metrics/summary.json",
    output:
        report(
            directory("metrics/analysis/{analysis}"),
            patterns=["{figure}.png", "{table}.md"],
            caption="../report/analysis.rst",
            category="Analyses",
            subcategory="{analysis}",
        ),
    log:
        "logs/analyse/{analysis}.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        experiments=EXPERIMENTS,
        methods=METHODS,
    shell:
        f"python -m mtml analyse --params {PARAMS} --name {{wildcards.analysis}} --threads 1 > {{log}} 2>&1"
