"""benchmarks/time_to_accuracy.py (issue 7f) on made-up results and on a real tiny run."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO, cli
from ddc_hpc.results import Results

spec = importlib.util.spec_from_file_location("time_to_accuracy", REPO / "benchmarks" / "time_to_accuracy.py")
tta = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tta)


def _results(global_acc, random_acc, sub_seconds=10.0, compose_seconds=2.0, epoch_seconds=5.0, init=0.5,
             job_start=3.0):
    """results.json as a run writes it: epoch ends on the job's clock (`elapsed`), the phases one
    after another from `job_start` s into the job (data loading), compose then GNet-T's setup."""
    glob_start = job_start + sub_seconds + compose_seconds
    random_start = glob_start + epoch_seconds * len(global_acc) + 1.0
    return {
        "model": "m", "partitions": 4, "world_size": 4, "dataset": "d",
        "sub": {"seconds": sub_seconds, "epochs": 2, "elapsed_start": job_start},
        "compose": {"seconds": compose_seconds, "init_val_accuracy": init},
        "global": {"elapsed_start": glob_start, "history": [
            {"epoch": e + 1, "seconds": epoch_seconds, "elapsed": glob_start + epoch_seconds * (e + 1), "val_accuracy": a}
            for e, a in enumerate(global_acc)]},
        "random": {"elapsed_start": random_start, "history": [
            {"epoch": e + 1, "seconds": epoch_seconds, "elapsed": random_start + epoch_seconds * (e + 1), "val_accuracy": a}
            for e, a in enumerate(random_acc)]},
    }


def analyse(results: dict) -> dict:
    return tta.analyse(Results.from_dict(results))


def _legacy(results):
    """The same run as written before epoch ends carried `elapsed`: cumulated epoch seconds."""
    for phase in ("sub", "global", "random"):
        results[phase].pop("elapsed_start", None)
        for row in results[phase].get("history", []):
            del row["elapsed"]
    return results


def test_ratio_interpolates_between_the_bracketing_evaluations():
    # GNet-R: 8 epochs of 5 s, ends at 0.70 after 40 s. DDC: 12 s, then 0.5 -> 0.6 (17 s) -> 0.8 (22 s)
    summary = analyse(_results([0.6, 0.8, 0.85], [0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.70]))
    assert summary["target_val_accuracy"] == 0.70 and summary["gnet_r_seconds"] == 40.0
    assert summary["reached"]
    assert summary["ddc_seconds_to_target"] == pytest.approx(17 + 0.5 * 5)
    assert summary["ddc_seconds_to_target_epoch_end"] == 22.0
    assert summary["ratio"] == pytest.approx(19.5 / 40)
    assert summary["ratio_epoch_end"] == pytest.approx(22 / 40)


def test_results_without_elapsed_read_the_same():
    results = _results([0.6, 0.8, 0.85], [0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.70])
    new, old = analyse(results), analyse(_legacy(results))
    assert new["curves"] == old["curves"] and new["ratio"] == pytest.approx(19.5 / 40)


def test_the_composed_net_may_already_beat_the_target():
    summary = analyse(_results([0.9], [0.3, 0.4], init=0.45))
    assert summary["ddc_seconds_to_target"] == 12.0  # sub + compose: GNet-T before any training
    assert summary["ratio"] == pytest.approx(12 / 10)


def test_not_reached_gives_no_ratio():
    summary = analyse(_results([0.5, 0.55], [0.6, 0.9]))
    assert not summary["reached"] and summary["ratio"] is None


def test_a_run_without_the_baseline_is_refused(tmp_path):
    results = _results([0.5], [0.6])
    del results["random"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert tta.main([str(tmp_path)]) == 2


def test_on_a_tiny_real_run(tiny_run, tmp_path):
    out, _ = tiny_run
    png = tmp_path / "tta.png"
    done = cli(tta.main, str(out), "--out", str(png), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    results = json.loads((out / "results.json").read_text())
    assert summary["target_val_accuracy"] == results["random"]["history"][-1]["val_accuracy"]
    random = results["random"]
    assert summary["gnet_r_seconds"] == pytest.approx(random["history"][-1]["elapsed"] - random["elapsed_start"])
    assert summary["gnet_r_seconds"] >= sum(r["seconds"] for r in random["history"])  # epochs, plus what lies between
    assert (summary["ratio"] is None) == (not summary["reached"])
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_from_another_run(tmp_path):
    ddc_only, baseline = tmp_path / "ddc", tmp_path / "both"
    ddc_only.mkdir()
    baseline.mkdir()
    results = _results([0.6, 0.8], [0.2, 0.7])
    (baseline / "results.json").write_text(json.dumps(results))
    del results["random"]
    (ddc_only / "results.json").write_text(json.dumps(results))
    assert tta.main([str(ddc_only)]) == 2
    assert tta.main([str(ddc_only), "--baseline", str(baseline), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").exists()


def test_gnet_r_time_to_ddc_final_accuracy():
    summary = analyse(_results([0.5, 0.55], [0.3, 0.6, 0.9]))
    assert summary["gnet_r_seconds_to_ddc_final"] == pytest.approx(5 + 5 * (0.55 - 0.3) / 0.3)


def test_lower_targets_compare_first_crossings():
    # GNet-R: 5 s epochs to 0.2 ... 0.70 (final, 40 s). DDC: 12 s at 0.5, then 0.6 (17 s), 0.8 (22 s)
    targets = analyse(_results([0.6, 0.8, 0.85], [0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.70]))["targets"]
    assert [t["fraction"] for t in targets] == [1.0, 0.95, 0.9]
    final, lower = targets[0], targets[2]
    assert final["gnet_r_seconds"] == 40.0 and final["ratio"] == pytest.approx(19.5 / 40)
    assert lower["val_accuracy"] == pytest.approx(0.63)  # 90 % of 0.70
    assert lower["gnet_r_seconds"] == pytest.approx(30 + 5 * 0.03 / 0.05)  # between 0.60 and 0.65
    assert lower["ddc_seconds"] == pytest.approx(17 + 5 * 0.03 / 0.2)
    assert lower["ratio"] == pytest.approx(lower["ddc_seconds"] / lower["gnet_r_seconds"])
    table = tta.target_table(targets)
    assert len(table.splitlines()) == 4 and "63.00% (90%)" in table


def test_ceiling_fraction_is_the_per_image_ratio_over_the_flop_ratio():
    spec = importlib.util.spec_from_file_location("bench_ceiling", REPO / "benchmarks" / "bench_ceiling.py")
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    flops = ceiling.flop_ratio("cifar_resnet20", 16)
    assert 60 < flops < 65  # the paper's ~60x: a sub-network has 1/16 of the channel pairs, 1/4 of the pixels
    rounds = [{"global w16 b32": 0.010, "sub w16 b64": 0.010 / flops / 0.5}]  # half the ceiling
    args = {"model": "cifar_resnet20", "widths": [16], "sub_batches": [64], "global_batch": 32}
    [row] = ceiling.table({"args": args, "rounds": rounds})[2:]
    assert "**0.50**" in row and f"| {flops / 4:.2f} |" in row
    rounds[0]["compiled sub w16 b64"] = 0.010 / flops / 0.8  # --compile: side by side with the eager row
    eager, compiled = ceiling.table({"args": args, "rounds": rounds})[2:]
    assert "**0.50**" in eager and "| 64 compiled |" in compiled and "**0.80**" in compiled


def test_ddc_starts_from_the_recalibrated_composed_net_when_the_run_recalibrated():
    results = _results([0.6], [0.3, 0.4], init=0.45)
    assert analyse(results)["curves"]["ddc"][1][0] == 0.45
    results["compose"]["recalibrated_val_accuracy"] = 0.5  # what the global phase starts from
    assert analyse(results)["curves"]["ddc"][1][0] == 0.5
