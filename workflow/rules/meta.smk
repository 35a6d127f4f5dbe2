# Train and evaluate one method on one experiment with one training seed. Their `params:` are
# exactly the settings the stage reads, so changing one method's hyperparameter reruns only
# that method, and adding a seed runs only the new seed.
RUN = {"experiment": "{experiment}", "method": "{method}", "seed": "{seed}"}


rule train:
    input:
        experiment_episodes,
        run_selection,
        run_dependencies,
    output:
        model=s(LAYOUT.model(**RUN)),
        files=[s(p) for p in LAYOUT.run_files(**RUN, names=TRAIN_FILES)],
    log:
        s(LAYOUT.log("train", "{experiment}", "{method}", "seed-{seed}")),
    priority: train_priority
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=GPU,
    params:
        settings=run_settings,
    shell:
        f"python -m mtml train --experiment {{wildcards.experiment}}"
        f" --method {{wildcards.method}} --seed {{wildcards.seed}} --threads {TORCH_THREADS} > {{log}} 2>&1"


rule evaluate:
    input:
        episodes=experiment_episodes,
        model=s(LAYOUT.model(**RUN)),
        selection=run_selection,
    output:
        [s(p) for p in LAYOUT.run_files(**RUN, names=EVAL_FILES)],
    log:
        s(LAYOUT.log("evaluate", "{experiment}", "{method}", "seed-{seed}")),
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=GPU,
    params:
        settings=run_settings,
        evaluation=STUDY.params["evaluation"],
    shell:
        f"python -m mtml evaluate --experiment {{wildcards.experiment}}"
        f" --method {{wildcards.method}} --seed {{wildcards.seed}} --threads {TORCH_THREADS} > {{log}} 2>&1"
