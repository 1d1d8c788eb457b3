"""What a run leaves behind: results.json, metrics.csv, the comparison table and PNG plots.

results.json is written last and atomically, so its presence means the run finished.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .checkpoint import atomic_write
from .partition import subnets_of_rank, tile_shape

METRIC_COLUMNS = ["phase", "epoch", "loss", "val_loss", "val_accuracy", "val_top5", "lr", "seconds",
                  "train_seconds", "train_samples", "images_per_second"]


def plan_text(plan, world, threads: int) -> str:
    cfg = plan.config
    K = plan.partitions
    owners = {r: subnets_of_rank(r, world.size, K) for r in range(world.size)}
    lines = [
        f"ddc_hpc run -> {plan.out}",
        f"  model {cfg.model.name} (width {cfg.model.width}, {cfg.model.num_classes} classes), "
        f"K = {K} sub-networks, strategy {cfg.run.strategy}",
        f"  data {cfg.data.source}: {len(plan.data.train)} train / {len(plan.data.val)} val images of "
        f"{plan.data.train.image_shape}",
        f"  tiles {'x'.join(map(str, tile_shape(plan.tiles)))} (overlap {cfg.decompose.overlap}, crop "
        f"{cfg.decompose.crop}): " + ", ".join(
            f"{k}:[" + ",".join(f"{s.start}:{s.stop}" for s in t) + "]" for k, t in enumerate(plan.tiles)),
        f"  {world.size} rank(s), {threads} thread(s) each, device {world.device}; rank -> sub-networks: "
        + ", ".join(f"{r}:{ks}" for r, ks in owners.items()),
        f"  epochs: sub {cfg.sub.epochs}, global {cfg.global_.epochs}, random {cfg.random_epochs}"
        + ("  (resuming from checkpoints)" if plan.resume else ""),
    ]
    return "\n".join(lines)


def phase_result(trained: dict) -> dict:
    """Summary of a data-parallel phase from its per-epoch history."""
    history = trained["history"]
    last = history[-1] if history else {}
    train_seconds = sum(r["train_seconds"] for r in history)
    return {
        "seconds": trained["seconds"],
        "epochs": len(history),
        "val_accuracy": last.get("val_accuracy"),
        "val_top5": last.get("val_top5"),
        "images_per_second": sum(r["train_samples"] for r in history) / train_seconds if train_seconds else None,
        "history": history,
    }


def ddc_results(plan, sub: dict, compose_info: dict, trained: dict) -> dict:
    """The sub, compose and global sections of results.json (rank 0 holds all sub histories)."""
    histories = compose_info["histories"]
    K = plan.partitions
    per_subnet = [histories[k][-1]["val_accuracy"] for k in range(K)]
    samples = sum(r["train_samples"] for k in range(K) for r in histories[k])
    seconds = compose_info["seconds_sub"]
    initial = trained["initial"]
    return {
        "sub": {"seconds": seconds, "epochs": plan.config.sub.epochs,
                "val_accuracy": sum(per_subnet) / K, "per_subnet_val_accuracy": per_subnet,
                "images_per_second": samples / seconds if seconds else None,
                "collectives": sub["collectives"], "histories": [histories[k] for k in range(K)]},
        "compose": {"seconds": compose_info["seconds"], "epochs": 0,
                    "val_accuracy": initial["val_accuracy"], "init_val_accuracy": initial["val_accuracy"],
                    "init_val_top5": initial["val_top5"], "max_abs_error": compose_info["max_abs_error"],
                    "max_rel_error": compose_info["max_rel_error"],
                    "bytes_gathered": compose_info["bytes_gathered"]},
        "global": phase_result(trained),
    }


def metric_rows(results: dict) -> list[dict]:
    rows = [row for h in results.get("sub", {}).get("histories", []) for row in h]
    for phase in ("global", "random"):
        rows += results.get(phase, {}).get("history", [])
    return rows


def write(out: Path, results: dict) -> None:
    """metrics.csv and plots first, results.json (the 'finished' marker) last."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(metric_rows(results))
    atomic_write(out / "metrics.csv", buffer.getvalue().encode())
    plot(out, results)
    atomic_write(out / "results.json", json.dumps(results, indent=1).encode())


def ddc_curve(results: dict) -> tuple[list[float], list[float], list[float]]:
    """(epochs, wall seconds, val accuracy) of GNet-T, starting at the composed net before training."""
    sub, comp, glob = results["sub"], results["compose"], results["global"]
    epochs, seconds, acc = [sub["epochs"]], [sub["seconds"] + comp["seconds"]], [comp["init_val_accuracy"]]
    for row in glob["history"]:
        epochs.append(sub["epochs"] + row["epoch"])
        seconds.append(seconds[-1] + row["seconds"])
        acc.append(row["val_accuracy"])
    return epochs, seconds, acc


def random_curve(results: dict) -> tuple[list[float], list[float], list[float]]:
    history = results["random"]["history"]
    seconds, total = [], 0.0
    for row in history:
        total += row["seconds"]
        seconds.append(total)
    return [r["epoch"] for r in history], seconds, [r["val_accuracy"] for r in history]


def plot(out: Path, results: dict) -> None:
    """accuracy.png (paper Fig. 3.2), time_to_accuracy.png and phase_seconds.png (Fig. 3.1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    if "global" in results:
        curves["GNet-T (composed)"] = ddc_curve(results)
    if "random" in results:
        curves["GNet-R (random init)"] = random_curve(results)
    for name, axis, xlabel in (("accuracy.png", 0, "epoch (sub-network epochs + global epochs)"),
                               ("time_to_accuracy.png", 1, "wall time [s]")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, curve in curves.items():
            ax.plot(curve[axis], [100 * a for a in curve[2]], marker="o", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy [%]")
        ax.set_title(f"{results['model']}, K = {results['partitions']}, {results['world_size']} rank(s)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = [(p, results[p]["seconds"]) for p in ("sub", "compose", "global") if p in results]
    bottom = 0.0
    for phase, seconds in bars:
        ax.bar("DDC", seconds, bottom=bottom, label=phase)
        bottom += seconds
    if "random" in results:
        ax.bar("GNet-R", results["random"]["seconds"], label="random")
    ax.set_ylabel("seconds")
    ax.set_title("wall time per phase")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "phase_seconds.png", dpi=120)
    plt.close(fig)


def _pct(value) -> str:
    return "   -   " if value is None else f"{100 * value:6.2f}%"


def table(results: dict) -> str:
    """The comparison the paper reports: SNet-k, GNet-T before/after training, GNet-R, times."""
    rows = []
    if "sub" in results:
        sub = results["sub"]
        for k, acc in enumerate(sub["per_subnet_val_accuracy"]):
            rows.append((f"SNet-{k} (own tile)", acc, sub["seconds"] if k == 0 else None))
        rows.append(("GNet-T, composed, not trained", results["compose"]["init_val_accuracy"],
                     results["compose"]["seconds"]))
        rows.append(("GNet-T, trained", results["global"]["val_accuracy"], results["global"]["seconds"]))
    if "random" in results:
        rows.append(("GNet-R, trained", results["random"]["val_accuracy"], results["random"]["seconds"]))
    lines = [f"{'network':32} {'val acc':>8} {'seconds':>9}", "-" * 51]
    lines += [f"{name:32} {_pct(acc):>8} {'' if s is None else f'{s:9.1f}'}" for name, acc, s in rows]
    if "global" in results and "random" in results:
        ddc = sum(results[p]["seconds"] for p in ("sub", "compose", "global"))
        lines.append(f"wall time DDC (sub+compose+global) {ddc:.1f} s vs GNet-R {results['random']['seconds']:.1f} s")
    if "compose" in results and results["compose"]["max_abs_error"] is not None:
        lines.append(f"Theorem 2.1 check: max |F(x) - sum_k F_k(x)| = {results['compose']['max_abs_error']:.3g}")
    return "\n".join(lines)
