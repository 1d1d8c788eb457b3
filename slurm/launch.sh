# The launch that every sbatch template in this folder ends with: sourced (not run) by them, after
# their site block has set PYTHON (the interpreter) and SRUN_MPI (srun's --mpi plugin). It reads the
# template's arguments: JOB (the job's TOML config), OUT (its output folder), then anything for
# ddc_hpc.run; both may instead come from the environment (JOB=..., OUT=... sbatch ...).
# docs/CLUSTER.md, section 3, explains each step.

# A study's job array (python -m ddc_hpc.frontier submit, ddc_hpc/study.py): task i takes line i + 1
# of $DDC_STUDY_ARGS, its point's `JOB OUT [ddc_hpc.run args]` quoted for the shell, as its arguments.
if [[ -n ${SLURM_ARRAY_TASK_ID:-} && -n ${DDC_STUDY_ARGS:-} ]]; then
  mapfile -t ddc_points <"$DDC_STUDY_ARGS"
  eval "set -- ${ddc_points[$SLURM_ARRAY_TASK_ID]}"
fi
if (($# >= 1)); then JOB=$1; shift; fi
if (($# >= 1)); then OUT=$1; shift; fi
JOB=${JOB:-}
if [[ -z $JOB || ! -f $JOB ]]; then
  echo "ddc: no job config '${JOB}'. Usage: sbatch slurm/<template>.sbatch JOB.toml OUT_DIR" \
    "[ddc_hpc.run args], or JOB=... OUT=... sbatch slurm/<template>.sbatch" >&2
  exit 2
fi
# Without OUT: runs/<config name>-<job id> (the job id survives requeues, so a requeued run finds it).
OUT=${OUT:-runs/$(basename "$JOB" .toml)-${SLURM_JOB_ID:-local}}
mkdir -p "$OUT"

# One torch thread per core of the rank; srun (since SLURM 22.05) no longer inherits
# --cpus-per-task from sbatch, so hand it on explicitly.
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
  export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
fi

# This shell survives a SIGUSR1/SIGTERM sent to it as well (scancel --full or -b, or a B: signal):
# the ranks do the checkpointing; an untrapped USR1 would end the script and the job with it.
trap 'echo "ddc: batch shell got SIGUSR1 (the ranks checkpoint and requeue)"' USR1
trap 'echo "ddc: batch shell got SIGTERM"' TERM

restart=${SLURM_RESTART_COUNT:-0}
echo "ddc: job ${SLURM_JOB_ID:-?} restart ${restart} on ${SLURM_JOB_NODELIST:-?}:" \
  "${SLURM_NTASKS:-?} tasks x ${SLURM_CPUS_PER_TASK:-1} cpus, srun --mpi=${SRUN_MPI}," \
  "config ${JOB}, out ${OUT}, $(date '+%F %T')"

# A requeued job starts again at step id 0. MPICH and Intel MPI name their shared-memory segment
# after the job and step id, and a rank killed on this node in an earlier run can leave that
# segment in /dev/shm: a new step with the same id attaches to it and hangs in MPI_Init. One empty
# step per restart gives the training step an id that no earlier run used.
for ((i = 0; i < restart; i++)); do srun --ntasks=1 --nodes=1 true; done

# ddc_hpc.run continues by itself from OUT's checkpoints when there are any (after a requeue, or a
# resubmission with the same OUT and config); a fresh run needs a fresh OUT. --kill-on-bad-exit ends
# every rank as soon as one fails (exit 2 bad input, 1 error, 75 stopped with a checkpoint).
status=0
srun --mpi="$SRUN_MPI" --kill-on-bad-exit=1 \
  "$PYTHON" -u -m ddc_hpc.run --config "$JOB" --out "$OUT" "$@" || status=$?
echo "ddc: job ${SLURM_JOB_ID:-?} restart ${restart}: srun exited ${status} at $(date '+%F %T')"
exit "$status"
