"""What a run leaves behind, and the paper's tables and figures over several runs.

The pipeline (run.py, rank 0) writes results.json, metrics.csv and one run's plots; results.json is
written last and atomically, so its presence means the run finished.

    python -m ddc_hpc.report RUN_DIR... [--out DIR]

puts finished runs side by side, one column each, in the layout of the paper's Tables 3.3 / 3.5
(SNet-k range, GNet-T not trained, GNet-T-trained, GNet-R-trained; top-1 and top-5) with the wall
time per phase, and draws Fig. 3.1 / 3.5 (time per phase) and Fig. 3.2 / 3.6 (validation accuracy
per epoch, GNet-T against GNet-R): DIR/report.md, phase_seconds.png, accuracy.png,
time_to_accuracy.png. Budgeted runs add each strategy's budget, elapsed seconds and landing, the
frontier across them (score against budget) and a budget mark on the figures. The markdown is
also printed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import textwrap
import tomllib
from pathlib import Path

from . import budget, strategies
from .errors import BadInput, run_serial
from .files import atomic_write
from .partition import level_placement, subnets_of_rank, tile_shape
from .plotting import pyplot
from .results import CLASSIFICATION, Results, load_results

METRIC_COLUMNS = ["phase", "epoch", "loss", "val_loss", "val_accuracy", "val_top5", "val_mae", "val_rmse", "lr", "seconds",
                  "train_seconds", "train_samples", "images_per_second", "elapsed", "skipped_steps"]


def plan_text(plan, world, threads: int) -> str:
    cfg = plan.config
    K = plan.partitions
    # decompose.levels: every level's placement (prepare checked it); one level: today's round robin
    placement = level_placement(world.size, cfg.decompose.level_counts) if len(plan.level_tiles) > 1 else \
        [[[r for r in range(world.size) if k in subnets_of_rank(r, world.size, K)] for k in range(K)]]
    owners = {r: [k for k, ranks in enumerate(placement[0]) if r in ranks] for r in range(world.size)}
    lines = [
        f"ddc_hpc run -> {plan.out}",
        f"  model {cfg.model.name} (width {cfg.model.width}, {cfg.model.num_classes} classes), "
        f"K = {K} sub-networks, strategy {cfg.run.strategy}",
        f"  data {cfg.data.source}: {len(plan.data.train)} train / {len(plan.data.val)} {plan.data.held_out} images of "
        f"{plan.data.train.image_shape} (split seed {cfg.data.split_seed}"
        + (f", {len(plan.data.tuning)} tuning images not trained on" if plan.data.tuning is not None else "") + ")",
        f"  tiles {'x'.join(map(str, tile_shape(plan.tiles)))} (overlap {cfg.decompose.overlap}, crop "
        f"{cfg.decompose.crop}): " + ", ".join(
            f"{k}:[" + ",".join(f"{s.start}:{s.stop}" for s in t) + "]" for k, t in enumerate(plan.tiles)),
        f"  {world.size} rank(s), {threads} thread(s) each, device {world.device}, precision {cfg.run.precision}; "
        "rank -> sub-networks: "
        + ", ".join(f"{r}:{ks}" for r, ks in owners.items()),
        *[f"  level {level}: {len(placement[level])} sub-networks on "
          f"{'x'.join(map(str, tile_shape(plan.level_tiles[level])))} tiles, composed from level {level - 1} in groups "
          f"of {len(plan.level_tiles[level - 1]) // len(placement[level])}; rank -> sub-networks: "
          + ", ".join(f"{r}:{[k for k, ranks in enumerate(placement[level]) if r in ranks]}" for r in range(world.size))
          for level in range(1, len(placement))],
        f"  epochs: sub {plan.phase('sub').epochs}, global {plan.phase('global').epochs}, random "
        f"{plan.phase('random').epochs}" + ("  (resuming from checkpoints)" if plan.resume else ""),
    ]
    if plan.budget is not None:
        lines += budget.describe(plan.budget)
    names = [name for strategy in strategies.CHOICES[cfg.run.strategy] for name in strategies.NETWORKS[strategy]]
    return "\n".join(lines + [f"  {NAMES[name]}" for name in names])


# The names the table and the logs use, said where a run first prints them (the plan above).
NAMES = {"SNet": "SNet-k = sub-network k (1/K of the width), trained on tile k of every image",
         "GNet-T": "GNet-T = the global network composed from the K SNets (transfer), then trained on whole images",
         "GNet-R": "GNet-R = the global network trained from random weights (the baseline)"}


def metric_rows(results: Results) -> list[dict]:
    rows = [row for h in results.sub.histories for row in h] if results.sub else []
    rows += [row for record in results.levels or [] for h in record.get("histories", []) for row in h]
    for phase in (results.global_, results.random):
        rows += phase.history if phase else []
    return rows


def write(out: Path, results: Results) -> None:
    """metrics.csv and plots first, results.json (the 'finished' marker) last."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(metric_rows(results))
    atomic_write(out / "metrics.csv", buffer.getvalue().encode())
    plot(out, results)
    atomic_write(out / "results.json", json.dumps(results.to_dict(), indent=1).encode())


# ------------------------------------------------------------------------------------ one run's view


def epoch_times(history: list[dict], origin: float | None, offset: float = 0.0) -> list[float]:
    """Wall seconds of each epoch's end after `origin` on the job's clock (rows' `elapsed`); for runs
    written before rows had it, `offset` plus the cumulated epoch seconds."""
    if history and origin is not None and "elapsed" in history[0]:
        return [row["elapsed"] - origin for row in history]
    seconds, total = [], offset
    for row in history:
        total += row["seconds"]
        seconds.append(total)
    return seconds


def scored(history: list[dict], metric: str) -> list[dict]:
    """The epochs a phase was scored after (eval_every may skip some)."""
    return [row for row in history if row.get(metric) is not None]


def ddc_curve(results: Results) -> tuple[list[float], list[float], list[float]]:
    """(epochs, wall seconds since the sub phase began, val accuracy) of GNet-T, starting at the
    composed net before training as the global phase starts from it (BN statistics recalibrated
    when the run did that: the point's time is after the recalibration); the one GNet-T curve of
    the report's figures and of benchmarks/time_to_accuracy.py.

    Epochs count on the paper's equal-iteration axis: GNet-T's epoch e is at sub.epochs + e.
    """
    sub, glob, metric = results.sub, results.global_, results.metric
    origin = sub.elapsed_start
    start = (glob.elapsed_start - origin if origin is not None and glob.elapsed_start is not None
             else sub.seconds + results.compose.seconds)
    history = scored(glob.history, metric)
    recalibrated = results.compose.recalibrated(metric)
    start_value = results.compose.init(metric) if recalibrated is None else recalibrated
    first = [] if start_value is None else [(sub.epochs, start, start_value)]  # None: not scored (eval_every 0)
    points = first + list(zip([sub.epochs + row["epoch"] for row in history], epoch_times(history, origin, start),
                              [row[metric] for row in history]))
    return tuple(list(axis) for axis in zip(*points)) if points else ([], [], [])


def random_curve(results: Results) -> tuple[list[float], list[float], list[float]]:
    """(epochs, wall seconds since GNet-R's phase began, val accuracy) of GNet-R (report and
    benchmarks/time_to_accuracy.py)."""
    history = scored(results.random.history, results.metric)
    seconds = epoch_times(history, results.random.elapsed_start)
    return [r["epoch"] for r in history], seconds, [r[results.metric] for r in history]


def sub_curves(results: Results) -> list[tuple[list[float], list[float], list[float]]]:
    """(epochs, wall seconds, val accuracy) of every sub-network on its own tile."""
    sub = results.sub
    histories = [scored(history, results.metric) for history in sub.histories] if sub else []
    return [([r["epoch"] for r in history], epoch_times(history, sub.elapsed_start),
             [r[results.metric] for r in history]) for history in histories]


def plot(out: Path, results: Results) -> None:
    """One run's accuracy.png (paper Fig. 3.2), time_to_accuracy.png and phase_seconds.png (Fig. 3.1)."""
    run = {"name": f"{results.model}, K = {results.partitions}, {results.world_size} rank(s)",
           "results": results, "config": {}}
    accuracy_figure([run], out / "accuracy.png", axis=0)
    accuracy_figure([run], out / "time_to_accuracy.png", axis=1)
    phase_seconds_figure([run], out / "phase_seconds.png")


def _score(value, metric: str) -> str:
    if value is None:
        return "   -   "
    return f"{100 * value:6.2f}%" if metric == CLASSIFICATION else f"{value:7.4f}"


def table(results: Results, out: Path | str | None = None) -> str:
    """The comparison the paper reports and where its seconds went: each SNet's score (its own
    training seconds in its name: they are inside the sub phase's row), then every part of each
    strategy in exactly one row (segments: ddc_segments / random_segments), the rows of a strategy
    summing to its total; a budgeted run's verdict; where the run was written (`out`)."""
    metric = results.metric
    scores = {"score_composed": results.compose and results.compose.init(metric),
              "score_recalibrated": results.compose and results.compose.recalibrated(metric),
              "global": results.global_ and results.global_.get(metric),
              "random": results.random and results.random.get(metric)}
    label = "val acc" if metric == CLASSIFICATION else metric[4:]
    lines = [f"{'network / part':44} {label:>8} {'seconds':>9}", "-" * 63]

    def row(name: str, value, seconds) -> str:
        return f"{name:44} {'' if value is None else _score(value, metric):>8} {'' if seconds is None else f'{seconds:9.1f}'}"

    if results.has_ddc:
        for k, value in enumerate(results.sub.per_subnet):
            lines.append(row(f"SNet-{k} (own tile, {sum(r['seconds'] for r in results.sub.histories[k]):.1f} s "
                             "of the sub phase)", value, None))
    lines += level_rows(results, row)
    for strategy, (segments, total_name) in _strategy_segments(results).items():
        lines.append(f"{strategies.NAMES[strategy]}:")
        for part, seconds in segments:
            lines.append(row("  " + SEGMENT_LABELS[part], scores.get(part), seconds))
        lines.append(row(f"  {total_name}", None, sum(seconds for _, seconds in segments)))
    if results.has_ddc and results.random:
        lines.append(f"wall time {DDC_TOTAL} {_ddc_seconds(results):.1f} s vs {RANDOM_TOTAL} "
                     f"{_random_seconds(results):.1f} s")
    lines += verdict(results)
    if results.compose and results.compose.max_abs_error is not None:
        lines.append(f"Theorem 2.1 check: max |F(x) - sum_k F_k(x)| = {results.compose.max_abs_error:.3g}")
    if out is not None:
        lines.append(f"written to {out}/ (results.json, metrics.csv, plots, models, logs)")
    return "\n".join(lines)


def level_rows(results: Results, row) -> list[str]:
    """decompose.levels above the finest: each composed sub-network's score on its tile as composed
    and after its level's training (its row), the level's seconds (inside the sub phase's row) and
    the largest Theorem 2.1 error of the compositions into it."""
    metric, lines = results.metric, []
    for record in (results.levels or [])[1:]:
        tile = "x".join(map(str, record["tile"]))
        lines.append(f"level {record['level']}: {record['partitions']} SNets on {tile} tiles, composed from level "
                     f"{record['level'] - 1} (Theorem 2.1: max relative error {record['max_rel_error']:.3g}), trained "
                     f"{record['seconds']:.1f} s of the sub phase")
        for j, (start, value) in enumerate(zip(record["composed_" + metric], record["per_subnet_" + metric])):
            lines.append(row(f"  L{record['level']} SNet-{j} (composed: {_score(start, metric).strip()}; trained)",
                             value, None))
    return lines


def verdict(results: Results) -> list[str]:
    """A budgeted run's answer: one line per strategy (its budget, its final score on the
    validation split, its elapsed seconds and where that landed against the budget), and with
    both strategies one line saying which got further and by how much; nothing without a budget."""
    plan = results.budget
    if not plan or "elapsed_seconds" not in plan:
        return []
    metric, lines, final = results.metric, [], {}
    for strategy, seconds in plan["budget_seconds"].items():
        phase = results.global_ if strategy == "ddc" else results.random
        final[strategy] = phase.get(metric) if phase else None
        elapsed, landed = plan["elapsed_seconds"].get(strategy), plan["landed"].get(strategy)
        lines.append(f"budget {strategies.NAMES[strategy]} {seconds:.0f} s: {_verdict_score(final[strategy], metric)}"
                     f" on the validation split, elapsed {elapsed:.1f} s, landed at {landed:.3f} of its budget")
    if None not in final.values() and len(final) == 2:
        ddc, rand = final["ddc"], final["random"]
        higher = metric == CLASSIFICATION or metric.endswith(("accuracy", "top5"))
        ahead = "ddc" if (ddc > rand) == higher else "random"
        if ddc == rand:
            lines.append(f"DDC and GNet-R got equally far ({_verdict_score(ddc, metric)}) in their budgets")
        else:
            first, second = (ddc, rand) if ahead == "ddc" else (rand, ddc)
            gap = (f"{100 * abs(ddc - rand):.2f} points" if metric == CLASSIFICATION
                   else f"{abs(ddc - rand):.4g} {metric[4:]}")
            lines.append(f"{strategies.NAMES[ahead]} got further: {_verdict_score(first, metric)} against "
                         f"{_verdict_score(second, metric)}, {gap} ahead, each in its own "
                         f"{plan['budget_seconds'][ahead]:.0f} s budget")
    return lines


def _verdict_score(value, metric: str) -> str:
    if value is None:
        return f"{metric} not scored"
    return f"{metric} {100 * value:.2f} %" if metric == CLASSIFICATION else f"{metric} {value:.4g}"


# ----------------------------------------------------------------------------- several runs (the CLI)


def load_run(path: str | Path) -> dict:
    """{'name', 'dir', 'results' (a Results), 'config'} of a finished run directory; BadInput otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise BadInput(f"{path} is not a directory; pass run directories (the --out of python -m ddc_hpc.run)")
    results = load_results(path)
    try:
        config = tomllib.loads((path / "config.toml").read_text())
    except (OSError, ValueError):
        config = {}  # optional: only used to describe the run
    return {"name": path.resolve().name, "dir": path, "results": results, "config": config}


def _range(values, digits: int = 2, scale: float = 100.0) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    same = f"{scale * lo:.{digits}f}" == f"{scale * hi:.{digits}f}"
    return f"{scale * lo:.{digits}f}" if same else f"{scale * lo:.{digits}f}-{scale * hi:.{digits}f}"


def _num(value, digits: int = 2, scale: float = 100.0) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


# (table header, metric, scale, digits): classification in %, regression errors as they are
METRIC_TABLES = {"top1": ("top-1 [%]", "val_accuracy", 100.0, 2), "top5": ("top-5 [%]", "val_top5", 100.0, 2),
                 "rmse": ("RMSE", "val_rmse", 1.0, 4), "mae": ("MAE", "val_mae", 1.0, 4)}


def accuracy_rows(results: Results, metric: str) -> dict[str, str]:
    """The rows of Tables 3.3 / 3.5 for one run; metric 'top1', 'top5' (or 'rmse', 'mae' for
    regression runs): SNets on their tiles (range over k), GNet-T before and after training, GNet-R."""
    _, key, scale, digits = METRIC_TABLES[metric]
    comp = results.compose
    snets = [h[-1].get(key) if h else None for h in results.sub.histories] if results.sub else []
    return {"SNet-k, each (range over k)": _range(snets, digits, scale),
            "GNet-T, not trained": _num(comp and comp.init(key), digits, scale),
            "GNet-T, not trained, BN recalibrated": _num(comp and comp.recalibrated(key), digits, scale),
            "GNet-T-trained": _num(results.global_ and results.global_.get(key), digits, scale),
            "GNet-R-trained": _num(results.random and results.random.get(key), digits, scale)}


DDC_TOTAL = "DDC total"  # the one name of the one sum of DDC's parts, everywhere
RANDOM_TOTAL = "GNet-R total"  # likewise GNet-R's
# every part a strategy's seconds go to, in order, and what each says happened (one row each)
SEGMENT_LABELS = {"calibration": "calibration (the budget's plan)", "sub": "SNets trained side by side (sub)",
                  "compose": "compose: Gatherv, Theorem 2.1 check", "score_composed": "GNet-T as composed: scored",
                  "recalibrate": "GNet-T BN recalibration (full images)",
                  "score_recalibrated": "GNet-T BN-recalibrated: scored", "global": "GNet-T trained (global)",
                  "random": "GNet-R trained (random)"}


def _calibration(results: Results, strategy: str) -> list[tuple[str, float]]:
    plan = results.budget
    return [("calibration", plan["calibration_seconds"][strategy])] if plan and strategy in plan.get(
        "calibration_seconds", {}) else []


def ddc_segments(results: Results) -> list[tuple[str, float]]:
    """DDC's wall time in its parts, in order, each second in exactly one: a budget's calibration,
    sub, compose, GNet-T's start (the composed net's score, BN recalibration, the score after it;
    a part the run did not do is left out) and global. The table, report.md and phase_seconds.png
    all add up exactly these."""
    comp = results.compose
    start = [("score_composed", comp.init_eval_seconds), ("recalibrate", comp.recalibrate_seconds),
             ("score_recalibrated", comp.recalibrated_eval_seconds)]
    return (_calibration(results, "ddc") + [("sub", results.sub.seconds or 0.0), ("compose", comp.seconds or 0.0)]
            + [(part, seconds) for part, seconds in start if seconds] + [("global", results.global_.seconds or 0.0)])


def random_segments(results: Results) -> list[tuple[str, float]]:
    """GNet-R's wall time in its parts: a budget's calibration, then its training."""
    return _calibration(results, "random") + [("random", results.random.seconds or 0.0)]


def _strategy_segments(results: Results) -> dict[str, tuple[list[tuple[str, float]], str]]:
    """Each strategy the run has: its segments and the name of their sum."""
    return ({"ddc": (ddc_segments(results), DDC_TOTAL)} if results.has_ddc else {}) | (
        {"random": (random_segments(results), RANDOM_TOTAL)} if results.random else {})


def _ddc_seconds(results: Results):
    """DDC_TOTAL: the sum of ddc_segments."""
    return sum(seconds for _, seconds in ddc_segments(results)) if results.has_ddc else None


def _random_seconds(results: Results):
    """RANDOM_TOTAL: the sum of random_segments."""
    return sum(seconds for _, seconds in random_segments(results)) if results.random else None


def _per_epoch(history) -> float | None:
    return sum(r["seconds"] for r in history) / len(history) if history else None


def time_rows(results: Results) -> dict[str, str]:
    """Wall time per part (seconds, the segments of the table) and the DDC / GNet-R comparison of
    one run; a budgeted run's budget, elapsed seconds and landing per strategy."""
    sub, glob, rand = results.sub, results.global_, results.random
    ddc, baseline = _ddc_seconds(results), _random_seconds(results)
    snet_epoch = max(_per_epoch(h) or 0.0 for h in sub.histories) if sub and sub.histories else None
    parts = {"ddc": dict(ddc_segments(results)) if results.has_ddc else {},
             "random": dict(random_segments(results)) if rand else {}}
    rows = {f"{strategies.NAMES[s]}: {label}": _num(parts[s].get(part), 1, 1.0)
            for s, names in (("ddc", [p for p in SEGMENT_LABELS if p != "random"]), ("random", ["calibration", "random"]))
            for part, label in ((p, SEGMENT_LABELS[p]) for p in names)}
    rows |= {"sub imbalance (slowest - fastest rank)": _num(sub and sub.imbalance_seconds, 1, 1.0),
             DDC_TOTAL: _num(ddc, 1, 1.0), RANDOM_TOTAL: _num(baseline, 1, 1.0),
             "DDC / GNet-R": "-" if ddc is None or not baseline else f"{ddc / baseline:.2f}",
             "one SNet epoch (slowest)": _num(snet_epoch, 2, 1.0),
             "one GNet-T epoch": _num(_per_epoch(glob and glob.history), 2, 1.0),
             "one GNet-R epoch": _num(_per_epoch(rand and rand.history), 2, 1.0)}
    plan = results.budget or {}
    for strategy, name in strategies.NAMES.items():
        rows |= {f"{name} budget": _num(plan.get("budget_seconds", {}).get(strategy), 0, 1.0),
                 f"{name} elapsed": _num(plan.get("elapsed_seconds", {}).get(strategy), 1, 1.0),
                 f"{name} landing (elapsed / budget)": _num(plan.get("landed", {}).get(strategy), 3, 1.0)}
    return rows


def _epochs(results: Results) -> str:
    parts = []
    if results.sub:
        parts.append(f"{results.sub.epochs} + {results.global_.epochs}")
    if results.random:
        parts.append(f"{results.random.epochs}")
    return " / ".join(parts)


def describe(run: dict) -> str:
    """One line about a run: model, data, tiles, ranks, epochs."""
    r, cfg = run["results"], run["config"]
    model, dec = cfg.get("model", {}), cfg.get("decompose", {})
    bits = [f"{r.model}" + (f" (width {model['width']}, {model['num_classes']} classes)" if model else ""),
            f"data `{r.dataset or '?'}`", f"K = {r.partitions}"]
    if dec:
        grid = dec.get("grid") or []
        bits.append(("grid " + "x".join(map(str, grid)) + ", " if grid else "")
                    + f"overlap {dec.get('overlap', 0)}, crop {dec.get('crop', 0)}")
    bits.append(f"{r.world_size or '?'} rank(s) on {r.device or '?'}")
    bits.append(f"strategy {r.strategy or '?'}, epochs SNet + GNet-T / GNet-R: {_epochs(r)}")
    if r.budget:
        bits.append("budget " + ", ".join(f"{strategies.NAMES[s]} {seconds:.0f} s"
                                          for s, seconds in r.budget["budget_seconds"].items())
                    + " (the plan set the epochs)")
    if r.compose and r.compose.max_abs_error is not None:
        bits.append(f"Theorem 2.1 max |F(x) - sum F_k(x)| = {r.compose.max_abs_error:.2g}")
    return "; ".join(bits)


def _classes(run: dict) -> int:
    """Number of classes of a run (from its config.toml; unknown counts as many)."""
    return run["config"].get("model", {}).get("num_classes") or 1 << 30


def _markdown_table(header: str, names: list[str], rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join([header, *names]) + " |", "|" + "---|" * (len(names) + 1)]
    for label in rows[0]:
        lines.append("| " + " | ".join([label, *(row[label] for row in rows)]) + " |")
    return "\n".join(lines)


def _regression(run: dict) -> bool:
    return run["results"].metric != CLASSIFICATION


def markdown(runs: list[dict]) -> str:
    """Tables 3.3 / 3.5 (top-1; top-5 where it means something; RMSE and MAE for regression runs,
    one column a run, '-' where a run has no such value) and the wall time per phase."""
    names = [f"`{run['name']}`" for run in runs]
    parts = []

    def add(metric: str, title: str, runs_with) -> None:
        header = METRIC_TABLES[metric][0]
        rows = [accuracy_rows(run["results"], metric) if run in runs_with else None for run in runs]
        blank = dict.fromkeys(next(r for r in rows if r), "-")
        parts.extend([title, "", _markdown_table(header, names, [r or blank for r in rows]), ""])

    classifiers = [run for run in runs if not _regression(run)]
    if classifiers:
        add("top1", "Validation accuracy, top-1 [%] (layout of the paper's Tables 3.3 / 3.5)", classifiers)
        many = [run for run in classifiers if _classes(run) > 5]  # top-5 of <= 5 classes is 100 %
        if many:
            add("top5", "Validation accuracy, top-5 [%]", many)
    regressors = [run for run in runs if _regression(run)]
    if regressors:
        add("rmse", "Validation RMSE (regression, eq. 2.22: the composed output is the sub-networks' mean)",
            regressors)
        add("mae", "Validation MAE", regressors)
    parts += ["Wall time [s] per phase (paper Tables 3.2 / 3.4, Figs. 3.1 / 3.5)", "",
              _markdown_table("seconds", names, [time_rows(run["results"]) for run in runs])]
    layered = [run for run in runs if run["results"].levels]
    if layered:
        parts += ["", "Multilevel composition (decompose.levels): each level's SNets on their tiles, as composed "
                  "and trained (range over k), and the largest Theorem 2.1 error of the compositions into them", "",
                  level_table(layered)]
    budgeted = sorted((run for run in runs if (run["results"].budget or {}).get("elapsed_seconds")),
                      key=lambda run: max(run["results"].budget["budget_seconds"].values()))
    if budgeted:
        parts += ["", "Against the budget: each strategy's final score in its own budget, one row a budgeted run", "",
                  frontier_table(budgeted)]
    parts += ["", "Runs:", ""] + [f"- `{run['name']}`: {describe(run)}" for run in runs]
    return "\n".join(parts) + "\n"


def level_table(runs: list[dict]) -> str:
    """One row a level of each multilevel run: its sub-networks and tiles, their primary metric as
    composed and trained (range over k), the Theorem 2.1 error into it and its seconds."""
    lines = ["| run | level | SNets (tile) | as composed | trained | max rel. error | seconds |", "|" + "---|" * 7]
    for run in runs:
        r = run["results"]
        scale, digits = (100.0, 2) if r.metric == CLASSIFICATION else (1.0, 4)
        for record in r.levels:
            composed = record.get("composed_" + r.metric)
            error = record.get("max_rel_error")
            lines.append(f"| `{run['name']}` | {record['level']} | {record['partitions']} "
                         f"({'x'.join(map(str, record['tile']))}) | "
                         f"{_range(composed, digits, scale) if composed else '-'} | "
                         f"{_range(record['per_subnet_' + r.metric], digits, scale)} | "
                         f"{'-' if error is None else f'{error:.2g}'} | {record['seconds']:.1f} |")
    return "\n".join(lines)


def frontier_table(runs: list[dict]) -> str:
    """The frontier across budgeted runs, in budget order: per run the budget, each strategy's final
    score (top-1 in %, or the regression metric) with its landing, and DDC's lead over GNet-R."""
    lines = ["| run | budget [s] | DDC | DDC landing | GNet-R | GNet-R landing | DDC - GNet-R |", "|" + "---|" * 7]
    for run in runs:
        r, plan = run["results"], run["results"].budget
        scale = 100.0 if r.metric == CLASSIFICATION else 1.0
        ddc, rand = r.global_ and r.global_.get(r.metric), r.random and r.random.get(r.metric)
        lead = "-" if ddc is None or rand is None else f"{scale * (ddc - rand):+.2f}"
        budgets = sorted({f"{b:.0f}" for b in plan["budget_seconds"].values()})
        lines.append(f"| `{run['name']}` | {' / '.join(budgets)} | {_num(ddc, 2, scale)} | "
                     f"{_num(plan['landed'].get('ddc'), 3, 1.0)} | {_num(rand, 2, scale)} | "
                     f"{_num(plan['landed'].get('random'), 3, 1.0)} | {lead} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ figures


def accuracy_figure(runs: list[dict], path: Path, axis: int = 0) -> None:
    """Fig. 3.2 / 3.6: validation accuracy of GNet-T (from the composed net) and GNet-R, one panel
    a run; the SNets on their own tiles in thin lines. axis 0: epochs (equal-iteration axis, GNet-T
    starts after the SNets' epochs), axis 1: wall time in seconds (GNet-T starts after sub + compose).
    """
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = min(3, len(runs))
    rows = -(-len(runs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for ax, run in zip(axes.flat, runs):
        r = run["results"]
        scale = 100 if r.metric == CLASSIFICATION else 1
        for i, curve in enumerate(sub_curves(r)):
            ax.plot(curve[axis], [scale * a for a in curve[2]], color="0.6", lw=0.8,
                    label="SNets (own tiles)" if i == 0 else None)
        if r.has_ddc:
            curve = ddc_curve(r)
            ax.plot(curve[axis], [scale * a for a in curve[2]], marker="o", ms=3, color="C0",
                    label="GNet-T (composed)")
            if curve[axis]:
                ax.axvline(curve[axis][0], color="C0", ls=":", lw=0.8)
        if r.random:
            curve = random_curve(r)
            ax.plot(curve[axis], [scale * a for a in curve[2]], marker="s", ms=3, color="C3",
                    label="GNet-R (random init)")
        plan = r.budget or {}
        for strategy, seconds in plan.get("budget_seconds", {}).items() if axis == 1 else ():
            # the curves' clock starts after the calibration the budget paid for
            ax.axvline(seconds - plan["calibration_seconds"][strategy], color="C0" if strategy == "ddc" else "C3",
                       ls="--", lw=1, label=f"{strategies.NAMES[strategy]}'s budget (less its calibration)")
        ax.set_xlabel("epoch (SNet epochs + GNet-T epochs)" if axis == 0 else "wall time [s]")
        ax.set_ylabel("validation accuracy [%]" if scale == 100 else f"validation {r.metric[4:].upper()}")
        ax.set_title(run["name"], fontsize=10)
        if axis == 0:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PHASE_COLOURS = {"calibration": "C7", "sub": "C2", "compose": "C1", "score_composed": "C4", "recalibrate": "C8",
                 "score_recalibrated": "C9", "global": "C0", "random": "C3"}


def phase_seconds_figure(runs: list[dict], path: Path) -> None:
    """Fig. 3.1 / 3.5: wall time per part; per run a stacked DDC bar and a stacked GNet-R bar, the
    segments of the table (a part that took no time draws nothing), a budgeted run's budget a
    dashed line over each bar."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 2.4 * len(runs) + 1.5), 4.4))
    labelled = set()

    def stacks(r: Results) -> list[tuple[int, str, list[tuple[str, float]]]]:
        return [(offset, strategy, [(part, seconds) for part, seconds in segments if seconds > 0])
                for offset, (strategy, (segments, _)) in zip((0, 1) if r.has_ddc else (1,),
                                                             _strategy_segments(r).items())]

    tallest = max([sum(s for _, s in parts) for run in runs for _, _, parts in stacks(run["results"])]
                  + [max((run["results"].budget or {}).get("budget_seconds", {0: 0}).values()) for run in runs])
    for i, run in enumerate(runs):
        r = run["results"]
        for offset, strategy, parts in stacks(r):
            x, bottom = 3 * i + offset, 0.0
            for part, seconds in parts:
                thin = seconds < 0.02 * tallest  # e.g. compose: an edge keeps it a visible line
                ax.bar(x, seconds, bottom=bottom, color=PHASE_COLOURS[part], edgecolor=PHASE_COLOURS[part],
                       linewidth=2.5 if thin else 0, zorder=3 if thin else 2,
                       label=None if part in labelled else SEGMENT_LABELS[part])
                if strategy == "ddc":
                    ax.text(x - 0.43, bottom + seconds / 2, f"{seconds:.1f} s", ha="right", va="center", fontsize=7)
                labelled.add(part)
                bottom += seconds
            ax.text(x, bottom, f"{strategies.NAMES[strategy]}\n{bottom:.1f} s", ha="center", va="bottom", fontsize=8)
            seconds = (r.budget or {}).get("budget_seconds", {}).get(strategy)
            if seconds:
                ax.hlines(seconds, x - 0.45, x + 0.45, colors="k", linestyles="--", lw=1,
                          label=None if "budget" in labelled else "budget")
                labelled.add("budget")
    ax.set_xticks([3 * i + 0.5 for i in range(len(runs))], [_wrap(run["name"]) for run in runs], fontsize=8)
    ax.set_xlim(-1, 3 * len(runs) - 1)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # room for the labels above the bars
    ax.set_ylabel("wall time [s]")
    ax.set_title(f"wall time per part: {DDC_TOTAL} and {RANDOM_TOTAL}", fontsize=9)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    # no tight_layout: the DDC labels left of the bars and the legend below the axes can leave it no
    # margins to fit ("Tight layout not applied"); bbox_inches="tight" takes in everything drawn
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _wrap(name: str, width: int = 22) -> str:
    """Break a long run name between words so that neighbouring tick labels do not overlap; a
    single word longer than `width` is broken after a '-' or '_'."""
    lines = []
    for line in textwrap.wrap(name, width, break_long_words=False, break_on_hyphens=False) or [""]:
        part = ""
        for piece in line.replace("_", "_\0").replace("-", "-\0").split("\0") if len(line) > width else [line]:
            if part and len(part) + len(piece) > width:
                lines.append(part)
                part = ""
            part += piece
        lines.append(part)
    return "\n".join(lines)


def report(run_dirs, out: Path) -> str:
    """Write out/report.md and the figures for `run_dirs`; returns the markdown."""
    runs = [load_run(d) for d in run_dirs]
    names = [run["name"] for run in runs]
    if len(set(names)) < len(names):  # same folder name under different parents: use the paths
        for run in runs:
            run["name"] = str(run["dir"])
    text = markdown(runs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"cannot create the output folder {out} ({err.strerror}); choose another --out") from None
    atomic_write(out / "report.md", text.encode())
    accuracy_figure(runs, out / "accuracy.png", axis=0)
    accuracy_figure(runs, out / "time_to_accuracy.png", axis=1)
    phase_seconds_figure(runs, out / "phase_seconds.png")
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ddc_hpc.report",
        description="The paper's Tables 3.3 / 3.5 and Figs. 3.1 / 3.2 for finished runs, one column each.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run directories, one column each")
    parser.add_argument("--out", default="report",
                        help="folder for report.md and the PNG figures (default: ./report)")
    args = parser.parse_args(argv)
    print(run_serial(lambda: report(args.runs, Path(args.out))), end="")
    print(f"\nwritten: {Path(args.out) / 'report.md'}, accuracy.png, time_to_accuracy.png, phase_seconds.png",
          file=sys.stderr)


if __name__ == "__main__":
    main()
