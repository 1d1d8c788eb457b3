"""benchmarks/frontier.py's arithmetic: the frontier per strategy (mean over seeds), the time DDC's
frontier needs to reach each GNet-R accuracy (interpolated), the table and the figure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.frontier import figure, frontier, summary, table, time_to  # noqa: E402


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
    assert "| 600 | 61.00 | 60.00 / 62.00 | 588 | 51.00 | 50.00 / 52.00 | 582 | +10.00 |" in text
    assert "ratio <= 0.51" in text and "ratio 0.45" in text
    figure(result, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
