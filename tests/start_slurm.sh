#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_sweep.py: munge, slurmctld and slurmd as root, their
# state under $SLURM_LOCAL_DIR (default /tmp/iql-slurm). Prints the path of its slurm.conf; use it with
#   export SLURM_CONF=$(tests/start_slurm.sh)
# Installs Debian's SLURM packages first if sbatch is missing (needs root and apt).
set -euo pipefail
dir=${SLURM_LOCAL_DIR:-/tmp/iql-slurm}
if ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null; then
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge; } >&2
fi
mkdir -p "$dir/state" "$dir/spool" /run/munge
host=$(hostname)
cat >"$dir/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SchedulerParameters=sched_interval=2
MinJobAge=600
NodeName=$host CPUs=$(nproc) RealMemory=$(($(getconf _PHYS_PAGES) * $(getconf PAGE_SIZE) / 1048576)) State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
chown munge:munge /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- munged
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
slurmctld -c  # -c: a clean start, no jobs left from an earlier one
slurmd
for _ in $(seq 60); do  # until the node takes jobs
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "$SLURM_CONF"
    exit 0
  fi
  sleep 1
done
echo "start_slurm.sh: SLURM did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
exit 1
