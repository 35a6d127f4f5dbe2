# Train and evaluate one method on one experiment. Their `params:` are exactly the settings
# the stage reads, so changing one method's hyperparameter reruns only that method.


rule train:
    input:
        "data/episodes/{experiment}",
    output:
        model="models/{experiment}/{method}/model.pt",
        log="metrics/runs/{experiment}/{method}/train_log.csv",
        summary="metrics/runs/{experiment}/{method}/train.json",
        timing="metrics/runs/{experiment}/{method}/timing_train.json",
        trace="metrics/runs/{experiment}/{method}/trace.jsonl",
    log:
        "logs/train/{experiment}/{method}.log",
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=GPU,
    params:
        settings=run_settings,
    shell:
        f"python -m mtml train --params {PARAMS} --experiment {{wildcards.experiment}}"
        f" --method {{wildcards.method}} --threads {TORCH_THREADS} > {{log}} 2>&1"


rule evaluate:
    input:
        episodes="data/episodes/{experiment}",
        model="models/{experiment}/{method}/model.pt",
    output:
        summary="metrics/runs/{experiment}/{method}/eval.json",
        episodes="metrics/runs/{experiment}/{method}/episodes.csv",
        timing="metrics/runs/{experiment}/{method}/timing_eval.json",
    log:
        "logs/evaluate/{experiment}/{method}.log",
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=GPU,
    params:
        settings=run_settings,
        evaluation=config["evaluation"],
    shell:
        f"python -m mtml evaluate --params {PARAMS} --experiment {{wildcards.experiment}}"
        f" --method {{wildcards.method}} --threads {TORCH_THREADS} > {{log}} 2>&1"
