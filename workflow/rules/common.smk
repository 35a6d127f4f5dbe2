import os
import re
import shlex
import tempfile

import yaml
from snakemake.utils import min_version, validate

from mtml.errors import UserError
from mtml.layout import EVAL_FILES, TRAIN_FILES, Layout
from mtml.params import params_schema as mtml_params_schema
from mtml.params import read_file as mtml_read_file
from mtml.params import study as mtml_study
from mtml.workflow_dvc import analysis_inputs

min_version("8.10")

# Jobs read the same files Snakemake read (params.yaml, or the --configfile ones instead), so
# a stage sees exactly this config. (--config key=value would not reach the stages.)
PARAMS_FILES = [str(f) for f in workflow.overwrite_configfiles] or ["params.yaml"]
PARAMS = " ".join(PARAMS_FILES)
# Jobs get the params files in the environment (a shell prefix), not in their command: the
# command is the rule's code, and Snakemake reruns a job whose code changed. Inputs that studies share
# (data/processed/<dataset>/<key>, data/episodes/<exp>/<key>) would otherwise be rebuilt
# whenever another study's run touched them. (`python -m mtml` reads MTML_PARAMS when no
# --params is given.)
shell.prefix(f"set -euo pipefail; export MTML_PARAMS={shlex.quote(PARAMS)}; ")

# Our one-line checks first, the same every `python -m mtml` stage runs: the files Snakemake
# read, re-read for repeated keys (YAML silently keeps the last), then the study (schema, names,
# every declared method hyperparameter and dataset option; every kind setting and run resolved
# once). Then Snakemake's own schema check (with defaults) against the generated schema, every
# declared option included; it takes a file, not a dict.
try:
    for _file in PARAMS_FILES:
        mtml_read_file(_file)
    STUDY = mtml_study(config, PARAMS_FILES)
except UserError as err:
    raise WorkflowError(f"params: {err}")
with tempfile.NamedTemporaryFile("w", suffix=".schema.yaml") as _schema:
    yaml.safe_dump(mtml_params_schema(), _schema)
    _schema.flush()
    validate(config, _schema.name)
# Every path comes from the study's layout (the one place that names them; dvc.yaml is
# generated from it too). Paths with "{wildcard}" names are the rules' patterns.
LAYOUT = Layout(".", STUDY)
# The study's name for the report's captions (jobs read the params files, not this dict).
config["study"] = STUDY.name

# TORCH_THREADS is a constant of a run, written into the shell commands when the workflow is
# read (f-strings), not `params:` (dvc.yaml tracks the same settings, not the file names).

# The software of every stage (relative to workflow/rules/): used with `--sdm conda`;
# otherwise jobs run the `python` on PATH (the activated .venv).
CONDA_ENV = "../envs/mtml.yaml"


def s(path):
    return str(path)


def choice(names):
    return "|".join(map(re.escape, names))


wildcard_constraints:
    dataset=choice(STUDY.datasets),
    experiment=choice(STUDY.experiments),
    method=choice(STUDY.methods),
    seed=choice(map(str, STUDY.seeds)),
    key="[0-9a-f]{10}",


def _uses_gpu():
    if STUDY.device == "cpu":
        return 0
    if STUDY.device == "cuda":
        return 1
    import torch

    return int(torch.cuda.is_available())


GPU = _uses_gpu()
# Torch threads per job come from params (`threads`), as for `dvc repro`: the thread count
# changes float reduction order, and the same params must give the same numbers. With --cores
# above the machine's CPUs (e.g. --cores 8 on a 2-core laptop) each job declares
# proportionally more threads, so Snakemake never starts more concurrent work than there are CPUs.
TORCH_THREADS = STUDY.threads
# (No --cores on a cluster run, where workflow.cores would raise.)
_cores = workflow.resource_settings.cores
_scale = max(1, (_cores or 0) // (os.cpu_count() or 1)) if _cores else 1
JOB_THREADS = TORCH_THREADS * _scale


def experiment_datasets(w):
    return [s(LAYOUT.prepared(d)) for d in STUDY.experiment(w.experiment).datasets]


def experiment_episodes(w):
    return s(LAYOUT.episodes(w.experiment))


# Models a run's training reads (distillation teachers): trained first.
def run_dependencies(w):
    return [s(p) for p in LAYOUT.dependency_models(w.experiment, w.method, w.seed)]


# Longest trainings first: Snakemake starts ready jobs of higher priority first, and a long
# training started last keeps one core busy while the others idle (on 2 cores, the default's
# MAML training after ProtoNet's and ANIL's). The estimate is the shortest time the method's
# last trainings took (timing_train.json of each seed, committed for the documented studies);
# methods never trained get 0 and keep Snakemake's order. Evaluations keep priority 0, so
# trainings go first. Only the order changes, never a result.
def train_priority(w):
    from mtml.training.trainer import recorded_train_seconds

    return recorded_train_seconds(
        LAYOUT.run_dir(w.experiment, w.method, seed) for seed in STUDY.seeds
    )


# What train/evaluate read: their `params:` (workflow/rules/meta.smk), resolved (every
# override applied), so a change of exactly these reruns a run. Its own training seed only:
# adding a seed to `seeds` leaves the other seeds' runs alone.
def run_settings(w):
    return settings_of(STUDY.run(w.experiment, w.method, int(w.seed)))


def settings_of(run):
    return {
        "algorithm": run.cls.algorithm,
        "hparams": run.hparams,
        "experiment": run.experiment.config,
        "training": run.training,
        "seed": run.seed,
        "data_seed": STUDY.seed,
        "device": STUDY.device,
    }


ALL_OUTPUTS = [s(p) for p in LAYOUT.final_outputs()]


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


# Hyperparameter search (params `search`; rules in search.smk).
wildcard_constraints:
    trial="[0-9]+",


def trial_settings(w):
    return settings_of(STUDY.trial(w.experiment, w.method, int(w.trial)))


def trial_results(w):
    search = STUDY.searches[w.method]
    return [
        s(LAYOUT.trial_dir(w.experiment, w.method, t) / "train.json")
        for t in range(search.trials)
    ]


# What a run's train and evaluate jobs read besides the manifests: the selection of its
# search, when its method is searched on its experiment.
def run_selection(w):
    if STUDY.searched(w.experiment, w.method):
        return [s(LAYOUT.selection(w.experiment, w.method))]
    return []
