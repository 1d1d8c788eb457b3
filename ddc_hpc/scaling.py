"""Scaling studies: one job at several rank or node counts -> scaling.csv and speedup/efficiency plots.

    python -m ddc_hpc.scaling local  --ranks 1 2 4 --config jobs/x.toml [--set k=v ...] [--out DIR]
    python -m ddc_hpc.scaling submit --nodes 1 2 4 8 --template slurm/gpu.sbatch --config jobs/x.toml
                                     [--set k=v ...] [--sbatch-arg=--account=me ...] [--out DIR]
    python -m ddc_hpc.scaling collect DIR [DIR ...] [--out DIR]

A study (ddc_hpc/study.py) with one point per count: `local` runs the job under mpiexec once per rank
count on this machine; `submit` sbatches the template once per node count (`--nodes N`) plus a collect
job that runs after all of them (`--dependency=afterany:...`). Both write DIR/n<count>/ (one
ddc_hpc.run out dir each) and DIR/scaling.json (the study and what was run; the same command again
continues it), and collect writes DIR/scaling.csv, DIR/scaling_speedup.png and
DIR/scaling_efficiency.png.

Strong scaling (the default) keeps the whole problem fixed: speedup = T(n0) / T(n), ideal n / n0.
Weak scaling (`--weak KEY`, e.g. data.limit) grows the integer config KEY in proportion to the count
so the work per rank stays fixed: scaled speedup = (n / n0) * T(n0) / T(n), ideal n / n0 as well.
Efficiency = speedup / (n / n0) in both cases; n0 is the smallest count that finished.

Exit codes: 0 done, 2 bad arguments (message, no traceback), 1 a run or submission failed.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import re
import sys
from pathlib import Path

from . import study
from .errors import BadInput
from .plotting import pyplot
from .results import Results, load_results
from .study import UsageError

PHASES = ("sub", "compose", "global", "random")
MODES = ("strong", "weak")
TOOL = "scaling"
MANIFEST = f"{TOOL}.json"
CSV_NAME = "scaling.csv"


# ---- pure scaling arithmetic ----------------------------------------------------------------------

def ideal_speedup(base_count: int, count: int) -> float:
    """Perfect scaling from base_count to count units (ranks or nodes)."""
    if base_count <= 0 or count <= 0:
        raise ValueError(f"counts must be positive, got {base_count} and {count}")
    return count / base_count


def speedup(base_seconds: float, seconds: float, base_count: int, count: int, mode: str = "strong") -> float:
    """Strong: T(n0) / T(n). Weak (work grows with n): scaled speedup (n / n0) * T(n0) / T(n)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (base_seconds > 0 and seconds > 0):
        raise ValueError(f"times must be positive, got {base_seconds} and {seconds}")
    ratio = base_seconds / seconds
    return ratio if mode == "strong" else ideal_speedup(base_count, count) * ratio


def efficiency(speedup_value: float, base_count: int, count: int) -> float:
    """Fraction of the ideal speedup reached: 1.0 is perfect scaling."""
    return speedup_value / ideal_speedup(base_count, count)


def _positive(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def run_row(results: Results, *, nodes: int, run: str = "") -> dict:
    """One run's timings from its results.json: per-phase seconds and images/s, total seconds."""
    row = {"run": run, "nodes": int(nodes), "ranks": int(results.world_size), "resumed": bool(results.resumed)}
    total = 0.0
    sections = (results.sub, results.compose, results.global_, results.random)
    for phase, section in zip(PHASES, sections):
        seconds = _positive(section and section.seconds)
        row[f"{phase}_seconds"] = seconds
        row[f"{phase}_images_per_second"] = _positive(getattr(section, "images_per_second", None))  # compose: none
        total += seconds or 0.0
    row["total_seconds"] = total or None
    return row


def scaling_table(rows: list[dict], mode: str = "strong", unit: str | None = None) -> list[dict]:
    """Rows (from run_row) sorted by count, with speedup and efficiency against the smallest count.

    unit: "nodes" or "ranks" (default: nodes when the rows span several node counts, else ranks).
    Adds scaling, unit, count, baseline_count; speedup/efficiency for the total time and for each
    phase present in both the row and the baseline (None where not comparable).
    """
    if not rows:
        return []
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if unit is None:
        unit = "nodes" if len({r["nodes"] for r in rows}) > 1 else "ranks"
    if unit not in ("nodes", "ranks"):
        raise ValueError(f"unit must be 'nodes' or 'ranks', got {unit!r}")
    ordered = sorted(rows, key=lambda r: (r[unit], r["ranks"], r["nodes"]))
    base = ordered[0]
    table = []
    for row in ordered:
        out = {"scaling": mode, "unit": unit, "count": row[unit], "baseline_count": base[unit], **row}
        for prefix, key in [("", "total_seconds")] + [(f"{p}_", f"{p}_seconds") for p in PHASES]:
            b, t = base.get(key), row.get(key)
            if b and t:
                s = speedup(b, t, base[unit], row[unit], mode)
                out[f"{prefix}speedup"], out[f"{prefix}efficiency"] = s, efficiency(s, base[unit], row[unit])
            else:
                out[f"{prefix}speedup"] = out[f"{prefix}efficiency"] = None
        table.append(out)
    return table


CSV_COLUMNS = (
    ["scaling", "unit", "count", "baseline_count", "nodes", "ranks", "run", "resumed", "total_seconds"]
    + [f"{p}_seconds" for p in PHASES]
    + [f"{p}_images_per_second" for p in ("sub", "global", "random")]
    + ["speedup", "efficiency"]
    + [f"{p}_{m}" for p in PHASES for m in ("speedup", "efficiency")]
)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(path: Path, table: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in table:
            writer.writerow([_cell(row.get(c)) for c in CSV_COLUMNS])


def plot(out: Path, table: list[dict], title: str) -> list[Path]:
    """scaling_speedup.png and scaling_efficiency.png: measured curves and the ideal line."""
    plt = pyplot()

    unit, mode = table[0]["unit"], table[0]["scaling"]
    counts = [r["count"] for r in table]
    base = table[0]["baseline_count"]
    curves = [("total", "speedup", "efficiency")] + [(p, f"{p}_speedup", f"{p}_efficiency") for p in PHASES]
    written = []
    for kind in ("speedup", "efficiency"):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ideal = [ideal_speedup(base, c) if kind == "speedup" else 1.0 for c in counts]
        ax.plot(counts, ideal, "k--", label="ideal")
        for name, s_key, e_key in curves:
            key = s_key if kind == "speedup" else e_key
            points = [(r["count"], r[key]) for r in table if r.get(key) is not None]
            if name == "compose" or not points:  # compose is one Gatherv on rank 0: not a scaling curve
                continue
            ax.plot(*zip(*points), "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
        ax.set_xlabel(unit)
        label = {"speedup": "scaled speedup" if mode == "weak" else "speedup", "efficiency": "parallel efficiency"}
        ax.set_ylabel(f"{label[kind]} (vs {base} {unit})")
        if kind == "efficiency":
            ax.set_ylim(0, max(1.1, max((r["efficiency"] or 0) for r in table) * 1.1))
        ax.set_title(f"{mode} scaling: {title}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"scaling_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ---- finding runs -------------------------------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        print(f"scaling: warning: {path} is unreadable ({err}); skipped", file=sys.stderr)
        return None


def find_runs(dirs: list[Path]) -> tuple[list[tuple[Path, Results, dict]], list[Path], set[str]]:
    """(run dir, results, manifest entry) for every finished run; the dirs of unfinished ones; modes.

    Each DIR may be a run's out dir (holds results.json), a study dir with scaling.json, or a folder
    whose subfolders are run dirs.
    """
    found, missing, modes = [], [], set()
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise UsageError(f"{d} is not a directory")
        manifest = _read_json(d / MANIFEST)
        if (d / "results.json").exists():
            candidates = [(d, {})]
        elif manifest is not None:
            modes.add(manifest.get("mode", "strong"))
            # its points (a manifest from before ddc_hpc.study: the runs it made)
            candidates = [(d / e["dir"], e) for e in manifest.get("points") or manifest.get("runs", [])]
        else:
            # run dirs: subfolders with results.json, and n<count> folders (a missing one is reported)
            candidates = [(p, {}) for p in sorted(d.iterdir()) if p.is_dir() and (
                (p / "results.json").exists() or re.fullmatch(r"n\d+", p.name))]
        for run_dir, entry in candidates:
            results = _read_results(run_dir / "results.json")
            if results is None:
                missing.append(run_dir)
            else:
                found.append((run_dir, results, entry))
    return found, missing, modes


def _read_results(path: Path) -> Results | None:
    """A finished run's Results; None (with a warning if the file is there but unreadable) otherwise."""
    if not path.exists():
        return None
    try:
        return load_results(path)
    except BadInput as err:
        print(f"scaling: warning: {err}; skipped", file=sys.stderr)
        return None


def _nodes_of(results: Results, entry: dict) -> int:
    for value in (entry.get("nodes"), results.extra.get("nodes")):
        if isinstance(value, int) and value > 0:
            return value
    return 1


def collect(dirs: list[Path], out: Path | None = None, mode: str | None = None) -> tuple[Path, list[dict]]:
    """Tabulate finished runs into out/scaling.csv and plot them; returns (csv path, table)."""
    found, missing, modes = find_runs(dirs)
    for run_dir in missing:
        print(f"scaling: {run_dir} has no results.json (failed, still running or never started); "
              "left out", file=sys.stderr)
    if not found:
        raise UsageError(f"no finished runs (results.json) under {', '.join(map(str, dirs))}")
    if mode is None:
        if len(modes) > 1:
            raise UsageError(f"the studies mix {sorted(modes)} scaling; collect them separately")
        mode = modes.pop() if modes else "strong"
    problems = {(r.model, r.partitions, r.dataset, r.strategy) for _, r, _ in found}
    if len(problems) > 1:
        raise UsageError("these runs solve different problems (model, partitions, dataset, strategy): "
                         f"{sorted(map(str, problems))}; a scaling table needs one job at several counts")
    out = Path(out or dirs[0])
    rows = [run_row(results, nodes=_nodes_of(results, entry), run=os.path.relpath(run_dir, out))
            for run_dir, results, entry in found]
    for row in rows:
        if row["resumed"]:
            print(f"scaling: warning: {row['run']} was resumed from a checkpoint; its times cover only "
                  "the last part of the run", file=sys.stderr)
    if not any(r["total_seconds"] for r in rows):
        raise UsageError("the runs report no phase times (results.json without 'seconds')")
    table = scaling_table(rows, mode)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CSV_NAME
    write_csv(path, table)
    model, partitions, dataset, strategy = problems.pop()
    plot(out, table, f"{model}, K={partitions}, {dataset}, strategy {strategy}")
    return path, table


def summary(table: list[dict]) -> str:
    unit = table[0]["unit"]
    other = "ranks" if unit == "nodes" else "nodes"
    lines = [f"{table[0]['scaling']} scaling over {unit} (baseline {table[0]['baseline_count']} {unit})",
             f"{unit:>6} {other:>6} {'seconds':>9} {'speedup':>8} {'efficiency':>10}"]
    for r in table:
        s, e, t = r["speedup"], r["efficiency"], r["total_seconds"]
        lines.append(f"{r['count']:>6} {r[other]:>6} {t or float('nan'):>9.2f} "
                     f"{s or float('nan'):>8.2f} {100 * (e or float('nan')):>9.0f}%")
    return "\n".join(lines)


# ---- running a study (ddc_hpc.study: one point per count) ---------------------------------------

def _weak_sets(cfg, key: str | None, counts: list[int]) -> dict[int, tuple[str, ...]]:
    """Per count, the --set that scales KEY (weak scaling); nothing for strong scaling."""
    if key is None:
        return {c: () for c in counts}
    section, _, name = key.partition(".")
    base = cfg.to_dict().get(section, {}).get(name)
    if isinstance(base, bool) or not isinstance(base, int) or base <= 0:
        raise UsageError(f"--weak {key}: needs a positive integer config key (the work at the smallest "
                         f"count), but {key} = {base!r}")
    return {c: (f"{key}={base * c // counts[0]}",) for c in counts}


def _study(args, unit: str) -> tuple[Path, dict, list[study.Point]]:
    """The study dir, its manifest and one point per count (n<count>: `unit` = ranks or nodes)."""
    values = study.counts(getattr(args, unit), f"--{unit}")
    weak = _weak_sets(study.check_config(args.config, args.set), args.weak, values)
    points = [study.Point(f"n{c}", weak[c], **({"ranks": c} if unit == "ranks" else {"nodes": c})) for c in values]
    root = Path(args.out or f"runs/scaling-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    definition = {"kind": "local" if unit == "ranks" else "slurm", "mode": "weak" if args.weak else "strong",
                  "weak_key": args.weak, "unit": unit, "config": args.config, "sets": args.set}
    return root, study.prepare(root, TOOL, definition, points), points


def cmd_local(args) -> int:
    launcher = study.resolve_launcher(args.launcher)
    root, manifest, points = _study(args, "ranks")
    manifest["launcher"] = args.launcher
    failed = study.run_local(root, TOOL, manifest, points, config=args.config, sets=args.set, launcher=launcher)
    path, table = collect([root], root)
    print(summary(table))
    print(f"scaling: wrote {path} and {root}/scaling_speedup.png, scaling_efficiency.png")
    return 1 if failed else 0


def cmd_submit(args) -> int:
    if not args.config:
        raise UsageError("submit needs --config (the job every run of the study executes)")
    root, manifest, points = _study(args, "nodes")
    manifest |= {"template": args.template, "sbatch_args": args.sbatch_arg}
    return study.submit(root, TOOL, manifest, points, template=args.template, config=args.config, sets=args.set,
                        sbatch_args=args.sbatch_arg, dry_run=args.dry_run,
                        collect=None if args.no_collect else study.collect_command(TOOL, str(root)))


def cmd_collect(args) -> int:
    path, table = collect([Path(d) for d in args.dirs], Path(args.out) if args.out else None, args.mode)
    print(summary(table))
    print(f"scaling: wrote {path}, {path.parent / 'scaling_speedup.png'}, {path.parent / 'scaling_efficiency.png'}")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser, sub = study.parser(TOOL, __doc__, "See docs/CLUSTER.md, section 'Studies'.")

    def job_args(p):
        p.add_argument("--config", help="job TOML (local: default the built-in quickstart)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="config override for every run (repeatable)")
        p.add_argument("--out", help="study folder (default runs/scaling-<timestamp>)")
        p.add_argument("--weak", metavar="KEY",
                       help="weak scaling: multiply the integer config KEY (e.g. data.limit) by count/smallest")

    local = sub.add_parser("local", help="run the job under mpiexec at several rank counts on this machine")
    local.add_argument("--ranks", type=study.count, nargs="+", required=True, metavar="N")
    job_args(local)
    study.launcher_arg(local)
    local.set_defaults(func=cmd_local)

    submit = sub.add_parser("submit", help="sbatch the template once per node count, then a collect job")
    submit.add_argument("--nodes", type=study.count, nargs="+", required=True, metavar="N")
    job_args(submit)
    study.submit_args(submit)
    submit.set_defaults(func=cmd_submit)

    col = sub.add_parser("collect", help="tabulate and plot finished runs")
    col.add_argument("dirs", nargs="+", metavar="DIR", help="study folder(s), or run out dirs")
    col.add_argument("--out", help="where scaling.csv and the plots go (default: the first DIR)")
    col.add_argument("--mode", choices=MODES, help="override the scaling kind recorded in scaling.json")
    col.set_defaults(func=cmd_collect)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"scaling: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
