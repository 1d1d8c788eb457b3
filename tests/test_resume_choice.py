"""Issue 21 items 3 and 8: the choice of what a run resumes from, made at startup before any work.

A run resumes only at the rank count its checkpoints were written at (recorded in each manifest
entry): at 4 ranks a run stopped at 2 re-ran phases and crashed with IndexError on ranks 2 and 3,
at 1 rank it mixed two sample partitions in one epoch. And the choice waits
run.collective_timeout, not the fixed 300 s of a World before configure_world."""

from __future__ import annotations

import types

import torch

from conftest import run_pipeline
from ddc_hpc import comm, run
from ddc_hpc.config import load_config

STOPPED = ("run.strategy=random",)


def test_a_run_stopped_at_2_ranks_refuses_4_and_1_before_any_work(tmp_path):
    out = tmp_path / "run"
    stopped = run_pipeline(2, out, *STOPPED, env={"DDC_STOP_AT": "random:1:2"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    manifest = (out / "checkpoints" / "random" / "manifest.json").read_text()
    assert '"ranks": 2' in manifest
    logs = {p.name: p.read_text() for p in (out / "logs").iterdir()}
    for ranks in (4, 1):
        refused = run_pipeline(ranks, out, *STOPPED)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "run of 2 rank(s) (random), but this run has " + str(ranks) in refused.stderr
        assert "Run it again with 2 rank(s)" in refused.stderr and "Traceback" not in refused.stderr
        assert refused.stderr.count("error:") == 1  # said once, by rank 0, for all
        assert (out / "checkpoints" / "random" / "manifest.json").read_text() == manifest
        assert {p.name: p.read_text() for p in (out / "logs").iterdir()} == logs  # nothing started
        assert not (out / "results.json").exists()
    dry = run_pipeline(4, out, *STOPPED, extra=("--dry-run",))  # a dry run refuses what the run would
    assert dry.returncode == 2 and "run of 2 rank(s) (random), but this run has 4" in dry.stderr, dry.stderr[-3000:]


def test_the_rank_count_refusal_names_both_counts():
    entries = {"sub_0": {"ranks": 2}, "sub_1": {"ranks": 2}, "global": {}}  # {}: before ranks were recorded
    assert run.rank_count_refusal("runs/x", entries, 2) is None
    assert run.rank_count_refusal("runs/x", {"global": {}}, 8) is None
    text = run.rank_count_refusal("runs/x", entries, 4)
    assert "runs/x holds checkpoints written by a run of 2 rank(s) (sub_0, sub_1), but this run has 4" in text
    assert "mpiexec -n 2" in text and "a new --out" in text


def test_the_resume_choice_waits_run_collective_timeout(monkeypatch, tmp_path):
    waits = []
    monkeypatch.setattr(comm, "bcast", lambda world, value, what: waits.append(world.timeout) or value)
    monkeypatch.setattr(comm, "raise_first_bad_input", lambda world, error: waits.append(world.timeout))
    config = load_config(None, ["run.collective_timeout=4321"])
    plan = types.SimpleNamespace(config=config, out=tmp_path, partitions=config.decompose.partitions, resume_from={})
    world = comm.World(rank=0, size=1, local_rank=0, local_size=1, device=torch.device("cpu"))
    assert world.timeout == 300
    run.choose_resume(plan, world)
    assert waits == [4321, 4321]
