rule prepare:
    output:
        directory("data/processed/{dataset}"),
    params:
        dataset=lambda w: config["datasets"][w.dataset],
        seed=config["seed"],
    threads: JOB_THREADS
    log:
        "logs/prepare/{dataset}.log",
    shell:
        "python -m mtml prepare --params {PARAMS} --dataset {wildcards.dataset}"
        " --threads {TORCH_THREADS} > {log} 2>&1"


rule episodes:
    input:
        experiment_datasets,
    output:
        directory("data/episodes/{experiment}"),
    params:
        experiment=lambda w: config["experiments"][w.experiment],
        evaluation=config["evaluation"],
        training=config["training"],
        seed=config["seed"],
    threads: 1
    log:
        "logs/episodes/{experiment}.log",
    shell:
        "python -m mtml episodes --params {PARAMS} --experiment {wildcards.experiment}"
        " --threads 1 > {log} 2>&1"
