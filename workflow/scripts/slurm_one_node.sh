#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for testing the SLURM profile end to end (CI and laptops).
#
#   workflow/scripts/slurm_one_node.sh install        # Debian/Ubuntu packages (root): slurmctld slurmd munge client
#   workflow/scripts/slurm_one_node.sh start DIR      # write DIR/slurm.conf, start munged, slurmctld, slurmd
#   export SLURM_CONF=DIR/slurm.conf                  # then sbatch/squeue/snakemake --profile ... use it
#   workflow/scripts/slurm_one_node.sh stop DIR       # stop the three daemons by process id
#
# No slurmdbd: without accounting `sacct` never reports a finished job, so the profile uses `squeue` as the
# status command and MinJobAge is kept far above the executor plugin's status interval. The node advertises
# one fake GPU (gres File=/dev/null) so that rules asking for a GPU schedule; their jobs run on the CPU.
set -euo pipefail

cmd=${1:-}
dir=${2:-}

die() { echo "slurm_one_node: $*" >&2; exit 1; }

case "$cmd" in
install)
  [ "$(id -u)" -eq 0 ] || die "install needs root (apt-get)"
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
      && command -v sbatch >/dev/null; then
    echo "slurm_one_node: slurm and munge already installed"; exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  echo "slurm_one_node: installed $(slurmctld -V)"
  ;;
start)
  [ -n "$dir" ] || die "usage: $0 start DIR"
  for b in munged slurmctld slurmd sbatch squeue; do
    command -v "$b" >/dev/null || die "$b not found; run '$0 install' first"
  done
  mkdir -p "$dir"/{state,spool,munge}
  dir=$(cd "$dir" && pwd)
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  cat >"$dir/slurm.conf" <<EOF
ClusterName=dormant-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=600
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  echo "NodeName=$host Name=gpu File=/dev/null" >"$dir/gres.conf"
  # The executor's job-step plugin strips every SLURM_* variable (SLURM_CONF included) before its nested
  # `srun`, which then only finds the default /etc/slurm/slurm.conf: link it there, never over a real one.
  if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$dir/slurm.conf" ]; then
    [ -L /etc/slurm/slurm.conf ] && [ ! -e "$(readlink /etc/slurm/slurm.conf)" ] \
      || die "/etc/slurm/slurm.conf exists and is not ours; refusing to replace a real cluster's config"
  fi
  mkdir -p /etc/slurm
  ln -sfn "$dir/slurm.conf" /etc/slurm/slurm.conf
  export SLURM_CONF="$dir/slurm.conf"
  munged --force --socket="$dir/munge/munge.socket" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed"
  slurmctld -f "$dir/slurm.conf"
  slurmd -f "$dir/slurm.conf"
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
      echo "slurm_one_node: node $host idle ($cpus CPUs, $mem_mb MB, 1 fake GPU); export SLURM_CONF=$dir/slurm.conf"
      exit 0
    fi
    sleep 1
  done
  tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
  die "node did not become idle within 60 s"
  ;;
stop)
  [ -n "$dir" ] || die "usage: $0 stop DIR"
  for d in slurmd slurmctld munged; do
    pidfile="$dir/$d.pid"
    if [ -s "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$pidfile"
    fi
  done
  if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$(cd "$dir" && pwd)/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
  fi
  echo "slurm_one_node: stopped"
  ;;
*)
  die "usage: $0 install | start DIR | stop DIR"
  ;;
esac
