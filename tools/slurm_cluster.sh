#!/usr/bin/env bash
# A real one-node SLURM cluster (slurmctld + slurmd + munge) on this machine, for the tests and for
# trying the sbatch templates by hand. Needs root (it starts daemons); everything SLURM writes lives
# in one temporary folder, so several clusters (one per test session) can run side by side.
#
#   tools/slurm_cluster.sh install        apt-get slurm-wlm + munge, only if their binaries are missing
#   tools/slurm_cluster.sh up             start munged (if needed), write a slurm.conf, start slurmctld
#                                         and slurmd, wait until the node is idle; prints
#                                         `export SLURM_CONF=...` lines (eval them) and writes them to
#                                         $DIR/env as well
#   tools/slurm_cluster.sh down [DIR]     stop that cluster and remove its folder (DIR defaults to the
#                                         folder of $SLURM_CONF, then $DDC_SLURM_DIR)
#   tools/slurm_cluster.sh status [DIR]   sinfo/squeue of that cluster
#
# Knobs (environment): DDC_SLURM_DIR  folder to use for `up` (default: a new /tmp/ddc-slurm.XXXXXX;
#                                     a cluster already running there is stopped first)
#                      DDC_SLURM_CPUS CPUs the node declares (default 8; more than the machine has is
#                                     fine: SlurmdParameters=config_overrides)
#                      DDC_SLURM_GPUS pretend GPUs the node declares (default 4; a GRES count without
#                                     devices, so that slurm/gpu.sbatch can be scheduled here; its
#                                     tasks find no CUDA device and run on the CPU)
#
# Typical use:  eval "$(tools/slurm_cluster.sh up)"; sbatch ...; tools/slurm_cluster.sh down
set -euo pipefail

prog=$(basename "$0")
say() { echo "$prog: $*" >&2; }
die() { say "error: $*"; exit 1; }

have_binaries() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
    command -v munged >/dev/null
}

cmd_install() {
  if have_binaries; then
    return 0
  fi
  [[ $(id -u) == 0 ]] || die "installing slurm-wlm and munge needs root (apt-get)"
  say "installing slurm-wlm and munge with apt-get (about 15 s)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurm-wlm munge >/dev/null
  have_binaries || die "apt-get finished but slurmctld/slurmd/sbatch/munged are still missing"
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
pid_of() { [[ -f $1 ]] && tr -dc '0-9' <"$1" || true; }

# Stop the daemons recorded in a cluster folder (by their pid files) and remove the folder.
stop_cluster_dir() {
  local dir=$1 name pid i jobs
  [[ -d $dir && -f $dir/.ddc-slurm ]] || return 0
  # Jobs still running: cancel them while slurmctld can still do it (slurmd leaves them running).
  if cluster_alive "$dir"; then
    jobs=$(SLURM_CONF=$dir/slurm.conf squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086
      SLURM_CONF=$dir/slurm.conf scancel $jobs 2>/dev/null || true
      for i in $(seq 50); do
        [[ -z $(SLURM_CONF=$dir/slurm.conf squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.2
      done
    fi
  fi
  for name in slurmd slurmctld; do
    pid=$(pid_of "$dir/run/$name.pid")
    if pid_alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for name in slurmd slurmctld; do
    pid=$(pid_of "$dir/run/$name.pid")
    for i in $(seq 50); do
      pid_alive "$pid" || break
      sleep 0.1
    done
    if pid_alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # Steps that survived (slurmd does not end them when it stops): this cluster's slurmstepd
  # processes are the ones that hold its slurmd.log open; end them and their tasks, by pid.
  for pid in $(stepd_pids "$dir"); do
    kill -KILL $(descendants "$pid") "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}

stepd_pids() {
  local dir=$1 p
  for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
    if ls -l "/proc/$p/fd" 2>/dev/null | grep -qF "$dir/log/"; then echo "$p"; fi
  done
}

descendants() {
  local c
  for c in $(pgrep -P "$1" 2>/dev/null || true); do
    echo "$c"
    descendants "$c"
  done
}

cluster_alive() { # a folder whose slurmctld still runs
  pid_alive "$(pid_of "$1/run/slurmctld.pid")"
}

# Folders left by `up` runs that died (their setup process and their slurmctld are gone).
reap_stale_clusters() {
  local dir owner
  for dir in /tmp/ddc-slurm.*; do
    [[ -f $dir/.ddc-slurm ]] || continue
    owner=$(pid_of "$dir/.ddc-slurm")
    if ! pid_alive "$owner" && ! cluster_alive "$dir"; then
      say "removing a dead cluster's folder $dir"
      stop_cluster_dir "$dir"
    fi
  done
}

other_clusters_alive() {
  local dir
  for dir in /tmp/ddc-slurm.*; do
    [[ $dir != "${1:-}" && -f $dir/.ddc-slurm ]] || continue
    cluster_alive "$dir" && return 0
  done
  return 1
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_works; then
    return 0
  fi
  local key=/etc/munge/munge.key pidfile=/run/munge/munged.pid i
  # A munged that runs but does not answer (half-started earlier): stop it, by its pid file.
  if pid_alive "$(pid_of $pidfile)"; then
    kill -TERM "$(pid_of $pidfile)" 2>/dev/null || true
    sleep 1
  fi
  install -d -o munge -g munge -m 0700 /etc/munge
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  if [[ ! -s $key || $(stat -c %s "$key") -lt 1024 ]]; then
    say "writing a new munge key ($key: 1024 random bytes)"
    (umask 077 && head -c 1024 /dev/urandom >"$key")
  fi
  chown munge:munge "$key"
  chmod 0400 "$key"
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged --force ||
    die "munged did not start (see /var/log/munge/munged.log)"
  touch /run/munge/.ddc-started # so that the last `down` stops it again
  for i in $(seq 50); do
    munge_works && return 0
    sleep 0.1
  done
  die "munged started but munge -n | unmunge fails (see /var/log/munge/munged.log)"
}

free_port() { # a TCP port nobody listens on, from a range away from SLURM's defaults (6817-6819)
  local p i
  for i in $(seq 200); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  die "no free TCP port found"
}

write_conf() {
  local dir=$1 host=$2 cpus=$3 ctld_port=$4 slurmd_port=$5 gpus=$6 gres_types="" node_gres="" i
  local first_job_id=$(((RANDOM * 32768 + RANDOM) % 60000000 + 100000))
  if ((gpus > 0)); then
    gres_types="GresTypes=gpu"
    node_gres="Gres=gpu:$gpus"
    # slurmd drops GPUs without device files; null devices (char 1,3) in our folder stand in.
    mkdir -p "$dir/dev"
    for ((i = 0; i < gpus; i++)); do
      mknod "$dir/dev/gpu$i" c 1 3 2>/dev/null || : >"$dir/dev/gpu$i"
    done
    echo "NodeName=$host Name=gpu File=$dir/dev/gpu[0-$((gpus - 1))]" >"$dir/gres.conf"
  fi
  cat >"$dir/slurm.conf" <<EOF
# Written by tools/slurm_cluster.sh for a throw-away one-node cluster; do not copy to a real site.
ClusterName=ddc
# Job ids from a random start, not 1: MPICH names its /dev/shm segment after job id and step id, and
# a segment leaked by a killed rank of an earlier cluster's job 1 would hang this cluster's job 1.
FirstJobId=$first_job_id
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$dir/plugstack.conf
# No cgroups in this container: track processes by their parent chain, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (defaults 30 and 60 s): a requeued job becomes eligible
# when its BeginTime passes, which no event announces.
SchedulerParameters=bf_interval=1,sched_interval=2
MpiDefault=none
# The node declares more CPUs than the machine has, so that -n 4 jobs fit on 2 cores.
SlurmdParameters=config_overrides
ReturnToService=2
# Batch jobs may be requeued (scontrol requeue from inside the job, on SIGUSR1 before the time limit).
JobRequeue=1
# Refuse at submission a job that can never run (e.g. more CPUs than the node has) instead of
# leaving it pending forever (a test waiting on it would hang).
EnforcePartLimits=ALL
# Keep finished jobs visible to scontrol show job (there is no accounting database, so no sacct).
MinJobAge=3600
# Seconds between SIGTERM and SIGKILL when a job ends early (time limit, requeue, scancel).
KillWait=5
InactiveLimit=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$gres_types
NodeName=$host CPUs=$cpus $node_gres State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  : >"$dir/plugstack.conf"
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true; }

cmd_up() {
  [[ $(id -u) == 0 ]] || die "this one-node cluster runs its daemons as root; run it as root"
  have_binaries || die "SLURM is not installed: run '$0 install' (apt-get install slurm-wlm munge)"
  reap_stale_clusters
  local dir host cpus ctld_port slurmd_port i state
  host=$(hostname -s)
  cpus=${DDC_SLURM_CPUS:-8}
  if [[ -n ${DDC_SLURM_DIR:-} ]]; then
    dir=$DDC_SLURM_DIR
    if [[ -f $dir/.ddc-slurm ]]; then
      say "stopping the cluster already in $dir"
      stop_cluster_dir "$dir"
    elif [[ -e $dir && -n $(ls -A "$dir" 2>/dev/null) ]]; then
      die "DDC_SLURM_DIR=$dir exists, is not empty and is not a cluster folder of this script"
    fi
    mkdir -p "$dir"
  else
    dir=$(mktemp -d /tmp/ddc-slurm.XXXXXX)
  fi
  dir=$(cd "$dir" && pwd)
  echo $$ >"$dir/.ddc-slurm" # marks the folder as ours; the pid guards it while we set it up
  mkdir -p "$dir"/{state,spool,run,log}
  chmod 0755 "$dir"

  start_munge
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done
  write_conf "$dir" "$host" "$cpus" "$ctld_port" "$slurmd_port" "${DDC_SLURM_GPUS:-4}"
  export SLURM_CONF=$dir/slurm.conf

  if ! slurmctld -f "$SLURM_CONF" >"$dir/log/slurmctld.start" 2>&1; then
    cat "$dir/log/slurmctld.start" "$dir/log/slurmctld.log" >&2 2>/dev/null || true
    stop_cluster_dir "$dir"
    die "slurmctld did not start"
  fi
  for i in $(seq 100); do
    scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.2
  done
  if ! slurmd -f "$SLURM_CONF" -N "$host" >"$dir/log/slurmd.start" 2>&1; then
    cat "$dir/log/slurmd.start" "$dir/log/slurmd.log" >&2 2>/dev/null || true
    stop_cluster_dir "$dir"
    die "slurmd did not start"
  fi
  for i in $(seq 150); do
    state=$(node_state)
    case $state in
      idle*) break ;;
      down* | drain* | fail*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  if [[ $state != idle* ]]; then
    say "the node did not become idle (state: '${state:-none}'); logs in $dir/log:"
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 2>/dev/null || true
    stop_cluster_dir "$dir"
    die "cluster did not come up"
  fi
  {
    echo "export SLURM_CONF=$SLURM_CONF"
    echo "export DDC_SLURM_DIR=$dir"
  } | tee "$dir/env"
  say "cluster up: node $host ($cpus CPUs, ${DDC_SLURM_GPUS:-4} pretend GPUs, partition debug), folder $dir"
}

resolve_dir() {
  local dir=${1:-}
  if [[ -z $dir && -n ${SLURM_CONF:-} ]]; then dir=$(dirname "$SLURM_CONF"); fi
  if [[ -z $dir ]]; then dir=${DDC_SLURM_DIR:-}; fi
  [[ -n $dir ]] || die "which cluster? pass its folder, or set SLURM_CONF or DDC_SLURM_DIR"
  echo "$dir"
}

cmd_down() {
  local dir
  dir=$(resolve_dir "${1:-}")
  if [[ ! -f $dir/.ddc-slurm ]]; then
    say "no cluster in $dir (already down)"
    return 0
  fi
  stop_cluster_dir "$dir"
  say "cluster in $dir stopped and removed"
  # munged is shared by every cluster of this script; stop it with the last one, if we started it.
  if [[ -f /run/munge/.ddc-started ]] && ! other_clusters_alive "$dir"; then
    local pid
    pid=$(pid_of /run/munge/munged.pid)
    pid_alive "$pid" && kill -TERM "$pid" 2>/dev/null || true
    rm -f /run/munge/.ddc-started
  fi
}

cmd_status() {
  local dir
  dir=$(resolve_dir "${1:-}")
  [[ -f $dir/.ddc-slurm ]] || die "no cluster in $dir"
  export SLURM_CONF=$dir/slurm.conf
  cluster_alive "$dir" || die "slurmctld of $dir is not running"
  sinfo
  squeue
}

case ${1:-} in
  install) cmd_install ;;
  up) cmd_up ;;
  down) shift; cmd_down "${1:-}" ;;
  status) shift; cmd_status "${1:-}" ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
