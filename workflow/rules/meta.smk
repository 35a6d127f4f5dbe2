# Train and evaluate one method on one experiment. Their `params:` are exactly the settings
# the stage reads, so changing one method's hyperparameter reruns only that method.


def run_settings(w):
    return {
        "method": config["methods"][w.method],
        "experiment": config["experiments"][w.experiment],
        "training": config["training"],
        "seed": config["seed"],
        "device": config["device"],
    }


rule train:
    input:
        "data/episodes/{experiment}",
    output:
        model="models/{experiment}/{method}/model.pt",
        log="metrics/runs/{experiment}/{method}/train_log.csv",
        summary="metrics/runs/{experiment}/{method}/train.json",
        timing="metrics/runs/{experiment}/{method}/timing_train.json",
        trace="metrics/runs/{experiment}/{method}/trace.jsonl",
    params:
        settings=run_settings,
    threads: JOB_THREADS
    resources:
        gpu=GPU,
    log:
        "logs/train/{experiment}/{method}.log",
    shell:
        "python -m mtml train --params {PARAMS} --experiment {wildcards.experiment}"
        " --method {wildcards.method} --threads {TORCH_THREADS} > {log} 2>&1"


rule evaluate:
    input:
        episodes="data/episodes/{experiment}",
        model="models/{experiment}/{method}/model.pt",
    output:
        summary="metrics/runs/{experiment}/{method}/eval.json",
        episodes="metrics/runs/{experiment}/{method}/episodes.csv",
        timing="metrics/runs/{experiment}/{method}/timing_eval.json",
    params:
        settings=run_settings,
        evaluation=config["evaluation"],
    threads: JOB_THREADS
    resources:
        gpu=GPU,
    log:
        "logs/evaluate/{experiment}/{method}.log",
    shell:
        "python -m mtml evaluate --params {PARAMS} --experiment {wildcards.experiment}"
        " --method {wildcards.method} --threads {TORCH_THREADS} > {log} 2>&1"
