#!/usr/bin/env bash
# Every CUDA path one GPU can exercise, in one short run (< 8 minutes on one GPU), with a report.
#
#   tools/gpu_check.sh [--out DIR]        on a machine with a GPU; DIR defaults to $OUT, else runs/gpu-check-<time>
#   tools/gpu_check.sh --cpu-smoke [--out DIR]   the same plumbing on the CPU, tiny jobs: no GPU numbers
#   tools/gpu_check.sh --only 'family-*' ...     only the checks whose name matches the pattern
#
# Checks: (1) the pipeline at 1 rank on cuda in fp32, bf16 and fp16 (cifar_resnet20, a 2-D CIFAR ResNet);
# (2) one model of every other family of the registry at 1 rank (family-<model>: 2-D ImageNet ResNet and
# CNN11, 3-D cnn3d and resnet3d, 1-D cnn1d, mlp, vgg11, the recurrent gru), whose layouts and kernels
# differ on the GPU; (3) 2 ranks sharing the GPU with
# NCCL, and when NCCL refuses (one device for two ranks) the same with gloo, said so in the report; the
# toolkit's own MPI engine (run.backend=mpi4py) at 2 ranks; (4) the sub/global phase time ratio on the
# GPU (cifar_resnet32 width 64, K=4, 640 images, fp32 and bf16) from results.json. Writes DIR/report.md,
# DIR/<check>.log and DIR/<check>.results.json. Exit 0 when every check passed, 1 otherwise.
# DDC_CHECK_BUDGET (default 420): no check starts after that many seconds of checks (it is reported
# as skipped); a check runs at most 240 s and ends by DDC_CHECK_DEADLINE (default 480) seconds.
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
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
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

# check NAME RANKS OVERRIDE...: one pipeline run; its log, exit code and results.json land in $out.
# A check whose name does not match --only is left out (not run, not reported).
check() {
  local name=$1 ranks=$2; shift 2
  local args=() o rc tic limit
  # shellcheck disable=SC2053  # $only is a glob pattern
  [[ $name == $only ]] || return 0
  for o in "$@"; do args+=(--set "$o"); done
  limit=$(( deadline - (SECONDS - started) ))
  (( limit > 240 )) && limit=240
  if (( SECONDS - started > budget )); then
    say "$name: skipped (time budget of ${budget} s spent)"
    printf '%s\t%s\t%s\t%s\n' "$name" skipped 0 "$ranks" >> "$out/checks.tsv"
    return 1
  fi
  say "$name: $ranks rank(s) ..."
  tic=$SECONDS
  if [[ $ranks == 1 ]]; then
    timeout "$limit" "$python" -m ddc_hpc.run --out "$work/$name" --set run.device=$device "${args[@]}" \
      > "$out/$name.log" 2>&1
  else
    timeout "$limit" "$mpiexec" -n "$ranks" "$python" -m ddc_hpc.run --out "$work/$name" --set run.device=$device \
      "${args[@]}" > "$out/$name.log" 2>&1
  fi
  rc=$?
  [[ -f $work/$name/results.json ]] && cp "$work/$name/results.json" "$out/$name.results.json"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - tic))" "$ranks" >> "$out/checks.tsv"
  say "$name: exit $rc in $((SECONDS - tic)) s"
  return $rc
}

for p in "${precisions[@]}"; do
  check "1rank-$p" 1 "${tiny[@]}" "run.precision=$p"
done

for model in resnet18 cnn11 vgg11 cnn3d resnet3d cnn1d mlp gru; do
  read -ra overrides <<< "${family[$model]}"
  check "family-$model" 1 "${tiny[@]}" "${overrides[@]}"
done

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
if smoke:
    lines += ["", "CPU smoke run: these times are not GPU measurements."]
skipped = [n for n, rc, *_ in rows if rc == "skipped"]
failed = [n for n in failed if n not in skipped]
lines += ["", "Failed: " + (", ".join(failed) if failed else "none") + "; skipped (time budget spent): "
          + (", ".join(skipped) if skipped else "none") + ". Logs: `<check>.log` beside this file."]
for name in failed:
    lines.append(f"- {name}: `{last_error(name)}`")
(out / "report.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(1 if failed or skipped else 0)
PY
