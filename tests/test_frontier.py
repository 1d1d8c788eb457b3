"""ddc_hpc.frontier's arithmetic: the frontier per strategy (mean over seeds), the time DDC's
frontier needs to reach each GNet-R accuracy (interpolated), the table and the figure; --check-docs
against records that disagree with the text; the tuning trials' grid and GNet-R's choice from them."""

from __future__ import annotations

import json

import pytest

from ddc_hpc.errors import BadInput
from ddc_hpc.frontier import (best_random, check_section, figure, frontier, main, summary, table, time_to, trial_grid,
                              trials_table)


def point(budget, seed, ddc, rnd, ddc_elapsed=None, rnd_elapsed=None):
    return {"budget": budget, "seed": seed, "strategies": {
        "ddc": {"val": ddc, "elapsed": ddc_elapsed or budget * 0.98, "landed": 0.98},
        "random": {"val": rnd, "elapsed": rnd_elapsed or budget * 0.97, "landed": 0.97}}}


POINTS = [point(300, 0, 0.50, 0.40), point(300, 1, 0.52, 0.42), point(600, 0, 0.60, 0.50),
          point(600, 1, 0.62, 0.52), point(1200, 0, 0.66, 0.58), point(1200, 1, 0.68, 0.60)]


def test_the_frontier_is_the_mean_over_seeds_at_each_budget():
    rows = frontier(POINTS, "ddc")
    assert [r["budget"] for r in rows] == [300, 600, 1200]
    assert [r["mean"] for r in rows] == pytest.approx([0.51, 0.61, 0.67])
    assert rows[0]["each"] == [0.50, 0.52] and rows[0]["elapsed"] == pytest.approx(294)


def test_time_to_accuracy_is_interpolated_on_the_frontier():
    curve = frontier(POINTS, "ddc")  # (294 s, 0.51), (588 s, 0.61), (1176 s, 0.67)
    assert time_to(curve, 0.56) == (pytest.approx(294 + 0.5 * 294), False)
    assert time_to(curve, 0.41) == (pytest.approx(294), True)  # already above at its smallest budget: a bound
    assert time_to(curve, 0.70) == (None, False)  # never reached
    ratios = summary(POINTS)["time_to_accuracy"]
    assert [r["random_budget"] for r in ratios] == [300, 600, 1200]
    assert ratios[1]["ratio"] == pytest.approx(294 / (600 * 0.97)) and ratios[1]["upper_bound"]
    assert ratios[2]["ddc_elapsed"] == pytest.approx(294 + 0.8 * 294)  # GNet-R's 0.59 between DDC's 0.51 and 0.61: 0.8 of the way
    assert ratios[2]["ratio"] == pytest.approx((294 + 0.8 * 294) / (1200 * 0.97))


def test_the_table_and_figure_say_what_was_measured(tmp_path):
    result = summary(POINTS)
    text = table(result)
    assert "| 600 | 61.00 | 60.00 / 62.00 | 588 | - / - | 51.00 | 50.00 / 52.00 | 582 | +10.00 |" in text
    assert "ratio <= 0.51" in text and "ratio 0.45" in text
    figure(result, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"


def test_check_docs_finds_every_number_the_text_gives_otherwise():
    result = summary(POINTS)
    text = table(result)
    assert check_section(text, result) == []
    wrong = text.replace("| 600 | 61.00 |", "| 600 | **61.10** |").replace("ratio 0.45", "ratio 0.40")
    problems = check_section(wrong, result)
    assert len(problems) == 2, problems
    assert "600 s, DDC mean: the text says 61.10, the records give 61.00" in problems[0]
    assert "1200 s accuracy, ratio: the text says 0.40, the records give 0.45" in problems[1]
    no_bound = text.replace("DDC <= 294 s, ratio <= 0.51", "DDC 294 s, ratio 0.51")
    assert any("upper bound: the text says False" in p for p in check_section(no_bound, result))
    missing = "\n".join(line for line in text.splitlines() if not line.startswith(("| 1200 |", "- GNet-R at 600")))
    assert sorted(check_section(missing, result)) == ["no table row for the 1200 s budget of the records",
                                                      "no time-to-accuracy line for GNet-R's 600 s budget"]


def test_check_docs_reads_the_records_a_section_names_and_fails_where_the_text_disagrees(tmp_path, capsys):
    for p in POINTS:
        out = tmp_path / "records" / f"b{p['budget']}-s{p['seed']}"
        out.mkdir(parents=True)
        elapsed = {s: v["elapsed"] for s, v in p["strategies"].items()}
        (out / "results.json").write_text(json.dumps({"model": "m", "partitions": 4, "budget": {
            "elapsed_seconds": elapsed, "landed": {s: 0.98 for s in elapsed}, "sub_share": 0.5}}))
        (out / "scores.json").write_text(json.dumps({s: {"val": v["val"]} for s, v in p["strategies"].items()}))
    marker = f"<!-- frontier: --out {tmp_path / 'records'} --budgets 300 600 1200 --seeds 0 1 -->"
    result = summary(POINTS)
    for row in result["ddc"]:
        row["shares"] = [0.5, 0.5]
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"## Frontier\n\n{marker}\n\n{table(result)}\n\n## Next section\n\n| DDC mean |\n|---|\n| 9 |\n")
    main(["check-docs", str(doc)])
    assert "agrees with its records" in capsys.readouterr().out
    doc.write_text(doc.read_text().replace("| 300 | 51.00 |", "| 300 | 52.00 |"))
    with pytest.raises(SystemExit, match="300 s, DDC mean: the text says 52.00, the records give 51.00"):
        main(["check-docs", str(doc)])
    for name, splits in (("b300-s0", {"scored_split": "validation", "scored": {"digest": "a"}}),
                         ("b600-s0", {"scored_split": "validation", "scored": {"digest": "b"}})):
        path = tmp_path / "records" / name / "results.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"splits": splits}))
    with pytest.raises(SystemExit) as stopped:
        main(["check-docs", str(doc)])
    assert stopped.value.code == 2 and "scored on different splits (b300-s0: a; b600-s0: b)" in capsys.readouterr().err


def test_each_side_gets_as_many_tuning_trials_and_gnet_r_the_best_at_the_nearest_budget():
    class Args:
        shares, lrs, warmups = [0.3, 0.5, 0.7], [3.5e-4, 7e-4, 1.4e-3], [0.05]
    grid = trial_grid(Args)
    assert [g[1]["strategy"] for g in grid] == ["ddc"] * 3 + ["random"] * 3
    assert grid[0][2] == ("run.strategy=ddc", "run.sub_share=0.3")
    Args.warmups = [0.05, 0.1]
    with pytest.raises(BadInput, match="DDC 3 share trials and GNet-R 6"):
        trial_grid(Args)
    trials = [{"strategy": "random", "budget": b, "seed": s, "lr": lr, "warmup_epochs": 0.05, "tuning_accuracy": a}
              for b, s, lr, a in [(200, 0, 7e-4, 0.40), (200, 1, 7e-4, 0.38), (200, 0, 1.4e-3, 0.41),
                                  (200, 1, 1.4e-3, 0.36), (800, 0, 7e-4, 0.55), (800, 0, 1.4e-3, 0.57)]]
    assert best_random(trials, 300) == {"lr": 7e-4, "warmup_epochs": 0.05, "tuning_budget": 200}  # 0.39 > 0.385
    assert best_random(trials, 1600) == {"lr": 1.4e-3, "warmup_epochs": 0.05, "tuning_budget": 800}


def test_the_trials_table_marks_each_sides_choice_and_check_docs_holds_it_to_its_file(tmp_path, capsys):
    ddc = [{"strategy": "ddc", "budget": b, "seed": 0, "sub_share": s, "sub_passes": p, "tuning_accuracy": a,
            "elapsed": b + 1} for b, s, p, a in [(200, 0.3, 0.5, 0.40), (200, 0.5, 0.9, 0.42), (800, 0.5, 3.0, 0.55),
                                                  (800, 0.7, 4.5, 0.58)]]
    rnd = [{"strategy": "random", "budget": b, "seed": 0, "lr": lr, "warmup_epochs": 0.05, "tuning_accuracy": a,
            "elapsed": b - 1} for b, lr, a in [(200, 7e-4, 0.38), (200, 1.4e-3, 0.37), (800, 7e-4, 0.52),
                                                (800, 1.4e-3, 0.54)]]
    text = trials_table(ddc + rnd)
    assert "| 200 | DDC | sub share 0.5 | 42.00 | 201 | 0.90 | **yes** |" in text
    assert "| 800 | GNet-R | lr 0.0014, warm-up 0.05 | 54.00 | 799 | - | **yes** |" in text
    assert "| 800 | DDC | sub share 0.5 | 55.00 | 801 | 3.00 |  |" in text
    assert "P(B) = 0.001918 x B^1.161 sub passes (0.90 at 200 s, 4.50 at 800 s)" in text  # 5 x as many in 4 x the time
    trials = tmp_path / "trials.json"
    trials.write_text(json.dumps({"trials": ddc + rnd}))
    records = tmp_path / "records" / "b200-s0"
    records.mkdir(parents=True)
    (records / "results.json").write_text(json.dumps({"model": "m", "partitions": 4, "budget": {
        "elapsed_seconds": {"ddc": 201, "random": 199}, "landed": {"ddc": 1, "random": 1}, "sub_share": 0.5}}))
    (records / "scores.json").write_text(json.dumps({"ddc": {"val": 0.5}, "random": {"val": 0.4}}))
    frontier_part = table(summary(frontier_points_of(tmp_path / "records")))
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"## Tuning\n\n<!-- tuning: {trials} -->\n\n{text}\n\n## Frontier\n\n"
                   f"<!-- frontier: --out {tmp_path / 'records'} --budgets 200 --seeds 0 -->\n\n{frontier_part}\n")
    main(["check-docs", str(doc)])
    assert "trials table agrees with its records" in capsys.readouterr().out
    doc.write_text(doc.read_text().replace("| 42.00 |", "| 43.00 |"))
    with pytest.raises(SystemExit, match=f"the table of the tuning trials in {trials} is not what the file gives"):
        main(["check-docs", str(doc)])


def frontier_points_of(records):
    from ddc_hpc.frontier import collect
    return collect(records, score=False)


def test_the_committed_frontier_sections_agree_with_their_records(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # paths are the repository's, wherever the check starts
    main(["check-docs"])
    assert "docs/RESULTS.md: every frontier table, time-to-accuracy line and trials table agrees" in capsys.readouterr().out


def test_the_round_3_command_line_still_runs_the_study():
    """benchmarks/frontier.py (DESIGN.md's round-3 name) maps its old flags onto the subcommands."""
    import importlib.util

    from conftest import REPO
    spec = importlib.util.spec_from_file_location("old_frontier", REPO / "benchmarks" / "frontier.py")
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    assert old.translate([]) == ["local"]
    assert old.translate(["--budgets", "200", "--points-only"]) == ["local", "--budgets", "200", "--points-only"]
    assert old.translate(["--score-only", "--config", "j.toml", "--ranks=4", "--out", "o", "--test", "t"]) == [
        "collect", "--out", "o", "--test", "t"]
    assert old.translate(["--check-docs"]) == ["check-docs"]
    assert old.translate(["tune", "--budgets", "200"]) == ["tune", "--budgets", "200"]
