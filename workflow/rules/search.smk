# Hyperparameter search (params `search`, src/mtml/search.py): per searched experiment x
# method, one train job per trial (independent, so a cluster runs them at once), then
# `search_select`, whose selection.json the method's own train and evaluate jobs read.
TRIAL = {"experiment": "{experiment}", "method": "{method}", "trial": "{trial}"}


rule search_trial:
    input:
        experiment_episodes,
    output:
        model=s(LAYOUT.trial_model(**TRIAL)),
        files=[s(p) for p in LAYOUT.trial_files(**TRIAL)],
    log:
        s(LAYOUT.log("search", "{experiment}", "{method}", "trial-{trial}")),
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=GPU,
    params:
        settings=trial_settings,
    shell:
        f"python -m mtml train --experiment {{wildcards.experiment}}"
        f" --method {{wildcards.method}} --trial {{wildcards.trial}} --threads {TORCH_THREADS} > {{log}} 2>&1"


rule search_select:
    input:
        trial_results,
    output:
        selection=s(LAYOUT.selection("{experiment}", "{method}")),
        table=report(
            s(LAYOUT.search_table("{experiment}", "{method}")),
            caption="../report/search.rst",
            category="Search",
            subcategory="{method}",
        ),
    log:
        s(LAYOUT.log("search", "{experiment}", "{method}", "select")),
    conda:
        CONDA_ENV
    threads: 1
    params:
        search=lambda w: STUDY.params["search"][w.method],
    shell:
        "python -m mtml select --experiment {wildcards.experiment}"
        " --method {wildcards.method} --threads 1 > {log} 2>&1"
