"""Issue 21 item 5: an error on one rank must not kill rank 0 in the middle of publishing a
checkpoint. Rank 0 wrote the epoch's checkpoint while its peers went on; one of them failed and
aborted the job, leaving `manifest.json.tmp<pid>` and no manifest (a flaky test). The peers of a
writer now wait until its checkpoint is published; MPI Abort stays the way a fault ends the job.
DDC_SLOW_WRITE makes rank 0's write slow on purpose, so the bad interleaving is the likely one."""

from __future__ import annotations

import json

import pytest

from conftest import run_pipeline


@pytest.mark.parametrize("ranks", [2, 4])
def test_a_fault_on_a_peer_keeps_the_checkpoint_rank_0_is_writing(ranks, tmp_path):
    out = tmp_path / "run"
    last = ranks - 1
    done = run_pipeline(ranks, out, "run.strategy=random", "random.epochs=2", "run.collective_timeout=900",
                        env={"DDC_NAN_AT": f"random:2:1:{last}", "DDC_SLOW_WRITE": "0:5"}, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"phase random, epoch 2, step 1, rank {last}: the loss is nan" in done.stderr, done.stderr[-3000:]
    slot = out / "checkpoints" / "random"
    manifest = json.loads((slot / "manifest.json").read_text())
    assert [(e["epoch"], e["step"]) for e in manifest["checkpoints"]] == [(1, 0)]
    assert not [p.name for p in slot.iterdir() if ".tmp" in p.name]
