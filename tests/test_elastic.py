"""Issue 32 item 1: a run stopped at R ranks resumes at R' != R and finishes.

The arithmetic (no MPI): each stopped phase keeps its batch of a step over all its ranks
(partition.elastic_batch), so the steps of an epoch, the lr schedule and the samples of every step
are those an uninterrupted run at R' with that batch reads; the epoch's position carries over. The
jobs: a stop at R is a launch of its own (a world of R ranks), the resume runs in-process in the
serial stage at 1 rank or is launched at 4 (test_resume_choice: the random baseline, a global phase).
A resume at the same count stays bitwise (test_resume)."""

from __future__ import annotations

import json
import types

import pytest
import torch
from torch.utils.data import DistributedSampler

from conftest import results, run_pipeline, run_pipeline_here
from ddc_hpc import resume
from ddc_hpc.config import Config, DecomposeConfig, PhaseConfig
from ddc_hpc.partition import elastic_batch, phase_peers
from ddc_hpc.phases import THEOREM_RTOL
from ddc_hpc.train import batch_indices, pass_order, regroup_partial

N, SEED, EPOCH = 100, 7, 3


def share(peer: int, peers: int, epoch: int = EPOCH) -> list[int]:
    """What train.epoch_order gives peer `peer` of `peers` (its DistributedSampler, without torch.distributed)."""
    sampler = DistributedSampler(range(N), num_replicas=peers, rank=peer, shuffle=True, seed=SEED, drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)


def step_samples(step: int, batch: int, peers: int, steps_fixed: int = 0, epoch: int = EPOCH) -> list[int]:
    """The samples every peer reads in `step` of `epoch`, peer after peer (as fit picks them)."""
    if steps_fixed:
        return [i for p in range(peers) for i in batch_indices(lambda n: pass_order(N, SEED, n), N, epoch, step,
                                                                batch, steps_fixed, p, peers)]
    return [i for p in range(peers) for i in batch_indices(lambda e: share(p, peers, e), len(share(p, peers)), epoch,
                                                           step, batch, 0, p, peers)]


def test_the_batch_of_a_step_over_all_ranks_is_kept_or_the_resume_refused():
    assert [phase_peers(s, 8, 4) for s in ("sub_0", "sub_3", "global", "random")] == [2, 2, 8, 8]
    assert [phase_peers("sub_1", r, 4) for r in (1, 2, 4)] == [1, 1, 1]
    assert [elastic_batch("global", 64, p) for p in (1, 2, 4, 8)] == [64, 32, 16, 8]
    with pytest.raises(ValueError, match="batch of 64 samples per step over all its ranks, which does not split "
                                         r"evenly over 3 rank\(s\); global continues on a number of ranks that "
                                         r"divides 64 \(1, 2, 4, 8, 16, 32, 64\)"):
        elastic_batch("global", 64, 3)


@pytest.mark.parametrize("before, after", [(2, 4), (2, 1), (4, 1), (1, 4), (4, 2)])
def test_an_epoch_resumed_at_another_count_reads_each_sample_once_and_the_same_samples_a_step(before, after):
    total, stop = 24, 2  # 24 samples a step over all ranks; stopped after 2 of ceil(100 / 24) = 5 steps
    steps = -(-len(share(0, before)) // (total // before))
    assert steps == -(-len(share(0, after)) // (total // after)) == -(-N // total)  # the lr schedule's steps
    read = [i for s in range(stop) for i in step_samples(s, total // before, before)]
    read += [i for s in range(stop, steps) for i in step_samples(s, total // after, after)]
    straight = [i for s in range(steps) for i in step_samples(s, total // after, after)]
    assert sorted(read) == sorted(straight)  # the very epoch of an uninterrupted run at `after`
    assert set(read) == set(range(N)) and len(read) - N == -N % after  # each once, but DistributedSampler's padding
    for s in range(steps - 1):  # every step but the padded last: the same samples at either count
        assert sorted(step_samples(s, total // before, before)) == sorted(step_samples(s, total // after, after))


@pytest.mark.parametrize("before, after", [(2, 4), (4, 1)])
def test_fixed_length_epochs_read_the_same_stream_at_any_count(before, after):
    total, steps = 24, 3  # epochs of 3 steps of 24 samples: passes of 100 laid end to end, no padding
    stream = {peers: [step_samples(s, total // peers, peers, steps, e) for e in range(5) for s in range(steps)]
              for peers in (before, after)}
    assert [sorted(b) for b in stream[before]] == [sorted(b) for b in stream[after]]
    passes = [i for n in range(4) for i in pass_order(N, SEED, n)]  # every sample once a pass, no padding
    assert [sorted(b) for b in stream[after]] == [sorted(passes[t * total : (t + 1) * total]) for t in range(15)]
    assert batch_indices(lambda n: pass_order(N, SEED, n), N, 0, 0, 5, steps) == pass_order(N, SEED, 0)[:5]


def test_a_stopped_epochs_sums_are_carried_to_the_new_peers():
    partial = {"loss": [1.5, 2.5], "seen": [32, 32], "seconds": 4.0, "skipped": 1}
    assert regroup_partial(partial, 2) is partial
    assert regroup_partial(partial, 4) == {"loss": [4.0, 0.0, 0.0, 0.0], "seen": [64, 0, 0, 0], "seconds": 4.0,
                                           "skipped": 1}
    assert regroup_partial(partial, 1)["loss"] == [4.0] and regroup_partial(partial, 1)["seen"] == [64]


def plan_with(batch: int = 32, partitions: int = 4, tmp_path=None):
    return types.SimpleNamespace(out=tmp_path or "runs/x", partitions=partitions, resume_from={},
                                 config=Config(decompose=DecomposeConfig(partitions=partitions)),
                                 phase=lambda name: PhaseConfig(batch_size=batch), batches={})


def entry(ranks=None, epoch=0, step=2, finished=False, **more):
    return {"epoch": epoch, "step": step, "finished": finished, **({} if ranks is None else {"ranks": ranks}), **more}


def test_elastic_batches_keep_each_stopped_phases_batch():
    plan = plan_with()
    stopped = {"sub_0": entry(2), "sub_1": entry(2, finished=True), "global": entry(2), "random": entry()}
    assert resume.elastic_batches(plan, stopped, 2) == ({}, None)  # the same count: nothing changes
    assert resume.elastic_batches(plan, stopped, 4) == ({"global": 16}, None)  # sub_0: alone at 2 and at 4
    assert resume.elastic_batches(plan, stopped, 1) == ({"global": 64}, None)
    assert resume.elastic_batches(plan, stopped, 8) == ({"sub_0": 16, "global": 8}, None)  # sub_0 by a group of 2
    again = {"global": entry(4, batch=64)}  # resumed at 4 from 2, stopped again at 4: still 64 a step
    assert resume.elastic_batches(plan, again, 4) == ({"global": 16}, None)
    batches, refusal = resume.elastic_batches(plan, stopped, 3)
    assert batches == {} and refusal.startswith("runs/x holds a run stopped at 2 rank(s) that cannot continue at 3: "
                                                "global was stopped at a batch of 64 samples per step")
    assert "mpiexec -n 2" in refusal and "a new --out" in refusal


def test_the_rank_counts_are_recorded_where_they_change(tmp_path):
    plan = plan_with(tmp_path=tmp_path)
    assert resume.record_rank_count(plan, 2) == [{"ranks": 2, "resumed_from": {}}]
    assert resume.record_rank_count(plan, 2) == [{"ranks": 2, "resumed_from": {}}]  # a resume at the same count
    plan.resume_from = {"global": entry(2, epoch=1, step=3), "sub_0": entry(2, epoch=2, step=0, finished=True)}
    had = resume.record_rank_count(plan, 4)
    assert had[1] == {"ranks": 4, "resumed_from": {"global": {"epoch": 1, "step": 3, "finished": False},
                                                   "sub_0": {"epoch": 2, "step": 0, "finished": True}}}
    assert json.loads((tmp_path / resume.RANKS_FILE).read_text()) == had


def test_the_dry_run_says_what_a_resume_at_another_count_will_do():
    plan = plan_with()
    stopped = {"sub_0": entry(2, finished=True), "global": entry(2, epoch=1, step=1)}
    plan.batches, _ = resume.elastic_batches(plan, stopped, 4)
    assert resume.elastic_text(plan, stopped, 2) == ""
    assert resume.elastic_text(plan, stopped, 4) == ("  resumes a run stopped at 2 rank(s) at 4; continues global at "
                                                  "epoch 2, step 2 with 16 samples a rank (64 a step, as before)\n")
    plan.batches = {}
    assert "the sub-networks placed as a fresh start at 1" in resume.elastic_text(plan, {"sub_3": entry(4)}, 1)


@pytest.mark.ranks(1)
def test_a_run_stopped_in_the_sub_phase_at_4_ranks_finishes_at_1_as_the_uninterrupted_run(tiny_run, tmp_path):
    """Each sub-network trains alone at 4 ranks and at 1 (K = 4): re-placed on the one rank, the
    stopped one continues where it was, and the whole run equals the uninterrupted 1-rank run bitwise."""
    reference, _ = tiny_run
    out = tmp_path / "run"
    stopped = run_pipeline(4, out, env={"DDC_STOP_AT": "sub_2:1:2"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    dry = run_pipeline_here(out, extra=("--dry-run",))
    assert dry.returncode == 0 and "resumes a run stopped at 4 rank(s) at 1; the sub-networks placed as a fresh " \
                                   "start at 1 places them" in dry.stdout, dry.stdout[-3000:]
    resumed = run_pipeline_here(out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[sub_2] resuming at epoch 1, step 3" in (out / "logs" / "rank0.log").read_text()
    for name in ("subnet_0.pt", "subnet_2.pt", "composed_model.pt", "model.pt", "random_model.pt"):
        a, b = torch.load(reference / name, weights_only=False), torch.load(out / name, weights_only=False)
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), name
    counts = results(out)["rank_counts"]
    assert [c["ranks"] for c in counts] == [4, 1]
    assert counts[1]["resumed_from"]["sub_2"] == {"epoch": 0, "step": 2, "finished": False}
    assert counts[1]["resumed_from"]["sub_0"]["finished"]


@pytest.mark.ranks(1)
def test_a_run_stopped_in_the_sub_phase_at_1_rank_continues_at_4_in_data_parallel_groups(tmp_path):
    """K = 2 at 4 ranks: each sub-network is trained by a group of 2; the stopped one keeps its batch
    of 32 a step (16 a rank) and its place in the epoch, the one not yet started starts afresh."""
    out, args = tmp_path / "run", ("decompose.partitions=2", "run.strategy=ddc")
    stopped = run_pipeline_here(out, *args, env={"DDC_STOP_AT": "sub_0:1:2"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    resumed = run_pipeline(4, out, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (out / "logs" / "rank0.log").read_text()
    assert "[sub_0] continued from a run of 1 rank(s): 16 samples a rank" in log
    assert "[sub_0] resuming at epoch 1, step 3" in log
    r = results(out)
    assert [(c["ranks"], sorted(c["resumed_from"])) for c in r["rank_counts"]] == [(1, []), (4, ["sub_0"])]
    n = r["sub"]["histories"][1][0]["train_samples"]  # sub_1: a fresh epoch over a group of 2, padded to even
    assert r["sub"]["histories"][0][0]["train_samples"] == n  # sub_0: 2 steps of 32 at 1 rank, the rest at 2
    assert r["world_size"] == 4 and r["compose"]["max_rel_error"] <= THEOREM_RTOL
