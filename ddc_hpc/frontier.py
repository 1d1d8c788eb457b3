"""The accuracy-versus-budget frontier, DDC against GNet-R, each at its own wall-time budget.

A study (ddc_hpc/study.py) whose points are budgets x seeds of one job:

    python -m ddc_hpc.frontier local   --budgets 300 600 1200 --seeds 0 1 [--config jobs/cifar10-frontier.toml]
                                       [--ranks 4] [--set key=value ...] [--out runs/frontier] [--test SOURCE]
    python -m ddc_hpc.frontier submit  --budgets ... --seeds ... --template slurm/cpu.sbatch [--nodes 1]
                                       [--sbatch-arg=--time=1:00:00 ...] [--test SOURCE] [same job options]
    python -m ddc_hpc.frontier collect [--out runs/frontier] [--budgets ...] [--seeds ...] [--test SOURCE]
    python -m ddc_hpc.frontier tune    --budgets 200 800 --seeds 0 --shares 0.3 0.5 0.7 --lrs 3.5e-4 7e-4 1.4e-3
                                       --warmups 0.05 [--out runs/tuning]
    python -m ddc_hpc.frontier check-docs [docs/RESULTS.md]

One point per (budget, seed): `ddc_hpc.run --config CONFIG --set run.budget=B --set run.seed=S --out
OUT/b<B>-s<S>`. `local` runs them under mpiexec one after another, one seed's whole frontier first (a
partial study is still a frontier); `submit` sbatches them as one requeueable job array (one job per
point where the template takes no array) and a collect job after them. A point whose results.json
exists is not run again and one that was stopped resumes from its checkpoints and recorded plan, so a
study runs in pieces: the same command again continues it.

`collect` scores every final network of every finished point (GNet-T's model.pt, GNet-R's
random_model.pt, and the composed net as saved at composition, composed_model.pt) on the whole
validation split the run held out, and on `--test SOURCE`'s test split when given (kept in each
point's scores.json), then prints per budget both strategies' accuracy (mean over seeds and each seed)
with their real elapsed seconds and landing (elapsed / budget), and for each GNet-R budget the smallest
DDC time that matches GNet-R's accuracy, interpolated linearly on DDC's frontier (mean accuracy against
mean elapsed seconds), as a time-to-accuracy ratio (DDC's time / GNet-R's; < 1: DDC is there sooner).
A PNG of accuracy against the elapsed seconds each point really took, budgets marked, with an arrow
where DDC's interpolated curve crosses each GNet-R accuracy (--figure, default OUT/frontier.png).

The trials file is the job's `run.sub_share_trials` (relative to where the study runs): with one,
GNet-R trains each point with the lr and warm-up that scored best on the tuning split at the tuning
budget nearest (in log) to the point's budget (`best_random`), and DDC's `run.sub_share = "auto"` is
fitted by the planner to the same file. `tune` writes that file: it runs the tuning trials, each a
point of its own on the tuning split (`data.tune`): DDC alone at every share, GNet-R alone at every
lr x warm-up, as many trials for each side (else exit 2); every finished trial's network is scored on
the whole tuning split and the trials file is rewritten (atomically) with every trial's share or lr
and warm-up, sub passes, tuning accuracy and elapsed seconds; the trials are printed as a table, each
side's choice marked, with the "auto" rule fitted to DDC's choices.

`check-docs` recomputes, for every frontier section of the file (marked `<!-- frontier: ARGS -->`,
ARGS the `collect` arguments naming its records: `--out DIR --budgets ... --seeds ...`), the table and
the time-to-accuracy ratios from the committed records (results.json, scores.json) and exits 1 naming
each number the text gives otherwise, and holds every table of tuning trials (marked `<!-- tuning:
FILE -->`) to the table its trials file gives (`tune` prints it); the file and its records are found
from the repository root.

Exit codes: 0 done, 2 bad arguments (one `error:` line), 1 a point or a submission failed, or
check-docs found the text wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import statistics
import sys
from pathlib import Path

from . import study
from .budget import best_share, best_sub_passes, fit_sub_passes
from .errors import BadInput, run_serial
from .files import atomic_write
from .plotting import pyplot
from .results import load_results

TOOL = "frontier"
REPO = Path(__file__).resolve().parents[1]  # check-docs: the documents and their records
# the final networks, and DDC's composed one (scored as saved at composition: the head start)
NETWORKS = {"ddc": "model.pt", "random": "random_model.pt", "composed": "composed_model.pt"}
NAMES = {"ddc": "DDC (SNets + GNet-T)", "random": "GNet-R"}
POINT = re.compile(r"b(?P<budget>[0-9.e+]+)-s(?P<seed>\d+)")


def point_name(budget: float, seed: int) -> str:
    return f"b{budget:g}-s{seed}"


def trials_file(config: str, sets: list[str], budget: float) -> str:
    """The job's run.sub_share_trials ("" for none) at `budget`: the trials DDC's "auto" share is
    fitted to, and GNet-R's lr and warm-up are chosen from."""
    return study.check_config(config, [*sets, f"run.budget={budget:g}"]).run.sub_share_trials


def gnet_r_choice(config: str, sets: list[str], budget: float) -> tuple[str, ...]:
    """GNet-R's lr and warm-up overrides for a point at `budget` (best_random), none without trials."""
    trials = trials_file(config, sets, budget)
    if not trials:
        return ()
    try:
        chosen = best_random(json.loads(Path(trials).read_text())["trials"], budget)
    except (OSError, ValueError, KeyError) as err:
        raise BadInput(f"the trials file {trials} (run.sub_share_trials) is unreadable ({err}): run "
                       "`python -m ddc_hpc.frontier tune` first, from where the study runs") from None
    return (f"random.lr={chosen['lr']:g}", f"random.warmup_epochs={chosen['warmup_epochs']:g}")


def frontier_points(args) -> list[study.Point]:
    """Every (budget, seed) point, one seed's whole frontier first."""
    return [study.Point(point_name(budget, seed),
                        (f"run.budget={budget:g}", f"run.seed={seed}", *gnet_r_choice(args.config, args.set, budget)),
                        ranks=getattr(args, "ranks", 1), nodes=getattr(args, "nodes", 1),
                        info={"budget": budget, "seed": seed})
            for seed in args.seeds for budget in args.budgets]


def _definition(args, kind: str) -> dict:
    return {"kind": kind, "config": args.config, "sets": args.set}


# ---------------------------------------------------------------------------------------------- scoring

def score_point(out: Path, test: str | None, networks: dict[str, str] = NETWORKS) -> dict:
    """{network: {"val": top1, "test": top1?}} of a finished point, from (and into) its scores.json
    ("val": the split the run scored, a tuning trial's tuning split)."""
    from .evaluate import score  # torch: only where a network is scored

    path = out / "scores.json"
    scores = json.loads(path.read_text()) if path.exists() else {}
    source = load_results(out).dataset
    for strategy, file in networks.items():
        if not (out / file).exists():
            continue
        mine = scores.setdefault(strategy, {})
        for split, data in (("val", source), ("test", test)):
            if data and split not in mine:
                print(f"scoring {out / file} on {split} ({data})", flush=True)
                mine[split] = score(out / file, data)[0]["top1"]
                atomic_write(path, json.dumps(scores, indent=1).encode())
    return scores


def finished_points(out: Path, budgets=None, seeds=None) -> list[tuple[float, int, Path]]:
    """(budget, seed, dir) of every finished point under `out` (b<B>-s<S>), by budget then seed; only
    the budgets and seeds given, when given."""
    if not out.is_dir():
        raise BadInput(f"{out}: no such study folder")
    found = []
    for d in out.iterdir():
        match = POINT.fullmatch(d.name)
        if match and study.finished(d):
            budget, seed = float(match["budget"]), int(match["seed"])
            if (budgets is None or budget in budgets) and (seeds is None or seed in seeds):
                found.append((budget, seed, d))
    return sorted(found)


def collect(out: Path, budgets=None, seeds=None, test: str | None = None, score: bool = True) -> list[dict]:
    """One record per finished point: budget, seed, and per strategy accuracy, elapsed and landing
    (DDC: the sub share its plan chose). `score=False` reads the recorded scores only."""
    points, scored = [], {}
    for budget, seed, run_dir in finished_points(out, budgets, seeds):
        results = load_results(run_dir)
        splits = results.splits or {}  # None: recorded before issue 31
        if splits.get("scored_split") == "tuning":
            raise BadInput(f"{run_dir} is a tuning trial (data.tune): its scores are on the tuning split, which is "
                           "never reported; a frontier point scores the validation split")
        if splits:
            scored.setdefault(splits["scored"]["digest"], []).append(run_dir.name)
        if len(scored) > 1:
            raise BadInput("the points were scored on different splits (" + "; ".join(
                f"{', '.join(names)}: {digest}" for digest, names in scored.items()) + "): give them one "
                "data.split_seed, val_fraction and val_limit")
        scores = score_point(run_dir, test) if score else json.loads((run_dir / "scores.json").read_text())
        plan = results.budget or {}
        points.append({"budget": budget, "seed": seed, "dir": str(run_dir), "strategies": {
            s: {"val": scores[s]["val"], "test": scores[s].get("test"), "elapsed": plan.get("elapsed_seconds", {}).get(s),
                "landed": plan.get("landed", {}).get(s)} | ({"sub_share": plan.get("sub_share")} if s == "ddc" else {})
            for s in scores}})
    return points


def frontier(points: list[dict], strategy: str, split: str = "val") -> list[dict]:
    """Per budget: mean accuracy and elapsed seconds over seeds, and each seed's accuracy."""
    rows = []
    for budget in sorted({p["budget"] for p in points}):
        mine = [p["strategies"][strategy] for p in points if p["budget"] == budget and strategy in p["strategies"]]
        values = [m[split] for m in mine if m.get(split) is not None]
        if values:
            rows.append({"budget": budget, "mean": statistics.fmean(values), "each": values,
                         "elapsed": statistics.fmean(m["elapsed"] for m in mine if m["elapsed"] is not None),
                         "each_elapsed": [m["elapsed"] for m in mine], "landed": [m["landed"] for m in mine],
                         "shares": [m.get("sub_share") for m in mine]})
    return rows


def time_to(curve: list[dict], target: float) -> tuple[float | None, bool]:
    """(seconds at which the curve, linear between its points, first reaches `target`; whether that
    is only an upper bound because its first point is already above)."""
    previous = None
    for row in curve:
        if row["mean"] >= target:
            if previous is None:
                return row["elapsed"], True
            fraction = (target - previous["mean"]) / (row["mean"] - previous["mean"])
            return previous["elapsed"] + fraction * (row["elapsed"] - previous["elapsed"]), False
        previous = row
    return None, False


def summary(points: list[dict], split: str = "val") -> dict:
    ddc, rnd = frontier(points, "ddc", split), frontier(points, "random", split)
    ratios = []
    for row in rnd:
        seconds, bound = time_to(ddc, row["mean"])
        ratios.append({"random_budget": row["budget"], "target": row["mean"], "random_elapsed": row["elapsed"],
                       "ddc_elapsed": seconds, "upper_bound": bound,
                       "ratio": None if seconds is None else seconds / row["elapsed"]})
    return {"split": split, "ddc": ddc, "random": rnd, "time_to_accuracy": ratios}


def _percent(values) -> str:
    return " / ".join(f"{100 * v:.2f}" for v in values)


def _shares(values) -> str:
    return " / ".join("-" if v is None else f"{v:.3g}" for v in values)


# the table's columns: header -> the cell recomputed from a DDC row and GNet-R's row at its budget
COLUMNS = {
    "budget [s]": lambda d, r: f"{d['budget']:g}",
    "DDC mean": lambda d, r: f"{100 * d['mean']:.2f}",
    "DDC seeds": lambda d, r: _percent(d["each"]),
    "DDC elapsed [s]": lambda d, r: f"{d['elapsed']:.0f}",
    "DDC sub share": lambda d, r: _shares(d["shares"]),
    "GNet-R mean": lambda d, r: f"{100 * r['mean']:.2f}" if r else "-",
    "GNet-R seeds": lambda d, r: _percent(r["each"]) if r else "-",
    "GNet-R elapsed [s]": lambda d, r: f"{r['elapsed']:.0f}" if r else "-",
    "DDC - GNet-R": lambda d, r: f"{100 * (d['mean'] - r['mean']):+.2f}" if r else "-",
}


def _column(header: str) -> str | None:
    """The COLUMNS key a table header names ("DDC seeds 0 / 1" is "DDC seeds"), or None."""
    header = header.replace("**", "").strip()
    return next((key for key in COLUMNS if header == key or header.startswith(key + " ")), None)


def _time_to_line(r: dict) -> str:
    if r["ddc_elapsed"] is None:
        return f"- GNet-R at {r['random_budget']:g} s ({100 * r['target']:.2f} %): DDC's frontier does not reach it"
    bound = "<= " if r["upper_bound"] else ""
    return (f"- GNet-R at {r['random_budget']:g} s ({100 * r['target']:.2f} % in {r['random_elapsed']:.0f} s): DDC "
            f"{bound}{r['ddc_elapsed']:.0f} s, ratio {bound}{r['ratio']:.2f}")


def table(result: dict) -> str:
    lines = [f"accuracy on the {result['split']} split [%] at each budget (mean over seeds; each seed), "
             "elapsed = real seconds on the clock (calibration and evaluation included), DDC's sub share per seed",
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    by_budget = {row["budget"]: row for row in result["random"]}
    for row in result["ddc"]:
        lines.append("| " + " | ".join(cell(row, by_budget.get(row["budget"])) for cell in COLUMNS.values()) + " |")
    lines += ["", "time to GNet-R's accuracy (DDC's frontier interpolated; ratio = DDC's seconds / GNet-R's):", ""]
    lines += [_time_to_line(r) for r in result["time_to_accuracy"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- every number of the text on a record

MARKER = re.compile(r"<!--\s*frontier:(.*?)-->")
TUNING = re.compile(r"<!--\s*tuning:(.*?)-->")  # the trials file whose table (trials_table) follows
TIME_TO = re.compile(r"GNet-R at (?P<budget>[\d,.]+) s \((?P<target>[\d.]+) % in (?P<elapsed>[\d,]+) s\):"
                     r"(?P<rest>[^\n]*?)(?P<bound><= )?(?P<ddc>[\d,]+) s, ratio (?:<= )?\**(?P<ratio>[\d.]+)")


def _number(text: str) -> str:
    return text.replace("**", "").replace(",", "").strip()


def check_section(text: str, result: dict) -> list[str]:
    """What `text` (one frontier section of a document) says otherwise than `result` (summary of
    its records): every cell of its frontier tables (columns named as COLUMNS) and every "GNet-R at
    B s (A % in E s): DDC T s, ratio R" line; every budget of the records must have both."""
    problems, rows_seen, lines_seen = [], set(), set()
    by_budget = {row["budget"]: row for row in result["random"]}
    ddc = {f"{row['budget']:g}": row for row in result["ddc"]}
    header = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            header = None
        elif header is None:
            header = [_column(c) for c in cells] if "DDC mean" in line.replace("**", "") else False
        elif header and not set(line.replace("|", "").strip()) <= set("-: "):
            budget = _number(cells[0])
            row = ddc.get(budget)
            if row is None:
                problems.append(f"table row for {budget} s: the records have no DDC point at that budget")
                continue
            rows_seen.add(budget)
            for column, cell in zip(header, cells):
                if column is not None and _number(cell) != COLUMNS[column](row, by_budget.get(row["budget"])):
                    problems.append(f"table, {budget} s, {column}: the text says {_number(cell)}, the records give "
                                    f"{COLUMNS[column](row, by_budget.get(row['budget']))}")
    expected = {f"{r['random_budget']:g}": r for r in result["time_to_accuracy"]}
    for match in TIME_TO.finditer(text):
        budget = _number(match["budget"])
        r = expected.get(budget)
        if r is None or r["ddc_elapsed"] is None:
            problems.append(f"time to GNet-R's {budget} s accuracy: the records give "
                            + ("no GNet-R point there" if r is None else "no DDC time (its frontier does not reach it)"))
            continue
        lines_seen.add(budget)
        said = {"accuracy": match["target"], "GNet-R elapsed": _number(match["elapsed"]), "DDC time": _number(match["ddc"]),
                "ratio": match["ratio"], "upper bound": bool(match["bound"])}
        true = {"accuracy": f"{100 * r['target']:.2f}", "GNet-R elapsed": f"{r['random_elapsed']:.0f}",
                "DDC time": f"{r['ddc_elapsed']:.0f}", "ratio": f"{r['ratio']:.2f}", "upper bound": r["upper_bound"]}
        problems += [f"time to GNet-R's {budget} s accuracy, {k}: the text says {said[k]}, the records give {true[k]}"
                     for k in said if said[k] != true[k]]
    problems += [f"no table row for the {b} s budget of the records" for b in ddc if b not in rows_seen]
    problems += [f"no time-to-accuracy line for GNet-R's {b} s budget" for b, r in expected.items()
                 if b not in lines_seen and r["ddc_elapsed"] is not None]
    return problems


def _section(text: str, marker: re.Match) -> str:
    """The text from `marker` to the next section (`## `)."""
    end = re.compile(r"^## ", re.M).search(text, marker.end())
    return text[marker.end(): end.start() if end else len(text)]


def check_docs(path: Path) -> list[str]:
    """Every frontier section of `path` checked against its records (check_section), and every
    table of tuning trials against its trials file; relative paths start at the repository root."""
    path = Path(REPO, path)
    text = path.read_text()
    markers = list(MARKER.finditer(text))
    if not markers:
        return [f"{path} marks no frontier section (<!-- frontier: --out DIR --budgets ... --seeds ... -->)"]
    problems = []
    for marker in TUNING.finditer(text):
        trials = Path(REPO, marker.group(1).strip())
        if not trials.exists():
            problems.append(f"{path}: the tuning trials file {marker.group(1).strip()} does not exist")
        elif trials_table(json.loads(trials.read_text())["trials"]) not in _section(text, marker):
            problems.append(f"{path}: the table of the tuning trials in {marker.group(1).strip()} is not what "
                            "the file gives (python -m ddc_hpc.frontier tune prints it)")
    for marker in markers:
        section = _section(text, marker)
        args = parse_args(["collect", *shlex.split(marker.group(1))])
        where = f"{path} ({marker.group(1).strip()})"
        points = collect(Path(REPO, args.out), args.budgets, args.seeds, score=False)
        problems += [f"{where}: {p}" for p in check_section(section, summary(points))]
    return problems


# --------------------------------------------------------------------------------------------- figure

def figure(result: dict, path: Path) -> None:
    """Accuracy against the elapsed seconds each point really took (linear axis): each strategy's mean (line,
    labelled with its budget) and seeds (dots, at their own elapsed seconds), the budgets marked;
    an arrow from each GNet-R mean to where DDC's interpolated curve crosses its accuracy."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    for strategy, colour, marker in (("ddc", "C0", "o"), ("random", "C3", "s")):
        rows = result[strategy]
        if not rows:
            continue
        ax.plot([r["elapsed"] for r in rows], [100 * r["mean"] for r in rows], color=colour, marker=marker,
                label=f"{NAMES[strategy]}, mean over seeds")
        for r in rows:
            ax.scatter(r["each_elapsed"][:len(r["each"])], [100 * v for v in r["each"]], color=colour, s=12, alpha=0.5)
            ax.annotate(f"{r['budget']:g} s", (r["elapsed"], 100 * r["mean"]), xytext=(4, -10 if strategy == "random"
                        else 5), textcoords="offset points", fontsize=7, color=colour)
    budgets = sorted({r["budget"] for rows in (result["ddc"], result["random"]) for r in rows})
    for budget in budgets:
        ax.axvline(budget, color="0.6", lw=0.6, ls=":")
    for r in result["time_to_accuracy"]:
        if r["ddc_elapsed"] is None or r["upper_bound"]:  # no crossing on the curve to point at
            continue
        ax.annotate("", (r["ddc_elapsed"], 100 * r["target"]), (r["random_elapsed"], 100 * r["target"]),
                    arrowprops={"arrowstyle": "->", "lw": 0.8, "color": "0.3"})
        ax.annotate(f"{r['ratio']:.2f}x", (r["ddc_elapsed"], 100 * r["target"]), xytext=(-26, 3),
                    textcoords="offset points", fontsize=7, color="0.3")
    # a linear axis: the time to accuracy is interpolated linearly in seconds, so the lines drawn
    # are the interpolated curves and each arrow ends on DDC's
    ax.set_xlim(left=0)
    if budgets:
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets], fontsize=8)
    ax.set_xlabel("elapsed seconds per strategy, all on the clock (dotted: the budgets)")
    ax.set_ylabel(f"accuracy on the {result['split']} split [%]")
    ax.set_title("DDC vs GNet-R, each annealed at its budget; arrows: time to GNet-R's accuracy", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no point has finished yet: an empty figure, no legend
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- tuning trials

def best_random(trials: list[dict], budget: float) -> dict:
    """GNet-R's lr and warm-up for `budget`: the pair with the highest mean tuning accuracy over its
    seeds at the tuning budget nearest to `budget` in log (ties: the smaller lr, then warm-up)."""
    mine = [t for t in trials if t["strategy"] == "random"]
    if not mine:
        raise BadInput("the trials file has no GNet-R trials: run python -m ddc_hpc.frontier tune first")
    nearest = min(sorted({t["budget"] for t in mine}), key=lambda b: abs(math.log(b / budget)))
    pairs: dict[tuple[float, float], list[float]] = {}
    for t in mine:
        if t["budget"] == nearest:
            pairs.setdefault((t["lr"], t["warmup_epochs"]), []).append(t["tuning_accuracy"])
    lr, warmup = max(sorted(pairs), key=lambda k: statistics.fmean(pairs[k]))
    return {"lr": lr, "warmup_epochs": warmup, "tuning_budget": nearest}


def trials_table(trials: list[dict]) -> str:
    """The tuning trials as docs/RESULTS.md shows them: per budget each side's settings (tuning
    accuracy and elapsed seconds, mean over seeds; DDC's sub passes), each side's choice marked (DDC:
    best_share, GNet-R: best_random), and the "auto" rule fitted to DDC's choices."""
    lines = ["| budget [s] | side | setting | tuning accuracy [%] | elapsed [s] | sub passes | chosen |",
             "|---|---|---|---|---|---|---|"]
    for budget in sorted({t["budget"] for t in trials}):
        here = [t for t in trials if t["budget"] == budget]
        sides, chosen = {t["strategy"] for t in here}, set()
        if "ddc" in sides:
            chosen.add(("ddc", best_share(here, budget)[0]))
        if "random" in sides:
            pick = best_random(here, budget)
            chosen.add(("random", (pick["lr"], pick["warmup_epochs"])))
        settings: dict[tuple, list[dict]] = {}
        for t in here:
            key = (t["strategy"], t["sub_share"] if t["strategy"] == "ddc" else (t["lr"], t["warmup_epochs"]))
            settings.setdefault(key, []).append(t)
        for (strategy, setting), runs in sorted(settings.items(), key=lambda kv: kv[0]):
            said = (f"sub share {setting:g}" if strategy == "ddc" else f"lr {setting[0]:g}, warm-up {setting[1]:g}")
            passes = f"{statistics.fmean(t['sub_passes'] for t in runs):.2f}" if strategy == "ddc" else "-"
            lines.append(f"| {budget:g} | {NAMES[strategy].split(' ')[0]} | {said} | "
                         f"{100 * statistics.fmean(t['tuning_accuracy'] for t in runs):.2f} | "
                         f"{statistics.fmean(t['elapsed'] for t in runs):.0f} | {passes} | "
                         f"{'**yes**' if (strategy, setting) in chosen else ''} |")
    points = best_sub_passes(trials)
    if len(points) > 1:
        rule = fit_sub_passes(points)
        lines += ["", f"DDC's \"auto\" rule from its choices: P(B) = {rule['coefficient']:.4g} x B^{rule['exponent']:.3f} "
                  "sub passes (" + ", ".join(f"{p:.2f} at {b:g} s" for b, p in points) + ")"]
    return "\n".join(lines)


def trial_grid(args) -> list[tuple[str, dict, tuple[str, ...]]]:
    """(name, what it tries, its overrides) of every trial at one budget and seed: DDC at each share,
    GNet-R at each lr x warm-up; BadInput unless both sides get as many."""
    ddc = [(f"ddc-share{s:g}", {"strategy": "ddc", "sub_share": s}, ("run.strategy=ddc", f"run.sub_share={s:g}"))
           for s in args.shares]
    rnd = [(f"gnet-r-lr{lr:g}-wu{w:g}", {"strategy": "random", "lr": lr, "warmup_epochs": w},
            ("run.strategy=random", f"random.lr={lr:g}", f"random.warmup_epochs={w:g}"))
           for lr in args.lrs for w in args.warmups]
    if len(ddc) != len(rnd) or not ddc:
        raise BadInput(f"tune gives DDC {len(ddc)} share trials and GNet-R {len(rnd)} lr x warm-up trials per budget "
                       "and seed: give as many to each side (e.g. --shares 0.3 0.5 0.7 with --lrs 3.5e-4 7e-4 1.4e-3 "
                       "--warmups 0.05)")
    return ddc + rnd


def tune(args) -> int:
    """Run (or resume) every trial and rewrite the trials file from every finished one."""
    grid = trial_grid(args)
    trials = trials_file(args.config, args.set, args.budgets[0])
    if not trials:
        raise BadInput(f"{args.config} names no trials file (run.sub_share_trials): set it to the file the trials "
                       "are written to, e.g. --set run.sub_share_trials=docs/runs/tuning/cifar10-frontier.json")
    tuning = ("data.tune=true",)  # the job's data.tuning_size: the split its frontier points never train on
    points = [study.Point(f"{name}-{point_name(budget, seed)}",
                          (f"run.budget={budget:g}", f"run.seed={seed}", *tuning, *sets), ranks=args.ranks,
                          info=tried | {"budget": budget, "seed": seed})
              for budget in args.budgets for seed in args.seeds for name, tried, sets in grid]
    root = Path(args.out)
    manifest = study.prepare(root, TOOL, _definition(args, "tune"), points)
    failed = study.run_local(root, TOOL, manifest, points, config=args.config, sets=args.set,
                             launcher=study.resolve_launcher(args.launcher))
    records = []
    for point in points:
        out = root / point.name
        if not study.finished(out):
            continue
        strategy = point.info["strategy"]
        results, scores = load_results(out), score_point(out, None, {strategy: NETWORKS[strategy]})
        plan = results.budget
        record = point.info | {"tuning_accuracy": scores[strategy]["val"], "elapsed": plan["elapsed_seconds"][strategy],
                               "run": out.name, "tuning_split": results.splits["tuning"]}
        if strategy == "ddc":
            record["sub_passes"] = plan["phases"]["sub"]["steps"] / plan["rates"]["sub"]["pass_steps"]
        records.append(record)
    path = Path(trials)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"config": args.config, "set": [*args.set, *tuning], "ranks": args.ranks,
                                   "trials": records}, indent=1).encode())
    print(trials_table(records) if records else "", f"\n{TOOL}: {len(records)} of {len(points)} trials in {path}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------- commands

def report(args) -> None:
    """Score what finished under args.out, print the table (or --json) and draw the figure."""
    points = collect(Path(args.out), args.budgets, args.seeds, args.test)
    result = {"val": summary(points)}
    if args.test:
        result["test"] = summary(points, "test")
    figure(result["val"], Path(args.figure or Path(args.out) / "frontier.png"))
    print(json.dumps(result | {"points": points}, indent=1) if args.json
          else "\n\n".join(table(r) for r in result.values()))


def cmd_local(args) -> int:
    launcher = study.resolve_launcher(args.launcher)
    points = frontier_points(args)
    root = Path(args.out)
    manifest = study.prepare(root, TOOL, _definition(args, "local"), points)
    failed = study.run_local(root, TOOL, manifest, points, config=args.config, sets=args.set, launcher=launcher)
    if not args.points_only:
        report(args)
    return 1 if failed else 0


def cmd_submit(args) -> int:
    points = frontier_points(args)
    root = Path(args.out)
    manifest = study.prepare(root, TOOL, _definition(args, "slurm"), points)
    manifest |= {"template": args.template, "sbatch_args": args.sbatch_arg}
    scope = ["--out", str(root), "--budgets", *map("{:g}".format, args.budgets), "--seeds", *map(str, args.seeds)]
    collect_job = study.collect_command(TOOL, *scope, *(["--test", args.test] if args.test else []))
    return study.submit(root, TOOL, manifest, points, template=args.template, config=args.config, sets=args.set,
                        sbatch_args=args.sbatch_arg, collect=None if args.no_collect else collect_job,
                        dry_run=args.dry_run)


def cmd_collect(args) -> int:
    report(args)
    return 0


def cmd_check_docs(args) -> int:
    problems = check_docs(Path(args.file))
    if problems:
        raise SystemExit("\n".join(problems))
    print(f"{args.file}: every frontier table, time-to-accuracy line and trials table agrees with its records")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser, sub = study.parser(TOOL, __doc__, "See docs/RESULTS.md and docs/CLUSTER.md, section 'Studies'.")

    def job(p, out):
        p.add_argument("--budgets", type=float, nargs="+", default=[300, 600, 1200], metavar="SECONDS")
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
        p.add_argument("--out", default=out, help="the study folder (default %(default)s)")
        p.add_argument("--config", default="jobs/cifar10-frontier.toml")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to every point")

    def mpi(p):
        p.add_argument("--ranks", type=study.count, default=4, help="MPI ranks per point (default %(default)s)")
        study.launcher_arg(p)

    def scored(p):
        p.add_argument("--test", help="also score every final network on this source's test split")
        p.add_argument("--figure", help="the PNG (default OUT/frontier.png)")
        p.add_argument("--json", action="store_true")

    local = sub.add_parser("local", help="run the points under mpiexec on this machine, then collect")
    job(local, "runs/frontier")
    mpi(local)
    scored(local)
    local.add_argument("--points-only", action="store_true", help="train the points, score nothing")
    local.set_defaults(func=cmd_local)

    submit = sub.add_parser("submit", help="sbatch the points (a job array) and a collect job after them")
    job(submit, "runs/frontier")
    study.submit_args(submit)
    submit.add_argument("--nodes", type=study.count, default=1, help="nodes per point (ranks per node: the template's)")
    submit.add_argument("--test", help="the collect job also scores every final network on this source's test split")
    submit.set_defaults(func=cmd_submit)

    col = sub.add_parser("collect", help="score and tabulate the finished points")
    col.add_argument("--out", default="runs/frontier", help="the study folder (default %(default)s)")
    col.add_argument("--budgets", type=float, nargs="+", help="only these budgets (default: every finished point)")
    col.add_argument("--seeds", type=int, nargs="+", help="only these seeds")
    scored(col)
    col.set_defaults(func=cmd_collect)

    tuning = sub.add_parser("tune", help="run the tuning trials into the job's trials file")
    job(tuning, "runs/tuning")
    mpi(tuning)
    tuning.add_argument("--shares", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    tuning.add_argument("--lrs", type=float, nargs="+", default=[3.5e-4, 7e-4, 1.4e-3])
    tuning.add_argument("--warmups", type=float, nargs="+", default=[0.05])
    tuning.set_defaults(func=tune)

    docs = sub.add_parser("check-docs", help="check a document's frontier sections against their records")
    docs.add_argument("file", nargs="?", default="docs/RESULTS.md")
    docs.set_defaults(func=cmd_check_docs)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_serial(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
