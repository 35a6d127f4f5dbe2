import os
import re

from snakemake.utils import min_version, validate

import tempfile

import yaml

from mtml.errors import UserError
from mtml.params import experiment_datasets as mtml_experiment_datasets
from mtml.params import params_schema as mtml_params_schema
from mtml.params import read_file as mtml_read_file
from mtml.params import validate as mtml_validate

min_version("8.10")

# Our one-line checks first (the files Snakemake read, re-read for repeated keys, which YAML
# silently drops; then the schema, the names that link sections and every declared method
# hyperparameter and dataset option): the same ones every `python -m mtml` stage runs. Then
# Snakemake's own schema check with the generated schema (it takes a file, not a dict; no
# defaults filled: the config stays what our validate returns, which the stages see too).
try:
    for _file in workflow.overwrite_configfiles or ["params.yaml"]:
        mtml_read_file(_file)
    _validated = mtml_validate(config)
except UserError as err:
    raise WorkflowError(f"params: {err}")
config.clear()  # in place: Snakemake's own reference to the config sees the defaults too
config.update(_validated)
with tempfile.NamedTemporaryFile("w", suffix=".schema.yaml") as _schema:
    yaml.safe_dump(mtml_params_schema(), _schema)
    _schema.flush()
    validate(config, _schema.name, set_default=False)

# Jobs read the same files Snakemake read (params.yaml, or the --configfile ones instead), so
# a stage sees exactly this config. (--config key=value would not reach the stages.)
PARAMS = " ".join(map(str, workflow.overwrite_configfiles)) or "params.yaml"

# PARAMS and TORCH_THREADS are constants of a run, written into the shell commands when the
# workflow is read (f-strings), not `params:`: those would rerun every job when merely the list
# of --configfile paths changed (dvc.yaml tracks the same settings, not the file names).

# The software of every stage (relative to workflow/rules/): used with `--sdm conda`;
# otherwise jobs run the `python` on PATH (the activated .venv).
CONDA_ENV = "../envs/mtml.yaml"

DATASETS = list(config["datasets"])
EXPERIMENTS = list(config["experiments"])
METHODS = list(config["methods"])
ANALYSES = list(config["analyses"])


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    experiment="|".join(map(re.escape, EXPERIMENTS)),
    method="|".join(map(re.escape, METHODS)),


def _uses_gpu():
    if config["device"] == "cpu":
        return 0
    if config["device"] == "cuda":
        return 1
    import torch

    return int(torch.cuda.is_available())


GPU = _uses_gpu()
# Torch threads per job come from params (`threads`), as for `dvc repro`: the thread count
# changes float reduction order, and the same params must give the same numbers. With --cores
# above the machine's CPUs (e.g. --cores 8 on a 2-core laptop) each job declares
# proportionally more threads, so Snakemake never starts more concurrent work than there are CPUs.
TORCH_THREADS = config["threads"]
# (No --cores on a cluster run, where workflow.cores would raise.)
_cores = workflow.resource_settings.cores
_scale = max(1, (_cores or 0) // (os.cpu_count() or 1)) if _cores else 1
JOB_THREADS = TORCH_THREADS * _scale


def run_dir(root, w):
    return f"{root}/{w.experiment}/{w.method}"


def experiment_datasets(w):
    return [
        f"data/processed/{d}" for d in mtml_experiment_datasets(config, w.experiment)
    ]


# What train/evaluate read: their `params:` (workflow/rules/meta.smk).
def run_settings(w):
    return {
        "method": config["methods"][w.method],
        "experiment": config["experiments"][w.experiment],
        "training": config["training"],
        "seed": config["seed"],
        "device": config["device"],
    }


def run_outputs(exp, meth):
    return [
        f"models/{exp}/{meth}/model.pt",
        f"metrics/runs/{exp}/{meth}/train_log.csv",
        f"metrics/runs/{exp}/{meth}/eval.json",
    ]


ALL_OUTPUTS = [f"metrics/analysis/{a}" for a in ANALYSES] + [
    "metrics/summary.json",
    "metrics/summary.md",
    "metrics/plots/accuracy.png",
    "metrics/plots/val_curves.png",
]


# A SLURM run needs a partition and an account: workflow/profiles/slurm takes them from
# $SBATCH_PARTITION / $SBATCH_ACCOUNT. Check what the cluster jobs resolved to once, before the
# first submission, so a missing one is one clear error instead of a failed sbatch per job.
SLURM_SETTINGS = {
    "slurm_partition": ("partition", "SBATCH_PARTITION", "`sinfo -s` lists partitions"),
    "slurm_account": (
        "account",
        "SBATCH_ACCOUNT",
        "`sacctmgr show assoc user=$USER` lists accounts",
    ),
}


def check_slurm_resources():
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm":
        return
    wanted = set(SLURM_SETTINGS)
    if workflow.executor_settings.no_account:
        wanted.remove("slurm_account")
    missing = set()
    for job in workflow.dag.needrun_jobs():
        if not job.is_local:
            # Unset: empty (the slurm profile), or "$NAME" when written as $NAME.
            missing |= {
                r for r in wanted if str(job.resources.get(r) or "$").startswith("$")
            }
    if missing:
        what = [SLURM_SETTINGS[r] for r in SLURM_SETTINGS if r in missing]
        raise WorkflowError(
            f"SLURM: no {' and no '.join(w[0] for w in what)} for the cluster jobs, nothing was"
            f" submitted. Set {' '.join(f'{w[1]}=<{w[0]}>' for w in what)} in the environment"
            f" ({', '.join(w[2] for w in what)})"
            + (
                "; on a cluster without accounts add --slurm-no-account"
                if "slurm_account" in missing
                else ""
            )
            + "."
        )


onstart:
    check_slurm_resources()
