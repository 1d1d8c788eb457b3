"""Issue 7f: how much of GNet-R's wall time DDC needs to reach GNet-R's final accuracy.

    python benchmarks/time_to_accuracy.py RUN_DIR [--baseline RUN_DIR] [--out PNG] [--json]

RUN_DIR is a finished `python -m ddc_hpc.run` directory with `run.strategy = "both"`. From its
results.json:

* DDC's curve: nothing to show during the sub phase (the sub-networks see tiles), then GNet-T
  before training when the global phase starts (`global.elapsed_start`, with
  compose.init_val_accuracy), then at the end of every global epoch (the rows' `elapsed`, which
  include each epoch's evaluation), all counted from the sub phase's start (`sub.elapsed_start`);
* GNet-R's curve: the `elapsed` of random.history rows counted from `random.elapsed_start`; its
  final validation accuracy is the target and its last point its wall time.

`elapsed` is read on one clock shared by all phases (seconds since the job started), so nothing is
summed or guessed; results written before rows had it fall back to cumulated epoch seconds.

The ratio is DDC's time to the target / GNet-R's wall time (< 1: DDC is faster). The time to the
target is interpolated linearly between the two evaluations that bracket it (the epoch-end value,
an upper bound, is reported too). If DDC never reaches the target the ratio is None and
`reached` false. The same for two lower targets, 95 % and 90 % of GNet-R's final accuracy, each
against GNet-R's own first time there (a table; `targets` in --json). One PNG: accuracy against
wall time for both strategies, targets marked.

`--baseline OTHER_RUN` takes GNet-R (its `random` section) from another run of the same model and
data, for a run made with `run.strategy = "ddc"`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddc_hpc.plotting import pyplot  # noqa: E402
from ddc_hpc import report  # noqa: E402
from ddc_hpc.errors import BadInput  # noqa: E402
from ddc_hpc.results import Results, load_results  # noqa: E402


def ddc_curve(results: Results) -> tuple[list[float], list[float]]:
    _, seconds, accuracy = report.ddc_curve(results)
    return seconds, accuracy


def random_curve(results: Results) -> tuple[list[float], list[float]]:
    _, seconds, accuracy = report.random_curve(results)
    return seconds, accuracy


def first_crossing(seconds: list[float], accuracy: list[float], target: float,
                   start: tuple[float, float] | None = None) -> tuple[float | None, float | None]:
    """(interpolated time, time of the first evaluation) at which accuracy >= target; None if never.

    `start` is the point before the first one (for interpolating into the first interval)."""
    previous = start
    for t, a in zip(seconds, accuracy):
        if a >= target:
            if previous is None or previous[1] >= target or a == previous[1]:
                return t, t
            t0, a0 = previous
            return t0 + (target - a0) / (a - a0) * (t - t0), t
        previous = (t, a)
    return None, None


LOWER_TARGETS = (0.95, 0.9)  # fractions of GNet-R's final accuracy, besides the final accuracy itself


def target_times(ddc: tuple[list[float], list[float]], gnet_r: tuple[list[float], list[float]],
                 fractions: tuple[float, ...] = LOWER_TARGETS) -> list[dict]:
    """For GNet-R's final accuracy and each lower target (a fraction of it): the wall time each
    strategy first reaches it and DDC's / GNet-R's. GNet-R's time to its own final accuracy is its
    whole wall time (the goal's denominator); to a lower target, its interpolated first crossing."""
    (ddc_t, ddc_a), (r_t, r_a) = ddc, gnet_r
    final = r_a[-1]
    rows = []
    for fraction in (1.0, *fractions):
        target = fraction * final
        r_seconds = r_t[-1] if fraction == 1.0 else first_crossing(r_t, r_a, target, start=(0.0, 0.0))[0]
        d_seconds = first_crossing(ddc_t, ddc_a, target)[0]
        rows.append({"fraction": fraction, "val_accuracy": target, "ddc_seconds": d_seconds,
                     "gnet_r_seconds": r_seconds,
                     "ratio": None if d_seconds is None or not r_seconds else d_seconds / r_seconds})
    return rows


def analyse(results: Results) -> dict:
    for section, present in (("sub", results.sub), ("compose", results.compose), ("global", results.global_),
                             ("random", results.random)):
        if present is None:
            raise ValueError(f"results.json has no '{section}' section: run with run.strategy = \"both\"")
    ddc_t, ddc_a = ddc_curve(results)
    r_t, r_a = random_curve(results)
    if not r_t:
        raise ValueError("random.history is empty: GNet-R trained no epoch")
    target, r_total = r_a[-1], r_t[-1]
    # Before GNet-T's first evaluation DDC has no global accuracy: no interpolation from time 0.
    interpolated, at_epoch = first_crossing(ddc_t, ddc_a, target)
    return {
        "target_val_accuracy": target,
        "gnet_r_seconds": r_total,
        "ddc_seconds_total": ddc_t[-1],
        "ddc_final_val_accuracy": ddc_a[-1],
        "reached": interpolated is not None,
        "ddc_seconds_to_target": interpolated,
        "ddc_seconds_to_target_epoch_end": at_epoch,
        "ratio": None if interpolated is None else interpolated / r_total,
        "ratio_epoch_end": None if at_epoch is None else at_epoch / r_total,
        "sub_plus_compose_seconds": ddc_t[0],
        # the other way round: when GNet-R passed DDC's final accuracy (None if it never did)
        "gnet_r_seconds_to_ddc_final": first_crossing(r_t, r_a, ddc_a[-1], start=(0.0, 0.0))[0],
        "targets": target_times((ddc_t, ddc_a), (r_t, r_a)),
        "curves": {"ddc": [ddc_t, ddc_a], "random": [r_t, r_a]},
    }


def plot(results: Results, summary: dict, out: Path) -> None:
    plt = pyplot()

    (ddc_t, ddc_a), (r_t, r_a) = summary["curves"]["ddc"], summary["curves"]["random"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(r_t, [100 * a for a in r_a], "o-", color="tab:gray", label="GNet-R (random init)")
    ax.plot(ddc_t, [100 * a for a in ddc_a], "s-", color="tab:blue", label="DDC: GNet-T (composed, then trained)")
    ax.axvspan(0, results.sub.seconds, color="tab:blue", alpha=0.08, label="DDC sub phase (SNets on tiles)")
    for row in summary["targets"]:
        ax.axhline(100 * row["val_accuracy"], color="tab:gray", ls=":", lw=1 if row["fraction"] == 1.0 else 0.6)
    if summary["reached"]:
        t = summary["ddc_seconds_to_target"]
        ax.axvline(t, color="tab:blue", ls="--", lw=1)
        ax.annotate(f"DDC reaches GNet-R's final {100 * summary['target_val_accuracy']:.1f}% at {t:.0f} s\n"
                    f"= {summary['ratio']:.2f} x GNet-R's {summary['gnet_r_seconds']:.0f} s",
                    xy=(t, 100 * summary["target_val_accuracy"]), xytext=(0.02, 0.97), textcoords="axes fraction", va="top",
                    fontsize=8, arrowprops={"arrowstyle": "->", "lw": 0.6})
    else:
        ax.set_title("DDC did not reach GNet-R's final accuracy", fontsize=9)
    ax.set_xlabel("wall time, s")
    ax.set_ylabel("validation accuracy, %")
    ax.set_xlim(left=0)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.suptitle(f"{results.model}, K = {results.partitions}, "
                 f"{results.world_size or '?'} rank(s), {results.dataset or ''}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, help="the PNG (default RUN_DIR/time_to_gnet_r_accuracy.png)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--baseline", type=Path, help="take GNet-R from this run directory instead")
    args = p.parse_args(argv)
    path = args.run_dir / "results.json"
    if not path.exists():
        print(f"error: {path} does not exist: pass a finished run directory", file=sys.stderr)
        return 2
    try:
        results = load_results(path)
        other = load_results(args.baseline) if args.baseline is not None else None
    except BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if other is not None:
        if other.random is None:
            print(f"error: {args.baseline}/results.json has no GNet-R ('random') section", file=sys.stderr)
            return 2
        results.random = other.random
    try:
        summary = analyse(results)
    except ValueError as err:
        print(f"error: {path}: {err}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "time_to_gnet_r_accuracy.png"
    plot(results, summary, out)
    summary["plot"] = str(out)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "curves"}, indent=1))
    elif summary["reached"]:
        print(f"DDC reaches GNet-R's final validation accuracy {100 * summary['target_val_accuracy']:.2f}% after "
              f"{summary['ddc_seconds_to_target']:.1f} s (epoch end: {summary['ddc_seconds_to_target_epoch_end']:.1f} s); "
              f"GNet-R took {summary['gnet_r_seconds']:.1f} s: ratio {summary['ratio']:.3f} "
              f"(epoch end {summary['ratio_epoch_end']:.3f}). Plot: {out}")
    else:
        back = summary["gnet_r_seconds_to_ddc_final"]
        print(f"DDC did not reach GNet-R's final validation accuracy {100 * summary['target_val_accuracy']:.2f}% "
              f"(DDC ended at {100 * summary['ddc_final_val_accuracy']:.2f}% after {summary['ddc_seconds_total']:.1f} s; "
              f"GNet-R took {summary['gnet_r_seconds']:.1f} s"
              + (f" and passed DDC's final accuracy after {back:.1f} s" if back is not None else "")
              + f"): no ratio. Plot: {out}")
    if not args.json:
        print(target_table(summary["targets"]))
    return 0


def target_table(targets: list[dict]) -> str:
    """One line per target: each strategy's wall time to it and DDC's / GNet-R's."""
    def seconds(value):
        return "not reached" if value is None else f"{value:.1f} s"

    lines = ["target (of GNet-R's final)   DDC            GNet-R         DDC / GNet-R"]
    for row in targets:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        name = f"{100 * row['val_accuracy']:.2f}% ({100 * row['fraction']:.0f}%)"
        lines.append(f"{name:<28} {seconds(row['ddc_seconds']):<14} {seconds(row['gnet_r_seconds']):<14} {ratio}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
