"""run.budget in real runs at 1, 2 and 4 ranks: a calibration on the real ranks, a plan recorded
before training (plan.json, results.json's `budget`), every phase annealed to lr 0 at its last
step, the planned steps within the budget at the calibrated rates, and a resume that keeps the
recorded plan. Asserts on the plan's arithmetic and on events, never on wall time (CI's load).
The jobs run in-process in the stage of their world size (conftest: `ranks`)."""

from __future__ import annotations

import json

import pytest

from conftest import assert_seconds_cover_the_recorded_pieces, results, run_pipeline_here

BUDGET = 20  # seconds per strategy: the tiny job calibrates in ~2 s quiet, ~9 s at 4 ranks on half a core (the floor: 19 s)
ANNEALED = ["sub.schedule=linear", "global.schedule=cosine", "random.schedule=linear", f"run.budget={BUDGET}"]


def check_plan(budget: dict, phases: list[str]) -> None:
    """The recorded plan's arithmetic: each phase's steps and scores at the calibrated rates, plus
    the calibration and fixed costs, within each strategy's budget."""
    for strategy, seconds in budget["budget_seconds"].items():
        mine = [p for p in phases if (p == "random") == (strategy == "random")]
        spent = budget["calibration_seconds"][strategy] + budget["fixed_seconds"][strategy]
        for phase in mine:
            plan, rates = budget["phases"][phase], budget["rates"][phase]
            assert plan["steps"] == plan["epochs"] * plan["steps_per_epoch"] >= 1
            assert plan["seconds"] == pytest.approx(plan["steps"] * rates["step"] + plan["evaluations"] * rates["evaluation"])
            spent += plan["seconds"]
        assert budget["planned_seconds"][strategy] == pytest.approx(spent)
        assert spent <= seconds == BUDGET
        assert budget["elapsed_seconds"][strategy] > budget["calibration_seconds"][strategy]
        assert budget["landed"][strategy] == pytest.approx(budget["elapsed_seconds"][strategy] / seconds)


def trained_as_planned(result: dict, budget: dict, phase: str, history: list[dict], batch: int, peers: int) -> None:
    plan = budget["phases"][phase]
    assert len(history) == plan["epochs"]
    assert sum(row["train_samples"] for row in history) <= plan["steps"] * batch * peers  # the last batch may be short
    assert history[-1]["lr"] == 0.0  # annealed at the last step


def on_root(write) -> None:
    """`write()` on rank 0 of this stage's world alone, seen by every rank once it returns."""
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == 0:
        write()
    MPI.COMM_WORLD.Barrier()


def stale_plan(out, strategies: list[str], ranks: int) -> None:
    """plan.json as a run of another job leaves it when it fails before its first checkpoint."""
    made_for = {"config_digest": "0123456789abcdef", "ranks": ranks, "strategies": strategies}
    plan = {"phases": {}, "budget_seconds": dict.fromkeys(strategies, 9.0), "calibration_end": 1.0,
            "made_for": made_for}
    out.mkdir()
    (out / "plan.json").write_text(json.dumps(plan))


@pytest.mark.parametrize("ranks, strategy", [pytest.param(n, s, marks=pytest.mark.ranks(n))
                                             for n, s in [(1, "ddc"), (2, "random"), (4, "both")]])
def test_a_budgeted_run_plans_before_training_and_ends_annealed(ranks, strategy, mpi_tmp_path):
    """Each run finds the plan.json of another job that stopped before its first checkpoint (a
    `random` run's, for `both`: DDC has no phase there): it plans anew, as nothing has trained."""
    out = mpi_tmp_path / "run"
    on_root(lambda: stale_plan(out, ["random"], ranks))
    done = run_pipeline_here(out, *ANNEALED, f"run.strategy={strategy}", "global.eval_every=0")
    assert done.returncode == 0, done.stderr + done.stdout
    result = results(out)
    budget = result["budget"]
    assert budget["made_for"]["ranks"] == ranks and budget["made_for"]["strategies"] == (
        ["ddc", "random"] if strategy == "both" else [strategy])
    assert json.loads((out / "plan.json").read_text()) == {k: v for k, v in budget.items()
                                                           if k not in ("elapsed_seconds", "landed")}
    phases = {"both": ["sub", "global", "random"], "ddc": ["sub", "global"], "random": ["random"]}[strategy]
    assert sorted(budget["phases"]) == sorted(phases)
    check_plan(budget, phases)
    if "sub" in phases:
        for history in result["sub"]["histories"]:
            trained_as_planned(result, budget, "sub", history, 32, max(ranks // 4, 1))
        trained_as_planned(result, budget, "global", result["global"]["history"], 32, ranks)
        assert result["compose"].get("init_val_accuracy") is None  # global.eval_every = 0: scored at the end only
        assert all("val_accuracy" in row for row in result["global"]["history"][-1:])
    if "random" in phases:
        trained_as_planned(result, budget, "random", result["random"]["history"], 32, ranks)
    if strategy == "both":  # the verdict: each strategy's budget, score, elapsed seconds and landing; who got further
        assert f"this job takes 2 strategies x {BUDGET} s, one after the other, + start-up" in done.stdout
        closing = done.stdout.splitlines()
        for name in ("DDC", "GNet-R"):
            assert any(line.startswith(f"budget {name} {BUDGET} s: val_accuracy ") and "elapsed" in line
                       and "landed at" in line for line in closing)
        assert any(" got further: " in line or "got equally far" in line for line in closing)
    log = (out / "logs" / "rank0.log").read_text()
    assert "made for another job (the configuration digest 0123456789abcdef" in log and "planning anew" in log
    assert "[budget] calibrating" in log and log.index("[budget] calibrating") < log.index("epoch 1/")
    assert (out / "model.pt").exists() == ("sub" in phases) and (out / "random_model.pt").exists() == ("random" in phases)


@pytest.mark.ranks(2)
def test_a_resumed_budgeted_run_keeps_the_recorded_plan(mpi_tmp_path):
    out = mpi_tmp_path / "run"
    args = (*ANNEALED, "run.strategy=random")
    stopped = run_pipeline_here(out, *args, env={"DDC_STOP_AT": "random:1:2"})
    assert stopped.returncode == 75, stopped.stderr + stopped.stdout
    recorded = (out / "plan.json").read_bytes()
    changed = run_pipeline_here(out, *args, "run.sub_share=0.5")  # the training digest differs: refused as ever
    assert changed.returncode == 2 and "different configuration" in changed.stderr
    other = json.loads(recorded) | {"made_for": json.loads(recorded)["made_for"] | {"ranks": 3}}
    on_root(lambda: (out / "plan.json").write_text(json.dumps(other)))
    refused = run_pipeline_here(out, *args)  # a plan made for another job, under a run that has trained
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "made for another job (the rank count 3 -> 2)" in refused.stderr
    on_root(lambda: (out / "plan.json").write_bytes(recorded))
    resumed = run_pipeline_here(out, *args)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert (out / "plan.json").read_bytes() == recorded
    log = (out / "logs" / "rank0.log").read_text()
    assert log.count("[budget] calibrating") == 1 and "[budget] the recorded plan" in log
    assert results(out)["budget"]["phases"] == json.loads(recorded)["phases"]
    assert results(out)["random"]["history"][-1]["lr"] == 0.0
    assert_seconds_cover_the_recorded_pieces(results(out))


@pytest.mark.ranks(1)
def test_a_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    done = run_pipeline_here(out, *ANNEALED, "run.strategy=random", extra=("--dry-run",))
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"budget GNet-R {BUDGET} s: calibration" in done.stdout and "planned" in done.stdout
    assert f"this job takes 1 strategy x {BUDGET} s + start-up; this dry run calibrates too" in done.stdout
    assert not out.exists()


@pytest.mark.ranks(2)
def test_a_budget_too_small_for_one_step_is_refused_with_exit_2(mpi_tmp_path):
    out = mpi_tmp_path / "run"
    done = run_pipeline_here(out, *ANNEALED[:3], "run.budget=1e-05", "run.strategy=random")
    assert done.returncode == 2, done.stderr + done.stdout
    assert "cannot hold random's random phase" in done.stderr and "Traceback" not in done.stderr
    assert "give at least" in done.stderr and not out.exists()  # the folder this run made goes again
