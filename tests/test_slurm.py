"""The pipeline through the Snakemake SLURM executor, on a real one-node SLURM cluster.

- A slurm-profile run without partition/account stops with one error before any sbatch.
- The slurm profile asks for memory, time and CPUs per rule (train/evaluate also for a GPU when
  params say cuda), with CPUs equal to the torch threads of params.
- scripts/slurm_local.sh starts slurmctld/slurmd/munged on 127.0.0.1 (skipped, with the
  reason, where that cannot be done: no root, no apt, daemons that do not come up).
- The tiny pipeline runs through workflow/profiles/slurm-local: every train/evaluate job is
  a SLURM job; one training is cancelled mid-run (scancel) and one evaluation is killed by the
  scheduler (over its memory limit). Neither leaves an output that looks complete, the rerun
  submits exactly the missing jobs, and the final files equal a local run's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts/slurm_local.sh"
BIN = Path(sys.executable).parent
# Timings are measured, hence differ between runs; everything else must be identical.
TIMING_FILES = {"timing_train.json", "timing_eval.json"}
# Any SLURM submission of the controller, whatever the rule.
ANY_SUBMITTED = re.compile(r"has been submitted with SLURM jobid \d+ \(log: \S*/rule_(\w+)/")
# (the log folder joins the wildcards: tiny_<method>_<seed>)
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/tiny_([\w-]+?)_\d+/\d+\.log\)")

pytestmark = pytest.mark.slow


def _clean_env(**extra) -> dict:
    """This environment without the caller's SLURM settings, the venv's python first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return {**env, **extra}


def _workdir(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp / name)
    shutil.copytree(ROOT / "workflow", tmp / "workflow")
    shutil.copy(ROOT / "configs/tiny.yaml", tmp / "params.yaml")
    return tmp


def _run(cmd, cwd, env, check=True, timeout=300):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert not check or r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no two consecutive free ports")


def test_missing_partition_or_account_stops_before_any_submission(tmp_path):
    """The real-cluster profile takes partition/account from the environment only."""
    root = _workdir(tmp_path / "w")
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "sbatch-calls"
    (fake / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho 1\n")
    (fake / "sbatch").chmod(0o755)
    env = _clean_env()
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    cmd = ["snakemake", "--profile", "workflow/profiles/slurm", "all"]
    r = _run(cmd, root, env, check=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "SLURM: no partition and no account for the cluster jobs, nothing was submitted" in out, out[-3000:]
    assert "SBATCH_PARTITION=<partition> SBATCH_ACCOUNT=<account>" in out
    r = _run(cmd, root, {**env, "SBATCH_PARTITION": "gpu"}, check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "SLURM: no account for the cluster jobs" in out, out[-3000:]
    assert "--slurm-no-account" in out
    assert not calls.exists(), calls.read_text()
    # Set, they reach every cluster job (names that look like Python stay strings).
    r = _run(cmd + ["-n", "--forceall"], root, {**env, "SBATCH_PARTITION": "all", "SBATCH_ACCOUNT": "1234"})
    resources = [line for line in r.stdout.splitlines() if "resources:" in line]
    assert len(resources) == 11, r.stdout[-3000:]  # prepare x2, episodes, train x3, evaluate x3, aggregate, all
    assert all("slurm_partition=all, slurm_account=1234" in line for line in resources), resources


def _job_resources(dry_run: str) -> dict[str, list[dict[str, str]]]:
    """rule -> the resources of each of its jobs, from a dry run's job listing."""
    jobs: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in dry_run.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif line.startswith("resources:") and rule:
            items = line.removeprefix("resources:").strip().split(", ")
            jobs.setdefault(rule, []).append(dict(item.split("=", 1) for item in items))
    return jobs


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_slurm_profile_asks_for_memory_time_cpus_and_gpu(tmp_path, device):
    """What workflow/profiles/slurm (and the rules' gpu resource) ask the cluster for."""
    root = _workdir(tmp_path / "w")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update(device=device, threads=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _clean_env(SBATCH_PARTITION="gpu", SBATCH_ACCOUNT="proj")
    # --cores 2: a dry run otherwise caps every job at one thread (a real cluster run does not).
    out = _run(["snakemake", "--profile", "workflow/profiles/slurm", "all", "-n", "--forceall", "--cores", "2"],
               root, env).stdout
    jobs = _job_resources(out)
    gpu = "1" if device == "cuda" else "0"
    want = {
        "prepare": {"mem_mb": "16000", "runtime": "240", "cpus_per_task": "2"},
        "episodes": {"mem_mb": "4000", "runtime": "60", "cpus_per_task": "1"},
        "train": {"mem_mb": "16000", "runtime": "720", "cpus_per_task": "2", "gpu": gpu},
        "evaluate": {"mem_mb": "8000", "runtime": "120", "cpus_per_task": "2", "gpu": gpu},
    }
    assert {rule: len(js) for rule, js in jobs.items() if rule in want} == {
        "prepare": 2, "episodes": 1, "train": 3, "evaluate": 3}, out[-3000:]
    for rule, res in want.items():
        for job in jobs[rule]:
            assert {k: job.get(k) for k in res} == res, (rule, job)
            assert job["slurm_partition"] == "gpu" and job["slurm_account"] == "proj"
            if rule in ("prepare", "episodes"):
                assert job.get("gpu", "0") == "0", (rule, job)
    # The jobs' torch threads are the CPUs they asked for.
    train_cmds = [line for line in out.splitlines() if line.startswith("Shell command: python -m mtml train")]
    assert len(train_cmds) == 3 and all("--threads 2 " in c for c in train_cmds), train_cmds


@pytest.fixture(scope="module")
def cluster():
    # A short state path: the munge socket lives there (unix socket paths are short).
    state = tempfile.mkdtemp(prefix="mtml-slurm-", dir="/tmp")
    # Up to 4 jobs per CPU: the pipeline's jobs are short and mostly wait for the status polls.
    env = _clean_env(MTML_SLURM_STATE=state, MTML_SLURM_PORT=str(_free_port_pair()), MTML_SLURM_JOBS_PER_CPU="4")
    r = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)
        pytest.skip(f"local SLURM cluster unavailable: {(r.stderr or r.stdout).strip()[-500:]}")
    env["SLURM_CONF"] = f"{state}/slurm.conf"
    env["PATH"] = f"{state}/bin{os.pathsep}{env['PATH']}"
    yield env
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(state, ignore_errors=True)


def test_cluster_schedules_gpu_requests(cluster, tmp_path):
    out = tmp_path / "gpu.out"
    job = _run(["sbatch", "--parsable", "--gpus=1", "--mem=100", "-t", "1", "-o", str(out),
                "--wrap", "echo gpus=$CUDA_VISIBLE_DEVICES"], tmp_path, cluster).stdout.strip()
    deadline = time.time() + 60
    while _job_states(cluster).get(job) != "COMPLETED" and time.time() < deadline:
        time.sleep(0.5)
    assert _job_states(cluster)[job] == "COMPLETED"
    assert out.read_text().strip() == "gpus=0"


def _job_states(env) -> dict[str, str]:
    r = _run(["squeue", "--states=all", "--noheader", "--format=%i|%T"], None, env)
    return dict(line.split("|") for line in r.stdout.split())


def _submissions(log: str) -> list[tuple[str, str, str]]:
    """(slurm job id, rule, method) of every train/evaluate job the controller submitted."""
    return [m.groups() for m in SUBMITTED.finditer(log)]


def _outputs(root: Path) -> set[str]:
    files = set()
    for top in ("data/processed", "data/episodes", "models", "metrics"):
        for f in (root / top).rglob("*"):
            if f.is_file() and f.name != ".snakemake_timestamp":
                files.add(str(f.relative_to(root)))
    return files


def _rule_outputs(rule: str, method: str) -> list[str]:
    names = {"train": ["train_log.csv", "train.json", "timing_train.json", "trace.jsonl"],
             "evaluate": ["eval.json", "episodes.csv", "details.json", "timing_eval.json"]}[rule]
    extra = [f"models/default/tiny/{method}/seed-0/model.pt"] if rule == "train" else []
    return extra + [f"metrics/default/runs/tiny/{method}/seed-0/{n}" for n in names]


def test_pipeline_on_slurm_recovers_and_matches_a_local_run(cluster, tmp_path):
    env = cluster
    ref, root = _workdir(tmp_path / "local"), _workdir(tmp_path / "slurm")
    # Data stages once, locally (this test is about the train/evaluate jobs); the SLURM run
    # starts from a copy, with Snakemake's records of them.
    _run(["snakemake", "--cores", "2", "all", "--until", "episodes", "--quiet"], ref, env)
    shutil.copytree(ref / "data", root / "data")
    shutil.copytree(ref / ".snakemake/metadata", root / ".snakemake/metadata")
    # The rest of the reference run at low priority: the cluster jobs mostly wait on polling.
    local = subprocess.Popen(["nice", "-n", "19", "snakemake", "--cores", "1", "all", "--quiet"], cwd=ref,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    profile = ["snakemake", "--profile", "workflow/profiles/slurm-local", "all"]
    # Run 1: the scheduler kills pixel-nn's evaluation (it outgrows its memory limit), and
    # maml's evaluation is cancelled while it runs.
    first = subprocess.Popen(
        profile + ["--set-resources", "evaluate:mem_mb=250 if wildcards.method == 'pixel-nn' else 2000"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cancelled = None
    deadline = time.time() + 300
    while cancelled is None and first.poll() is None and time.time() < deadline:
        rows = _run(["squeue", "--noheader", "--format=%i|%T|%k"], root, env).stdout.split()
        running = [r.split("|")[0] for r in rows if r.endswith("|RUNNING|rule_evaluate_wildcards_tiny_maml_0")]
        if running:
            cancelled = running[0]
            _run(["scancel", cancelled], root, env)
        time.sleep(0.2)
    log1 = first.communicate(timeout=300)[0]
    assert cancelled is not None, f"maml's evaluation was never seen running:\n{log1[-3000:]}"
    assert first.returncode != 0, log1[-3000:]
    assert "rule_prepare" not in log1 and "rule_episodes" not in log1

    states = _job_states(env)
    jobs1 = _submissions(log1)
    by_job = {(rule, meth): job for job, rule, meth in jobs1}
    assert sorted(by_job) == [("evaluate", m) for m in ("maml", "pixel-nn", "protonet")] + [
        ("train", m) for m in ("maml", "pixel-nn", "protonet")], log1[-3000:]
    assert states[cancelled] == "CANCELLED" and by_job[("evaluate", "maml")] == cancelled
    killed = by_job[("evaluate", "pixel-nn")]
    assert states[killed] == "FAILED"
    slurm_log = (root / f".snakemake/slurm_logs/rule_evaluate/tiny_pixel-nn_0/{killed}.log").read_text()
    assert "exceeded memory limit" in slurm_log, slurm_log[-2000:]
    # Neither left an output that looks complete; every other job finished.
    for meth in ("maml", "pixel-nn"):
        left = [f for f in _rule_outputs("evaluate", meth) if (root / f).exists()]
        assert not left, f"evaluate {meth} left {left}"
    for rule, meth in [("train", m) for m in ("maml", "pixel-nn", "protonet")] + [("evaluate", "protonet")]:
        assert all((root / f).exists() for f in _rule_outputs(rule, meth)), (rule, meth)
        assert states[by_job[(rule, meth)]] == "COMPLETED"
    dry = _run(["snakemake", "--cores", "1", "all", "-n", "--quiet", "rules"], root, env).stdout
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", dry, re.M))
    assert stats == {"aggregate": "1", "all": "1", "evaluate": "2", "total": "4"}, dry

    # Run 2 redoes exactly what is missing. maml's evaluation asks for the (fake) GPU.
    second = _run(profile + ["--set-resources", "evaluate:gpu=int(wildcards.method == 'maml')"], root, env,
                  timeout=400)
    log2 = second.stdout + second.stderr
    jobs2 = _submissions(log2)
    assert sorted((rule, meth) for _, rule, meth in jobs2) == [("evaluate", "maml"), ("evaluate", "pixel-nn")], \
        log2[-3000:]
    states = _job_states(env)
    for job, _, meth in jobs2:
        assert states[job] == "COMPLETED"
        tres = _run(["scontrol", "show", "job", job], root, env).stdout
        assert ("gres:gpu:1" in tres) == (meth == "maml"), tres
        # The profile's memory, time and CPUs reached sbatch.
        assert "MinMemoryNode=2000M" in tres and "TimeLimit=00:30:00" in tres and "NumCPUs=1 " in tres, tres
    for log in (log1, log2):
        assert not re.search(r"localrule (train|evaluate)", log)
        # Only train and evaluate went to SLURM: the short rules are localrules.
        assert set(ANY_SUBMITTED.findall(log)) <= {"train", "evaluate"}, log[-3000:]
    assert "localrule aggregate:" in log2 and "localrule all:" in log2, log2[-3000:]
    assert len({job for job, _, _ in jobs1 + jobs2}) == len(jobs1) + len(jobs2) == 8

    assert local.wait(timeout=400) == 0, local.stdout.read()[-3000:]
    files = _outputs(root)
    assert files == _outputs(ref)
    compared = sorted(f for f in files if f.startswith("metrics/default/runs/") and Path(f).name not in TIMING_FILES)
    for meth in ("pixel-nn", "protonet", "maml"):
        for name in ("eval.json", "episodes.csv", "train_log.csv"):
            assert f"metrics/default/runs/tiny/{meth}/seed-0/{name}" in compared
    for f in compared:
        assert (root / f).read_bytes() == (ref / f).read_bytes(), f
    import torch

    for meth in ("pixel-nn", "protonet", "maml"):
        a, b = (torch.load(r / f"models/default/tiny/{meth}/seed-0/model.pt", weights_only=True)["state"] for r in (root, ref))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), meth
    summary = json.loads((root / "metrics/default/summary.json").read_text())
    assert {row["method"] for row in summary.values()} == {"pixel-nn", "protonet", "maml"}
