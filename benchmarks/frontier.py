"""Issue 20: the accuracy-versus-budget frontier, DDC against GNet-R, each at its own wall-time budget.

    python benchmarks/frontier.py --budgets 300 600 1200 --seeds 0 1 --out runs/frontier \
        [--config jobs/cifar10-frontier.toml] [--ranks 4] [--set key=value ...] [--test SOURCE] [--json]

One job per (budget, seed) point, `mpiexec -n RANKS python -m ddc_hpc.run --config CONFIG --set
run.budget=B --set run.seed=S --out OUT/b<B>-s<S>`: a point whose results.json exists is not run
again and one that was stopped resumes from its checkpoints and recorded plan, so a study can be
run in pieces (`--points-only` runs the points and stops, `--score-only` scores what has finished).
Every final network (GNet-T's model.pt, GNet-R's random_model.pt) is then scored with
`python -m ddc_hpc.evaluate` on the whole validation split the run held out, and on `--test
SOURCE`'s test split when given; the scores are kept in each point's scores.json.

Printed per budget: both strategies' accuracy (mean over seeds and each seed) with their real
elapsed seconds and landing (elapsed / budget); then, for each GNet-R budget, the smallest DDC
time that matches GNet-R's accuracy, interpolated linearly on DDC's frontier (mean accuracy
against mean elapsed seconds), as a time-to-accuracy ratio (DDC's time / GNet-R's; < 1: DDC is
there sooner). A PNG of accuracy against budget (--figure, default OUT/frontier.png).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, env, tool  # noqa: E402
from ddc_hpc.errors import BadInput, run_serial  # noqa: E402
from ddc_hpc.files import atomic_write  # noqa: E402
from ddc_hpc.plotting import pyplot  # noqa: E402
from ddc_hpc.results import load_results  # noqa: E402

NETWORKS = {"ddc": "model.pt", "random": "random_model.pt"}
NAMES = {"ddc": "DDC (SNets + GNet-T)", "random": "GNet-R"}


def point_dir(out: Path, budget: float, seed: int) -> Path:
    return out / f"b{budget:g}-s{seed}"


def run_point(args, budget: float, seed: int) -> Path:
    """Train one point unless it finished; a stopped one resumes (same --out)."""
    out = point_dir(Path(args.out), budget, seed)
    if (out / "results.json").exists():
        return out
    command = [tool("mpiexec"), "-n", str(args.ranks), sys.executable, "-m", "ddc_hpc.run", "--config", args.config,
               "--out", str(out), "--set", f"run.budget={budget:g}", "--set", f"run.seed={seed}"]
    for override in args.set:
        command += ["--set", override]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=REPO, env=env())
    if done.returncode:
        raise SystemExit(f"point b{budget:g}-s{seed} failed (exit {done.returncode}); run again to resume it")
    return out


def score(checkpoint: Path, source: str) -> dict:
    """`python -m ddc_hpc.evaluate --json` of a saved network on `source`."""
    done = subprocess.run([sys.executable, "-m", "ddc_hpc.evaluate", "--checkpoint", str(checkpoint), "--data", source,
                           "--json"], cwd=REPO, env=env(), capture_output=True, text=True)
    if done.returncode:
        raise BadInput(f"scoring {checkpoint} on {source} failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def score_point(out: Path, test: str | None) -> dict:
    """{strategy: {"val": top1, "test": top1?}} of a finished point, from (and into) its scores.json."""
    path = out / "scores.json"
    scores = json.loads(path.read_text()) if path.exists() else {}
    source = load_results(out).dataset
    for strategy, file in NETWORKS.items():
        if not (out / file).exists():
            continue
        mine = scores.setdefault(strategy, {})
        for split, data in (("val", source), ("test", test)):
            if data and split not in mine:
                print(f"scoring {out / file} on {split} ({data})", flush=True)
                mine[split] = score(out / file, data)["top1"]
                atomic_write(path, json.dumps(scores, indent=1).encode())
    return scores


def collect(args) -> list[dict]:
    """One record per finished point: budget, seed, and per strategy accuracy, elapsed and landing."""
    points = []
    for budget in args.budgets:
        for seed in args.seeds:
            out = point_dir(Path(args.out), budget, seed)
            if not (out / "results.json").exists():
                continue
            results, scores = load_results(out), score_point(out, args.test)
            landed = (results.budget or {}).get("elapsed_seconds", {})
            points.append({"budget": budget, "seed": seed, "dir": str(out), "strategies": {
                s: {"val": scores[s]["val"], "test": scores[s].get("test"), "elapsed": landed.get(s),
                    "landed": (results.budget or {}).get("landed", {}).get(s)} for s in scores}})
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
                         "landed": [m["landed"] for m in mine]})
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


def table(result: dict) -> str:
    lines = [f"accuracy on the {result['split']} split [%] at each budget (mean over seeds; each seed), "
             "elapsed = real seconds on the clock (calibration and evaluation included)", "",
             "| budget [s] | DDC mean | DDC seeds | DDC elapsed [s] | GNet-R mean | GNet-R seeds | GNet-R elapsed [s] "
             "| DDC - GNet-R |", "|---|---|---|---|---|---|---|---|"]
    by_budget = {row["budget"]: row for row in result["random"]}
    for row in result["ddc"]:
        other = by_budget.get(row["budget"])
        lines.append(f"| {row['budget']:g} | {100 * row['mean']:.2f} | {_percent(row['each'])} | {row['elapsed']:.0f} "
                     + (f"| {100 * other['mean']:.2f} | {_percent(other['each'])} | {other['elapsed']:.0f} | "
                        f"{100 * (row['mean'] - other['mean']):+.2f} |" if other else "| - | - | - | - |"))
    lines += ["", "time to GNet-R's accuracy (DDC's frontier interpolated; ratio = DDC's seconds / GNet-R's):", ""]
    for r in result["time_to_accuracy"]:
        if r["ddc_elapsed"] is None:
            lines.append(f"- GNet-R at {r['random_budget']:g} s ({100 * r['target']:.2f} %): DDC's frontier does not "
                         "reach it")
        else:
            lines.append(f"- GNet-R at {r['random_budget']:g} s ({100 * r['target']:.2f} % in {r['random_elapsed']:.0f} s):"
                         f" DDC {'<= ' if r['upper_bound'] else ''}{r['ddc_elapsed']:.0f} s, ratio "
                         f"{'<= ' if r['upper_bound'] else ''}{r['ratio']:.2f}")
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    """Accuracy against budget: each strategy's mean (line) and seeds (dots)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for strategy, colour, marker in (("ddc", "C0", "o"), ("random", "C3", "s")):
        rows = result[strategy]
        if not rows:
            continue
        ax.plot([r["budget"] for r in rows], [100 * r["mean"] for r in rows], color=colour, marker=marker,
                label=f"{NAMES[strategy]}, mean")
        for r in rows:
            ax.scatter([r["budget"]] * len(r["each"]), [100 * v for v in r["each"]], color=colour, s=12, alpha=0.5)
    reach = result["time_to_accuracy"][-1] if result["time_to_accuracy"] else None
    if reach and reach["ddc_elapsed"] is not None:  # how much sooner DDC gets to GNet-R's best
        ax.axhline(100 * reach["target"], color="C3", lw=0.8, ls=":")
        ax.annotate(f"DDC reaches GNet-R's {reach['random_budget']:g} s accuracy\nin {reach['ddc_elapsed']:.0f} s "
                    f"({'<= ' if reach['upper_bound'] else ''}{reach['ratio']:.2f} of GNet-R's time)",
                    (reach["ddc_elapsed"], 100 * reach["target"]), xytext=(8, -28), textcoords="offset points",
                    fontsize=8, arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks([r["budget"] for r in result["ddc"] or result["random"]],
                  [f"{r['budget']:g}" for r in result["ddc"] or result["random"]])
    ax.set_xlabel("wall-time budget per strategy [s] (calibration and evaluation on the clock)")
    ax.set_ylabel(f"accuracy on the {result['split']} split [%]")
    ax.set_title("accuracy against budget: DDC vs GNet-R, each annealed at its budget", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no point has finished yet: an empty figure, no legend
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[300, 600, 1200])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="runs/frontier")
    parser.add_argument("--config", default="jobs/cifar10-frontier.toml")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to every point")
    parser.add_argument("--test", help="also score every final network on this source's test split")
    parser.add_argument("--figure", help="the PNG (default OUT/frontier.png)")
    parser.add_argument("--points-only", action="store_true", help="train the points, score nothing")
    parser.add_argument("--score-only", action="store_true", help="train nothing; score and summarise what finished")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def study() -> str:
        if not args.score_only:
            for seed in args.seeds:  # one seed's whole frontier first: a partial study is still a frontier
                for budget in args.budgets:
                    run_point(args, budget, seed)
        if args.points_only:
            return "points trained"
        result = {"val": summary(points := collect(args))}
        if args.test:
            result["test"] = summary(points, "test")
        figure(result["val"], Path(args.figure or Path(args.out) / "frontier.png"))
        if args.json:
            return json.dumps(result | {"points": points}, indent=1)
        return "\n\n".join(table(r) for r in result.values())

    print(run_serial(study))


if __name__ == "__main__":
    main()
