rule prepare:
    output:
        directory(s(LAYOUT.prepared_path("{dataset}", "{key}"))),
    log:
        s(LAYOUT.log("prepare", "{dataset}-{key}")),
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    params:
        dataset=lambda w: STUDY.dataset(w.dataset),
        seed=STUDY.seed,
    shell:
        f"python -m mtml prepare --dataset {{wildcards.dataset}}"
        f" --threads {TORCH_THREADS} > {{log}} 2>&1"


rule episodes:
    input:
        experiment_datasets,
    output:
        directory(s(LAYOUT.episodes_path("{experiment}", "{key}"))),
    log:
        s(LAYOUT.log("episodes", "{experiment}-{key}")),
    conda:
        CONDA_ENV
    threads: 1
    params:
        experiment=lambda w: STUDY.experiment(w.experiment).episode_inputs(),
        seed=STUDY.seed,
    shell:
        f"python -m mtml episodes --experiment {{wildcards.experiment}}"
        " --threads 1 > {log} 2>&1"
