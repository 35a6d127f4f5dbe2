rule prepare:
    output:
        directory("data/processed/{dataset}"),
    log:
        "logs/prepare/{dataset}.log",
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    params:
        dataset=lambda w: config["datasets"][w.dataset],
        seed=config["seed"],
    shell:
        f"python -m mtml prepare --params {PARAMS} --dataset {{wildcards.dataset}}"
        f" --threads {TORCH_THREADS} > {{log}} 2>&1"


rule episodes:
    input:
        experiment_datasets,
    output:
        directory("data/episodes/{experiment}"),
    log:
        "logs/episodes/{experiment}.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        experiment=lambda w: config["experiments"][w.experiment],
        evaluation=config["evaluation"],
        training=config["training"],
        seed=config["seed"],
    shell:
        f"python -m mtml episodes --params {PARAMS} --experiment {{wildcards.experiment}}"
        " --threads 1 > {log} 2>&1"
