"""A resume: the checkpoints every rank continues from (rank 0 chooses), and a run continued at
another rank count (the stopped phases' batches kept, the rank counts recorded).
"""

from __future__ import annotations

import dataclasses
import json

from . import comm
from .checkpoint import CheckpointSeries, atomic_write
from .errors import BadInput
from .levels import level_slot
from .partition import elastic_batch, level_placement, phase_peers
from .plan import Plan, checkpointed


def elastic_batches(plan: Plan, entries: dict[str, dict], ranks: int) -> tuple[dict[str, int], str | None]:
    """(slot -> the per-rank batch at which a run of `ranks` ranks continues it, for each unfinished
    slot of `entries` (slot name -> manifest entry) whose batch over all its ranks differs from this
    count's; why it cannot, or None). A resume at another rank count re-places the sub-networks by
    the rule of a fresh start (subnets_of_rank) and keeps each stopped phase's batch of a step over
    all its ranks (partition.elastic_batch), so the step count, the lr schedule and the samples of
    every step of the current epoch stay. (Checkpoints written before the rank count was recorded
    carry none and are not judged; before the batch was, it is the configured one at their count.)"""
    batches = {}
    for name, entry in sorted(entries.items()):
        if entry["finished"] or entry.get("ranks") is None:
            continue
        configured = plan.phase("sub" if "sub_" in name else name).batch_size  # a level's sub-networks: [sub]
        levels = plan.config.decompose.level_counts
        total = entry.get("batch", configured * phase_peers(name, entry["ranks"], plan.partitions, levels))
        peers = phase_peers(name, ranks, plan.partitions, levels)
        if total == configured * peers:
            continue
        try:
            batches[name] = elastic_batch(name, total, peers)
        except ValueError as err:
            return {}, (f"{plan.out} holds a run stopped at {entry['ranks']} rank(s) that cannot continue at "
                        f"{ranks}: {err}. Run it again with {entry['ranks']} rank(s) (mpiexec -n {entry['ranks']}, srun "
                        f"--ntasks={entry['ranks']}), or choose a new --out to start afresh at {ranks}")
    return batches, None


def elastic_text(plan: Plan, entries: dict[str, dict], ranks: int) -> str:
    """What a resume at another rank count will do (the dry run's words; '' at the same count)."""
    before = sorted({e["ranks"] for e in entries.values() if e.get("ranks") not in (None, ranks)})
    if not before:
        return ""
    kept = [f"{name} at epoch {entries[name]['epoch'] + 1}, step {entries[name]['step'] + 1} with {batch} "
            f"samples a rank ({batch * phase_peers(name, ranks, plan.partitions, plan.config.decompose.level_counts)} "
            "a step, as before)"
            for name, batch in plan.batches.items()]
    placed = (f"; the sub-networks placed as a fresh start at {ranks} places them"
              if any(n.startswith("sub_") and not e["finished"] for n, e in entries.items()) else "")
    return (f"  resumes a run stopped at {' and '.join(map(str, before))} rank(s) at {ranks}{placed}"
            + (f"; continues {'; '.join(kept)}" if kept else "") + "\n")


RANKS_FILE = "ranks.json"  # the rank counts a run has had and where each began (results.json's rank_counts)


def record_rank_count(plan: Plan, ranks: int) -> list[dict]:
    """The rank counts the run in --out has had, this start's appended (rank 0, in ranks.json) when
    it differs from the last one, with the checkpoint each slot continues from."""
    path = plan.out / RANKS_FILE
    had = json.loads(path.read_text()) if path.exists() else []
    if not had or had[-1]["ranks"] != ranks:
        had.append({"ranks": ranks, "resumed_from": {name: {key: entry[key] for key in ("epoch", "step", "finished")}
                                                     for name, entry in sorted(plan.resume_from.items())}})
        atomic_write(path, json.dumps(had, indent=1).encode())
    return had


def choose_resume(plan: Plan, world: comm.World) -> None:
    """Rank 0 picks each slot's checkpoint (file, epoch, step, sha256) and every rank resumes from
    exactly that one: ranks reading their own newest could resume different epochs and hang. A rank
    whose view of --out lacks one it will read, or a stopped phase whose batch cannot be kept at this
    rank count (elastic_batches), stops the job with exit 2 before anything trains. Hashing large
    checkpoints on a slow file system takes its time: the collectives wait run.collective_timeout."""
    world = dataclasses.replace(world, timeout=plan.config.run.collective_timeout)
    root = plan.out / "checkpoints"
    chosen = checkpointed(plan) if world.is_root else None
    batches, refusal = elastic_batches(plan, chosen, world.size) if world.is_root else (None, None)
    plan.resume_from, plan.batches, refusal = comm.bcast(world, (chosen, batches, refusal),
                                                         "choosing the checkpoints to resume from")
    if refusal is not None:
        raise comm.collective_error(refusal)
    placements = level_placement(world.size, plan.config.decompose.level_counts) if "sub" in plan.phases else []
    mine = [  # this rank's sub-networks of every level (one: subnets_of_rank's), then the data-parallel phases
        level_slot(level, k) for level, placement in enumerate(placements)
        for k, ranks in enumerate(placement) if world.rank in ranks] + [p for p in plan.phases if p != "sub"]
    error = None
    for name in mine:
        entry = plan.resume_from.get(name)
        if entry is not None and not CheckpointSeries(root, name, plan.config.digest()).readable(entry):
            error = BadInput(
                f"cannot read checkpoint {root / name / entry['file']} (epoch {entry['epoch']}, step {entry['step']}, "
                f"sha256 {entry['sha256'][:12]}...) that rank 0 resumes {name} from: it is missing or holds other "
                "bytes on this node. Every rank must see the same --out, on a file system shared by all nodes "
                "(docs/CLUSTER.md, 'Shared file system')")
            break
    comm.raise_first_bad_input(world, error)
