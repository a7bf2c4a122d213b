#!/usr/bin/env bash
# A throwaway single-node Slurm for the tests (tests/test_slurm.py): munged, slurmctld and slurmd, as root,
# with a generated slurm.conf and every socket, state, spool and log file under DIR. Nothing outside DIR
# is written, so it runs beside a real Slurm or another copy of itself (it picks free ports).
#   tests/slurm/start.sh DIR    (Debian: apt-get install slurm-wlm munge)
# Prints the three daemons' PIDs on one line once `srun hostname` works; stop them with kill PID.
# The clients (sbatch, squeue, scontrol) find this cluster by SLURM_CONF=DIR/slurm.conf.
set -euo pipefail
dir=$(realpath -m "${1:?usage: start.sh DIR}")
mkdir -p "$dir"/munge "$dir"/state "$dir"/spool "$dir"/log
chmod 700 "$dir"/munge  # munged refuses a key or socket directory that others can write to

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
host=$(hostname -s)

mungekey --create --force --keyfile="$dir/munge/munge.key"
munged --foreground --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" \
    >/dev/null 2>&1 &
munge_pid=$!

cat >"$dir/slurm.conf" <<CONF
ClusterName=afqmctest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job waits this long before it runs again (default 120 s; 5 is the least).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# No cgroups: the process tree is found by walking /proc, and tasks are not bound to CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
# Four one-CPU tasks side by side (two jobs of two ranks: one may wait paused while the other runs), whatever the
# machine's cores (config_overrides); memory is not scheduled (jobs still ask for some, up to RealMemory).
SchedulerType=sched/backfill
# Pending jobs (a requeued one, once its wait is over) are looked at every second, not every 30-60 s.
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# No slurmdbd: sacct has nothing to show.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=4 RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"

slurmctld -D -i >/dev/null 2>&1 &
ctld_pid=$!
slurmd -D >/dev/null 2>&1 &
slurmd_pid=$!

# Up when a job step runs; 30 s is ample (a few seconds here), and the logs say why if it is not.
for _ in $(seq 60); do
    if timeout 10 srun --time=1 hostname >/dev/null 2>&1; then
        echo "$munge_pid $ctld_pid $slurmd_pid"
        exit 0
    fi
    sleep 0.5
done
echo "Slurm did not come up; logs in $dir/log:" >&2
tail -n 20 "$dir"/log/*.log >&2
kill "$munge_pid" "$ctld_pid" "$slurmd_pid" 2>/dev/null || true
exit 1
