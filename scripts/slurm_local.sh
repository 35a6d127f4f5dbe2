#!/usr/bin/env bash
# A real single-node SLURM cluster on 127.0.0.1, for trying and testing the slurm profile
# (workflow/profiles/slurm-local) on one machine. Needs root (slurmd runs jobs as their user)
# and Debian/Ubuntu packages; no systemd: the daemons are started directly and stopped by pid.
#
#   scripts/slurm_local.sh start    install if missing, write the config, start, wait until idle
#   scripts/slurm_local.sh status   daemons and node state (exit 1 when not running)
#   scripts/slurm_local.sh stop     cancel this cluster's jobs, stop the daemons
#   eval "$(scripts/slurm_local.sh env)"   point sbatch/srun/squeue/... at this cluster
#
# Everything (config, munge key and socket, spool, logs, pid files) lives in one state folder,
# $MTML_SLURM_STATE (default /tmp/mtml-slurm), not in /etc. Clients find the cluster through
# SLURM_CONF=$MTML_SLURM_STATE/slurm.conf and the wrappers in $MTML_SLURM_STATE/bin (`env`).
# The node has the machine's CPUs, 90% of its memory and one fake GPU (a gres backed by
# /dev/null), so jobs that ask for a GPU schedule; they still compute on the CPU.
# Ports: $MTML_SLURM_PORT (slurmctld, default 6817) and the next one (slurmd).
# $MTML_SLURM_JOBS_PER_CPU (default 1): jobs that may share one CPU; tests of short jobs that
# mostly wait raise it.
set -euo pipefail

STATE=${MTML_SLURM_STATE:-/tmp/mtml-slurm}
PORT=${MTML_SLURM_PORT:-6817}
PARTITION=mtml
JOBS_PER_CPU=${MTML_SLURM_JOBS_PER_CPU:-1}
CONF=$STATE/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client munge)
export SLURM_CONF=$CONF

die() { echo "slurm_local: $*" >&2; exit 1; }

# The pid in a pid file, if that process is alive.
alive_pid() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

install_packages() {
  local missing=0 bin
  for bin in slurmctld slurmd sbatch munged; do
    command -v "$bin" >/dev/null || missing=1
  done
  [ "$missing" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "SLURM is not installed and installing needs root: apt-get install ${PACKAGES[*]}"
  command -v apt-get >/dev/null || die "SLURM is not installed and apt-get is missing (install ${PACKAGES[*]} by hand)"
  echo "installing ${PACKAGES[*]} ..."
  export DEBIAN_FRONTEND=noninteractive
  # Short network timeouts: without a mirror this fails in seconds, not minutes.
  local opts=(-o Acquire::Retries=1 -o Acquire::http::Timeout=20 -o Acquire::https::Timeout=20)
  apt-get install -y -q "${opts[@]}" "${PACKAGES[@]}" >"$STATE/apt.log" 2>&1 \
    || { apt-get update -q "${opts[@]}" >>"$STATE/apt.log" 2>&1 \
         && apt-get install -y -q "${opts[@]}" "${PACKAGES[@]}" >>"$STATE/apt.log" 2>&1; } \
    || die "apt-get install ${PACKAGES[*]} failed (log: $STATE/apt.log)"
}

write_config() {
  local node host cpus mem
  # The machine as slurmd sees it ("NodeName=x CPUs=2 Boards=1 ... RealMemory=M"); asking
  # for more than that would drain the node.
  node=$(slurmd -C | head -1)
  host=$(hostname -s)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$((mem * 9 / 10))  # leave room for the daemons and the Snakemake controller
  mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/munge"
  cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh: a one-node test cluster, no accounting database.
ClusterName=mtml-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# No cgroups in containers: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
# Kill steps that outgrow their --mem, as clusters with cgroups do.
JobAcctGatherParams=OverMemoryKill,UsePss
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
GresTypes=gpu
ReturnToService=2
# Without slurmdbd/sacct the Snakemake plugin polls with squeue, which only sees jobs that
# ended less than MinJobAge seconds ago.
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=1
MessageTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=$([ "$JOBS_PER_CPU" -gt 1 ] && echo "FORCE:$JOBS_PER_CPU" || echo NO)
EOF
  cat >"$STATE/gres.conf" <<EOF
# A fake GPU: lets --gpus/--gres=gpu requests schedule on a machine without one.
NodeName=$host Name=gpu File=/dev/null
EOF
  chmod 644 "$CONF" "$STATE/gres.conf"
  # The client commands, pinned to this cluster's config. The Snakemake job step drops every
  # SLURM_* variable (SLURM_CONF too) before its nested `srun`, so SLURM_CONF alone is not enough.
  mkdir -p "$STATE/bin"
  local cmd
  for cmd in sbatch srun squeue scancel sinfo scontrol sacct; do
    printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$CONF" "$(command -v "$cmd")" >"$STATE/bin/$cmd"
    chmod 755 "$STATE/bin/$cmd"
  done
}

start_munge() {
  alive_pid "$STATE/munge/munged.pid" >/dev/null && return 0
  if [ ! -s "$STATE/munge/munge.key" ]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 700 "$STATE/munge"
  chmod 400 "$STATE/munge/munge.key"
  munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
    --seed-file="$STATE/munge/munged.seed" || die "munged did not start (log: $STATE/munge/munged.log)"
}

wait_idle() {
  local i state=""
  for i in $(seq 1 120); do
    state=$(sinfo -h -N -p "$PARTITION" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
      idle|mixed|allocated) return 0 ;;
      drain*|down*) die "node is $state: $(sinfo -h -N -R 2>/dev/null) (logs: $STATE/*.log)" ;;
    esac
    sleep 0.5
  done
  die "node did not become idle within 60 s (state '${state:-none}', logs: $STATE/slurmctld.log $STATE/slurmd.log)"
}

cmd_start() {
  [ "$(id -u)" = 0 ] || die "needs root (slurmd starts jobs as their submitting user)"
  mkdir -p "$STATE"
  export PATH=$PATH:/usr/sbin:/sbin
  install_packages
  if cmd_status >/dev/null 2>&1; then
    echo "already running (SLURM_CONF=$CONF)"
    return 0
  fi
  write_config
  start_munge
  alive_pid "$STATE/slurmctld.pid" >/dev/null || slurmctld -f "$CONF" -c \
    || die "slurmctld did not start (log: $STATE/slurmctld.log)"
  alive_pid "$STATE/slurmd.pid" >/dev/null || slurmd -f "$CONF" \
    || die "slurmd did not start (log: $STATE/slurmd.log)"
  wait_idle
  echo "SLURM test cluster up: partition '$PARTITION', $(sinfo -h -N -o '%c CPUs, %m MB, gres %G')"
  echo "use it with: eval \"\$($0 env)\""
}

cmd_status() {
  local ok=0 name
  for name in munge/munged slurmctld slurmd; do
    if pid=$(alive_pid "$STATE/$name.pid"); then
      echo "${name#munge/}: running (pid $pid)"
    else
      echo "${name#munge/}: not running"; ok=1
    fi
  done
  [ "$ok" = 0 ] || return 1
  sinfo -N -o "%N %P %T %c %m %G" || return 1
}

# Stops a daemon by its pid file and waits for it to exit (SIGKILL after 10 s).
stop_pid() {
  local pid i
  pid=$(alive_pid "$1") || { rm -f "$1"; return 0; }
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

cmd_stop() {
  export PATH=$PATH:/usr/sbin:/sbin
  if alive_pid "$STATE/slurmctld.pid" >/dev/null; then
    # Jobs first, so no job step outlives its slurmd.
    scancel --partition="$PARTITION" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do
      [ -z "$(squeue -h -t running,completing 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  stop_pid "$STATE/slurmd.pid"
  stop_pid "$STATE/slurmctld.pid"
  stop_pid "$STATE/munge/munged.pid"
  echo "stopped"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF PATH=$STATE/bin:\$PATH" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
