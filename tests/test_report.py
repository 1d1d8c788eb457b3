"""`python -m ddc_hpc.report RUN_DIR...`: Tables 3.3 / 3.5 and Figs. 3.1 / 3.2 over finished runs."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from conftest import cli, results
from ddc_hpc import report
from ddc_hpc.errors import BadInput
from ddc_hpc.results import Results, load_results

PNG = b"\x89PNG\r\n\x1a\n"


def _history(phase, accuracies, seconds=2.0, top5=None):
    return [{"phase": phase, "epoch": e + 1, "loss": 1.0, "val_accuracy": a, "val_top5": (top5 or a),
             "seconds": seconds, "train_seconds": seconds * 0.9, "train_samples": 100}
            for e, a in enumerate(accuracies)]


def fabricated(strategy="both", classes=10) -> dict:
    """A run as results.json holds it: K = 4, 2 SNet + 1 GNet-T epochs, 3 GNet-R epochs."""
    run = {"name": f"run-{strategy}", "dir": None,
           "config": {"model": {"name": "cifar_resnet20", "width": 16, "num_classes": classes},
                      "decompose": {"partitions": 4, "grid": [2, 2], "overlap": 4, "crop": 0}},
           "results": {"strategy": strategy, "world_size": 4, "partitions": 4, "model": "cifar_resnet20",
                       "dataset": "synthetic", "device": "cpu"}}
    r = run["results"]
    if strategy in ("both", "ddc"):
        subs = [_history(f"sub_{k}", [0.3, 0.40 + 0.01 * k], seconds=1.0, top5=0.8 + 0.01 * k) for k in range(4)]
        r["sub"] = {"seconds": 2.5, "epochs": 2, "val_accuracy": 0.415, "histories": subs,
                    "per_subnet_val_accuracy": [h[-1]["val_accuracy"] for h in subs]}
        r["compose"] = {"seconds": 0.5, "epochs": 0, "val_accuracy": 0.55, "init_val_accuracy": 0.55,
                        "init_val_top5": 0.9, "max_abs_error": 3e-7}
        r["global"] = {"seconds": 4.0, "epochs": 1, "val_accuracy": 0.7, "val_top5": 0.95,
                       "history": _history("global", [0.7], seconds=4.0, top5=0.95)}
    if strategy in ("both", "random"):
        r["random"] = {"seconds": 12.0, "epochs": 3, "val_accuracy": 0.6, "val_top5": 0.93,
                       "history": _history("random", [0.3, 0.5, 0.6], seconds=4.0, top5=0.93)}
    return run


def typed(*runs) -> list[dict]:
    """The runs as report.load_run gives them: results read through the schema."""
    return [run | {"results": Results.from_dict(run["results"])} for run in runs]


def rows_of(text: str, title: str) -> dict[str, list[str]]:
    """The rows of the markdown table whose header cell is `title`: label -> cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {title} |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_tables_have_the_papers_rows_one_column_per_run():
    text = report.markdown(typed(fabricated("both"), fabricated("ddc"), fabricated("random")))
    top1 = rows_of(text, "top-1 [%]")
    assert list(top1) == ["SNet-k, each (range over k)", "GNet-T, not trained", "GNet-T, not trained, BN recalibrated",
                          "GNet-T-trained", "GNet-R-trained"]
    assert top1["SNet-k, each (range over k)"] == ["40.00-43.00", "40.00-43.00", "-"]
    assert top1["GNet-T, not trained"] == ["55.00", "55.00", "-"]
    assert top1["GNet-T-trained"] == ["70.00", "70.00", "-"]
    assert top1["GNet-R-trained"] == ["60.00", "-", "60.00"]
    top5 = rows_of(text, "top-5 [%]")
    assert top5["SNet-k, each (range over k)"][0] == "80.00-83.00" and top5["GNet-T-trained"][0] == "95.00"
    seconds = rows_of(text, "seconds")
    assert seconds["DDC: SNets trained side by side (sub)"] == ["2.5", "2.5", "-"]
    assert seconds["DDC total"] == ["7.0", "7.0", "-"]
    assert seconds["GNet-R: GNet-R trained (random)"] == ["12.0", "-", "12.0"]
    assert seconds["GNet-R total"] == ["12.0", "-", "12.0"]
    assert seconds["DDC: calibration (the budget's plan)"] == ["-", "-", "-"] and seconds["DDC budget"] == ["-"] * 3
    assert seconds["DDC / GNet-R"] == ["0.58", "-", "-"]
    assert seconds["one SNet epoch (slowest)"][0] == "1.00" and seconds["one GNet-T epoch"][0] == "4.00"
    assert seconds["one GNet-R epoch"] == ["4.00", "-", "4.00"]
    assert "`run-both`: cifar_resnet20 (width 16, 10 classes)" in text and "overlap 4" in text


def test_top5_is_left_out_where_it_means_nothing():
    assert "top-5" not in report.markdown(typed(fabricated(classes=2)))
    text = report.markdown(typed(fabricated(classes=2), fabricated(classes=100)))
    assert rows_of(text, "top-5 [%]")["GNet-T-trained"] == ["-", "95.00"]


def test_figures_are_pngs(tmp_path):
    runs = typed(fabricated("both"), fabricated("ddc"), fabricated("random"), fabricated("both"))
    report.accuracy_figure(runs, tmp_path / "a.png", axis=0)
    report.accuracy_figure(runs, tmp_path / "t.png", axis=1)
    report.phase_seconds_figure(runs, tmp_path / "p.png")
    for name in ("a.png", "t.png", "p.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_cli_on_finished_runs_writes_tables_and_figures(tiny_run, tmp_path):
    out, _ = tiny_run
    # A second column: the same run as if only the DDC strategy had run.
    other = tmp_path / "ddc-only"
    other.mkdir()
    shutil.copy(out / "config.toml", other / "config.toml")
    r = results(out)
    ddc = copy.deepcopy(r)
    del ddc["random"]
    (other / "results.json").write_text(json.dumps(ddc))
    done = cli(report.main, str(out), str(other), "--out", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert done.stdout == text
    top1 = rows_of(text, "top-1 [%]")
    assert top1["GNet-T, not trained"][0] == f"{100 * r['compose']['init_val_accuracy']:.2f}"
    assert top1["GNet-T-trained"] == [f"{100 * r['global']['val_accuracy']:.2f}"] * 2
    assert top1["GNet-R-trained"] == [f"{100 * r['random']['val_accuracy']:.2f}", "-"]
    snets = sorted(r["sub"]["per_subnet_val_accuracy"])
    assert top1["SNet-k, each (range over k)"][0].startswith(f"{100 * snets[0]:.2f}")
    assert rows_of(text, "seconds")["GNet-R: GNet-R trained (random)"][0] == f"{r['random']['seconds']:.1f}"
    assert "top-5 [%]" in text  # 10 classes
    for name in ("accuracy.png", "time_to_accuracy.png", "phase_seconds.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == PNG


def test_cli_refuses_an_unfinished_run_with_exit_2(tmp_path):
    (tmp_path / "run").mkdir()
    done = cli(report.main, str(tmp_path / "run"), "--out", str(tmp_path / "report"))
    assert done.returncode == 2
    assert "has no results.json" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "report").exists()


def test_results_json_reads_back_to_what_the_run_wrote(tiny_run):
    """One schema: a real results.json loads into typed sections and serialises to the same JSON."""
    out, _ = tiny_run
    loaded = load_results(out)
    assert loaded.to_dict() == results(out)
    assert loaded.compose.init("val_accuracy") == results(out)["compose"]["init_val_accuracy"]
    assert len(loaded.sub.per_subnet) == loaded.partitions and loaded.metric == "val_accuracy"


def test_old_results_without_init_keys_read_the_composed_score_from_compose():
    old = fabricated("both")["results"]
    del old["compose"]["init_val_accuracy"], old["compose"]["init_val_top5"]
    loaded = Results.from_dict(old | {"nodes": 2})
    assert loaded.compose.init("val_accuracy") == 0.55 and loaded.compose.recalibrated("val_accuracy") is None
    assert loaded.extra == {"nodes": 2} and loaded.global_.epochs == 1


def test_load_run_rejects_foreign_json(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"accuracy": 1}))
    with pytest.raises(BadInput, match="not the results of a ddc_hpc run"):
        report.load_run(tmp_path)


def test_same_folder_names_are_told_apart_by_path(tmp_path, tiny_run):
    out, _ = tiny_run
    for parent in ("a", "b"):
        shutil.copytree(out, tmp_path / parent / "run", ignore=shutil.ignore_patterns("*.pt", "checkpoints", "logs"))
    text = report.report([tmp_path / "a" / "run", tmp_path / "b" / "run"], tmp_path / "out")
    assert f"`{tmp_path / 'a' / 'run'}`" in text and f"`{tmp_path / 'b' / 'run'}`" in text


def regression_run() -> dict:
    """A regression run as results.json holds it (metric val_rmse, also val_mae; no accuracy)."""
    run = fabricated("both")
    r = run["results"]
    r["metric"] = "val_rmse"
    for h in [*r["sub"]["histories"], r["global"]["history"], r["random"]["history"]]:
        for row in h:
            del row["val_accuracy"], row["val_top5"]
            row.update(val_rmse=0.5 + 0.01 * row["epoch"], val_mae=0.4)
    r["sub"]["per_subnet_val_rmse"] = [h[-1]["val_rmse"] for h in r["sub"]["histories"]]
    r["compose"] = {"seconds": 0.5, "epochs": 0, "init_val_rmse": 0.45, "init_val_mae": 0.35, "max_abs_error": 1e-7}
    r["global"].update(val_rmse=0.3, val_mae=0.25)
    r["random"].update(val_rmse=0.35, val_mae=0.3)
    run["name"] = "regression"
    return run


def test_regression_runs_get_rmse_and_mae_tables_beside_classification(tmp_path):
    text = report.markdown(typed(fabricated("both"), regression_run()))
    assert rows_of(text, "top-1 [%]")["GNet-T-trained"] == ["70.00", "-"]
    rmse = rows_of(text, "RMSE")
    assert rmse["SNet-k, each (range over k)"] == ["-", "0.5200"]
    assert rmse["GNet-T, not trained"] == ["-", "0.4500"] and rmse["GNet-R-trained"] == ["-", "0.3500"]
    assert rows_of(text, "MAE")["GNet-T-trained"] == ["-", "0.2500"]
    report.accuracy_figure(typed(regression_run()), tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG


def test_the_run_table_shows_each_subnetworks_seconds_and_where_the_run_is():
    text = report.table(Results.from_dict(fabricated("both")["results"]), "runs/first")
    lines = {line[:44].strip(): line[44:].split() for line in text.splitlines()}
    for k in range(4):  # two 1.0 s epochs of its own, inside the sub phase's row: no seconds of its own
        assert lines[f"SNet-{k} (own tile, 2.0 s of the sub phase)"] == [f"{30 + 10 + k:.2f}%"]
    assert lines["SNets trained side by side (sub)"] == ["2.5"]
    assert text.splitlines()[-1].startswith("written to runs/first/")


def test_run_names_break_between_words_not_inside_them():
    assert report._wrap("cifar_resnet20, K = 4, 1 rank(s)") == "cifar_resnet20, K = 4,\n1 rank(s)"
    assert report._wrap("20261202-025310_cifar_resnet20_w32") == "20261202-025310_cifar_\nresnet20_w32"


def test_a_tiny_compose_bar_is_still_drawn(tmp_path):
    """0.3 s of compose between 300 s and 200 s bars: its colour must appear in the figure."""
    matplotlib_image = pytest.importorskip("matplotlib.image")
    run = fabricated("both")
    r = run["results"]
    r["sub"]["seconds"], r["compose"]["seconds"], r["global"]["seconds"], r["random"]["seconds"] = 300, 0.3, 200, 450
    report.phase_seconds_figure(typed(run), tmp_path / "phase_seconds.png")
    pixels = matplotlib_image.imread(tmp_path / "phase_seconds.png")[..., :3]
    orange = (abs(pixels - [1.0, 0.498, 0.055]).max(axis=-1) < 0.02)  # matplotlib's C1, the compose colour
    legend_rows = orange[int(0.85 * len(orange)):]  # the legend's patch sits below the axes
    assert orange.sum() - legend_rows.sum() > 50, "the compose bar is not visible in the plot area"


def budgeted(run: dict) -> dict:
    """`run` as a budgeted run records it: 10 s budgets, 1.5 s of calibration each, GNet-T's start
    part by part (a BN recalibration, no score: global.eval_every = 0)."""
    r = copy.deepcopy(run)
    r["results"]["compose"] |= {"init_val_accuracy": None, "val_accuracy": None, "init_val_top5": None,
                                "init_eval_seconds": 0.0, "recalibrate_seconds": 0.7, "recalibrated_eval_seconds": 0.0}
    r["results"]["budget"] = {"budget_seconds": {"ddc": 10.0, "random": 10.0},
                              "calibration_seconds": {"ddc": 1.5, "random": 1.5},
                              "elapsed_seconds": {"ddc": 10.7, "random": 9.8}, "landed": {"ddc": 1.07, "random": 0.98}}
    return r


def test_a_budgeted_runs_table_adds_up_and_ends_with_its_verdict():
    results = Results.from_dict(budgeted(fabricated("both"))["results"])
    table = report.table(results, "runs/x")
    lines = table.splitlines()

    def seconds_of(prefix: str) -> float:
        return float(next(line for line in lines if line.startswith(prefix)).split()[-1])

    ddc_parts = [seconds_of("  " + report.SEGMENT_LABELS[p]) for p in
                 ("calibration", "sub", "compose", "recalibrate", "global")]
    assert ddc_parts == [1.5, 2.5, 0.5, 0.7, 4.0]  # every part once, in its own row
    assert seconds_of(f"  {report.DDC_TOTAL}") == pytest.approx(sum(ddc_parts))
    assert seconds_of(f"  {report.RANDOM_TOTAL}") == 13.5
    assert "scored" not in table and "evaluat" not in table  # nothing was scored before training: no such row
    assert "budget DDC 10 s: val_accuracy 70.00 % on the validation split, elapsed 10.7 s, landed at 1.070" in table
    assert "budget GNet-R 10 s: val_accuracy 60.00 % on the validation split, elapsed 9.8 s, landed at 0.980" in table
    assert "DDC got further: val_accuracy 70.00 % against val_accuracy 60.00 %, 10.00 points ahead" in table
    assert table.index("DDC got further") > table.index(f"wall time {report.DDC_TOTAL}")


def test_the_report_gives_a_budgeted_runs_budget_elapsed_and_landing(tmp_path):
    runs = typed(budgeted(fabricated("both")), fabricated("ddc"))
    seconds = rows_of(report.markdown(runs), "seconds")
    assert seconds["DDC budget"] == ["10", "-"] and seconds["GNet-R elapsed"] == ["9.8", "-"]
    assert seconds["DDC landing (elapsed / budget)"] == ["1.070", "-"]
    assert seconds["DDC: GNet-T BN recalibration (full images)"] == ["0.7", "-"]
    assert "budget DDC 10 s, GNet-R 10 s" in report.markdown(runs)
    longer = budgeted(fabricated("both"))
    longer["name"], longer["results"]["budget"]["budget_seconds"] = "run-long", {"ddc": 20.0, "random": 20.0}
    longer["results"]["global"]["val_accuracy"] = 0.8
    frontier = rows_of(report.markdown(typed(longer) + runs), "run")  # budgeted runs only, in budget order
    assert frontier == {"`run-both`": ["10", "70.00", "1.070", "60.00", "0.980", "+10.00"],
                        "`run-long`": ["20", "80.00", "1.070", "60.00", "0.980", "+20.00"]}
    figures = []
    plt = report.pyplot()
    original = plt.close
    try:
        plt.close = figures.append
        report.phase_seconds_figure(runs, tmp_path / "p.png")
        report.accuracy_figure(runs, tmp_path / "t.png", axis=1)
    finally:
        plt.close = original
    bars, curves = figures[0].axes[0], figures[1].axes[0]
    assert [line.get_segments()[0][0][1] for line in bars.collections] == [10.0, 10.0]  # a budget mark per bar
    assert any(line.get_xdata()[0] == 10.0 - 1.5 for line in curves.lines if line.get_linestyle() == "--")
