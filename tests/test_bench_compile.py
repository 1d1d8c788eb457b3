"""benchmarks/bench_compile.py's arithmetic and table on made-up timings (nothing compiled)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
spec = importlib.util.spec_from_file_location("bench_compile", REPO / "benchmarks" / "bench_compile.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

ROUNDS = [
    {"sub eager": 0.010, "sub default": 0.008, "global eager": 0.30, "global default": 0.40},
    {"sub eager": 0.012, "sub default": 0.006, "global eager": 0.33, "global default": 0.30},
    {"sub eager": 0.009, "sub default": 0.009, "global eager": 0.32, "global default": 0.32},
]


def _res(errors=None):
    return {"args": {"phases": ["sub", "global"], "modes": ["default"], "width": 64, "sub_batch": 64,
                     "global_batch": 32},
            "rounds": ROUNDS, "errors": errors or {},
            "firsts": {"sub eager": 1.0, "sub default": 90.0, "global eager": 10.0, "global default": 120.0}}


def test_ratios_are_eager_over_compiled_within_each_round():
    assert bench.ratios(ROUNDS, "sub", "default") == pytest.approx([1.25, 2.0, 1.0])
    assert bench.ratios(ROUNDS, "global", "default") == pytest.approx([0.75, 1.1, 1.0])
    # a round that lacks either mode does not count
    assert bench.ratios([{"sub eager": 1.0}, *ROUNDS[:1]], "sub", "default") == pytest.approx([1.25])


def test_spread_is_median_and_range():
    assert bench.spread([3.0, 1.0, 2.0]) == "2.00 (1.00-3.00)"
    assert bench.spread([1.25, 2.0, 1.0], digits=1) == "1.2 (1.0-2.0)"


def test_table_rows():
    rows = bench.table(_res())
    assert len(rows) == 2 + 4
    assert rows[2].startswith("| sub (w64, batch 64, 16x16 tile) | eager | 1.0 | 10.00 (9.00-12.00) | - |")
    assert rows[3] == "| sub (w64, batch 64, 16x16 tile) | default | 90.0 | 8.00 (6.00-9.00) | **1.25 (1.00-2.00)** |"
    assert rows[5] == "| global DDP (w64, batch 32 a rank) | default | 120.0 | 320.00 (300.00-400.00) | **1.00 (0.75-1.10)** |"


def test_table_names_a_failed_compile():
    rounds = [{k: v for k, v in r.items() if k != "sub default"} for r in ROUNDS]
    res = {**_res({"sub default": "InductorError: no C++ compiler"}), "rounds": rounds}
    rows = bench.table(res)
    assert rows[3] == "| sub (w64, batch 64, 16x16 tile) | default | 90.0 | failed: InductorError: no C++ compiler | - |"
