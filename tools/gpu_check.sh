#!/usr/bin/env bash
# Every CUDA path one GPU can exercise, in one short run (< 8 minutes on one H100), with a report.
#
#   tools/gpu_check.sh [--out DIR]        on a machine with a GPU; DIR defaults to $OUT, else runs/gpu-check-<time>
#   tools/gpu_check.sh --cpu-smoke [--out DIR]   the same plumbing on the CPU, tiny jobs: no GPU numbers
#   tools/gpu_check.sh --only 'family-*' ...     only the checks whose name matches the pattern
#
# The checks, in this order; at the end one line per check on stdout (PASS, FAIL or SKIP):
#   1rank-fp32 1rank-bf16 1rank-fp16  the pipeline at 1 rank on cuda (cifar_resnet20), NCCL backend, BN
#                   recalibration before every score of the global phase, in each precision
#   family-<model>  one model of every other family at 1 rank, whose layouts and kernels differ on the
#                   GPU: resnet18, cnn11, vgg11, cnn3d, resnet3d, cnn1d, mlp, gru
#   theorem         every family's sub-networks composed on the GPU: forward, backward and Theorem 2.1's
#                   max relative error (<= 1e-4) on cuda, fp32
#   budget          a budgeted run (run.budget = DDC_CHECK_RUN_BUDGET s, default 60; calibration timed with
#                   the GPU synchronised): passes when DDC's wall time lands within 10 % of its budget
#   resume          a run stopped by a signal in the global phase and resumed (mlp, run.deterministic): its
#                   final weights bitwise equal to an uninterrupted run's (every step reseeds the CPU and
#                   CUDA generators from (seed, epoch, step), so a checkpoint needs no RNG state)
#   fused           a rank's 2 sub-networks trained fused (vmap) against one after the other, ms per step
#                   on the GPU (benchmarks/bench_fused.py --device cuda, 2 ranks, width 64)
#   2rank-nccl      2 ranks sharing the GPU with NCCL; when NCCL refuses one device for two ranks,
#   2rank-gloo      the same with gloo (said so in the report, with NCCL's message)
#   2rank-mpi4py    the toolkit's own MPI engine (run.backend=mpi4py) at 2 ranks
#   ratio-fp32 ratio-bf16  the sub/global phase time ratio (cifar_resnet32 width 64, K=4, 640 images)
# Writes DIR/report.md, DIR/<check>.log and DIR/<check>.results.json. Exit 0 when every check passed,
# 1 otherwise. DDC_CHECK_BUDGET (default 420): no check starts after that many seconds of checks (it is
# reported as skipped); a check runs at most 240 s and ends by DDC_CHECK_DEADLINE (default 480) seconds.
#
# Python: $DDC_PYTHON, else ./.venv, else python3 if it has torch, mpi4py and the dependencies; else a
# venv ./.venv (with the system's site packages, so a preinstalled CUDA torch is kept) gets
# `pip install -e '.[test]'`. Never claims a number it did not measure: a failed check says so.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

smoke=0
out=${OUT:-}
only='*'
while [[ $# -gt 0 ]]; do
  case $1 in
    --cpu-smoke) smoke=1 ;;
    --out) out=$2; shift ;;
    --only) only=$2; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
out=${out:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/ddc-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
budget=${DDC_CHECK_BUDGET:-420}  # seconds of checks: none starts later (skipped, and reported)
deadline=${DDC_CHECK_DEADLINE:-480}  # seconds of checks: every check ends by then
: > "$out/checks.tsv"

say() { echo "gpu_check: $*" >&2; }

has_deps() { "$1" -c 'import torch, mpi4py, numpy, h5py, tomli_w, matplotlib, PIL' 2>/dev/null; }

pick_python() {
  local py
  for py in "${DDC_PYTHON:-}" "$repo/.venv/bin/python" python3; do
    if [[ -n $py ]] && command -v "$py" >/dev/null && has_deps "$py"; then
      command -v "$py"
      return 0
    fi
  done
  say "no interpreter with torch and mpi4py: making $repo/.venv (system site packages kept) and installing '.[test]'"
  python3 -m venv --system-site-packages "$repo/.venv" >&2 &&
    "$repo/.venv/bin/python" -m pip install -q -e "$repo[test]" >&2 &&
    has_deps "$repo/.venv/bin/python" && echo "$repo/.venv/bin/python"
}

python=$(pick_python) || { say "could not set up Python (offline? see $out/report.md)"
  printf '# GPU check\n\nNot run: no Python with torch and mpi4py, and `pip install -e .[test]` failed.\n' > "$out/report.md"; exit 1; }
mpiexec=$(dirname "$python")/mpiexec
[[ -x $mpiexec ]] || mpiexec=$(command -v mpiexec || echo mpiexec)
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

if [[ $smoke == 1 ]]; then
  device=cpu
  tiny=(model.width=8 data.limit=96 sub.epochs=1 global.epochs=1 sub.batch_size=32 global.batch_size=32
        run.threads=1 run.strategy=ddc)
  ratio=(model.name=cifar_resnet32 model.width=8 data.limit=96 sub.epochs=1 global.epochs=1
         sub.batch_size=32 global.batch_size=32 run.threads=1 run.strategy=ddc)
  precisions=(bf16 fp32)
  ratio_precisions=(fp32)
  run_budget=${DDC_CHECK_RUN_BUDGET:-40}
  fused=(--widths 8 --rounds 1 --steps 1)
else
  device=cuda
  if ! "$python" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    say "torch sees no CUDA device; nothing measured (use --cpu-smoke to check the plumbing)"
    printf '# GPU check\n\nNot run: `torch.cuda.is_available()` is False with %s.\n' "$python" > "$out/report.md"
    exit 1
  fi
  tiny=(model.width=16 data.limit=256 sub.epochs=1 global.epochs=1 sub.batch_size=64 global.batch_size=64
        run.strategy=ddc)
  ratio=(model.name=cifar_resnet32 model.width=64 decompose.partitions=4 data.limit=640 sub.epochs=3
         global.epochs=3 sub.batch_size=128 global.batch_size=128 run.strategy=ddc)
  precisions=(fp32 bf16 fp16)
  ratio_precisions=(fp32 bf16)
  run_budget=${DDC_CHECK_RUN_BUDGET:-60}
  fused=(--widths 64 --rounds 2 --steps 10)
fi
started=$SECONDS

# One model of each family beside cifar_resnet20 (the checks above), on data of its own shape: the
# overrides after the tiny job's. VGG needs tiles of 32 px or more (five pools), 3-D volumes of 8^3
# voxels are cut in 8 octants, 1-D signals are not shifted.
declare -A family=(
  [resnet18]="model.name=resnet18 data.source=synthetic:n=96"
  [cnn11]="model.name=cnn11 data.source=synthetic:n=96"
  [vgg11]="model.name=vgg11 data.source=synthetic:n=96,size=64"
  [cnn3d]="model.name=cnn3d data.source=synthetic3d:n=96,size=8 decompose.partitions=8 data.max_shift=1"
  [resnet3d]="model.name=resnet3d data.source=synthetic3d:n=96,size=8 decompose.partitions=8 data.max_shift=1"
  [cnn1d]="model.name=cnn1d data.source=synthetic1d:n=96"
  [mlp]="model.name=mlp data.source=synthetic1d:n=96 data.augment=false"
  [gru]="model.name=gru data.source=synthetic1d:n=96 data.augment=false"
)

# due NAME: whether check NAME runs now. A name that does not match --only is left out (not run, not
# reported); after the time budget it is reported as skipped. Sets $limit, the seconds it may take.
due() {
  # shellcheck disable=SC2053  # $only is a glob pattern
  [[ $1 == $only ]] || return 1
  if (( SECONDS - started > budget )); then
    say "$1: skipped (time budget of ${budget} s spent)"
    printf '%s\t%s\t%s\t%s\n' "$1" skipped 0 "${2:-1}" >> "$out/checks.tsv"
    return 1
  fi
  limit=$(( deadline - (SECONDS - started) ))
  (( limit > 240 )) && limit=240
  say "$1 ..."
  return 0
}

# record NAME RC SECONDS RANKS: one row of checks.tsv; returns RC.
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$out/checks.tsv"
  say "$1: exit $2 in $3 s"
  return "$2"
}

# pipeline DIR RANKS OVERRIDE...: one ddc_hpc.run into DIR (log on stdout and stderr), its exit code.
pipeline() {
  local dir=$1 ranks=$2 args=() o; shift 2
  for o in "$@"; do args+=(--set "$o"); done
  if [[ $ranks == 1 ]]; then
    timeout "$limit" "$python" -m ddc_hpc.run --out "$dir" --set run.device=$device "${args[@]}"
  else
    timeout "$limit" "$mpiexec" -n "$ranks" "$python" -m ddc_hpc.run --out "$dir" --set run.device=$device "${args[@]}"
  fi
}

# check NAME RANKS OVERRIDE...: one pipeline run; its log, exit code and results.json land in $out.
check() {
  local name=$1 ranks=$2 tic rc; shift 2
  due "$name" "$ranks" || return $?
  tic=$SECONDS
  pipeline "$work/$name" "$ranks" "$@" > "$out/$name.log" 2>&1
  rc=$?
  [[ -f $work/$name/results.json ]] && cp "$work/$name/results.json" "$out/$name.results.json"
  record "$name" "$rc" "$((SECONDS - tic))" "$ranks"
}

# run_python NAME RANKS ARG... <<'PY' ... PY: a Python check (stdin) under $python, logged like a run.
run_python() {
  local name=$1 ranks=$2 tic rc; shift 2
  due "$name" "$ranks" || { cat > /dev/null; return 1; }
  tic=$SECONDS
  timeout "$limit" "$python" - "$@" > "$out/$name.log" 2>&1
  rc=$?
  record "$name" "$rc" "$((SECONDS - tic))" "$ranks"
}

if [[ $smoke == 1 ]]; then one_rank=(global.bn_recalibrate_batches=2); else one_rank=(run.backend=nccl global.bn_recalibrate_batches=2); fi
for p in "${precisions[@]}"; do
  check "1rank-$p" 1 "${tiny[@]}" "${one_rank[@]}" "run.precision=$p"
done

for model in resnet18 cnn11 vgg11 cnn3d resnet3d cnn1d mlp gru; do
  read -ra overrides <<< "${family[$model]}"
  check "family-$model" 1 "${tiny[@]}" "${overrides[@]}"
done

run_python theorem 1 "$device" <<'PY'
"""Every family on the device: sub-networks trained one SGD step each on their tiles (forward and
backward), composed there, the composed net's forward and backward, and Theorem 2.1 in strict fp32
(TF32 off: cuDNN convolutions would otherwise round to 10-bit mantissas)."""
import sys
import torch
import torch.nn.functional as F
from ddc_hpc.compose import compose, theorem_error
from ddc_hpc.models import build_model, input_options
from ddc_hpc.partition import default_grid, tile_shape, tile_slices_nd
from ddc_hpc.train import memory_format, to_cuda_layout

device = torch.device(sys.argv[1])
cuda = device.type == "cuda"  # the layouts a run takes there (data_parallel, to_device)
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
cases = {"cifar_resnet20": ((32, 32, 3), 4), "resnet18": ((64, 64, 3), 4), "cnn11": ((32, 32, 3), 4),
         "vgg11": ((64, 64, 3), 4), "cnn3d": ((8, 8, 8, 1), 8), "resnet3d": ((8, 8, 8, 1), 8),
         "cnn1d": ((32, 1), 4), "gru": ((16, 1), 4), "mlp": ((32, 1), 4)}
failed = []
for name, (shape, K) in cases.items():
    torch.manual_seed(0)
    tiles = tile_slices_nd(shape[:-1], default_grid(K, len(shape) - 1))

    def build(partitions, sample):
        net = build_model(name, 10, partitions=partitions, width=16,
                          **input_options(name, sample[:-1], sample[-1])).to(device)
        return to_cuda_layout(net) if cuda else net

    x = torch.randn(8, shape[-1], *shape[:-1], device=device)
    x = x.contiguous(memory_format=memory_format(x.ndim)) if cuda else x
    y = torch.randint(0, 10, (8,), device=device)
    subs = [build(K, tile_shape(tiles) + shape[-1:]) for _ in range(K)]
    for sub, tile in zip(subs, tiles):
        F.cross_entropy(sub(x[(slice(None), slice(None), *tile)]), y).backward()
        torch.optim.SGD(sub.parameters(), lr=0.1).step()
    net = compose([sub.eval() for sub in subs], build(1, shape), tiles=tiles, input_size=shape[:-1])
    error = theorem_error(net, subs, x, tiles=tiles)
    F.cross_entropy(net.train()(x), y).backward()  # after the check: a train-mode forward moves BN statistics
    grads = {p.grad.device for p in net.parameters()}
    ok = grads == {x.device} and error["max_rel"] <= 1e-4
    failed += [] if ok else [name]
    print(f"{name}: K={K} on {x.device}: max rel. error {error['max_rel']:.2g}, gradients on "
          f"{sorted(map(str, grads))}: {'ok' if ok else 'FAILED'}", flush=True)
sys.exit(1 if failed else 0)
PY

# budget: DDC's wall time within 10 % of its budget (results.json budget.landed).
if due budget 1; then
  tic=$SECONDS
  pipeline "$work/budget" 1 "${tiny[@]}" sub.schedule=linear global.schedule=cosine "run.budget=$run_budget" \
    > "$out/budget.log" 2>&1
  rc=$?
  if [[ -f $work/budget/results.json ]]; then
    cp "$work/budget/results.json" "$out/budget.results.json"
    "$python" -c 'import json, sys; landed = json.load(open(sys.argv[1]))["budget"]["landed"]["ddc"]
print(f"DDC landed at {landed:.3f} of its budget"); sys.exit(not 0.9 <= landed <= 1.1)' \
      "$work/budget/results.json" >> "$out/budget.log" 2>&1 || rc=1
  fi
  record budget "$rc" "$((SECONDS - tic))" 1
fi

# resume: stopped after the global phase's first step (exit 75; mid-epoch in both modes) and resumed:
# its final weights bitwise equal to an uninterrupted run's.
resume=("${tiny[@]}" model.name=mlp data.source=synthetic1d:n=128 data.augment=false global.epochs=2
        run.deterministic=true)
if due resume 1; then
  tic=$SECONDS
  {
    pipeline "$work/resume-whole" 1 "${resume[@]}"
    whole=$?
    DDC_STOP_AT=global:1:1 pipeline "$work/resume-stopped" 1 "${resume[@]}"
    stopped=$?
    pipeline "$work/resume-stopped" 1 "${resume[@]}"
    resumed=$?
    echo "gpu_check: uninterrupted exit $whole, stopped exit $stopped (75 expected), resumed exit $resumed"
    (( whole == 0 && stopped == 75 && resumed == 0 )) && "$python" - "$work/resume-whole/model.pt" \
      "$work/resume-stopped/model.pt" <<'PY'
import sys
import torch
from ddc_hpc.checkpoint import load_torch

a, b = (load_torch(path)["state_dict"] for path in sys.argv[1:])
differ = [k for k in a if not torch.equal(a[k], b[k])]
print(f"resumed vs uninterrupted: {len(a) - len(differ)} of {len(a)} tensors bitwise equal"
      + (f"; differ: {', '.join(differ)}" if differ else ""))
sys.exit(1 if differ or a.keys() != b.keys() else 0)
PY
  } > "$out/resume.log" 2>&1
  record resume "$?" "$((SECONDS - tic))" 1
fi

if due fused 2; then
  tic=$SECONDS
  # its worker directly: the numbers go to $out/fused.json, not over benchmarks/last_fused.json (the CPU table's)
  timeout "$limit" "$mpiexec" -n 2 "$python" benchmarks/bench_fused.py --worker --json "$out/fused.json" \
    --device "$device" "${fused[@]}" > "$out/fused.log" 2>&1
  record fused "$?" "$((SECONDS - tic))" 2
fi

if [[ $smoke == 1 ]]; then
  echo "NCCL needs GPUs: not tried in --cpu-smoke" > "$out/2rank-nccl.log"
  check 2rank-gloo 2 "${tiny[@]}" run.backend=gloo
else
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}  # NCCL's own reason shows in the log
  if ! check 2rank-nccl 2 "${tiny[@]}" run.backend=nccl; then
    check 2rank-gloo 2 "${tiny[@]}" run.backend=gloo
  fi
  check 2rank-mpi4py 2 "${tiny[@]}" run.backend=mpi4py
fi

for p in "${ratio_precisions[@]}"; do
  check "ratio-$p" 1 "${ratio[@]}" "run.precision=$p"
done

"$python" - "$out" "$smoke" "$python" "$((SECONDS - started))" <<'PY'
"""report.md from checks.tsv, the logs and the results.json files."""
import json, platform, re, subprocess, sys
from pathlib import Path

out, smoke, python, elapsed = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], int(sys.argv[4])
rows = [line.split("\t") for line in (out / "checks.tsv").read_text().splitlines() if line]
import torch

lines = ["# GPU check" + (" (CPU smoke: plumbing only, no GPU numbers)" if smoke else ""), ""]
lines.append(f"- python {platform.python_version()} ({python}), torch {torch.__version__}, CUDA "
             f"{torch.version.cuda or 'none'}, {elapsed} s of checks")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        lines.append(f"- GPU {i}: {torch.cuda.get_device_name(i)}")
lines += ["", "| check | ranks | exit | seconds | precision | backend | device | compose max rel. error | global val acc | model |",
          "|---|---|---|---|---|---|---|---|---|---|"]
failed = []
for name, rc, seconds, ranks in rows:
    path = out / f"{name}.results.json"
    r = json.loads(path.read_text()) if path.exists() and rc == "0" else {}
    comp = r.get("compose", {})
    err = comp.get("max_rel_error")
    acc = r.get("global", {}).get("val_accuracy")
    lines.append(f"| {name} | {ranks} | {rc} | {seconds} | {r.get('precision', '-')} | {r.get('backend', '-')} | "
                 f"{r.get('device', '-')} | {'-' if err is None else f'{err:.2g}'} | "
                 f"{'-' if acc is None else f'{acc:.3f}'} | {r.get('model', '-')} |")
    if rc != "0":
        failed.append(name)


def last_error(name):
    log = out / f"{name}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    hits = [l for l in text.splitlines() if re.search(r"error|Error|refused|Duplicate GPU|NCCL WARN", l)]
    return (hits or text.splitlines() or ["(no output)"])[-1][:400]


lines.append("")
names = [r[0] for r in rows]
if "2rank-nccl" in names:
    nccl = next(r for r in rows if r[0] == "2rank-nccl")
    if nccl[1] == "0":
        lines.append("- 2 ranks on one GPU: NCCL accepted the shared device.")
    else:
        text = (out / "2rank-nccl.log").read_text(errors="replace")
        refused = bool(re.search(r"Duplicate GPU|ncclInvalidUsage", text))
        if refused and "2rank-gloo" not in failed:
            failed.remove("2rank-nccl")  # the expected refusal, and the fallback worked
        why = ("NCCL refuses two ranks on one device (Duplicate GPU / ncclInvalidUsage)" if refused
               else "NCCL failed for another reason (counted as a failure)")
        lines.append(f"- 2 ranks on one GPU: {why}: `{last_error('2rank-nccl')}`; then gloo for the gradients: "
                     f"2rank-gloo {'failed' if '2rank-gloo' in failed else 'passed'}.")
elif smoke:
    lines.append("- NCCL not tried (--cpu-smoke).")

lines += ["", "## sub/global phase time (1 rank; last epoch, after warm-up)", ""]
for name in [n for n in names if n.startswith("ratio-")]:
    path = out / f"{name}.results.json"
    if not path.exists():
        lines.append(f"- {name}: no result (see {name}.log: `{last_error(name)}`)")
        continue
    r = json.loads(path.read_text())
    sub_last = [h[-1]["train_seconds"] for h in r["sub"]["histories"]]
    glob_last = r["global"]["history"][-1]["train_seconds"]
    per_sub = sum(sub_last) / len(sub_last)
    lines.append(f"- {name}: {r['model']} K={r['partitions']}: one sub-network epoch {per_sub:.3f} s, one global "
                 f"epoch {glob_last:.3f} s: global/sub = **{glob_last / per_sub:.1f}x**; whole phases: sub "
                 f"{r['sub']['seconds']:.1f} s (K sub-networks one after another), global {r['global']['seconds']:.1f} s")
summarised = [n for n in ("theorem", "budget", "resume") if n in names]
lines += ["", f"## {', '.join(summarised)} (the end of each log)", ""] if summarised else []
for name in summarised:
    log = out / f"{name}.log"
    tail = log.read_text(errors="replace").splitlines()[-(9 if name == "theorem" else 1):] if log.exists() else []
    lines += [f"- {name}: `{line}`" for line in tail] or [f"- {name}: no output"]
if "fused" in names:
    lines += ["", "## fused sub-networks against one after the other (benchmarks/bench_fused.py)", ""]
    if (out / "fused.json").exists():
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_fused", "benchmarks/bench_fused.py")
        bench_fused = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench_fused)
        lines += bench_fused.table(json.loads((out / "fused.json").read_text()))
    else:
        lines.append(f"- no result (see fused.log: `{last_error('fused')}`)")
if smoke:
    lines += ["", "CPU smoke run: these times are not GPU measurements."]
skipped = [n for n, rc, *_ in rows if rc == "skipped"]
failed = [n for n in failed if n not in skipped]
lines += ["", "Failed: " + (", ".join(failed) if failed else "none") + "; skipped (time budget spent): "
          + (", ".join(skipped) if skipped else "none") + ". Logs: `<check>.log` beside this file."]
for name in failed:
    lines.append(f"- {name}: `{last_error(name)}`")
(out / "report.md").write_text("\n".join(lines) + "\n")
for name, rc, seconds, ranks in rows:  # one line per check
    verdict = "SKIP" if rc == "skipped" else "FAIL" if name in failed else "PASS"
    why = (" (time budget spent)" if rc == "skipped" else f": {last_error(name)}" if verdict == "FAIL"
           else " (NCCL refused one device for two ranks, as expected; gloo ran)" if rc != "0" else "")
    print(f"{verdict} {name} ({seconds} s){why}")
print(f"report: {out / 'report.md'}")
sys.exit(1 if failed or skipped else 0)
PY
