localrules:
    aggregate,
    analyse,
    search_select,


rule aggregate:
    input:
        [s(p) for p in LAYOUT.all_run_files()],
    output:
        summary=s(LAYOUT.summary("summary.json")),
        table=report(
            s(LAYOUT.summary("summary.md")),
            caption="../report/summary.rst",
            category="Results",
        ),
        accuracy=report(
            s(LAYOUT.summary("plots/accuracy.png")),
            caption="../report/accuracy.rst",
            category="Results",
        ),
        curves=report(
            s(LAYOUT.summary("plots/val_curves.png")),
            caption="../report/val_curves.rst",
            category="Training",
        ),
        compare_json=s(LAYOUT.summary("compare.json")),
        compare=report(
            s(LAYOUT.summary("compare.md")),
            caption="../report/compare.rst",
            category="Results",
        ),
        forest=report(
            s(LAYOUT.summary("plots/compare.png")),
            caption="../report/forest.rst",
            category="Results",
        ),
    log:
        s(LAYOUT.log("aggregate", "aggregate")),
    conda:
        CONDA_ENV
    threads: 1
    params:
        experiments=STUDY.experiments,
        methods=STUDY.methods,
        seeds=STUDY.seeds,
        reference=STUDY.reference,
        comparisons=STUDY.comparisons,
        published=STUDY.published,
    shell:
        f"python -m mtml aggregate --threads 1 > {{log}} 2>&1"


# An analysis reads the summary, the runs' files, the models and the manifests.
rule analyse:
    input:
        [s(p) for p in analysis_inputs(LAYOUT) if p != LAYOUT.metrics / "runs"],
        [s(p) for p in LAYOUT.all_run_files()],
    output:
        report(
            directory(s(LAYOUT.analysis("{analysis}"))),
            patterns=["{figure}.png", "{table}.md"],
            caption="../report/analysis.rst",
            category="Analyses",
            subcategory="{analysis}",
        ),
    log:
        s(LAYOUT.log("analyse", "{analysis}")),
    conda:
        CONDA_ENV
    threads: 1
    params:
        experiments=STUDY.experiments,
        methods=STUDY.methods,
    shell:
        f"python -m mtml analyse --name {{wildcards.analysis}} --threads 1 > {{log}} 2>&1"
