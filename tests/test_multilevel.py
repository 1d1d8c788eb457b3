"""decompose.levels (issue 33): a multilevel epoch run in-process at 1, 2 and 4 ranks, every level's
composition checked against Theorem 2.1, a stop in each level and a bitwise resume, and a resume at
another rank count (issue 32's elastic resume) inside a level.

[4, 2] on the TINY job keeps it cheap: 4 sub-networks on 16x16 tiles compose pairwise into 2 on
32x16 tiles, those into the global network.  At 4 ranks the 2 level-1 sub-networks have 2 ranks
each: their group's Gatherv and data-parallel training; at 1 and 2 ranks each group lives on one
rank and composes without communication.  The pure placement and Gatherv layout are tested in
test_partition.py, each family's composition at every level in test_compose.py."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import assert_seconds_cover_the_recorded_pieces, each_world, run_pipeline, run_pipeline_here, shared_tmp
from ddc_hpc import report
from ddc_hpc.results import load_results

LEVELS = ("run.strategy=ddc", "decompose.partitions=4", "decompose.levels=[4, 2]")
DETERMINISTIC = ("run.deterministic=true", "sub.epochs=2", "run.checkpoint_every=1")


def _weights(path):
    return torch.load(path, weights_only=False)["state_dict"]


def _metrics(out):
    with open(out / "metrics.csv") as f:
        return [(row["phase"], row["epoch"], row["loss"], row["val_accuracy"]) for row in csv.DictReader(f)]


@each_world(1, 2, 4)
def test_a_multilevel_run_composes_every_level_exactly_and_records_each(ranks, mpi_tmp_path):
    out = mpi_tmp_path / "run"
    done = run_pipeline_here(out, *LEVELS, "decompose.level_epochs=[1, 2]")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    fine, coarse = result["levels"]
    assert (fine["partitions"], fine["tile"], coarse["partitions"], coarse["tile"]) == (4, [16, 16], 2, [32, 16])
    assert len(fine["per_subnet_val_accuracy"]) == 4 == len(result["sub"]["per_subnet_val_accuracy"])
    assert len(coarse["per_subnet_val_accuracy"]) == 2 == len(coarse["composed_val_accuracy"])
    assert coarse["max_rel_error"] <= 1e-4 and result["compose"]["max_rel_error"] <= 1e-4
    assert result["sub"]["seconds"] == pytest.approx(fine["seconds"] + coarse["seconds"])
    assert (fine["epochs"], coarse["epochs"]) == (1, 2) and len(coarse["histories"][0]) == 2
    phases = {row[0] for row in _metrics(out)}
    assert {"sub_0", "sub_3", "l1_sub_0", "l1_sub_1", "global"} <= phases
    assert "L1 SNet-1 (composed: " in done.stdout and "level 1: 2 SNets on 32x16 tiles" in done.stdout
    for name in ("subnet_3.pt", "l1_subnet_1.pt", "composed_model.pt", "model.pt"):
        assert (out / name).exists(), name
    assert "| `run` | 1 | 2 (32x16) | " in report.level_table([{"name": "run", "results": load_results(out)}])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The one multilevel reference run every stop is compared with."""
    out = shared_tmp(tmp_path_factory, "multilevel") / "straight"
    done = run_pipeline_here(out, *LEVELS, *DETERMINISTIC)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.ranks(2)
@pytest.mark.parametrize("stop_at", ["sub_1:2:1", "l1_sub_1:1:2", "global:1:2"])
def test_a_stop_in_each_level_resumes_bitwise(straight, stop_at, mpi_tmp_path):
    out = mpi_tmp_path / "run"
    stopped = run_pipeline_here(out, *LEVELS, *DETERMINISTIC, env={"DDC_STOP_AT": stop_at})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert not (out / "results.json").exists()
    resumed = run_pipeline_here(out, *LEVELS, *DETERMINISTIC)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("subnet_1.pt", "l1_subnet_1.pt", "composed_model.pt", "model.pt"):
        a, b = _weights(straight / name), _weights(out / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _metrics(out) == _metrics(straight)
    result, reference = (json.loads((d / "results.json").read_text()) for d in (out, straight))
    assert result["levels"][1]["composed_val_accuracy"] == reference["levels"][1]["composed_val_accuracy"]
    assert_seconds_cover_the_recorded_pieces(result)


@pytest.mark.ranks(4)
def test_a_budgeted_multilevel_run_plans_every_level_and_records_its_share(mpi_tmp_path):
    out = mpi_tmp_path / "run"
    done = run_pipeline_here(out, *LEVELS, "run.budget=20", "sub.schedule=linear", "global.schedule=linear")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    plan = result["budget"]
    assert len(plan["level_shares"]) == 2 and sum(plan["level_shares"]) == pytest.approx(plan["sub_share"])
    assert {"sub_level_0", "sub_level_1"} <= set(plan["rates"])
    planned = plan["phases"]["sub"]
    for level in result["levels"]:  # every level trains the planned epochs
        assert level["epochs"] == planned["epochs"]
    histories = result["sub"]["histories"] + result["levels"][1]["histories"]
    assert all(len(history) == planned["epochs"] for history in histories)
    assert "per level" in (out / "logs" / "rank0.log").read_text()


@pytest.mark.ranks(1)
def test_a_level_stopped_at_1_rank_continues_at_4_in_data_parallel_groups(tmp_path):
    """Elastic resume inside a level: stopped in level 1 at 1 rank (both level-1 sub-networks on rank
    0), resumed at 4 ranks, where each level-1 sub-network has a group of 2; the stopped one keeps its
    batch and its place in the epoch, the finished ones are read from their checkpoints."""
    out = tmp_path / "run"
    stopped = run_pipeline_here(out, *LEVELS, *DETERMINISTIC, env={"DDC_STOP_AT": "l1_sub_1:1:2"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    resumed = run_pipeline(4, out, *LEVELS, *DETERMINISTIC)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (out / "logs" / "rank2.log").read_text()  # l1_sub_1's group at 4 ranks: ranks 2 and 3
    assert "[l1_sub_1] continued from a run of 1 rank(s)" in log and "[l1_sub_1] resuming at epoch 1, step 3" in log
    assert "[l1_sub_0] finished earlier; loaded from checkpoint" in (out / "logs" / "rank0.log").read_text()
    result = json.loads((out / "results.json").read_text())
    first, then = result["rank_counts"]
    assert (first["ranks"], then["ranks"]) == (1, 4)
    assert then["resumed_from"]["l1_sub_1"] == {"epoch": 0, "step": 2, "finished": False}
    assert then["resumed_from"]["l1_sub_0"]["finished"] and then["resumed_from"]["sub_3"]["finished"]
    assert result["levels"][1]["max_rel_error"] <= 1e-4 and result["compose"]["max_rel_error"] <= 1e-4
    assert result["world_size"] == 4
